"""Dense prediction on the MetaFormer backbone: what every dense model shares (``DenseModel``), and Semantic FPN
segmentation (as mmseg's ``FPN`` + ``FPNHead`` in the official configs). UperNet is in ``upernet.py``, the
detectors in ``detection.py``, which imports torchvision's detection code only when a detector is built."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import MetaFormerConfig
from .metaformer import MetaFormerFeatures
from .pretrained import PretrainedCfg, Recorded


class DenseModel(Recorded, nn.Module):
    """What a segmentation or detection model of this library adds to its network: its record (name, classes
    and their names), the trunk it is built on, and the facts checkpoints need (the class-sized layers, where the
    trunk's parameters are)."""

    task: ClassVar[str]
    class_layers: ClassVar[tuple[str, ...]]  # prefixes of the layers whose size is the number of classes
    trunk_prefix: ClassVar[str]  # where the MetaFormer trunk's parameters are in the state dict
    input_options: ClassVar[tuple[str, ...]]  # the input-size settings it takes, and checkpoints record
    pretrained_cfg: PretrainedCfg

    def _describe(self, name: str, num_classes: int, labels: Sequence[str] | None) -> None:
        self.num_classes = num_classes  # object or pixel classes; Mask R-CNN's background class is not counted
        labels = tuple(labels) if labels is not None else None
        if labels is not None and len(labels) != num_classes:
            raise ConfigError(f"{len(labels)} class names given for {num_classes} classes")
        self.pretrained_cfg = PretrainedCfg(name, num_classes=num_classes, label_names=labels)

    def set_labels(self, labels: Sequence[str] | None) -> None:
        self.pretrained_cfg = self.pretrained_cfg.replace(label_names=tuple(labels) if labels else None)

    @property
    def trunk(self) -> MetaFormerFeatures:
        return self.get_submodule(self.trunk_prefix.rstrip("."))

    @property
    def config(self) -> MetaFormerConfig:
        return self.trunk.config

    def input_settings(self) -> dict:
        raise NotImplementedError


class ConvNormReLU(nn.Sequential):
    """mmcv's ``ConvModule`` as the OpenMMLab heads use it: a convolution without bias, BatchNorm, ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class FPNNeck(nn.Module):
    """Lateral 1x1 convolutions, a top-down pathway (nearest upsampling) and a 3x3 convolution per level."""

    def __init__(self, in_channels: Sequence[int], channels: int = 256) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, channels, 1) for c in in_channels)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in in_channels)

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(x) for conv, x in zip(self.lateral, features, strict=True)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest"
            )
        return [conv(x) for conv, x in zip(self.output, laterals, strict=True)]


class FPNHead(nn.Module):
    """Semantic FPN head: per level, 3x3 conv + BN + ReLU (+ 2x bilinear upsampling) down to stride 4, summed,
    dropout, 1x1 classifier."""

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 256,
        channels: int = 128,
        strides: Sequence[int] = (4, 8, 16, 32),
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.scale_heads = nn.ModuleList()
        for stride in strides:
            length = max(1, int(math.log2(stride) - math.log2(strides[0])))
            layers: list[nn.Module] = []
            for k in range(length):
                layers.append(ConvNormReLU(in_channels if k == 0 else channels, channels))
                if stride != strides[0]:
                    layers.append(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False))
            self.scale_heads.append(nn.Sequential(*layers))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        out = self.scale_heads[0](features[0])
        for head, x in zip(self.scale_heads[1:], features[1:], strict=True):
            out = out + F.interpolate(head(x), size=out.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.dropout(out))


class SegmentationModel(DenseModel):
    """What every segmentation model shares: the backbone under ``backbone.``, and the input settings its
    checkpoints record. ``test_scale`` (long, short side) is the size whole images are resized to for evaluation;
    ``ignore_index`` the mask value of its training data that is no class, which its evaluation then uses."""

    task = "segmentation"
    trunk_prefix = "backbone."
    input_options = ("test_scale", "ignore_index")

    def _segmentation_inputs(self, test_scale: tuple[int, int], ignore_index: int) -> None:
        self.test_scale = tuple(test_scale)
        self.ignore_index = ignore_index

    def input_settings(self) -> dict:
        return {"test_scale": list(self.test_scale), "ignore_index": self.ignore_index}


class SemanticFPN(SegmentationModel):
    """Backbone (four stages, each through its own norm), FPN neck, FPN head. ``forward`` returns class logits at
    the input's resolution; ``forward_logits`` at stride 4."""

    class_layers = ("head.classifier.",)

    def __init__(
        self,
        config: MetaFormerConfig,
        num_classes: int,
        *,
        name: str = "",
        labels: Sequence[str] | None = None,
        test_scale: tuple[int, int] = (2048, 512),
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.backbone = MetaFormerFeatures(config)
        self.neck = FPNNeck(self.backbone.out_channels)
        self.head = FPNHead(num_classes)
        self._describe(name, num_classes, labels)
        self._segmentation_inputs(test_scale, ignore_index)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


def is_dense(model: nn.Module) -> bool:
    return isinstance(model, DenseModel)
