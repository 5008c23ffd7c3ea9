"""Dense prediction on the MetaFormer backbone: Semantic FPN segmentation (as mmseg's ``FPN`` + ``FPNHead`` in the
official configs) and torchvision's RetinaNet and Mask R-CNN detectors."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from ..errors import ConfigError
from .config import MetaFormerConfig
from .metaformer import MetaFormerFeatures


class ConvNormReLU(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
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

    def __init__(self, num_classes: int, in_channels: int = 256, channels: int = 128,
                 strides: Sequence[int] = (4, 8, 16, 32), dropout: float = 0.1) -> None:  # fmt: skip
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


class SemanticFPN(nn.Module):
    """Backbone (four stages, each through its own norm), FPN neck, FPN head. ``forward`` returns class logits at
    the input's resolution; ``forward_logits`` at stride 4. ``test_scale`` (long, short side) is the size whole
    images are resized to for evaluation, recorded in checkpoints."""

    task = "segmentation"

    def __init__(self, config: MetaFormerConfig, num_classes: int, *, name: str = "",
                 labels: Sequence[str] | None = None, test_scale: tuple[int, int] = (2048, 512)) -> None:  # fmt: skip
        super().__init__()
        self.backbone = MetaFormerFeatures(config)
        self.neck = FPNNeck(self.backbone.out_channels)
        self.head = FPNHead(num_classes)
        self.name = name
        self.num_classes = num_classes
        self.labels = _labels(labels, num_classes)
        self.test_scale = tuple(test_scale)

    @property
    def config(self) -> MetaFormerConfig:
        return self.backbone.config

    def input_settings(self) -> dict:
        return {"test_scale": list(self.test_scale)}

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class MetaFormerFPN(nn.Module):
    """Backbone + torchvision FPN with the contract torchvision's detectors expect: an ordered dict of 256-channel
    maps and ``out_channels``."""

    def __init__(self, config: MetaFormerConfig, out_indices: Sequence[int], extra_blocks: ExtraFPNBlock) -> None:
        super().__init__()
        self.body = MetaFormerFeatures(config, out_indices)
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, 256, extra_blocks=extra_blocks)
        self.out_channels = 256

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), x) for i, x in enumerate(features)))


class InputP6P7(ExtraFPNBlock):
    """P6 = conv(C5), P7 = conv(P6): mmdet's ``add_extra_convs='on_input'`` as RetinaNet uses it, with no ReLU
    before P7 (``relu_before_extra_convs=False``; torchvision's ``LastLevelP6P7`` applies one)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.p6 = nn.Conv2d(in_channels, out_channels, 3, 2, 1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, 2, 1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.zeros_(conv.bias)

    def forward(self, results: list[torch.Tensor], inputs: list[torch.Tensor],
                names: list[str]) -> tuple[list[torch.Tensor], list[str]]:  # fmt: skip
        p6 = self.p6(inputs[-1])
        return [*results, p6, self.p7(p6)], [*names, "p6", "p7"]


class _DetectorSettings:
    """What our detectors add to torchvision's: a name, class names and the input size they were trained at."""

    config: MetaFormerConfig

    def _describe(self, name: str, num_classes: int, labels: Sequence[str] | None) -> None:
        self.name = name
        self.num_classes = num_classes  # object classes; Mask R-CNN's background class is not counted
        self.labels = _labels(labels, num_classes)

    @property
    def config(self) -> MetaFormerConfig:
        return self.backbone.body.config

    def input_settings(self) -> dict:
        return {"min_size": self.transform.min_size[0], "max_size": self.transform.max_size}

    def set_input_size(self, min_size: int | None = None, max_size: int | None = None) -> None:
        """Resize inputs so the short side is ``min_size`` and the long side at most ``max_size``."""
        if min_size is not None:
            self.transform.min_size = (min_size,)
        if max_size is not None:
            self.transform.max_size = max_size


class MetaFormerRetinaNet(_DetectorSettings, RetinaNet):
    """RetinaNet on C3-C5 with P6/P7 from C5, as the paper's mmdet configuration."""

    task = "detection"

    def __init__(self, config: MetaFormerConfig, num_classes: int, *, name: str = "",
                 labels: Sequence[str] | None = None, min_size: int = 800, max_size: int = 1333) -> None:  # fmt: skip
        backbone = MetaFormerFPN(config, (1, 2, 3), InputP6P7(config.widths[-1], 256))
        super().__init__(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)
        self._describe(name, num_classes, labels)


class MetaFormerMaskRCNN(_DetectorSettings, MaskRCNN):
    """Mask R-CNN on C2-C5 with a max-pooled P6; ``num_classes`` objects plus torchvision's background class."""

    task = "instance_segmentation"

    def __init__(self, config: MetaFormerConfig, num_classes: int, *, name: str = "",
                 labels: Sequence[str] | None = None, min_size: int = 800, max_size: int = 1333) -> None:  # fmt: skip
        backbone = MetaFormerFPN(config, (0, 1, 2, 3), LastLevelMaxPool())
        super().__init__(backbone, num_classes=num_classes + 1, min_size=min_size, max_size=max_size)
        self._describe(name, num_classes, labels)


DenseModel = SemanticFPN | MetaFormerRetinaNet | MetaFormerMaskRCNN
DENSE_CLASSES: dict[str, type[nn.Module]] = {
    "segmentation": SemanticFPN,
    "detection": MetaFormerRetinaNet,
    "instance_segmentation": MetaFormerMaskRCNN,
}
INPUT_OPTIONS = {  # the settings of the input size each task's models take (and checkpoints record)
    "segmentation": ("test_scale",),
    "detection": ("min_size", "max_size"),
    "instance_segmentation": ("min_size", "max_size"),
}


def build_dense_model(task: str, config: MetaFormerConfig, num_classes: int, *, name: str = "",
                      labels: Sequence[str] | None = None, **input_size: object) -> DenseModel:  # fmt: skip
    """The dense model of ``task`` on a backbone of ``config``; ``input_size`` takes ``INPUT_OPTIONS[task]``."""
    wrong = sorted(set(input_size) - set(INPUT_OPTIONS[task]))
    if wrong:
        raise ConfigError(f"{wrong} are not options of {task} models; they take {list(INPUT_OPTIONS[task])}")
    given = {k: v for k, v in input_size.items() if v is not None}
    return DENSE_CLASSES[task](config, num_classes, name=name, labels=labels, **given)


def is_dense(model: nn.Module) -> bool:
    return isinstance(model, tuple(DENSE_CLASSES.values()))


def backbone_of(model: DenseModel) -> MetaFormerFeatures:
    if isinstance(model, SemanticFPN):
        return model.backbone
    return model.backbone.body


def _labels(labels: Sequence[str] | None, num_classes: int) -> tuple[str, ...] | None:
    if labels is None:
        return None
    if len(labels) != num_classes:
        raise ConfigError(f"{len(labels)} class names given for {num_classes} classes")
    return tuple(labels)
