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
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from .metaformer import MetaFormerConfig, MetaFormerFeatures


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
    the input's resolution; ``forward_logits`` at stride 4."""

    task = "segmentation"

    def __init__(self, config: MetaFormerConfig, num_classes: int) -> None:
        super().__init__()
        self.backbone = MetaFormerFeatures(config)
        self.neck = FPNNeck(self.backbone.out_channels)
        self.head = FPNHead(num_classes)
        self.num_classes = num_classes
        self.labels: tuple[str, ...] | None = None

    @property
    def config(self) -> MetaFormerConfig:
        return self.backbone.config

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.neck(self.backbone(images)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.forward_logits(images)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)


class MetaFormerFPN(nn.Module):
    """Backbone + torchvision FPN with the contract torchvision's detectors expect: an ordered dict of 256-channel
    maps and ``out_channels``."""

    def __init__(self, config: MetaFormerConfig, out_indices: Sequence[int], extra_blocks: nn.Module) -> None:
        super().__init__()
        self.body = MetaFormerFeatures(config, out_indices)
        self.fpn = FeaturePyramidNetwork(self.body.out_channels, 256, extra_blocks=extra_blocks)
        self.out_channels = 256

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(images)
        return self.fpn(OrderedDict((str(i), x) for i, x in enumerate(features)))


def retinanet(config: MetaFormerConfig, num_classes: int, **kwargs: object) -> RetinaNet:
    """RetinaNet on C3-C5 with P6/P7 computed from C5 (mmdet's ``add_extra_convs='on_input'``)."""
    backbone = MetaFormerFPN(config, (1, 2, 3), LastLevelP6P7(config.widths[-1], 256))
    return RetinaNet(backbone, num_classes=num_classes, **kwargs)


def mask_rcnn(config: MetaFormerConfig, num_classes: int, **kwargs: object) -> MaskRCNN:
    """Mask R-CNN on C2-C5 with a max-pooled P6; ``num_classes`` objects plus torchvision's background class."""
    backbone = MetaFormerFPN(config, (0, 1, 2, 3), LastLevelMaxPool())
    return MaskRCNN(backbone, num_classes=num_classes + 1, **kwargs)


def backbone_of(model: nn.Module) -> MetaFormerFeatures:
    if isinstance(model, SemanticFPN):
        return model.backbone
    return model.backbone.body
