"""Detecting objects in photos: ``Detector``, the one predictor that ``metaformer detect`` and the service run,
and drawing its boxes (and Mask R-CNN's masks) in their class colour, captioned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..common import photo_tensor
from ..drawing import caption_font, palette, png_bytes, to_base64


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
    offset = 1 if model.task == "instance_segmentation" else 0  # Mask R-CNN's labels start at 1 (0: background)
    indices = [i - offset for i in output["labels"][keep].tolist()]
    names = _names(indices, list(model.labels))
    scores = output["scores"][keep].tolist()
    captions = [f"{n} {s:.2f}" for n, s in zip(names, scores, strict=True)]
    if captions:  # torchvision warns on an empty box list; the picture is then the photo as it is
        table, side = palette(max(indices) + 1), min(image.shape[-2:])
        colours = [tuple(table[i].tolist()) for i in indices]  # one colour per class, as in the segmentation masks
        if "masks" in output:
            image = draw_segmentation_masks(image, output["masks"][keep, 0] > 0.5, alpha=0.45, colors=colours)
        image = draw_bounding_boxes(
            image,
            output["boxes"][keep],
            captions,
            colours,
            width=max(2, side // 160),
            font=caption_font(),
            font_size=max(12, side // 28),
            label_colors="black",
            fill_labels=True,
        )
    found = [
        {"label": n, "score": round(s, 4), "box": [round(v, 1) for v in b]}
        for n, s, b in zip(names, scores, output["boxes"][keep].tolist(), strict=True)
    ]
    return image.permute(1, 2, 0).numpy(), found


def _names(indices: list[int], labels: Sequence[str]) -> list[str]:
    return [labels[i] if 0 <= i < len(labels) else str(i) for i in indices]


class Detector:
    """A detector on photos: each photo's detections above a score and their picture."""

    batching = False  # photos differ in size: one at a time
    queries = ("png", "score_threshold")

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.task = model.task
        self.labels = list(model.labels)

    def detect(self, image: torch.Tensor, threshold: float) -> tuple[np.ndarray, list[dict]]:
        """The picture of a uint8 ``[3, H, W]`` photo with its detections scoring at least ``threshold``, and
        those detections as ``{"label", "score", "box"}``. A threshold under the model's own score floor
        (torchvision's ``score_thresh``, which drops boxes before they are returned) lowers that floor to it."""
        owner = getattr(self.model, "roi_heads", self.model)  # Mask R-CNN keeps it in its box head
        floor = owner.score_thresh
        owner.score_thresh = min(floor, threshold)
        try:
            return draw(image, detect(self.model, image), self.model, threshold)
        finally:
            owner.score_thresh = floor

    def respond(
        self, image: Image.Image, max_side: int, png: bool = False, score_threshold: float | None = None
    ) -> dict:
        """What the service answers for one photo (scaled down to ``max_side`` first, boxes in the photo's
        pixels): the detections, and with ``png`` their picture as base64."""
        tensor, factor = photo_tensor(image, max_side)
        pixels, found = self.detect(tensor, 0.5 if score_threshold is None else score_threshold)
        if factor < 1.0:
            found = [{**d, "box": [round(v / factor, 1) for v in d["box"]]} for d in found]
        result: dict = {"detections": found}
        if png:
            result["png"] = to_base64(png_bytes(pixels))
        return result
