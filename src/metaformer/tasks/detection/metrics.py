"""Measuring a detector with pycocotools: the 12 COCO figures for boxes (and masks), and AP per class.

A figure pycocotools cannot compute (no objects of that size, no annotations at all: its -1) is undefined:
``None`` here, ``null`` in JSON and ``n/a`` in tables, never 0.
"""

from __future__ import annotations

import contextlib
import io
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from ...data.guarded import Guarded, GuardedCollate
from ...data.samplers import ShardSampler
from ...engine.distributed import DistributedContext
from ..common import readable_batches
from .data import CocoDetection, collate

STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
LOGGED = STAT_NAMES[:6]  # what a training run logs each evaluation


def is_instance(model: torch.nn.Module) -> bool:
    return getattr(model, "task", "") == "instance_segmentation"


@dataclass
class Detections:
    """One process's (or, gathered, every process's) detections in COCO's result format, the ids of the images
    read, and the unreadable ones' messages."""

    results: list[dict] = field(default_factory=list)
    image_ids: list[int] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


@torch.inference_mode()
def coco_results(
    model: torch.nn.Module,
    dataset: CocoDetection,
    context: DistributedContext,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
) -> Detections:
    """This process's share of the detections. An unreadable image is reported and left out of the evaluation
    (not counted as missed objects)."""
    model.eval()
    loader = DataLoader(
        Guarded(dataset),
        batch_size,
        sampler=ShardSampler(len(dataset), context.rank, context.world_size),
        collate_fn=GuardedCollate(collate),
        num_workers=num_workers,
    )
    found = Detections()
    for images, targets in readable_batches(loader, context, found.errors, progress):
        outputs = model([image.to(context.device) for image in images])
        for output, target in zip(outputs, targets, strict=True):
            found.image_ids.append(target["image_id"])
            found.results += _to_coco(output, target["image_id"], dataset)
    return found


def _to_coco(output: dict, image_id: int, dataset: CocoDetection) -> list[dict]:
    from pycocotools import mask as mask_utils

    boxes = output["boxes"].float().cpu()
    masks = (output["masks"][:, 0] > 0.5).cpu().numpy().astype(np.uint8) if "masks" in output else None
    boxes[:, 2:] -= boxes[:, :2]
    entries = []
    for k, (box, score, label) in enumerate(
        zip(boxes.tolist(), output["scores"].tolist(), output["labels"].tolist(), strict=True)
    ):
        entry = {
            "image_id": image_id,
            "category_id": dataset.label_to_category(label),
            "bbox": [round(v, 2) for v in box],
            "score": round(score, 5),
        }
        if masks is not None:
            rle = mask_utils.encode(np.asfortranarray(masks[k]))
            rle["counts"] = rle["counts"].decode("ascii")
            entry["segmentation"] = rle
        entries.append(entry)
    return entries


def _defined(value: float) -> float | None:
    return None if value < 0 else 100 * float(value)


def coco_evaluate(
    model: torch.nn.Module,
    dataset: CocoDetection,
    context: DistributedContext,
    *,
    batch_size: int = 2,
    num_workers: int = 0,
    progress: bool = False,
) -> dict:
    """The 12 COCO figures (percent) for boxes, and ``mask_``-prefixed for Mask R-CNN, plus ``per_class`` AP, the
    number of ``detections``, the ``images`` read and the ``errors`` of those that were not; the same dict in every
    process. Figures are undefined (None) when no image could be read."""
    from pycocotools.cocoeval import COCOeval

    parts = context.gather_lists([coco_results(model, dataset, context, batch_size, num_workers, progress)])
    results = [result for part in parts for result in part.results]
    image_ids = sorted(image for part in parts for image in part.image_ids)
    metrics: dict = {"per_class": {}}
    if context.is_main:
        for kind in ("bbox", "segm") if is_instance(model) else ("bbox",):
            prefix = "" if kind == "bbox" else "mask_"
            if not image_ids:
                metrics.update({prefix + name: None for name in STAT_NAMES})
                metrics["per_class"][kind] = {name: None for name in dataset.labels}
                continue
            if not results:  # pycocotools cannot load an empty result list
                metrics.update({prefix + name: value for name, value in _nothing_found(dataset, image_ids).items()})
                metrics["per_class"][kind] = _per_class_nothing_found(dataset, image_ids)
                continue
            with contextlib.redirect_stdout(io.StringIO()):
                evaluation = COCOeval(dataset.coco, dataset.coco.loadRes(results), kind)
                evaluation.params.imgIds = image_ids
                evaluation.evaluate()
                evaluation.accumulate()
                evaluation.summarize()
            metrics.update({prefix + name: _defined(v) for name, v in zip(STAT_NAMES, evaluation.stats, strict=True)})
            metrics["per_class"][kind] = _per_class_ap(evaluation, dataset)
    metrics = context.broadcast_object(metrics)
    errors = [error for part in parts for error in part.errors]
    return {**metrics, "detections": len(results), "images": len(image_ids), "errors": errors}


AREAS = {"": (0, 1e10), "s": (0, 32**2), "m": (32**2, 96**2), "l": (96**2, 1e10)}  # pycocotools' area ranges


def _objects(dataset: CocoDetection, image_ids: list[int]) -> list[dict]:
    read = set(image_ids)
    return [a for a in dataset.coco.anns.values() if not a.get("iscrowd", 0) and a["image_id"] in read]


def _nothing_found(dataset: CocoDetection, image_ids: list[int]) -> dict[str, float | None]:
    """The 12 figures when the model found nothing: 0 where there are objects to find, undefined where not."""
    areas = [a.get("area", a["bbox"][2] * a["bbox"][3]) for a in _objects(dataset, image_ids)]
    figures = {}
    for name in STAT_NAMES:
        low, high = AREAS[name[-1] if name[-1] in "sml" else ""]
        figures[name] = 0.0 if any(low <= area <= high for area in areas) else None
    return figures


def _per_class_nothing_found(dataset: CocoDetection, image_ids: list[int]) -> dict[str, float | None]:
    present = {a["category_id"] for a in _objects(dataset, image_ids)}
    return {dataset.coco.cats[c]["name"]: (0.0 if c in present else None) for c in sorted(dataset.coco.cats)}


def _per_class_ap(evaluation, dataset: CocoDetection) -> dict[str, float | None]:  # noqa: ANN001
    """AP (IoU 0.50:0.95, all areas, 100 detections) of each category; None where it has no annotations."""
    precision = evaluation.eval["precision"]  # [IoU thresholds, recall points, categories, areas, max detections]
    per_class = {}
    for index, category in enumerate(evaluation.params.catIds):
        values = precision[:, :, index, 0, -1]
        values = values[values > -1]
        per_class[dataset.coco.cats[category]["name"]] = float(100 * values.mean()) if values.size else None
    return per_class


def format_table(metrics: dict) -> list[str]:
    """pycocotools' summary as lines of the 12 figures, ``n/a`` where undefined."""
    lines = []
    for prefix, title in (("", "bbox"), ("mask_", "segm")):
        if prefix + "AP" in metrics:
            cells = [f"{name} {_cell(metrics[prefix + name])}" for name in STAT_NAMES]
            lines.append(f"{title}: " + "  ".join(cells[:6]))
            lines.append(" " * (len(title) + 2) + "  ".join(cells[6:]))
    return lines


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"
