"""Grad-CAM (Selvaraju et al., 2017): where in the image a classifier's evidence for a class lies.

Written here rather than taken from the ``grad-cam`` package: it is a dozen lines of tensor code, the package pulls
in OpenCV, scikit-learn and SciPy and works in NumPy on the CPU, and this version stays on the model's device and
takes a batch. It computes what the package's ``GradCAM(model, target_layers=[layer])`` computes (a test holds the
two together): each channel of the layer's output weighted by its mean gradient of the target logit, summed,
rectified, scaled to [0, 1] per image, resized bilinearly to the input and scaled to [0, 1] again.

``cam_on_photo`` draws a map over the whole original photo, where the crop the model saw lies, at a size a person
can read (the model's crop of a CIFAR image is 32 pixels wide).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .errors import ConfigError
from .fast import is_fused
from .models.metaformer import MetaFormer

_EPS = 1e-7  # the package's guard against an all-zero map
MIN_GRID = 2  # a 1x1 map has one weight and one value: every pixel gets the same heat
SHORT_SIDE = 384  # the pictures' smallest short side: a 32-pixel photo is drawn 12 times larger
LONG_SIDE = 1024  # ... and their largest long side: a 4000x3000 photo is drawn at 1024x768


def grad_cam(
    model: nn.Module,
    pixel_values: torch.Tensor,
    targets: Sequence[int] | torch.Tensor | None = None,
    layer: nn.Module | None = None,
) -> torch.Tensor:
    """Grad-CAM maps ``[N, H, W]`` in [0, 1] for a batch of preprocessed images ``[N, 3, H, W]``.

    ``targets``: a class index per image (default: each image's top class). ``layer``: the module whose output is
    explained (default: ``cam_stage``, the last stage, whose 7x7 map at 224 is the coarsest that still has a
    shape; on small images the last stage with a map of at least 2x2). Needs gradients, so it cannot run under
    ``torch.inference_mode()`` or on a ``fuse()``d model.
    """
    if is_fused(model):
        raise ConfigError("Grad-CAM needs gradients, and a fused model is inference-only: pass the unfused model")
    if not isinstance(model, MetaFormer) or model.num_classes == 0:
        raise ConfigError("Grad-CAM explains a classifier's logits: pass a MetaFormer with a classification head")
    if torch.is_inference_mode_enabled():
        raise ConfigError("Grad-CAM needs gradients: call it outside torch.inference_mode()")
    layer = layer if layer is not None else model.stages[cam_stage(model, pixel_values.shape[-2:])]
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, inputs: object, output: torch.Tensor) -> torch.Tensor:
        # A fresh leaf, so the gradient reaches it whether or not the model's parameters require grad.
        leaf = output.detach().requires_grad_()
        captured.append(leaf)
        return leaf

    handle = layer.register_forward_hook(capture)
    try:
        with torch.enable_grad():
            logits = model(pixel_values)
    finally:
        handle.remove()
    if len(captured) != 1:
        raise ConfigError(f"the layer given ran {len(captured)} times in one forward pass; name a layer that runs once")
    chosen = logits.argmax(-1) if targets is None else torch.as_tensor(targets, device=logits.device).long()
    if chosen.shape != (logits.shape[0],):
        raise ConfigError(f"targets: one class index per image ({logits.shape[0]}), got shape {tuple(chosen.shape)}")
    if not bool(((chosen >= 0) & (chosen < logits.shape[1])).all()):
        raise ConfigError(f"targets: class indices must be in 0..{logits.shape[1] - 1}, got {chosen.tolist()}")
    activations = captured[0]
    if activations.shape[-2] * activations.shape[-1] == 1:
        warnings.warn(
            "the explained layer's map is 1x1 at this image size, so the heat map is flat: explain an earlier stage",
            stacklevel=2,
        )
    (gradients,) = torch.autograd.grad(logits.gather(1, chosen[:, None]).sum(), activations)
    weights = gradients.float().mean((-2, -1), keepdim=True)
    cam = (weights * activations.detach().float()).sum(1).clamp(min=0)
    cam = F.interpolate(_unit_range(cam)[:, None], size=pixel_values.shape[-2:], mode="bilinear", align_corners=False)
    return _unit_range(cam[:, 0])


def cam_stage(model: MetaFormer, size: Sequence[int]) -> int:
    """The stage Grad-CAM explains by default for images of ``size`` (H, W): the last one, unless its map is under
    2x2 there (a 32-pixel image leaves the last stage 1x1), then the last stage whose map is at least 2x2."""
    grids = model.config.stage_grids(min(size))
    fitting = [i for i, (height, width) in enumerate(grids) if min(height, width) >= MIN_GRID]
    return fitting[-1] if fitting else len(grids) - 1


def _unit_range(maps: torch.Tensor) -> torch.Tensor:
    low = maps.amin((-2, -1), keepdim=True)
    shifted = maps - low
    return shifted / (_EPS + shifted.amax((-2, -1), keepdim=True))


def cam_on_photo(
    photo: Image.Image, cam: torch.Tensor, box: tuple[float, float, float, float], alpha: float = 0.5
) -> np.ndarray:
    """The heat map ``cam`` of the crop ``box`` (left, top, right, bottom in the photo's pixels, as
    ``ImageProcessor.crop_box`` gives it) over the whole photo, ``[H, W, 3]`` uint8. The photo is drawn with a
    short side of at least 384 and a long side of at most 1024 pixels; what lies outside the crop, which the model
    did not see, is dimmed."""
    width, height = photo.size
    scale = min(max(1.0, SHORT_SIDE / min(width, height)), LONG_SIDE / max(width, height))
    shown = photo.convert("RGB").resize(
        (max(1, round(width * scale)), max(1, round(height * scale))),
        Image.Resampling.BICUBIC if scale > 1 else Image.Resampling.LANCZOS,
    )
    pixels = np.asarray(shown)
    left, top, right, bottom = (round(edge * scale) for edge in box)
    left, top = max(left, 0), max(top, 0)
    right, bottom = min(max(right, left + 1), pixels.shape[1]), min(max(bottom, top + 1), pixels.shape[0])
    picture = (pixels // 2 + 40).astype(np.uint8)  # dimmed: the model did not see these pixels
    crop = torch.from_numpy(np.ascontiguousarray(pixels[top:bottom, left:right])).permute(2, 0, 1)
    picture[top:bottom, left:right] = cam_overlay(crop, cam, alpha)
    return picture


def cam_overlay(image: torch.Tensor, cam: torch.Tensor, alpha: float = 0.5) -> np.ndarray:
    """A heat map (jet: blue cold, red hot) of ``cam`` ``[h, w]`` resized to the uint8 image ``[3, H, W]`` and
    blended over it; ``[H, W, 3]`` uint8."""
    from matplotlib import colormaps

    height, width = image.shape[-2:]
    resized = F.interpolate(
        cam.detach().float().cpu()[None, None], size=(height, width), mode="bilinear", align_corners=False
    )[0, 0].clamp(0, 1)
    heat = colormaps["jet"](resized.numpy())[..., :3] * 255
    photo = image.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    return (alpha * heat + (1 - alpha) * photo).round().clip(0, 255).astype(np.uint8)
