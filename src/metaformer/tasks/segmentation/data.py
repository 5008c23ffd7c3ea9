"""Segmentation datasets (ADE20K layout, or any images + masks folders) and mmseg's training transforms."""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...data import IMAGENET_MEAN, IMAGENET_STD, DatasetError, ImageLoadError, is_image_file, load_image
from ...files import file_problem

IGNORE = 255  # the ignore label inside the pipeline, whatever the dataset's own


@dataclass(frozen=True)
class SegmentationLayout:
    """Where a dataset keeps its splits and what its mask values mean."""

    train_split: str
    val_split: str
    num_classes: int
    ignore_index: int = 255
    reduce_zero_label: bool = False  # ADE20K: 0 is "other", ignored; classes 1..150 become 0..149
    classes: tuple[str, ...] | None = None


def detect_layout(
    root: str | os.PathLike,
    num_classes: int | None = None,
    ignore_index: int = 255,
    *,
    model_classes: int | None = None,
) -> SegmentationLayout:
    """ADE20K (``images/training``, 150 classes unless ``num_classes`` says otherwise, reduce_zero_label) or
    generic ``images/{train,val}`` with ``num_classes`` or a ``classes.txt`` (one name per line); failing both,
    ``model_classes`` (the classes of the model being evaluated)."""
    root = Path(root)
    if (root / "images" / "training").is_dir():
        return SegmentationLayout("training", "validation", num_classes or 150, ignore_index, True)
    if not (root / "images" / "train").is_dir():
        raise DatasetError(
            f"{root}: expected images/{{training,validation}} (ADE20K) or images/{{train,val}} with matching "
            "annotations/ folders"
        )
    classes = None
    if (root / "classes.txt").exists():
        classes = tuple(line.strip() for line in (root / "classes.txt").read_text().splitlines() if line.strip())
        if num_classes is not None and num_classes != len(classes):
            raise DatasetError(
                f"{root / 'classes.txt'} names {len(classes)} classes but --num-classes is "
                f"{num_classes}; drop one of them"
            )
        num_classes = len(classes)
    num_classes = num_classes or model_classes
    if not num_classes:
        raise DatasetError(f"{root}: give the number of classes (--num-classes) or a classes.txt")
    return SegmentationLayout("train", "val", num_classes, ignore_index, False, classes)


class SegmentationFolder(Dataset):
    """Pairs ``images/<split>/<name>.*`` with ``annotations/<split>/<name>.png``. Mask values are checked: a value
    that is neither a class nor the ignore index is an error naming the file."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str,
        layout: SegmentationLayout,
        transform=None,
        exif_transpose: bool = False,
    ) -> None:
        root = Path(root)
        images = root / "images" / split
        masks = root / "annotations" / split
        for folder in (images, masks):
            if not folder.is_dir():
                raise DatasetError(f"{folder}: no such folder")
        self.pairs = []
        missing = []
        for image in sorted(p for p in images.iterdir() if is_image_file(p)):
            mask = masks / (image.stem + ".png")
            (self.pairs.append((image, mask)) if mask.exists() else missing.append(image.name))
        if missing:
            raise DatasetError(f"{masks}: no mask for {len(missing)} image(s): {missing[:5]} (expected <name>.png)")
        if not self.pairs:
            raise DatasetError(f"{images}: no images")
        self.layout = layout
        self.transform = transform
        self.exif_transpose = exif_transpose  # masks are stored as the pixels are: a rotated image would not fit

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The uint8 ``[3, H, W]`` image and the ``[H, W]`` label map (ignore = 255)."""
        image_path, mask_path = self.pairs[index]
        image = TF.pil_to_tensor(load_image(image_path, exif_transpose=self.exif_transpose))
        problem = file_problem(mask_path)
        if problem:
            raise ImageLoadError(mask_path, f"cannot read the mask: {problem}")
        try:
            with Image.open(mask_path) as handle:
                mask = torch.from_numpy(np.array(handle).astype(np.int64))
        except (OSError, ValueError) as error:
            raise ImageLoadError(mask_path, f"cannot read the mask ({error})") from error
        if mask.ndim != 2 or mask.shape != image.shape[1:]:
            raise DatasetError(
                f"{mask_path}: mask of shape {tuple(mask.shape)} for an image of {tuple(image.shape[1:])}"
            )
        return image, self.encode(mask, mask_path)

    def encode(self, mask: torch.Tensor, path: Path) -> torch.Tensor:
        """File values to labels 0..K-1 and ``IGNORE``. With ``reduce_zero_label`` (ADE20K), as mmseg: 0 and 255
        become ignored, every other value v the class v - 1; the ignore index then applies to the reduced values."""
        layout = self.layout
        ignored = mask == layout.ignore_index
        if layout.reduce_zero_label:
            mask = mask - 1
            ignored = (mask == -1) | (mask == 254) | (mask == layout.ignore_index)
        bad = ~ignored & ((mask < 0) | (mask >= layout.num_classes))
        if bad.any():
            values = sorted(set(mask[bad].unique().tolist()))[:10]
            reduced = " (after reducing by one, as ADE20K's 0 is 'other')" if layout.reduce_zero_label else ""
            raise DatasetError(
                f"{path}: label values {values}{reduced} are neither classes (0..{layout.num_classes - 1}) nor the "
                f"ignore index {layout.ignore_index}"
            )
        return torch.where(ignored, IGNORE, mask)

    def __getitem__(self, index: int):
        image, mask = self.read(index)
        return self.transform(image, mask) if self.transform else (image, mask)


