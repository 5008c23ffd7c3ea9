"""The official 1x detection schedule (mmdet's configs of the paper) and its settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..presets import single_preset


@dataclass(frozen=True)
class DetectionRecipe:
    epochs: int = 12
    batch_size: int = 2  # per process; the paper: 8 GPUs x 2 = 16
    lr: float | None = None  # AdamW: 1e-4 for RetinaNet, 2e-4 for Mask R-CNN
    weight_decay: float = 1e-4
    warmup_iters: int = 500
    warmup_ratio: float = 0.001
    decay_epochs: tuple[int, ...] | None = None  # x0.1 at each; None: 8 and 11 of 12, scaled to ``epochs``
    min_size: int = 800  # resize to 1333x800 keeping the ratio
    max_size: int = 1333
    train_split: str = "train2017"
    val_split: str = "val2017"

    preset = classmethod(single_preset)  # the settings the command line gave; this task has no named presets

    def resolved_decay_epochs(self) -> tuple[int, ...]:
        """The 1x schedule's decays (epochs 8 and 11 of 12) at the same fractions of a longer or shorter run; 24
        epochs gives mmdet's 2x schedule (16, 22)."""
        if self.decay_epochs is not None:
            return self.decay_epochs
        return tuple(max(1, round(epoch * self.epochs / 12)) for epoch in (8, 11))

    def extended(self, epochs: int, respread: bool) -> tuple[DetectionRecipe, str]:
        """This recipe for a run made longer. The decays stay where they were (the extra epochs train at the last
        rate) unless ``respread``: then they move to the same fractions of the longer run."""
        decays = self.resolved_decay_epochs()
        if respread:
            moved = tuple(max(1, round(epoch * epochs / self.epochs)) for epoch in decays)
            return dataclasses.replace(self, epochs=epochs, decay_epochs=moved), (
                f"the learning rate's x0.1 steps move from epochs {_listed(decays)} to {_listed(moved)}"
            )
        return dataclasses.replace(self, epochs=epochs, decay_epochs=decays), (
            f"the learning rate's x0.1 steps stay at epochs {_listed(decays)}, so epochs {self.epochs + 1}-{epochs} "
            f"train at the last rate; pass --schedule-extend to move them to the same fractions of {epochs} epochs"
        )

    def resolved_lr(self, task: str) -> float:
        return self.lr if self.lr is not None else (2e-4 if task == "instance_segmentation" else 1e-4)


def _listed(epochs: tuple[int, ...]) -> str:
    return " and ".join(map(str, epochs))
