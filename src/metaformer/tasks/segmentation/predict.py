"""Segmenting photos: ``Segmenter``, the one predictor that ``metaformer segment`` and the service run, on
whole-image inference at the model's test scale (with optional multi-scale and flip)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from ..common import photo_tensor
from ..drawing import palette, png_bytes, to_base64, with_legend
from .data import eval_size, normalize

TTA_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
LEGEND_CLASSES = 12  # the overlay's legend names the classes covering most of the photo, up to this many


STRIP_ELEMENTS = 2**24  # class scores held at once while upsampling: 64 MB of float32, whatever the photo's size


@torch.inference_mode()
def predict_classes(
    model: torch.nn.Module,
    image: torch.Tensor,
    scale: tuple[int, int] | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """The class of every pixel ``[H, W]`` of a uint8 ``[3, H, W]`` image: whole-image inference after resizing to
    ``scale`` (default: the model's test scale; sides multiples of 32), the softmax averaged over ``scales`` and
    horizontal flips when asked, as mmseg's protocol: scores upsampled bilinearly to the image, then the argmax.

    The upsampling runs a strip of rows at a time, so memory follows the model's scale and not the photo's (a
    12000x12000 photo would need 86 GB of full-size scores at once)."""
    model.eval()
    scale = scale or model.test_scale
    height, width = image.shape[-2:]
    parameter = next(model.parameters())
    maps = []
    for factor in scales:
        size = eval_size(height, width, (int(scale[0] * factor), int(scale[1] * factor)))
        x = normalize(TF.resize(image, size, antialias=True))[None].to(parameter.device, parameter.dtype)
        for flipped in (False, True) if flip else (False,):
            logits = model(x.flip(-1) if flipped else x).float()
            maps.append(logits.flip(-1) if flipped else logits)
    classes = maps[0].shape[1]
    prediction = torch.empty(height, width, dtype=torch.uint8 if classes <= 256 else torch.int64)
    rows = max(1, STRIP_ELEMENTS // (classes * width))
    # Source coordinates of bilinear resizing without corner alignment, as grid_sample's normalised ones: the
    # same interpolation as F.interpolate(..., align_corners=False), edges clamped as it clamps them.
    columns = (torch.arange(width, device=parameter.device) + 0.5) * (2 / width) - 1
    for top in range(0, height, rows):
        bottom = min(height, top + rows)
        lines = (torch.arange(top, bottom, device=parameter.device) + 0.5) * (2 / height) - 1
        grid = torch.stack(torch.meshgrid(lines, columns, indexing="ij")[::-1], dim=-1)[None]
        total = None
        for logits in maps:
            scores = F.grid_sample(logits, grid, mode="bilinear", padding_mode="border", align_corners=False)[0]
            # One map: the softmax keeps each pixel's order of classes, so the argmax of the scores is the same.
            probs = scores.softmax(0) if len(maps) > 1 else scores
            total = probs if total is None else total + probs
        prediction[top:bottom] = total.argmax(0).to(prediction.dtype).cpu()
    return prediction


def colour_pictures(image: torch.Tensor, prediction: torch.Tensor, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """The mask (a colour per class) and the overlay (the mask blended half over the uint8 photo), ``[H, W, 3]``."""
    colours = palette(num_classes)[prediction.numpy()]
    photo = image.permute(1, 2, 0).numpy()
    return colours, ((photo.astype(np.uint16) + colours) // 2).astype(np.uint8)  # integers: half a float's memory


def top_classes(prediction: torch.Tensor, num_classes: int, top: int) -> list[tuple[int, float]]:
    """The ``top`` classes covering most pixels, as (index, share), most first; classes absent are left out."""
    counts = torch.bincount(prediction.flatten(), minlength=num_classes).double() / prediction.numel()
    values = counts.topk(min(top, num_classes))
    return [(i, round(v, 4)) for v, i in zip(values.values.tolist(), values.indices.tolist(), strict=True) if v > 0]


def class_shares(prediction: torch.Tensor, names: list[str], top: int = 5) -> dict[str, float]:
    """The ``top`` classes covering most pixels, with their shares."""
    return {names[i]: share for i, share in top_classes(prediction, len(names), top)}


def _percent(share: float) -> str:
    return f"{share:.0%}" if share >= 0.01 else "<1%"


class Segmenter:
    """A segmentation model on photos: each photo's class map, the classes covering most of it, and its mask and
    overlay pictures."""

    task = "segmentation"
    batching = False  # photos differ in size: one at a time
    queries = ("png",)

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model.eval()
        self.labels = list(model.labels)

    def segment(self, image: torch.Tensor, tta: bool = False) -> tuple[torch.Tensor, dict]:
        """The class of every pixel of a uint8 ``[3, H, W]`` photo, and ``{"classes": shares}`` of the top ones."""
        prediction = predict_classes(self.model, image, scales=TTA_SCALES if tta else (1.0,), flip=tta)
        return prediction, {"classes": class_shares(prediction, self.labels)}

    def pictures(self, image: torch.Tensor, prediction: torch.Tensor) -> tuple[bytes, bytes]:
        """The mask and overlay PNGs (``colour_pictures``); the overlay with a legend of the classes that cover the
        most of it (the mask stays a colour per class and nothing else)."""
        mask, overlay = colour_pictures(image, prediction, self.model.num_classes)
        colours = palette(self.model.num_classes)
        shown = top_classes(prediction, self.model.num_classes, LEGEND_CLASSES)
        entries = [(f"{self.labels[i]} {_percent(share)}", colours[i]) for i, share in shown]
        return png_bytes(mask), png_bytes(with_legend(overlay, entries))

    def respond(self, image: Image.Image, max_side: int, png: bool = False) -> dict:
        """What the service answers for one photo (scaled down to ``max_side`` first): the class shares, and with
        ``png`` the overlay as base64."""
        tensor, _ = photo_tensor(image, max_side)
        prediction, result = self.segment(tensor)
        if png:
            result["png"] = to_base64(self.pictures(tensor, prediction)[1])
        return result
