"""Training recipes: the papers' ImageNet recipe (the official ``train.py`` defaults, with each model's official
optimizer, learning rate, warm-up, drop path and head dropout) and a fine-tuning preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import ConfigError
from ...models.zoo import get_spec

OPTIMIZERS = ("adamw", "lamb")


@dataclass(frozen=True)
class Recipe:
    name: str = "paper"
    epochs: int = 300
    batch_size: int = 128  # per process; the paper: 8 GPUs x 128 = 1024
    optimizer: str | None = None  # adamw or lamb; None: the model's official one (LAMB for CAFormer)
    base_lr: float | None = None  # lr = base_lr x global batch / 1024 unless lr is given; None: the model's official
    lr: float | None = None
    weight_decay: float = 0.05  # not on norms, biases, layer scales or position embeddings
    warmup_epochs: float | None = None  # None: the model's official (5; ConvFormer and CAFormer 20)
    warmup_lr: float = 1e-6
    min_lr: float = 1e-5
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.08, 1.0)  # RandomResizedCrop's area range
    hflip: float = 0.5
    augment: bool = True  # False: train on the evaluation transform (no random crop, flip or RandAugment)
    randaugment_magnitude: float | None = 9  # timm's rand-m9-mstd0.5; None turns it off
    randaugment_std: float = 0.5
    random_erasing: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_switch_prob: float = 0.5
    drop_path: float | None = None  # None: the official value for the model (its spec's training defaults)
    head_dropout: float | None = None  # the MLP head's dropout (ConvFormer, CAFormer); None: the model's official
    ema_decay: float | None = None  # the paper's optional model EMA: 0.9998
    clip_grad: float | None = None
    image_size: int = 224
    schedule: str = "cosine"  # or constant (the 384 fine-tuning)

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"--crop-scale takes 0 < MIN <= MAX <= 1 (areas of the image), got {low} {high}")

        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.optimizer not in (None, *OPTIMIZERS):
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def resolved(self, model_name: str) -> Recipe:
        """This recipe with every setting left to the model (None) set to the model's official value."""
        spec = get_spec(model_name)
        if self.head_dropout and spec.config.head != "mlp":
            raise ConfigError(f"--head-dropout applies to an MLP head (ConvFormer, CAFormer); {model_name} has a "
                              f"{spec.config.head} head")  # fmt: skip
        official = spec.training
        if self.name == "finetune_384":
            if official.finetune_384 is None:
                raise ConfigError(f"the official 384 fine-tuning recipe exists for ConvFormer and CAFormer only, not "
                                  f"{model_name}; use --recipe finetune --image-size 384")  # fmt: skip
            lr, drop_path, head_dropout = official.finetune_384
            official = dataclasses.replace(official, base_lr=lr, drop_path=drop_path, head_dropout=head_dropout,
                                           warmup_epochs=0)  # fmt: skip
        chosen = {name: getattr(self, name) for name in ("optimizer", "base_lr", "warmup_epochs", "drop_path",
                                                           "head_dropout")}  # fmt: skip
        return dataclasses.replace(self, **{k: getattr(official, k) if v is None else v for k, v in chosen.items()})

    def resolved_lr(self, global_batch: int) -> float:
        """The learning rate for ``global_batch`` images a step (of a recipe ``resolved`` for its model)."""
        return self.lr if self.lr is not None else self.base_lr * global_batch / 1024

    def resolved_drop_path(self, model_name: str) -> float:
        return self.resolved(model_name).drop_path


PAPER = Recipe()

# Fine-tuning a pretrained model on a small dataset: short, gentle, little augmentation.
FINETUNE = dataclasses.replace(
    PAPER,
    name="finetune",
    epochs=10,
    batch_size=64,
    lr=2e-4,
    warmup_epochs=1,
    min_lr=1e-6,
    crop_scale=(0.35, 1.0),
    randaugment_magnitude=None,
    random_erasing=0.0,
    mixup=0.0,
    cutmix=0.0,
    drop_path=0.05,
)

# The official fine-tuning of ConvFormer and CAFormer at 384 from their 224 weights: 30 epochs at a constant lr
# (batch 1024, 8 x 128), no MixUp or CutMix, EMA 0.9999; lr, drop path and head dropout per model.
FINETUNE_384 = dataclasses.replace(
    PAPER, name="finetune_384", epochs=30, image_size=384, schedule="constant", mixup=0.0, cutmix=0.0,
    ema_decay=0.9999,
)  # fmt: skip

RECIPES = {"paper": PAPER, "finetune": FINETUNE, "finetune_384": FINETUNE_384}


def get_recipe(name: str = "paper", **overrides: object) -> Recipe:
    """A named recipe with some settings changed (None leaves a setting as the recipe has it)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    fields = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown recipe setting(s) {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(RECIPES[name], **values)