def normalize(image: torch.Tensor) -> torch.Tensor:
    return TF.normalize(TF.to_dtype(image, torch.float32, scale=True), list(IMAGENET_MEAN), list(IMAGENET_STD))


class TrainTransform:
    """mmseg's pipeline: random rescale of ``scale`` by 0.5-2.0 (keep ratio), random crop with at most
    ``cat_max_ratio`` of one class, flip, photometric distortion, padding with the ignore label."""

    def __init__(self, scale: tuple[int, int] = (2048, 512), crop: int = 512, cat_max_ratio: float = 0.75) -> None:
        self.scale, self.crop, self.cat_max_ratio = scale, crop, cat_max_ratio
        self.photometric = v2.ColorJitter(brightness=32 / 255, contrast=(0.5, 1.5), saturation=(0.5, 1.5), hue=18 / 360)

    def __call__(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ratio = random.uniform(0.5, 2.0)
        image, mask = rescale(image, mask, (self.scale[0] * ratio, self.scale[1] * ratio))
        image, mask = self.random_crop(image, mask)
        if random.random() < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        image = normalize(self.photometric(image))
        pad_h, pad_w = max(self.crop - image.shape[1], 0), max(self.crop - image.shape[2], 0)
        image = F.pad(image, (0, pad_w, 0, pad_h), value=0.0)
        mask = F.pad(mask, (0, pad_w, 0, pad_h), value=IGNORE)
        return image, mask

    def random_crop(self, image: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        height, width = mask.shape
        for _ in range(10):
            top = random.randint(0, max(height - self.crop, 0))
            left = random.randint(0, max(width - self.crop, 0))
            window = mask[top : top + self.crop, left : left + self.crop]
            counts = torch.bincount(window[window != IGNORE].flatten())
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio:
                break
        return image[:, top : top + self.crop, left : left + self.crop], window


def rescale(image: torch.Tensor, mask: torch.Tensor | None, scale: tuple[float, float]):
    """Resize keeping the aspect ratio so the long side fits ``scale[0]`` and the short side ``scale[1]``."""
    height, width = image.shape[-2:]
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    size = [max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))]
    image = TF.resize(image, size, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    if mask is not None:
        mask = TF.resize(mask[None], size, interpolation=TF.InterpolationMode.NEAREST)[0]
    return image, mask


def eval_size(height: int, width: int, scale: tuple[int, int] = (2048, 512), multiple: int = 32) -> list[int]:
    """The evaluation input size: keep-ratio resize to ``scale``, sides rounded to multiples of 32."""
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return [
        max(multiple, math.ceil(height * factor / multiple - 0.5) * multiple),
        max(multiple, math.ceil(width * factor / multiple - 0.5) * multiple),
    ]


def collate(items: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])
