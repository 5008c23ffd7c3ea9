"""The segmentation recipes: the PoolFormer paper's Semantic FPN (mmseg's 40k-iteration ADE20K schedule) and
UperNet's 160k-iteration one (the Swin and ConvNeXt configs the InceptionNeXt and MambaOut papers follow); a model
trains with its head's unless told."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import ConfigError, UsageError
from ...models.zoo import get_spec
from ..presets import single_preset

# The settings that differ by head (the others are shared): iterations, batch per GPU (x 8 GPUs), AdamW's lr and
# weight decay, the poly decay's power, the linear warm-up, the auxiliary head's loss weight.
HEADS = {
    "fpn": dict(
        iterations=40_000, batch_size=4, lr=2e-4, weight_decay=1e-4, power=0.9, warmup_iterations=0, aux_weight=0.0
    ),
    "upernet": dict(
        iterations=160_000, batch_size=2, lr=6e-5, weight_decay=0.01, power=1.0, warmup_iterations=1500, aux_weight=0.4
    ),
}


@dataclass(frozen=True)
class SegmentationRecipe:
    """None: the model's head's setting (``HEADS``), filled in by ``resolved``."""

    iterations: int | None = None
    batch_size: int | None = None  # per process
    lr: float | None = None
    weight_decay: float | None = None
    power: float | None = None  # poly schedule
    warmup_iterations: int | None = None  # linear, from 1e-6 of the rate (mmseg's warmup_ratio)
    aux_weight: float | None = None  # the auxiliary head's loss weight (UperNet's; Semantic FPN has none)
    scale: tuple[int, int] = (2048, 512)  # the resize scale (long, short) of training and evaluation
    crop_size: int = 512
    cat_max_ratio: float = 0.75  # a random crop may hold at most this share of one class
    num_classes: int | None = None  # None: ADE20K's 150, or the classes.txt
    ignore_index: int = 255
    schedule_iterations: int | None = None  # the iterations the poly decay spans; None: the run's

    preset = classmethod(single_preset)  # the settings the command line gave; this task has no named presets

    def resolved(self, model_name: str) -> SegmentationRecipe:
        """This recipe with every setting left to the model (None) set to its head's."""
        head = get_spec(model_name).head or "fpn"
        if head not in HEADS:
            raise ConfigError(f"{model_name} has a {head} head, which has no segmentation recipe")
        defaults = HEADS[head]
        if self.aux_weight and not defaults["aux_weight"]:
            raise ConfigError(f"aux_weight weighs an auxiliary head's loss; {model_name} has none ({head})")
        chosen = {k: defaults.get(k) if getattr(self, k) is None else getattr(self, k) for k in defaults}
        return dataclasses.replace(self, **chosen)

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
