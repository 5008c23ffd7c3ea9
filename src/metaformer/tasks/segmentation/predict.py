"""Segmenting images: whole-image inference at the model's test scale (with optional multi-scale and flip), and
the colour mask and overlay pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms.v2 import functional as TF

from ...files import atomic_write
from ..drawing import palette, png_bytes
from .data import eval_size, normalize

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)


@torch.inference_mode()
def predict_probs(model: torch.nn.Module, image: torch.Tensor, scale: tuple[int, int] | None = None,
                  scales: tuple[float, ...] = (1.0,), flip: bool = False) -> torch.Tensor:  # fmt: skip
    """Class probabilities ``[K, H, W]`` of a uint8 ``[3, H, W]`` image: whole-image inference after resizing to
    ``scale`` (default: the model's test scale; sides multiples of 32), averaged over ``scales`` and horizontal
    flips when asked."""
    model.eval()
    scale = scale or model.test_scale
    height, width = image.shape[-2:]
    parameter = next(model.parameters())
    total = None
    for factor in scales:
        size = eval_size(height, width, (int(scale[0] * factor), int(scale[1] * factor)))
        x = normalize(TF.resize(image, size, antialias=True))[None].to(parameter.device, parameter.dtype)
        for flipped in (False, True) if flip else (False,):
            logits = model(x.flip(-1) if flipped else x).float()
            logits = logits.flip(-1) if flipped else logits
            probs = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False).softmax(1)[0]
            total = probs if total is None else total + probs
    return total


def colour_pictures(image: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask (a colour per class) and the overlay (the mask blended half over the uint8 photo), ``[H, W, 3]``."""
    colours = palette(num_classes)[prediction.numpy()]
    photo = image.permute(1, 2, 0).numpy().astype(np.float32)
    return colours, (0.5 * photo + 0.5 * colours).astype(np.uint8)


def write_pictures(image: torch.Tensor, prediction: torch.Tensor, num_classes: int, stem: Path) -> tuple[Path, Path]:
    """``<stem>_mask.png`` and ``<stem>_overlay.png`` (see ``colour_pictures``)."""
    mask, overlay = colour_pictures(image, prediction, num_classes)
    mask_path, overlay_path = stem.with_name(stem.name + "_mask.png"), stem.with_name(stem.name + "_overlay.png")
    atomic_write(mask_path, png_bytes(mask))
    atomic_write(overlay_path, png_bytes(overlay))
    return mask_path, overlay_path


def class_shares(prediction: torch.Tensor, names: list[str], top: int = 5) -> dict[str, float]:
    """The ``top`` classes covering most pixels, with their shares."""
    counts = torch.bincount(prediction.flatten(), minlength=len(names)).double() / prediction.numel()
    values = counts.topk(min(top, len(names)))
    return {
        names[i]: round(v, 4) for v, i in zip(values.values.tolist(), values.indices.tolist(), strict=True) if v > 0
    }
