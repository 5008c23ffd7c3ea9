"""Training recipes: the papers' ImageNet recipe (the official ``train.py`` defaults, with each model's official
optimizer, learning rate, warm-up, drop path and head dropout) and a fine-tuning preset."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ...errors import ConfigError
from ...models.config import MLP_HEADS
from ...models.zoo import get_spec
from ..presets import changed

OPTIMIZERS = ("adamw", "lamb")


@dataclass(frozen=True)
class Official:
    """What a model's official ImageNet-1k training script sets (300 epochs; the rest is the shared recipe)."""

    drop_path: float = 0.1
    optimizer: str = "adamw"  # or lamb (CAFormer)
    base_lr: float = 1e-3  # per 1024 images of global batch: PoolFormer's 1e-3, the Baselines' 4e-3 at 4096
    warmup_epochs: float = 5
    head_dropout: float = 0.0  # the MLP head's (ConvFormer, CAFormer)
    # The official fine-tuning at 384 from the 224 weights (30 epochs, constant lr): lr per 1024 images, drop path,
    # head dropout; None where none was published.
    finetune_384: tuple[float, float, float] | None = None


# PoolFormer's train.py: AdamW, lr 1e-3 per 1024 images, 5 warm-up epochs; drop path by size.
_POOLFORMER_DROP_PATH = {"s12": 0.1, "s24": 0.1, "s36": 0.2, "m36": 0.3, "m48": 0.4}
# The Baselines' scripts/*.sh: AdamW at 4e-3 for 4096 images (LAMB at 8e-3 for CAFormer), a warm-up of 5 epochs (20
# for ConvFormer and CAFormer), a drop path per size (and CAFormer a head dropout).
_V2_SIZES = ("s12", "s24", "s36", "m36", "m48")
_CONV_SIZES = ("s18", "s36", "m36", "b36")
_BASELINES = {  # family: sizes, optimizer, lr per 1024 images, warm-up, drop path per size, head dropout per size
    "identityformer": (_V2_SIZES, "adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.4), (0.0,) * 5),
    "randformer": (_V2_SIZES, "adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.3), (0.0,) * 5),
    "poolformerv2": (_V2_SIZES, "adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.4), (0.0,) * 5),
    "convformer": (_CONV_SIZES, "adamw", 1e-3, 20, (0.2, 0.3, 0.4, 0.6), (0.0,) * 4),
    "caformer": (_CONV_SIZES, "lamb", 2e-3, 20, (0.15, 0.3, 0.4, 0.6), (0.0, 0.4, 0.4, 0.5)),
}
_FINETUNE_384 = {  # family: lr at 1024 images, drop path per size, head dropout per size (finetune_*_384.sh)
    "convformer": (5e-5, (0.3, 0.5, 0.8, 0.8), (0.4, 0.4, 0.5, 0.5)),
    "caformer": (1e-4, (0.3, 0.5, 0.7, 0.8), (0.4, 0.4, 0.4, 0.5)),
}


# sail-sg/inceptionnext's scripts: AdamW at 4e-3 for 4096 images, 20 warm-up epochs, a drop path per size; Atto at
# 1e-3 for 1280 images with 5 (its 600 epochs and lighter augmentation are not this recipe's: see the README);
# InceptionNeXt-B at 384: 30 epochs at 5e-5 for 1024 images, drop path 0.7, head dropout 0.5, EMA.
_INCEPTION_NEXT = {
    "inception_next_atto": Official(0.1, "adamw", 1e-3 * 1024 / 1280, 5),
    "inception_next_tiny": Official(0.1, "adamw", 1e-3, 20),
    "inception_next_small": Official(0.3, "adamw", 1e-3, 20),
    "inception_next_base": Official(0.4, "adamw", 1e-3, 20, finetune_384=(5e-5, 0.7, 0.5)),
}

# yuweihao/MambaOut's scripts: AdamW at 4e-3 for 4096 images, 20 warm-up epochs, a drop path per size. timm's *_rw
# models were trained by timm's own recipes, not published with them: they get these, with their size's drop path.
_MAMBAOUT_DROP_PATH = {"femto": 0.025, "kobe": 0.025, "tiny": 0.2, "small": 0.4, "base": 0.6, "small_rw": 0.4}
_MAMBAOUT_DROP_PATH.update({f"base_{kind}_rw": 0.6 for kind in ("short", "tall", "wide", "plus")})
_MAMBAOUT = {f"mambaout_{size}": Official(drop, "adamw", 1e-3, 20) for size, drop in _MAMBAOUT_DROP_PATH.items()}


def _official_table() -> dict[str, Official]:
    table = {f"poolformer_{size}": Official(drop_path) for size, drop_path in _POOLFORMER_DROP_PATH.items()}
    table.update(_INCEPTION_NEXT)
    table.update(_MAMBAOUT)
    for family, (sizes, optimizer, lr, warmup, drops, heads) in _BASELINES.items():
        tuned = _FINETUNE_384.get(family)
        for i, size in enumerate(sizes):
            finetune = (tuned[0], tuned[1][i], tuned[2][i]) if tuned else None
            table[f"{family}_{size}"] = Official(drops[i], optimizer, lr, warmup, heads[i], finetune)
    return table


OFFICIAL = _official_table()  # the released classifiers; the ablations and hybrids train as PoolFormer-S12 does


def official(model_name: str) -> Official:
    """The official training settings of ``model_name`` (the defaults for a registered model of the user's)."""
    return OFFICIAL.get(model_name, Official())


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
    layer_decay: float | None = None  # layer-wise lr decay (fine-tuning): each block below the head at this x
    image_size: int = 224
    schedule: str = "cosine"  # or constant (the 384 fine-tuning)
    schedule_epochs: int | None = None  # the epochs the cosine spans; None: the run's (set when a run is extended)

    def __post_init__(self) -> None:
        low, high = self.crop_scale
        if not 0 < low <= high <= 1:
            raise ConfigError(f"--crop-scale takes 0 < MIN <= MAX <= 1 (areas of the image), got {low} {high}")

        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            raise ConfigError(f"--layer-decay is a factor in (0, 1], got {self.layer_decay}")
        if self.schedule not in ("cosine", "constant"):
            raise ConfigError(f"schedule must be cosine or constant, got {self.schedule!r}")
        if self.optimizer not in (None, *OPTIMIZERS):
            raise ConfigError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def extended(self, epochs: int, respread: bool) -> tuple[Recipe, str]:
        """This recipe for a run made longer, and what becomes of its learning rate, in words. The cosine keeps its
        length (the rate stays at its floor) unless ``respread``, as timm's scheduler built for the longer run."""
        span = self.schedule_epochs or self.epochs
        if self.schedule == "constant":
            return dataclasses.replace(self, epochs=epochs), "the learning rate is constant in this recipe"
        if respread:
            return dataclasses.replace(self, epochs=epochs, schedule_epochs=None), (
                f"the cosine now spans all {epochs} epochs, so the learning rate rises again from where it is"
            )
        return dataclasses.replace(self, epochs=epochs, schedule_epochs=span), (
            f"the cosine keeps its {span} epochs, so epochs {span + 1}-{epochs} train at its floor, --min-lr "
            f"{self.min_lr:g}; pass --schedule-extend to spread the cosine over all {epochs} epochs instead"
        )

    def resolved(self, model_name: str) -> Recipe:
        """This recipe with every setting left to the model (None) set to the model's official value."""
        spec = get_spec(model_name)
        if self.head_dropout and spec.config.head not in MLP_HEADS:
            raise ConfigError(
                f"--head-dropout applies to an MLP head (ConvFormer, CAFormer, InceptionNeXt); {model_name} has a "
                f"{spec.config.head} head"
            )
        official = OFFICIAL.get(model_name, Official())
        if self.name == "finetune_384":
            if official.finetune_384 is None:
                raise ConfigError(
                    "the official 384 fine-tuning recipe exists for ConvFormer, CAFormer and InceptionNeXt-B only, "
                    f"not {model_name}; use --recipe finetune --image-size 384"
                )
            lr, drop_path, head_dropout = official.finetune_384
            official = dataclasses.replace(
                official, base_lr=lr, drop_path=drop_path, head_dropout=head_dropout, warmup_epochs=0
            )
        chosen = {
            name: getattr(self, name) for name in ("optimizer", "base_lr", "warmup_epochs", "drop_path", "head_dropout")
        }
        return dataclasses.replace(self, **{k: getattr(official, k) if v is None else v for k, v in chosen.items()})

    @classmethod
    def preset(cls, name: str | None = None, **settings: object) -> Recipe:
        """A named recipe (paper, finetune, finetune_384) with some settings changed (None leaves them)."""
        return get_recipe(name or "paper", **settings)

    def resolved_lr(self, global_batch: int) -> float:
        """The learning rate for ``global_batch`` images a step (of a recipe ``resolved`` for its model)."""
        return self.lr if self.lr is not None else self.base_lr * global_batch / 1024


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

# A short run from scratch on a small dataset (thousands of images, tens of epochs): the paper's architecture
# with light regularisation, since RandAugment, MixUp/CutMix and erasing pay off only over hundreds of epochs. The
# measurement behind it is in the README ("Recipes").
SHORT = dataclasses.replace(
    PAPER,
    name="short",
    epochs=30,
    batch_size=64,
    optimizer="adamw",
    lr=1e-3,
    warmup_epochs=1,
    crop_scale=(0.35, 1.0),
    randaugment_magnitude=None,
    random_erasing=0.0,
    mixup=0.0,
    cutmix=0.0,
    drop_path=0.0,
)

# The official fine-tuning of ConvFormer and CAFormer at 384 from their 224 weights: 30 epochs at a constant lr
# (batch 1024, 8 x 128), no MixUp or CutMix, EMA 0.9999; lr, drop path and head dropout per model.
FINETUNE_384 = dataclasses.replace(
    PAPER,
    name="finetune_384",
    epochs=30,
    image_size=384,
    schedule="constant",
    mixup=0.0,
    cutmix=0.0,
    ema_decay=0.9999,
)

RECIPES = {"paper": PAPER, "short": SHORT, "finetune": FINETUNE, "finetune_384": FINETUNE_384}


def get_recipe(name: str = "paper", **overrides: object) -> Recipe:
    """A named recipe with some settings changed (None leaves a setting as the recipe has it)."""
    if name not in RECIPES:
        raise ConfigError(f"unknown recipe {name!r}; choose one of {sorted(RECIPES)}")
    return changed(RECIPES[name], overrides)
