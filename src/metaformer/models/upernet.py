"""UperNet segmentation (Xiao et al., ECCV 2018), as mmsegmentation's ``UPerHead`` with its auxiliary ``FCNHead``:
the head the InceptionNeXt and MambaOut papers (and ConvNeXt's and Swin's) report ADE20K with.

The head: pyramid pooling (1, 2, 3, 6) on the last stage, lateral 1x1 and FPN 3x3 convolutions on the others, a
top-down pathway, every level upsampled to stride 4 and fused by a 3x3 bottleneck, dropout, a 1x1 classifier; every
convolution with BatchNorm and ReLU, 512 channels. The auxiliary head (one 3x3 convolution of 256 channels on stage
3, dropout, a classifier) only trains: its loss counts 0.4 of the main one, and inference never runs it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .config import MetaFormerConfig
from .dense import ConvNormReLU, SegmentationModel
from .metaformer import MetaFormerFeatures

POOL_SCALES = (1, 2, 3, 6)


def _resize(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPooling(nn.Module):
    """The map and its averages over 1x1, 2x2, 3x3 and 6x6 cells, each projected and upsampled back, side by side."""

    def __init__(self, in_channels: int, channels: int, scales: Sequence[int] = POOL_SCALES) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(scale), ConvNormReLU(in_channels, channels, 1)) for scale in scales
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, *(_resize(stage(x), x.shape[-2:]) for stage in self.stages)], dim=1)


class UPerHead(nn.Module):
    """mmseg's ``UPerHead``: pyramid pooling on the last level, an FPN over the others, all fused at stride 4."""

    def __init__(self, in_channels: Sequence[int], num_classes: int, channels: int = 512, dropout: float = 0.1):
        super().__init__()
        last = in_channels[-1]
        self.pyramid = PyramidPooling(last, channels)
        self.bottleneck = ConvNormReLU(last + len(POOL_SCALES) * channels, channels)
        self.lateral = nn.ModuleList(ConvNormReLU(c, channels, 1) for c in in_channels[:-1])
        self.output = nn.ModuleList(ConvNormReLU(channels, channels) for _ in in_channels[:-1])
        self.fuse = ConvNormReLU(len(in_channels) * channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        levels = [conv(x) for conv, x in zip(self.lateral, features, strict=False)]
        levels.append(self.bottleneck(self.pyramid(features[-1])))
        for i in range(len(levels) - 1, 0, -1):  # top-down
            levels[i - 1] = levels[i - 1] + _resize(levels[i], levels[i - 1].shape[-2:])
        outputs = [conv(x) for conv, x in zip(self.output, levels, strict=False)] + [levels[-1]]
        size = outputs[0].shape[-2:]
        fused = self.fuse(torch.cat([outputs[0], *(_resize(x, size) for x in outputs[1:])], dim=1))
        return self.classifier(self.dropout(fused))


class FCNHead(nn.Module):
    """mmseg's ``FCNHead`` as UperNet's auxiliary head: a 3x3 convolution (BatchNorm, ReLU), dropout, a classifier."""

    def __init__(self, in_channels: int, num_classes: int, channels: int = 256, dropout: float = 0.1) -> None:
        super().__init__()
        self.conv = ConvNormReLU(in_channels, channels)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.conv(x)))


class UperNet(SegmentationModel):
    """Backbone (four stages, each through its own norm), ``UPerHead``, and the auxiliary ``FCNHead`` on stage 3.

    ``forward`` returns class logits at the input's resolution; in training, ``{"out": logits, "aux": logits}``
    (torchvision's names for its segmentation models' two outputs), which the training loss weighs 1 and the
    recipe's ``aux_weight`` (0.4, mmseg's).
    """

    class_layers = ("head.classifier.", "aux_head.classifier.")
    aux_stage = 2

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
        self.head = UPerHead(self.backbone.out_channels, num_classes)
        self.aux_head = FCNHead(self.backbone.out_channels[self.aux_stage], num_classes)
        self._describe(name, num_classes, labels)
        self._segmentation_inputs(test_scale, ignore_index)

    def forward_logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        features = self.backbone(images)
        logits = _resize(self.head(features), images.shape[-2:])
        if not self.training:
            return logits
        return {"out": logits, "aux": _resize(self.aux_head(features[self.aux_stage]), images.shape[-2:])}
