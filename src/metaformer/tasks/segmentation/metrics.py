"""Segmentation metrics from a confusion matrix, as mmseg reports them (aAcc, mIoU, mAcc, per-class IoU)."""

from __future__ import annotations

import torch

from .data import IGNORE


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
