"""Detecting objects in images and drawing them: boxes (and Mask R-CNN's masks) in their class colour, captioned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from ..drawing import caption_font, palette
from .metrics import is_instance


@torch.inference_mode()
def detect(model: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's boxes, labels, scores (and masks) for one uint8 ``[3, H, W]`` image, on the CPU."""
    model.eval()
    parameter = next(model.parameters())
    result = model([TF.to_dtype(image, torch.float32, scale=True).to(parameter.device)])[0]
    return {k: v.cpu() for k, v in result.items()}


def draw(image: torch.Tensor, output: dict, model: torch.nn.Module, threshold: float) -> tuple[np.ndarray, list[dict]]:
    """Boxes (and masks) scoring at least ``threshold`` drawn with their labels on the uint8 image (``[H, W, 3]``),
    and those detections as ``{"label", "score", "box"}``."""
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    keep = output["scores"] >= threshold
    offset = 1 if is_instance(model) else 0  # Mask R-CNN's labels start at 1 (0: background)
    indices = [i - offset for i in output["labels"][keep].tolist()]
    names = _names(indices, model.labels)
    scores = output["scores"][keep].tolist()
    captions = [f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)]
    if captions:  # torchvision warns on an empty box list; the picture is then the photo as it is
        table, side = palette(max(indices) + 1), min(image.shape[-2:])
        colours = [tuple(table[i].tolist()) for i in indices]  # one colour per class, as in the segmentation masks
        if "masks" in output:
            image = draw_segmentation_masks(image, output["masks"][keep, 0] > 0.5, alpha=0.45, colors=colours)
        image = draw_bounding_boxes(image, output["boxes"][keep], captions, colours,
                                    width=max(2, side // 160), font=caption_font(), font_size=max(12, side // 28),
                                    label_colors="black", fill_labels=True)  # fmt: skip
    found = [{"label": n, "score": round(s, 4), "box": [round(v, 1) for v in b]}
             for n, s, b in zip(names, scores, output["boxes"][keep].tolist(), strict=True)]  # fmt: skip
    return image.permute(1, 2, 0).numpy(), found


def _names(indices: list[int], labels: Sequence[str] | None) -> list[str]:
    return [labels[i] if labels and 0 <= i < len(labels) else str(i) for i in indices]
