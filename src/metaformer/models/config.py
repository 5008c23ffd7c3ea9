"""What defines a MetaFormer's architecture: the shapes of its weights and the computation of its forward pass.

Nothing here imports torch, so the zoo can be listed and described without it. Names (blocks, mixers, norms,
activations) are checked when a model is built, against the registries that ``blocks.py``, ``mixers.py`` and
``layers.py`` fill (user code can add to them).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from ..errors import ConfigError

STEM = (7, 4, 2)  # kernel, stride, padding of the patch embedding
DOWNSAMPLE = (3, 2, 1)  # the same for the embedding between stages
MIN_INPUT_SIDE = 32
# poolformer: norm, pool, linear; linear: pool, LayerNorm, linear; mlp: pool, LayerNorm, the Baselines' MLP head;
# metanext: pool, InceptionNeXt's MLP head (no norm before it); mambaout: pool, LayerNorm, MambaOut's MLP head;
# norm_mlp: pool, LayerNorm, an MLP without a hidden norm (timm's MambaOut *_rw models)
HEADS = ("poolformer", "linear", "mlp", "metanext", "mambaout", "norm_mlp")
BASELINE_HEADS = ("linear", "mlp")
MAMBAOUT_HEADS = ("mambaout", "norm_mlp")
MLP_HEADS = ("mlp", "metanext", *MAMBAOUT_HEADS)
# patch: one strided convolution (then stem_norm); two_conv: MambaOut's (InternImage's) two convolutions of the stem's
# kernel, stride and padding, to half the width and then the width, with stem_mid_norm and the activation between
STEM_KINDS = ("patch", "two_conv")
INITS = ("poolformer", "baselines")
# The fields with one entry per stage.
PER_STAGE = ("depths", "widths", "blocks", "mixers", "mixer_settings", "pos_embed", "res_scale_init", "mlp_ratios")
# The fields a checkpoint must agree with to be this architecture's (the others are sizes and training settings).
STRUCTURE = (
    *PER_STAGE,
    "norm",
    "act",
    "mlp_bias",
    "stem",
    "stem_kind",
    "stem_norm",
    "stem_mid_norm",
    "downsample",
    "downsample_norm",
    "downsample_norm_first",
    "head",
    "in_chans",
)


class Settings(Mapping):
    """A mixer's keyword arguments: an immutable, hashable mapping (configs are hashable, and cached by)."""

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | None = None) -> None:
        values = dict(items or {})
        if not all(isinstance(key, str) for key in values):
            raise ConfigError(f"mixer settings are keyword arguments: names must be strings, got {list(values)}")
        self._items = tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in values.items()))

    def __getitem__(self, key: str) -> object:
        for name, value in self._items:
            if name == key:
                return value
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return (name for name, _ in self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        return dict(self) == dict(other) if isinstance(other, Mapping) else NotImplemented

    def __repr__(self) -> str:
        return repr(dict(self._items))


def registrar(table: dict[str, type], what: str, name: str) -> Callable[[type], type]:
    """The decorator that registers a class in ``table`` under ``name`` (a token mixer, a block kind)."""

    def register(cls: type) -> type:
        if name in table and table[name] is not cls:
            raise ConfigError(f"a {what} is already registered as {name!r} ({table[name].__qualname__})")
        table[name] = cls
        return cls

    return register


@dataclass(frozen=True)
class MetaFormerConfig:
    """A MetaFormer's architecture. The per-stage fields have one entry per stage.

    ``blocks`` names each stage's block kind (``metaformer``: the two-branch block; ``mixer_only`` and
    ``no_residual``: two ablations; ``metanext``: InceptionNeXt's one-branch block; ``gated_cnn``: MambaOut's),
    ``mixers`` its token mixer and
    ``mixer_settings`` the mixer's keyword arguments (a mixer is built as ``cls(dim, **settings)``). A single mapping
    for ``mixer_settings`` applies to every stage, and a single number for ``mlp_ratios``. Preprocessing (crop, mean,
    std) and class names are not architecture: they are in the model's ``pretrained_cfg``.
    """

    depths: tuple[int, ...] = (2, 2, 6, 2)
    widths: tuple[int, ...] = (64, 128, 320, 512)
    blocks: tuple[str, ...] = ("metaformer",) * 4
    mixers: tuple[str, ...] = ("pooling",) * 4
    mixer_settings: tuple[Settings, ...] = (Settings(),) * 4
    norm: str = "groupnorm"
    act: str = "gelu"
    mlp_ratios: tuple[float, ...] = (4.0,) * 4  # the channel MLP's hidden width over the stage's
    mlp_bias: bool = True  # the Baselines' MLPs have no biases
    layer_scale_init: float | None = 1e-5  # PoolFormer's per-channel scale of each branch
    res_scale_init: tuple[float | None, ...] = (None,) * 4  # the Baselines': a learnable scale of each residual
    pos_embed: tuple[bool, ...] = (False,) * 4
    stem: tuple[int, int, int] = STEM  # the patch embedding's kernel, stride and padding (InceptionNeXt: 4, 4, 0)
    stem_kind: str = "patch"  # one of STEM_KINDS (MambaOut: two_conv, each conv 3, 2, 1)
    stem_norm: str = "none"  # the Baselines: a norm after the stem convolution
    stem_mid_norm: str = "none"  # two_conv: the norm between its convolutions
    downsample: tuple[int, int, int] = DOWNSAMPLE  # the same between stages (InceptionNeXt: 2, 2, 0)
    downsample_norm: str = "none"  # ... and a norm with each downsampling convolution,
    downsample_norm_first: bool = True  # before it (the Baselines, InceptionNeXt) or after it (MambaOut)
    head: str = "poolformer"  # one of HEADS
    head_dropout: float = 0.0  # before the MLP head's last layer
    init: str = "poolformer"  # truncated normal for linear maps and the MLP's convolutions; baselines: every conv
    num_classes: int = 1000
    in_chans: int = 3
    image_size: int = 224  # the size the model is built for (fixed-grid mixers and position tables depend on it)
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        settings = self.mixer_settings
        if isinstance(settings, Mapping):
            settings = (settings,) * len(self.depths)
        object.__setattr__(self, "mixer_settings", tuple(Settings(s) for s in settings))
        ratios = self.mlp_ratios
        ratios = (ratios,) * len(self.depths) if isinstance(ratios, (int, float)) else ratios
        object.__setattr__(self, "mlp_ratios", tuple(float(r) for r in ratios))
        for name in ("stem", "downsample"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
            kernel, stride, padding = getattr(self, name)
            if min(kernel, stride) < 1 or padding < 0:
                raise ConfigError(f"{name} is (kernel, stride, padding) of a convolution, got {getattr(self, name)}")
        stages = len(self.depths)
        for name in PER_STAGE:
            if len(getattr(self, name)) != stages:
                raise ConfigError(f"{name} has {len(getattr(self, name))} entries but depths has {stages}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0 (0: no head), got {self.num_classes}")
        for name in ("drop_rate", "drop_path_rate", "head_dropout"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"{name} is a probability in [0, 1), got {getattr(self, name)}")
        if self.head_dropout and self.head not in MLP_HEADS:
            raise ConfigError(f"head_dropout applies to the MLP head only; this model's head is {self.head!r}")
        if self.image_size < MIN_INPUT_SIDE:
            raise ConfigError(f"image_size must be >= {MIN_INPUT_SIDE}, got {self.image_size}")
        if self.head not in HEADS:
            raise ConfigError(f"head must be one of {HEADS}, got {self.head!r}")
        if self.stem_kind not in STEM_KINDS:
            raise ConfigError(f"stem_kind must be one of {STEM_KINDS}, got {self.stem_kind!r}")
        if self.stem_mid_norm != "none" and self.stem_kind != "two_conv":
            raise ConfigError(
                f"stem_mid_norm is the norm between two_conv's convolutions; the stem is {self.stem_kind}"
            )
        if self.init not in INITS:
            raise ConfigError(f"init must be one of {INITS}, got {self.init!r}")

    def stage_grids(self, image_size: int | None = None) -> list[tuple[int, int]]:
        """Token grid (H, W) of each stage for a square input of ``image_size``."""
        kernel, stride, padding = self.stem
        side = image_size or self.image_size
        for _ in range(self.stem_convs):
            side = (side + 2 * padding - kernel) // stride + 1
        grids = [(side, side)]
        kernel, stride, padding = self.downsample
        for _ in self.depths[1:]:
            side = (side + 2 * padding - kernel) // stride + 1
            grids.append((side, side))
        return grids

    def strides(self) -> list[int]:
        """Each stage's output stride in pixels (4, 8, 16, 32 for every model of the zoo)."""
        return [self.stem[1] ** self.stem_convs * self.downsample[1] ** i for i in range(len(self.depths))]

    @property
    def stem_convs(self) -> int:
        return 2 if self.stem_kind == "two_conv" else 1

    @property
    def is_baseline(self) -> bool:
        """A model of the Baselines' code (sail-sg/metaformer) rather than PoolFormer's (sail-sg/poolformer) or
        InceptionNeXt's: the heads that pool, then apply a LayerNorm, are theirs alone."""
        return self.head in BASELINE_HEADS

    @property
    def is_poolformer_v1(self) -> bool:
        """A model of PoolFormer's code (sail-sg/poolformer), whose head normalises the map, then pools: the one
        kind Hugging Face transformers and mmpretrain hold."""
        return self.head == "poolformer"

    @property
    def is_metanext(self) -> bool:
        """A model of InceptionNeXt's code (sail-sg/inceptionnext): MetaNeXt blocks and their head."""
        return self.head == "metanext"

    @property
    def is_mambaout(self) -> bool:
        """A model of MambaOut's code (yuweihao/MambaOut) or timm's *_rw variants of it: Gated CNN blocks."""
        return self.head in MAMBAOUT_HEADS

    def first_stages(self, count: int) -> MetaFormerConfig:
        """The architecture of the first ``count`` stages (a model pruned for its intermediate features)."""
        return dataclasses.replace(self, **{name: getattr(self, name)[:count] for name in PER_STAGE})

    def replace(self, **changes: object) -> MetaFormerConfig:
        """This architecture with some fields changed (checked again, as a new config)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["mixer_settings"] = [dict(s) for s in self.mixer_settings]
        return values


def class_layer(config: MetaFormerConfig) -> str:
    """The name of the layer whose rows are the classes: the linear head, or the MLP head's last layer."""
    return "head.fc2" if config.head in MLP_HEADS else "head"


def head_keys(config: MetaFormerConfig) -> list[str]:
    """The state-dict keys of the classifier's head (for a model with classes)."""
    if config.head in MLP_HEADS:
        layers = ("fc1", "fc2") if config.head == "norm_mlp" else ("fc1", "norm", "fc2")
        return [f"head.{layer}.{p}" for layer in layers for p in ("weight", "bias")]
    return ["head.weight", "head.bias"]
