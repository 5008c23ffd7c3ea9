"""What defines a MetaFormer's architecture, and the preprocessing it was trained with."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..errors import ConfigError
from .layers import ACTIVATIONS, NORMS
from .mixers import MIXERS

STEM = (7, 4, 2)  # kernel, stride, padding of the patch embedding
DOWNSAMPLE = (3, 2, 1)  # the same for the embedding between stages
MIN_INPUT_SIDE = 32
HEADS = ("poolformer", "linear", "mlp")


@dataclass(frozen=True)
class MetaFormerConfig:
    """Everything that defines a MetaFormer's architecture, and the preprocessing it was trained with."""

    depths: tuple[int, ...] = (2, 2, 6, 2)
    widths: tuple[int, ...] = (64, 128, 320, 512)
    mixers: tuple[str, ...] = ("pooling",) * 4
    pool_size: int = 3
    norm: str = "groupnorm"
    act: str = "gelu"
    mlp_ratio: float = 4.0
    layer_scale_init: float | None = 1e-5
    pos_embed: tuple[bool, ...] = (False,) * 4
    residual: bool = True
    use_mlp: bool = True
    num_classes: int = 1000
    in_chans: int = 3
    image_size: int = 224
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    crop_pct: float = 0.9
    # What the Baselines (Yu et al., TPAMI 2024) changed; the defaults are PoolFormer v1's.
    res_scale_init: tuple[float | None, ...] = (None,) * 4  # a learnable per-channel scale of each residual
    bias: bool = True  # biases in the MLP's and the mixers' pointwise layers (the Baselines have none)
    stem_norm: str = "none"  # a norm after the stem convolution
    downsample_norm: str = "none"  # a norm before each downsampling convolution
    head: str = "poolformer"  # poolformer: norm, pool, linear; linear: pool, LayerNorm, linear; mlp: ... MLP head
    head_dropout: float = 0.0  # before the MLP head's last layer
    init: str = "poolformer"  # truncated normal for linear maps and the MLP's convolutions; baselines: every conv
    labels: tuple[str, ...] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        stages = len(self.depths)
        for name in ("widths", "mixers", "pos_embed", "res_scale_init"):
            if len(getattr(self, name)) != stages:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries but depths has {stages}")
        unknown = [m for m in self.mixers if m not in MIXERS]
        if unknown:
            raise ConfigError(f"unknown token mixer(s) {unknown}; choose from {list(MIXERS)}")
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ConfigError(f"{len(self.labels)} labels given for {self.num_classes} classes")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0: no head), got {self.num_classes}")
        for name in ("drop_rate", "drop_path_rate", "head_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if self.head_dropout and self.head != "mlp":
            raise ConfigError(f"head_dropout applies to the MLP head only; this model's head is {self.head!r}")
        if self.image_size < MIN_INPUT_SIDE:
            raise ConfigError(f"image_size must be >= {MIN_INPUT_SIDE}, got {self.image_size}")
        if self.pool_size < 1 or self.pool_size % 2 == 0:
            raise ConfigError(f"pool_size must be odd and positive to keep the token grid, got {self.pool_size}")
        for name in ("norm", "stem_norm", "downsample_norm"):
            if getattr(self, name) not in NORMS:
                raise ConfigError(f"{name} must be one of {sorted(NORMS)}, got {getattr(self, name)!r}")
        if self.act not in ACTIVATIONS:
            raise ConfigError(f"act must be one of {sorted(ACTIVATIONS)}, got {self.act!r}")
        if self.head not in HEADS or self.init not in ("poolformer", "baselines"):
            raise ConfigError(f"head must be one of {HEADS} and init poolformer or baselines, got {self.head!r}, "
                              f"{self.init!r}")  # fmt: skip

    def stage_grids(self, image_size: int | None = None) -> list[tuple[int, int]]:
        """Token grid (H, W) of each stage for a square input of ``image_size``."""
        side = (image_size or self.image_size) + 2 * STEM[2] - STEM[0]
        side = side // STEM[1] + 1
        grids = [(side, side)]
        for _ in self.depths[1:]:
            side = (side + 2 * DOWNSAMPLE[2] - DOWNSAMPLE[0]) // DOWNSAMPLE[1] + 1
            grids.append((side, side))
        return grids

    @property
    def is_baseline(self) -> bool:
        """A model of the Baselines' code (sail-sg/metaformer) rather than PoolFormer's (sail-sg/poolformer): the
        head that pools before its norm is theirs alone."""
        return self.head != "poolformer"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> MetaFormerConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown MetaFormerConfig field(s) {unknown}")
        tuples = {k: tuple(v) for k, v in data.items() if isinstance(v, list)}
        return cls(**{**data, **tuples})


def class_layer(config: MetaFormerConfig) -> str:
    """The name of the layer whose rows are the classes: the linear head, or the MLP head's last layer."""
    return "head.fc2" if config.head == "mlp" else "head"


def head_keys(config: MetaFormerConfig) -> list[str]:
    """The state-dict keys of the classifier's head (for a model with classes)."""
    if config.head == "mlp":
        return [f"head.{layer}.{p}" for layer in ("fc1", "norm", "fc2") for p in ("weight", "bias")]
    return ["head.weight", "head.bias"]
