"""Training Semantic FPN (40k iterations) and UperNet (160k) with mmseg's augmentation, AdamW and poly decay."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn

from ...api import create_model
from ...engine.distributed import DistributedContext
from ...engine.schedules import poly, warmed_up
from ...engine.task import RunSettings
from ...errors import DatasetError
from ..common import LibraryTask, decay_groups
from .data import IGNORE, SegmentationFolder, SegmentationLayout, TrainTransform, collate, detect_layout
from .metrics import evaluate
from .recipe import SegmentationRecipe


class SegmentationTask(LibraryTask):
    unit = "iteration"
    best_metric = "mIoU"
    default_eval_every = 4000  # the official configs evaluate and checkpoint every 4000 iterations
    recipe: SegmentationRecipe

    def __init__(self, settings: RunSettings, recipe: SegmentationRecipe, context: DistributedContext) -> None:
        super().__init__(settings, recipe.resolved(settings.model), context)  # config.json records what was used

    @functools.cached_property
    def layout(self) -> SegmentationLayout:
        layout = detect_layout(self.settings.data, self.recipe.num_classes, self.recipe.ignore_index)
        if layout.num_classes < 2:
            raise DatasetError(f"{self.settings.data}: {layout.num_classes} class; segmentation needs at least two")
        return layout

    def train_dataset(self) -> SegmentationFolder:
        recipe = self.recipe
        transform = TrainTransform(recipe.scale, recipe.crop_size, recipe.cat_max_ratio)
        return SegmentationFolder(self.settings.data, self.layout.train_split, self.layout, transform)

    def collate(self, samples: list) -> tuple[torch.Tensor, torch.Tensor]:
        return collate(samples)

    def build_model(self) -> nn.Module:
        model = create_model(
            self.settings.model,
            num_classes=self.layout.num_classes,
            checkpoint=self.settings.init,
            labels=self.layout.classes,
            test_scale=self.recipe.scale,
            ignore_index=self.recipe.ignore_index,  # recorded in its checkpoints, for eval on the same data
        )
        if self.context.enabled and self.context.device.type == "cuda":
            # The official head syncs BatchNorm statistics across GPUs; SyncBatchNorm has no CPU kernel, so CPU
            # (gloo) runs keep per-process statistics.
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW(decay_groups(model, self.recipe.weight_decay), lr=self.recipe.lr)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.recipe.iterations

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        recipe = self.recipe
        rate = poly(step, recipe.lr, recipe.schedule_iterations or recipe.iterations, recipe.power)
        return warmed_up(rate, step, recipe.warmup_iterations)

    @property
    def channels_last(self) -> bool:
        return False

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        images, masks = (t.to(device, non_blocking=True) for t in batch)
        outputs = model(images)  # through the DDP wrapper, at the crop's (= the masks') resolution
        if isinstance(outputs, dict):  # UperNet's main and auxiliary logits, its loss 1 and aux_weight
            aux = F.cross_entropy(outputs["aux"].float(), masks, ignore_index=IGNORE)
            main = F.cross_entropy(outputs["out"].float(), masks, ignore_index=IGNORE)
            return main + self.recipe.aux_weight * aux
        return F.cross_entropy(outputs.float(), masks, ignore_index=IGNORE)

    @functools.cached_property
    def validation(self) -> SegmentationFolder:
        return SegmentationFolder(self.settings.data, self.layout.val_split, self.layout)

    def evaluate(self, model: nn.Module, progress: bool) -> dict:
        return evaluate(model, self.validation, self.context, scale=self.recipe.scale, progress=progress).metrics()

    def describe(self) -> dict:
        layout = self.layout
        return {
            "num_classes": layout.num_classes,
            "classes": list(layout.classes) if layout.classes else None,
            "splits": [layout.train_split, layout.val_split],
            "reduce_zero_label": layout.reduce_zero_label,
            "global_batch": self.global_batch,
        }
