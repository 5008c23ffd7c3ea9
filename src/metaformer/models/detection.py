"""torchvision's RetinaNet and Mask R-CNN on the MetaFormer backbone and torchvision's FPN, as the paper's mmdet
configurations. torchvision's detection code is imported here only, when a detector is built."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.detection import MaskRCNN, RetinaNet
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import ExtraFPNBlock, LastLevelMaxPool

from .config import MetaFormerConfig
from .dense import DenseModel
from .metaformer import MetaFormerFeatures


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

    def forward(
        self, results: list[torch.Tensor], inputs: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        p6 = self.p6(inputs[-1])
        return [*results, p6, self.p7(p6)], [*names, "p6", "p7"]


class _Detector(DenseModel):
    """What our detectors add to torchvision's: the record, and the input size they were trained at."""

    trunk_prefix = "backbone.body."
    input_options = ("min_size", "max_size")

    def input_settings(self) -> dict:
        return {"min_size": self.transform.min_size[0], "max_size": self.transform.max_size}


class MetaFormerRetinaNet(_Detector, RetinaNet):
    """RetinaNet on C3-C5 with P6/P7 from C5, as the paper's mmdet configuration."""

    task = "detection"
    class_layers = ("head.classification_head.cls_logits.",)

    def __init__(
        self,
        config: MetaFormerConfig,
        num_classes: int,
        *,
        name: str = "",
        labels: Sequence[str] | None = None,
        min_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        backbone = MetaFormerFPN(config, (1, 2, 3), InputP6P7(config.widths[-1], 256))
        super().__init__(backbone, num_classes=num_classes, min_size=min_size, max_size=max_size)
        self._describe(name, num_classes, labels)


class MetaFormerMaskRCNN(_Detector, MaskRCNN):
    """Mask R-CNN on C2-C5 with a max-pooled P6; ``num_classes`` objects plus torchvision's background class."""

    task = "instance_segmentation"
    class_layers = ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits.")

    def __init__(
        self,
        config: MetaFormerConfig,
        num_classes: int,
        *,
        name: str = "",
        labels: Sequence[str] | None = None,
        min_size: int = 800,
        max_size: int = 1333,
    ) -> None:
        backbone = MetaFormerFPN(config, (0, 1, 2, 3), LastLevelMaxPool())
        super().__init__(backbone, num_classes=num_classes + 1, min_size=min_size, max_size=max_size)
        self._describe(name, num_classes, labels)
