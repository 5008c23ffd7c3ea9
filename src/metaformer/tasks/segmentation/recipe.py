"""The official Semantic FPN recipe (mmseg's 40k-iteration ADE20K schedule) and its settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import UsageError
from ..presets import single_preset


@dataclass(frozen=True)
class SegmentationRecipe:
    iterations: int = 40_000
    batch_size: int = 4  # per process; the paper: 8 GPUs x 4 = 32
    lr: float = 2e-4
    weight_decay: float = 1e-4
    power: float = 0.9  # poly schedule
    scale: tuple[int, int] = (2048, 512)  # the resize scale (long, short) of training and evaluation
    crop_size: int = 512
    cat_max_ratio: float = 0.75  # a random crop may hold at most this share of one class
    num_classes: int | None = None  # None: ADE20K's 150, or the classes.txt
    ignore_index: int = 255
    schedule_iterations: int | None = None  # the iterations the poly decay spans; None: the run's

    preset = classmethod(single_preset)  # the settings the command line gave; this task has no named presets

    def extended(self, iterations: int, respread: bool) -> tuple[SegmentationRecipe, str]:
        """This recipe for a run made longer. The poly decay ends at a learning rate of 0, so keeping its length
        would train the extra iterations at 0: a longer run must say ``respread``."""
        span = self.schedule_iterations or self.iterations
        if not respread:
            raise UsageError(
                f"the poly schedule of {span} iterations ends at a learning rate of 0, so iterations {span + 1}-"
                f"{iterations} would not change the weights: add --schedule-extend to spread it over all "
                f"{iterations} iterations (the rate rises again from where it is)"
            )
        return dataclasses.replace(self, iterations=iterations, schedule_iterations=None), (
            f"the poly decay now spans all {iterations} iterations, so the learning rate rises again from where it is"
        )
