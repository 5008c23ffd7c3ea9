"""Learning-rate schedules as pure functions of the training position, so resuming needs no scheduler state."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence


def cosine(epoch: float, base_lr: float, epochs: float, warmup_epochs: float, warmup_lr: float, min_lr: float) -> float:
    """Linear warm-up from ``warmup_lr`` to ``base_lr``, then cosine decay to ``min_lr`` at ``epochs``."""
    if epoch < warmup_epochs:
        return warmup_lr + (base_lr - warmup_lr) * epoch / warmup_epochs
    progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-9)
    return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def poly(iteration: int, base_lr: float, iterations: int, power: float, min_lr: float = 0.0) -> float:
    """mmseg's polynomial decay: ``base_lr * (1 - iteration / iterations) ** power``."""
    return max(base_lr * max(1 - iteration / iterations, 0.0) ** power, min_lr)


def warmed_up(rate: float, iteration: int, warmup_iters: int, warmup_ratio: float = 1e-6) -> float:
    """mmcv's linear warm-up over a schedule's rate: from ``warmup_ratio`` of it to all of it in ``warmup_iters``."""
    if iteration >= warmup_iters:
        return rate
    return rate * (1 - (1 - iteration / warmup_iters) * (1 - warmup_ratio))


def steps_with_warmup(
    iteration: int, epoch: float, base_lr: float, decay_epochs: Sequence[int], warmup_iters: int, warmup_ratio: float
) -> float:
    """mmdet's step schedule: x0.1 at each of ``decay_epochs``, after a linear warm-up over ``warmup_iters``."""
    factor = 0.1 ** bisect.bisect_right(list(decay_epochs), epoch)
    if iteration < warmup_iters:
        factor *= warmup_ratio + (1 - warmup_ratio) * iteration / warmup_iters
    return base_lr * factor
