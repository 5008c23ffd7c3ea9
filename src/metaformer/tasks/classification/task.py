"""Training a classifier with the paper's recipe on an ImageNet-layout folder."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ...api import create_model
from ...data.hf import is_hf
from ...data.wds import is_wds
from ...engine.distributed import DistributedContext
from ...engine.schedules import cosine
from ...engine.task import RunSettings
from ...errors import ConfigError, DatasetError
from ...fast import use_custom_backward
from ...models.zoo import get_spec
from ...processor import ImageProcessor
from ..common import LibraryTask, decay_groups, layer_decay_groups
from .data import batch_mixer, class_to_output, image_dataset, train_transform, train_val_folders
from .metrics import evaluate, top_k
from .recipe import PAPER, Recipe

SHORT_SHARE = 0.1  # the paper's recipe run for less than this share of its epochs is warned about


class ClassificationTask(LibraryTask):
    unit = "epoch"
    best_metric = "top1"
    recipe: Recipe

    def __init__(self, settings: RunSettings, recipe: Recipe, context: DistributedContext) -> None:
        super().__init__(settings, recipe.resolved(settings.model), context)  # config.json records what was used
        if self.recipe.optimizer == "lamb":
            _lamb_class()  # before any data is read: a missing dependency is said at once

    def _split(self, transform: Callable, validation: bool, classes: list[str] | None = None) -> Dataset:
        settings = self.settings
        if not is_hf(settings.data) and not is_wds(settings.data):  # both folders first: a missing one is said at once
            train_val_folders(settings.data, settings.train_split or "train", settings.val_split or "val")
        return image_dataset(
            settings.data,
            settings.val_split if validation else settings.train_split,
            transform,
            classes,
            validation=validation,
            columns=(settings.image_column, settings.label_column),
            exif_transpose=not validation,
            streaming=settings.streaming,
        )

    def train_dataset(self) -> Dataset:
        dataset = self._split(train_transform(self.recipe), validation=False)
        if len(dataset.classes) < 2:
            raise DatasetError(
                f"{dataset.root} has a single class folder ({dataset.classes[0]}): a classifier "
                "needs at least two classes to learn anything"
            )
        self.classes = dataset.classes
        return dataset

    def build_model(self) -> nn.Module:
        recipe = self.recipe
        model = create_model(
            self.settings.model,
            num_classes=len(self.classes),
            checkpoint=self.settings.init,
            drop_path_rate=recipe.drop_path,
            head_dropout=recipe.head_dropout,
            labels=tuple(self.classes),
            image_size=recipe.image_size,  # the recipe's, not the size an --init checkpoint was trained at
        )
        self.mixer = batch_mixer(len(self.classes), recipe)
        self.crop = model.pretrained_cfg.crop_pct, model.pretrained_cfg.crop_mode
        if self.settings.custom_backward:  # opt-in; the blocks keep their modules, so checkpoints are unchanged
            use_custom_backward(model)
        return model

    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        skip, rate = model.no_weight_decay(), self.recipe.layer_decay
        groups = decay_groups(model, self.recipe.weight_decay, skip)
        if rate is not None:
            groups = layer_decay_groups(model, self.recipe.weight_decay, skip, rate)
        lr = self.recipe.resolved_lr(self.global_batch)
        if self.recipe.optimizer == "lamb":
            return lamb(groups, lr)
        return torch.optim.AdamW(groups, lr=lr)

    def total_steps(self, steps_per_epoch: int) -> int:
        return self.recipe.epochs * steps_per_epoch

    def warmup(self, steps_per_epoch: int) -> tuple[int, str]:
        if self.recipe.schedule == "constant":
            return 0, ""
        return math.ceil(self.recipe.warmup_epochs * steps_per_epoch), "--warmup-epochs"

    def plan_warnings(self, steps_per_epoch: int) -> list[str]:
        recipe = self.recipe
        if recipe.name != "paper" or recipe.epochs >= PAPER.epochs * SHORT_SHARE:
            return []
        # Measured (benchmarks/recipes_small.py, README "Train, fine-tune, evaluate"): on 5,000 CIFAR-10 images for
        # 10 epochs the paper's recipe reached 29.5% top-1, the short one 47.9%; its regularisation is tuned for 300
        # epochs on ImageNet.
        return [
            f"the paper's recipe (RandAugment, MixUp/CutMix, random erasing, label smoothing, drop path) is made for "
            f"{PAPER.epochs} epochs on ImageNet; in {recipe.epochs} it holds the model back: for a short run from "
            "scratch pass --recipe short, to fine-tune pretrained weights --recipe finetune"
        ]

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        recipe = self.recipe
        lr = recipe.resolved_lr(self.global_batch)
        if recipe.schedule == "constant":
            return lr
        span = recipe.schedule_epochs or recipe.epochs  # an extended run's cosine may keep its first length
        return cosine(step / steps_per_epoch, lr, span, recipe.warmup_epochs, recipe.warmup_lr, recipe.min_lr)

    @property
    def ema_decay(self) -> float | None:
        return self.recipe.ema_decay

    @property
    def clip_grad(self) -> float | None:
        return self.recipe.clip_grad

    def training_step(
        self, model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        images, labels = (t.to(device, non_blocking=True) for t in batch)
        if self.mixer is not None:
            images, labels = self.mixer(images, labels)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return F.cross_entropy(model(images).float(), labels, label_smoothing=self.recipe.label_smoothing)

    @functools.cached_property
    def validation(self) -> tuple[Dataset, list[int]]:
        crop_pct, crop_mode = self.crop
        processor = ImageProcessor(self.recipe.image_size, crop_pct, exif_transpose=False, crop_mode=crop_mode)
        dataset = self._split(processor.transform, validation=True, classes=self.classes)
        return dataset, class_to_output(dataset.classes, self.classes, len(self.classes))

    def evaluate(self, model: nn.Module, progress: bool) -> dict:
        dataset, outputs = self.validation
        result = evaluate(
            model,
            dataset,
            outputs,
            self.context,
            batch_size=self.recipe.batch_size,
            num_workers=self.settings.num_workers,
            progress=progress,
        )
        return result.metrics()

    def describe(self) -> dict:
        return {
            "lr": self.recipe.resolved_lr(self.global_batch),
            "global_batch": self.global_batch,
            "optimizer": self.recipe.optimizer,
            "drop_path": self.recipe.drop_path,
            "classes": self.classes,
            "top_k": top_k(len(self.classes)),
            **self._layer_scales(),
        }

    def _layer_scales(self) -> dict:
        """With --layer-decay, each layer's learning-rate scale (0: the stem, then each block, last: the head)."""
        rate = self.recipe.layer_decay
        if rate is None:
            return {}
        top = sum(get_spec(self.settings.model).config.depths) + 1
        return {"layer_lr_scales": [rate ** (top - layer) for layer in range(top + 1)]}


def lamb(groups: list[dict], lr: float) -> torch.optim.Optimizer:
    """CAFormer's optimizer, timm's LAMB (the one the official scripts ran)."""
    return _lamb_class()(groups, lr=lr)


def _lamb_class() -> type[torch.optim.Optimizer]:
    try:
        from timm.optim import Lamb
    except ImportError as error:
        raise ConfigError(
            'this recipe trains with LAMB, which comes from timm: `pip install "metaformer[train]"` '
            "(or timm), or pass --optimizer adamw"
        ) from error
    return Lamb
