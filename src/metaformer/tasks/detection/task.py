"""Training RetinaNet and Mask R-CNN with the official 1x schedule: AdamW, linear warm-up, x0.1 at epochs 8, 11 (scaled
to other lengths)."""

from __future__ import annotations

import functools

import torch
from torch import nn

from ...api import create_model
from ...engine.schedules import steps_with_warmup
from ...errors import DatasetError
from ..common import LibraryTask, decay_groups, to_device
from .data import CocoDetection, coco_split, collate
from .metrics import LOGGED, coco_evaluate
from .recipe import DetectionRecipe


def coco_dataset(data: str, split: str, instance: bool, train: bool) -> CocoDetection:
    images, annotations = coco_split(data, split)
    return CocoDetection(images, annotations, masks=instance, background=instance, train=train)


class DetectionTask(LibraryTask):
    unit = "epoch"
    best_metric = "AP"
    recipe: DetectionRecipe

    @functools.cached_property
    def kind(self) -> str:
        from ...models.zoo import get_spec

        return get_spec(self.settings.model).task

    def train_dataset(self) -> CocoDetection:
        dataset = coco_dataset(
            self.settings.data, self.recipe.train_split, self.kind == "instance_segmentation", train=True
        )
        if not dataset.has_objects:
            raise DatasetError(
                f"{self.settings.data}: the {self.recipe.train_split} annotations hold no objects to learn from"
            )
        self.labels = dataset.labels
        return dataset

    def collate(self, samples: list) -> tuple[list, list]:
        return collate(samples)

    def build_model(self) -> nn.Module:
        recipe = self.recipe
        return create_model(
            self.settings.model,
            num_classes=len(self.labels),
            checkpoint=self.settings.init,
            labels=self.labels,
            min_size=recipe.min_size,
            max_size=recipe.max_size,
        )

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        groups = decay_groups(model, self.recipe.weight_decay)
        return torch.optim.AdamW(groups, lr=self.recipe.resolved_lr(self.kind))

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.recipe.epochs * steps_per_epoch

    def warmup(self, steps_per_epoch: int) -> tuple[int, str]:
        return self.recipe.warmup_iters, "--warmup-iters"

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        recipe = self.recipe
        return steps_with_warmup(
            step,
            step / steps_per_epoch,
            recipe.resolved_lr(self.kind),
            recipe.resolved_decay_epochs(),
            recipe.warmup_iters,
            recipe.warmup_ratio,
        )

    @property
    def channels_last(self) -> bool:
        return False

    def training_step(self, model: nn.Module, batch: tuple[list, list], device: torch.device) -> torch.Tensor:
        images, targets = to_device(batch, device)
        return sum(model(images, targets).values())

    @functools.cached_property
    def validation(self) -> CocoDetection:
        return coco_dataset(
            self.settings.data, self.recipe.val_split, self.kind == "instance_segmentation", train=False
        )

    def evaluate(self, model: nn.Module, progress: bool) -> dict:
        result = coco_evaluate(
            model,
            self.validation,
            self.context,
            batch_size=self.recipe.batch_size,
            num_workers=self.settings.num_workers,
            progress=progress,
        )
        logged = [prefix + name for prefix in ("", "mask_") for name in LOGGED]
        return {
            **{k: v for k, v in result.items() if k in logged or k in ("detections", "images")},
            "unreadable": len(result["errors"]),
        }

    def describe(self) -> dict:
        return {
            "lr": self.recipe.resolved_lr(self.kind),
            "decay_epochs": list(self.recipe.resolved_decay_epochs()),
            "classes": list(self.labels),
            "global_batch": self.global_batch,
        }
