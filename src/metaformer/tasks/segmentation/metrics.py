"""Measuring a segmentation model as mmseg does: a confusion matrix over all pixels, then aAcc, mIoU, mAcc and
per-class IoU."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from ...data.samplers import ShardSampler
from ...engine.distributed import DistributedContext
from ...errors import DatasetError, ImageLoadError
from .data import IGNORE, SegmentationFolder
from .predict import predict_classes


def confusion(prediction: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``[K, K]`` counts of (target, prediction) pairs over pixels whose target is not ignored."""
    valid = target != IGNORE
    pairs = target[valid].long() * num_classes + prediction[valid].long()
    return torch.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes).cpu()


def scores(matrix: torch.Tensor) -> dict:
    """Percentages. As mmseg: a class absent from both targets and predictions has no IoU (NaN) and is left out
    of the means; a class predicted but absent from the targets counts with IoU 0."""
    matrix = matrix.double()
    hits = matrix.diag()
    target_total, predicted_total = matrix.sum(1), matrix.sum(0)
    union = target_total + predicted_total - hits
    iou = hits / union  # NaN where the class never occurs
    accuracy = hits / target_total
    return {
        "aAcc": 100 * (hits.sum() / matrix.sum()).item(),
        "mIoU": 100 * iou.nanmean().item(),
        "mAcc": 100 * accuracy.nanmean().item(),
        "IoU": [100 * v for v in iou.tolist()],
    }


@dataclass
class SegmentationEvaluation:
    confusion: torch.Tensor
    images: int
    errors: list[str] = field(default_factory=list)

    def scores(self) -> dict:
        return scores(self.confusion) if self.images else {"aAcc": None, "mIoU": None, "mAcc": None, "IoU": []}

    def metrics(self) -> dict:
        """The figures a training run logs (without the per-class IoU)."""
        result = {k: v for k, v in self.scores().items() if k != "IoU"}
        return {**result, "images": self.images, "unreadable": len(self.errors)}


def evaluate(
    model: torch.nn.Module,
    dataset: SegmentationFolder,
    context: DistributedContext,
    *,
    scale: tuple[int, int] | None = None,
    scales: tuple[float, ...] = (1.0,),
    flip: bool = False,
    progress: bool = False,
) -> SegmentationEvaluation:
    """Whole-image inference on every image of ``dataset`` once (sharded over the processes). An unreadable image
    is reported and left out; a mask value that is no class stops with its message."""
    matrix = torch.zeros(model.num_classes, model.num_classes, dtype=torch.float64)
    errors: list[str] = []
    fatal = None
    indices = ShardSampler(len(dataset), context.rank, context.world_size)
    for index in tqdm(
        indices, desc="evaluating", unit="image", leave=False, disable=not (progress and context.is_main)
    ):
        try:
            image, mask = dataset.read(index)
        except ImageLoadError as error:
            errors.append(str(error))
            continue
        except DatasetError as error:  # a mask value that is no class: every process stops, not just this one
            fatal = error
            break
        prediction = predict_classes(model, image, scale, scales, flip).long()
        matrix += confusion(prediction, mask, model.num_classes)
    context.raise_together(fatal, "on a dataset error")
    read = context.all_reduce_sum(torch.tensor([float(len(indices) - len(errors))]))
    matrix = context.all_reduce_sum(matrix).cpu()
    return SegmentationEvaluation(matrix, int(read[0].item()), context.gather_lists(errors))
