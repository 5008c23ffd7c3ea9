"""The official Semantic FPN recipe (mmseg's 40k-iteration ADE20K schedule) and its settings."""

from __future__ import annotations

from dataclasses import dataclass

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

    preset = classmethod(single_preset)  # the settings the command line gave; this task has no named presets
