"""Evaluation preprocessing: decode any image, resize the short side to ``size / crop_pct``, centre crop."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF

from .imagenet import IMAGENET_MEAN, IMAGENET_STD

ImageInput = Image.Image | str | os.PathLike


class ImageLoadError(ValueError):
    """A file that is not a readable image; ``reason`` says why without repeating the path."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open ``path`` as an upright 8-bit RGB image, whatever its mode, bit depth or EXIF orientation."""
    try:
        with Image.open(path) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageLoadError(path, f"cannot read as an image ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels are composited on white, wide integer or float pixels rescaled to 0-255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64) / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.max(initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


class ImageProcessor:
    """The ImageNet evaluation transform, callable on one or many PIL images or paths.

    Resize the shorter side to ``int(size / crop_pct)`` (bicubic), crop the centre ``size x size`` (offsets
    floored, as Hugging Face's processor), scale to [0, 1] and normalise with the ImageNet mean and std.
    Returns a float tensor ``[N, 3, size, size]``.
    """

    def __init__(
        self,
        size: int = 224,
        crop_pct: float = 0.9,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        self.size = size
        self.crop_pct = crop_pct
        self.mean = tuple(mean)
        self.std = tuple(std)

    @classmethod
    def for_model(cls, name: str) -> ImageProcessor:
        """The processor a registered model was evaluated with (its ``crop_pct`` and input size)."""
        from ..models.zoo import get_spec

        config = get_spec(name).config
        return cls(size=config.image_size, crop_pct=config.crop_pct)

    def __repr__(self) -> str:
        return f"ImageProcessor(size={self.size}, crop_pct={self.crop_pct})"

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        return torch.stack([self.transform(image) for image in images])

    def transform(self, image: ImageInput) -> torch.Tensor:
        """One image (PIL or path) to a normalised ``[3, size, size]`` tensor."""
        if isinstance(image, (str, Path, os.PathLike)):
            image = load_image(image)
        else:
            image = to_rgb(image)
        image = TF.resize(image, [int(self.size / self.crop_pct)], interpolation=TF.InterpolationMode.BICUBIC)
        width, height = image.size
        left, top = (width - self.size) // 2, (height - self.size) // 2
        image = image.crop((left, top, left + self.size, top + self.size))
        tensor = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
        return TF.normalize(tensor, list(self.mean), list(self.std))
