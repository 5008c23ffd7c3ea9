"""Evaluation preprocessing, as Hugging Face's PoolFormer processor: resize the short side to ``size / crop_pct``
(bicubic), crop the centre, normalise; or, for the releases timm evaluates so (``crop_mode="squash"``), resize both
sides to ``size / crop_pct``, then crop."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as TF

from .data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from .data.images import load_image, to_rgb
from .models.pretrained import CROP_MODES, PretrainedCfg, default_cfg, split_tag
from .models.zoo import get_spec

INTERPOLATIONS = {"bicubic": TF.InterpolationMode.BICUBIC, "bilinear": TF.InterpolationMode.BILINEAR}

ImageInput = Image.Image | str | os.PathLike


class ImageProcessor:
    """The ImageNet evaluation transform, callable on one or many PIL images or paths.

    Resize the shorter side to ``int(size / crop_pct)`` (bicubic), crop the centre ``size x size`` (offsets
    floored, as Hugging Face's processor), scale to [0, 1] and normalise with the ImageNet mean and std. With
    ``crop_mode="squash"`` both sides are resized to ``int(size / crop_pct)``, the aspect ratio given up (timm's
    squash mode, which a release fine-tuned on squashed images is evaluated with).
    Returns a float tensor ``[N, 3, size, size]``. ``exif_transpose`` turns photos upright by their EXIF
    orientation, as ``predict`` does; ``eval`` turns it off, as the ImageNet protocol reads the stored pixels.
    """

    def __init__(
        self,
        size: int = 224,
        crop_pct: float = 0.9,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        exif_transpose: bool = True,
        interpolation: str = "bicubic",
        crop_mode: str = "center",
    ) -> None:
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode must be one of {CROP_MODES}, got {crop_mode!r}")
        if not 0 < crop_pct <= 1:
            raise ValueError(f"crop_pct must be in (0, 1], got {crop_pct}")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {list(INTERPOLATIONS)}, got {interpolation!r}")
        self.size = size
        self.crop_pct = crop_pct
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.exif_transpose = exif_transpose
        self.interpolation = interpolation
        self.crop_mode = crop_mode

    @classmethod
    def from_record(cls, record: PretrainedCfg, *, exif_transpose: bool = True) -> ImageProcessor:
        """The processor of a weights record (``model.pretrained_cfg``): its size, crop, interpolation, mean and
        std."""
        return cls(
            size=record.image_size,
            crop_pct=record.crop_pct,
            mean=record.mean,
            std=record.std,
            exif_transpose=exif_transpose,
            interpolation=record.interpolation,
            crop_mode=record.crop_mode,
        )

    @classmethod
    def for_model(cls, model: str | torch.nn.Module, *, exif_transpose: bool = True) -> ImageProcessor:
        """The processor a model is evaluated with: a registered name (a tagged release at its own size and crop),
        or a model (its ``pretrained_cfg``)."""
        if isinstance(model, str):
            arch, release = split_tag(model)
            record = release if release is not None else default_cfg(get_spec(arch).name)
            return cls.from_record(record, exif_transpose=exif_transpose)
        return cls.from_record(model.pretrained_cfg, exif_transpose=exif_transpose)

    def __repr__(self) -> str:
        return (
            f"ImageProcessor(size={self.size}, crop_pct={self.crop_pct}, interpolation={self.interpolation!r}, "
            f"crop_mode={self.crop_mode!r}, exif_transpose={self.exif_transpose})"
        )

    def __call__(self, images: ImageInput | Sequence[ImageInput]) -> torch.Tensor:
        if isinstance(images, (Image.Image, str, os.PathLike)):
            images = [images]
        return torch.stack([self.transform(image) for image in images])

    def transform(self, image: ImageInput) -> torch.Tensor:
        """One image (PIL or path) to a normalised ``[3, size, size]`` tensor."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image, exif_transpose=self.exif_transpose)
        else:
            image = to_rgb(image)
        side = self.resized_side
        size = [side, side] if self.crop_mode == "squash" else [side]
        image = TF.resize(image, size, interpolation=INTERPOLATIONS[self.interpolation])
        left, top = self._crop_offsets(*image.size)
        image = image.crop((left, top, left + self.size, top + self.size))
        tensor = TF.to_dtype(TF.pil_to_tensor(image), torch.float32, scale=True)
        return TF.normalize(tensor, list(self.mean), list(self.std))

    @property
    def resized_side(self) -> int:
        """The short side the image is resized to before the crop."""
        return int(self.size / self.crop_pct)

    def _crop_offsets(self, width: int, height: int) -> tuple[int, int]:
        return (width - self.size) // 2, (height - self.size) // 2

    def crop_box(self, width: int, height: int) -> tuple[float, float, float, float]:
        """Where the crop the model sees lies in a ``width x height`` image: (left, top, right, bottom) in its
        pixels."""
        short = self.resized_side
        # torchvision's resize to one side: the other side scaled and truncated
        resized = (short, int(short * height / width)) if width <= height else (int(short * width / height), short)
        if self.crop_mode == "squash":
            resized = (short, short)
        left, top = self._crop_offsets(*resized)
        x_scale, y_scale = width / resized[0], height / resized[1]
        return (left * x_scale, top * y_scale, (left + self.size) * x_scale, (top + self.size) * y_scale)

    def to_uint8(self, pixels: torch.Tensor) -> torch.Tensor:
        """A normalised ``[3, H, W]`` tensor back to the uint8 picture it came from (the crop the model sees)."""
        mean = torch.tensor(self.mean, device=pixels.device).view(3, 1, 1)
        std = torch.tensor(self.std, device=pixels.device).view(3, 1, 1)
        return (pixels.float() * std + mean).mul(255).round().clamp(0, 255).to(torch.uint8).cpu()
