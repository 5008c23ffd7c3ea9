"""COCO-format datasets through pycocotools: boxes, polygon and RLE masks, crowd regions, images without objects."""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ...data import DatasetError, load_image
from ...files import read_json_object


def coco_split(data: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """Images folder and annotation file of ``split`` (``train2017``, ``val2017``) in the COCO / mmdet layout:
    ``annotations/instances_<split>.json`` with images in ``images/<split>/`` or ``<split>/``."""
    data = Path(data)
    annotations = data / "annotations" / f"instances_{split}.json"
    images = next((p for p in (data / "images" / split, data / split) if p.is_dir()), None)
    if not annotations.exists() or images is None:
        raise DatasetError(
            f"{data}: expected annotations/instances_{split}.json and images in images/{split}/ or {split}/"
        )
    return images, annotations


def _coco_json(annotations: Path) -> dict:
    """A COCO annotation file's content, checked to have COCO's shape before pycocotools indexes it (it asserts)."""
    dataset = read_json_object(annotations, DatasetError, "a COCO object with images")
    for key in ("images", "annotations", "categories"):
        if key in dataset and not (
            isinstance(dataset[key], list) and all(isinstance(entry, dict) for entry in dataset[key])
        ):
            raise DatasetError(f"{annotations}: {key!r} must be a list of objects")
    if "images" not in dataset:
        raise DatasetError(f"{annotations}: has no 'images' list; not a COCO annotation file")
    return dataset


class CocoDetection(Dataset):
    """Images with targets in torchvision's detection format. Labels are contiguous: 0..K-1, or 1..K when
    ``background`` is True (Mask R-CNN's class 0). Crowd annotations are left out of the targets, and boxes
    narrower or lower than one pixel are dropped, as mmdet does; a box without area is an error."""

    def __init__(self, images: Path, annotations: Path, masks: bool, background: bool, train: bool) -> None:
        from pycocotools.coco import COCO

        self.coco = COCO()
        self.coco.dataset = _coco_json(annotations)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            try:
                self.coco.createIndex()
            except (ValueError, KeyError, TypeError) as error:
                raise DatasetError(f"{annotations}: not a COCO annotation file ({error})") from error
        self.images = Path(images)
        self.ids = sorted(self.coco.imgs)
        if not self.ids:
            raise DatasetError(f"{annotations}: lists no images")
        missing = [
            self.coco.imgs[i]["file_name"]
            for i in self.ids
            if not (self.images / self.coco.imgs[i]["file_name"]).exists()
        ]
        if missing:
            raise DatasetError(
                f"{self.images}: {len(missing)} image(s) listed in {annotations.name} are missing: {missing[:5]}"
            )
        self._check_annotations(annotations)
        self.category_ids = sorted(self.coco.cats)
        self.labels = tuple(self.coco.cats[c]["name"] for c in self.category_ids)
        self.offset = 1 if background else 0
        self.masks = masks
        self.flip = v2.RandomHorizontalFlip(0.5) if train else None
        self.annotations = annotations

    def _check_annotations(self, path: Path) -> None:
        """Every annotation's box and category, once, before any training starts."""
        anns = list(self.coco.anns.values())
        for ann in anns:
            box = ann.get("bbox")
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise DatasetError(f"{path}: annotation {ann.get('id')} has no [x, y, width, height] box: {box!r}")
            if box[2] <= 0 or box[3] <= 0:
                raise DatasetError(
                    f"{path}: annotation {ann.get('id')} (image {ann.get('image_id')}) has a box of "
                    f"width {box[2]} and height {box[3]}; boxes need a positive size"
                )
            if ann.get("category_id") not in self.coco.cats:
                raise DatasetError(f"{path}: annotation {ann.get('id')} has unknown category {ann.get('category_id')}")
        if not any(not ann.get("iscrowd", 0) for ann in anns):
            warnings.warn(f"{path}: no object annotations at all; AP on it is undefined", stacklevel=3)
        self.has_objects = bool(anns)

    def __len__(self) -> int:
        return len(self.ids)

    def label_to_category(self, label: int) -> int:
        return self.category_ids[label - self.offset]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        image = TF.pil_to_tensor(load_image(self.images / info["file_name"], exif_transpose=False))
        height, width = image.shape[-2:]
        boxes, labels, masks = [], [], []
        for ann in self.coco.loadAnns(self.coco.getAnnIds(imgIds=image_id, iscrowd=False)):
            x, y, w, h = ann["bbox"]
            if w < 1 or h < 1:
                continue  # degenerate boxes, as mmdet and torchvision's references drop them
            boxes.append([x, y, x + w, y + h])
            labels.append(self.category_ids.index(ann["category_id"]) + self.offset)
            if self.masks:
                masks.append(torch.from_numpy(self.coco.annToMask(ann)))
        target = {
            "boxes": tv_tensors.BoundingBoxes(
                torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), format="XYXY", canvas_size=(height, width)
            ),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "image_id": image_id,
        }
        if self.masks:
            target["masks"] = tv_tensors.Mask(
                torch.stack(masks) if masks else torch.zeros(0, height, width, dtype=torch.uint8)
            )
        image = tv_tensors.Image(image)
        if self.flip is not None:
            image, target = self.flip(image, target)
        return TF.to_dtype(image.as_subclass(torch.Tensor), torch.float32, scale=True), target


def collate(items: list) -> tuple[list, list]:
    return [image for image, _ in items], [target for _, target in items]
