"""Image-folder datasets (``root/<class>/**/image``), the mapping of their classes to a model's outputs, and the
paper's training augmentation."""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2

from ...data import IMAGENET_MEAN, IMAGENET_STD, DatasetError, imagenet_classes, is_image_file, load_image
from ...data.hf import HFImages, hf_stream, is_hf
from ...data.streams import is_streamed
from ...data.wds import is_wds, wds_images
from ...processor import ImageProcessor
from .recipe import Recipe

WNID = re.compile(r"^n\d{8}$")


class ImageFolder(Dataset):
    """Images under ``root/<class>/`` (searched recursively), as ``(image, class index)``. An unreadable image
    raises ``ImageLoadError`` when read: training skips and counts it, evaluation reports it."""

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable,
        classes: Sequence[str] | None = None,
        *,
        exif_transpose: bool = True,
    ) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: no such folder")
        found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not found:
            raise DatasetError(f"{self.root} has no class folders; expected {self.root}/<class>/<image files>")
        self.classes = list(classes) if classes is not None else found
        strangers = sorted(set(found) - set(self.classes))
        if strangers:
            raise DatasetError(
                f"{self.root} has class folders that are not among the training classes: {strangers[:10]}"
            )
        index = {name: i for i, name in enumerate(self.classes)}
        self.samples = [
            (path, index[name])
            for name in found
            for path in sorted((self.root / name).rglob("*"))
            if is_image_file(path)
        ]
        if not self.samples:
            raise DatasetError(f"{self.root}: its class folders hold no image files ({', '.join(found[:5])} ...)")
        empty = sorted(set(self.classes) - {self.classes[label] for _, label in self.samples})
        if empty:
            warnings.warn(f"{self.root}: no images for class(es) {empty[:10]}", stacklevel=2)
        self.transform = transform
        self.exif_transpose = exif_transpose

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        return self.transform(load_image(path, exif_transpose=self.exif_transpose)), label


def train_val_folders(data: str | os.PathLike, train: str = "train", val: str = "val") -> tuple[Path, Path]:
    data = Path(data)
    folders = data / train, data / val
    missing = [str(p) for p in folders if not p.is_dir()]
    if missing:
        raise DatasetError(
            f"{data}: expected the ImageNet layout {train}/<class>/* and {val}/<class>/*; missing {missing}"
        )
    return folders


def image_dataset(
    data: str,
    split: str | None,
    transform: Callable,
    classes: Sequence[str] | None = None,
    *,
    validation: bool = False,
    columns: tuple[str | None, str | None] = (None, None),
    exif_transpose: bool = True,
    streaming: bool = False,
) -> Dataset:
    """The classification samples of one split of ``data``: an image folder ``data/<split>`` (train, val), a split
    of a Hugging Face dataset ``hf:...`` (train, validation) with its image and label columns, map-style or
    streamed, or WebDataset shards ``wds:...`` (train, validation), streamed."""
    if streaming and not is_hf(data):
        raise DatasetError(f"--streaming reads an hf: dataset as a stream; {data} is not one (wds: always streams)")
    if is_hf(data):
        default = "validation" if validation else "train"
        image, label = columns
        reader = hf_stream if streaming else HFImages
        dataset = reader(data, split or default, transform, classes, image_column=image or "image",
                         label_column=label or "label")  # fmt: skip
    elif any(columns):
        raise DatasetError(f"--image-column and --label-column name an hf: dataset's columns; {data} is not one")
    elif is_wds(data):
        dataset = wds_images(data, split or ("validation" if validation else "train"), transform, classes)
    else:
        folder = Path(data) / (split or ("val" if validation else "train"))
        return ImageFolder(folder, transform, classes, exif_transpose=exif_transpose)
    if is_streamed(dataset):
        dataset.exif_transpose = exif_transpose
    return dataset


def eval_folder(data: str | os.PathLike) -> Path:
    """``DATA/val`` if there is one, else ``DATA`` itself."""
    data = Path(data)
    return data / "val" if (data / "val").is_dir() else data


def class_to_output(classes: Sequence[str], labels: Sequence[str] | None, num_classes: int) -> list[int]:
    """The model output that stands for each dataset class: by name for a model with class names, by WordNet id
    for an ImageNet-1k model, else in order."""
    if labels:
        missing = [c for c in classes if c not in labels]
        if missing:
            raise DatasetError(f"the model's classes do not include the dataset's {missing[:10]}")
        return [list(labels).index(c) for c in classes]
    wnids = [w for w, _ in imagenet_classes()]
    if num_classes == 1000 and all(WNID.match(c) for c in classes):
        unknown = [c for c in classes if c not in wnids]
        if unknown:
            raise DatasetError(f"folders {unknown[:10]} are not ImageNet-1k WordNet ids")
        return [wnids.index(c) for c in classes]
    if len(classes) != num_classes:
        raise DatasetError(f"the dataset has {len(classes)} classes but the model has {num_classes} outputs")
    return list(range(len(classes)))


class NoisyRandAugment(v2.Transform):
    """RandAugment whose magnitude is drawn per image from N(magnitude, std) on timm's 0-10 scale, as the official
    recipe's ``rand-m9-mstd0.5``. torchvision's RandAugment does the operations; 11 bins make its levels timm's."""

    def __init__(self, magnitude: float = 9, std: float = 0.5, num_ops: int = 2) -> None:
        super().__init__()
        self.magnitude, self.std = magnitude, std
        self.augment = v2.RandAugment(
            num_ops=num_ops,
            magnitude=int(magnitude),
            num_magnitude_bins=11,
            interpolation=v2.InterpolationMode.BILINEAR,
            fill=(124, 116, 104),
        )

    def forward(self, *inputs: object) -> object:
        level = self.magnitude + self.std * torch.randn(()).item() if self.std > 0 else self.magnitude
        self.augment.magnitude = int(round(min(max(level, 0.0), 10.0)))
        return self.augment(*inputs)


def train_transform(recipe: Recipe, crop_pct: float = 0.9) -> Callable:
    if not recipe.augment:
        return ImageProcessor(size=recipe.image_size, crop_pct=crop_pct).transform
    crops = [
        v2.RandomResizedCrop(recipe.image_size, scale=recipe.crop_scale, interpolation=mode, antialias=True)
        for mode in (v2.InterpolationMode.BILINEAR, v2.InterpolationMode.BICUBIC)
    ]
    ops: list = [v2.RandomChoice(crops), v2.RandomHorizontalFlip(recipe.hflip)]
    if recipe.randaugment_magnitude:
        ops.append(NoisyRandAugment(recipe.randaugment_magnitude, recipe.randaugment_std))
    ops += [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if recipe.random_erasing:
        ops.append(v2.RandomErasing(recipe.random_erasing, value="random"))
    return v2.Compose(ops)


def batch_mixer(num_classes: int, recipe: Recipe) -> Callable | None:
    """MixUp or CutMix on each batch (chosen with ``mix_switch_prob``), or None when both are off."""
    choices, weights = [], []
    if recipe.mixup > 0:
        choices.append(v2.MixUp(alpha=recipe.mixup, num_classes=num_classes))
        weights.append(1 - recipe.mix_switch_prob if recipe.cutmix > 0 else 1.0)
    if recipe.cutmix > 0:
        choices.append(v2.CutMix(alpha=recipe.cutmix, num_classes=num_classes))
        weights.append(recipe.mix_switch_prob if recipe.mixup > 0 else 1.0)
    return v2.RandomChoice(choices, p=weights) if choices else None
