"""Named variants: the official PoolFormers, the official hybrids, and one S12 model per ablation row."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from .metaformer import MetaFormerConfig

RELEASE = "https://github.com/sail-sg/poolformer/releases/download/v1.0/"

S_WIDTHS = (64, 128, 320, 512)
M_WIDTHS = (96, 192, 384, 768)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: MetaFormerConfig
    description: str
    url: str | None = None  # official release file
    hf_hub_id: str | None = None  # Hugging Face copy (transformers format)
    timm_name: str | None = None  # the same architecture in timm
    task: str = "classification"  # or segmentation, detection, instance_segmentation
    backbone: str | None = None  # dense models: the classifier whose trunk they use
    default_classes: int = 1000


_REGISTRY: dict[str, ModelSpec] = {}


def _register(
    name: str,
    description: str,
    official: bool = False,
    hf: bool = False,
    timm: bool = False,
    **config: object,
) -> None:
    spec = ModelSpec(
        name=name,
        config=MetaFormerConfig(**config),
        description=description,
        url=RELEASE + name + ".pth.tar" if official else None,
        hf_hub_id="sail/" + name if hf else None,
        timm_name="poolformer_" + name.rsplit("_", 1)[1] if timm else None,
    )
    _REGISTRY[name] = spec


# The five PoolFormers (Table 1 of the paper; official configurations).
_S12 = dict(depths=(2, 2, 6, 2), widths=S_WIDTHS, layer_scale_init=1e-5, crop_pct=0.9)
_register("poolformer_s12", "PoolFormer-S12", official=True, hf=True, timm=True, **_S12)
_register(
    "poolformer_s24",
    "PoolFormer-S24",
    True,
    True,
    True,
    depths=(4, 4, 12, 4),
    widths=S_WIDTHS,
    layer_scale_init=1e-5,
    crop_pct=0.9,
)
_register(
    "poolformer_s36",
    "PoolFormer-S36",
    True,
    True,
    True,
    depths=(6, 6, 18, 6),
    widths=S_WIDTHS,
    layer_scale_init=1e-6,
    crop_pct=0.9,
)
_register(
    "poolformer_m36",
    "PoolFormer-M36",
    True,
    True,
    True,
    depths=(6, 6, 18, 6),
    widths=M_WIDTHS,
    layer_scale_init=1e-6,
    crop_pct=0.95,
)
_register(
    "poolformer_m48",
    "PoolFormer-M48",
    True,
    True,
    True,
    depths=(8, 8, 24, 8),
    widths=M_WIDTHS,
    layer_scale_init=1e-6,
    crop_pct=0.95,
)

# The official hybrid and identity models (Table 5's hybrid rows and identity row; released weights).
_P, _A, _F = "pooling", "attention", "spatial_mlp"
_register(
    "metaformer_id_s12",
    "S12 with identity token mixers",
    official=True,
    **{**_S12, "mixers": ("identity",) * 4},
)
_register(
    "metaformer_pppa_s12_224",
    "S12 hybrid [Pool, Pool, Pool, Attention]",
    official=True,
    **{
        **_S12,
        "mixers": (_P, _P, _P, _A),
        "pos_embed": (False, False, False, True),
        "norm": "layernorm",
        "crop_pct": 0.95,
    },
)
_register(
    "metaformer_ppaa_s12_224",
    "S12 hybrid [Pool, Pool, Attention, Attention]",
    official=True,
    **{
        **_S12,
        "mixers": (_P, _P, _A, _A),
        "pos_embed": (False, False, True, False),
        "norm": "layernorm",
        "crop_pct": 0.95,
    },
)
_register(
    "metaformer_pppf_s12_224",
    "S12 hybrid [Pool, Pool, Pool, SpatialFC]",
    official=True,
    **{**_S12, "mixers": (_P, _P, _P, _F)},
)
_register(
    "metaformer_ppff_s12_224",
    "S12 hybrid [Pool, Pool, SpatialFC, SpatialFC]",
    official=True,
    **{**_S12, "mixers": (_P, _P, _F, _F), "crop_pct": 0.95},
)

# The other ablation rows of Table 5, each a change of PoolFormer-S12 (no released weights).
for _k in (5, 7, 9):
    _register(f"poolformer_s12_pool{_k}", f"S12 ablation: pooling size {_k}", **{**_S12, "pool_size": _k})
_register(
    "metaformer_random_s12",
    "S12 ablation: frozen global random matrix per block (+21.1M frozen)",
    **{**_S12, "mixers": ("random",) * 4},
)
_register(
    "metaformer_dwconv_s12",
    "S12 ablation: 3x3 depthwise convolution mixer",
    **{**_S12, "mixers": ("dwconv",) * 4},
)
_register(
    "poolformer_s12_layernorm",
    "S12 ablation: LayerNorm over channels instead of MLN",
    **{**_S12, "norm": "layernorm"},
)
_register("poolformer_s12_batchnorm", "S12 ablation: BatchNorm instead of MLN", **{**_S12, "norm": "batchnorm"})
_register("poolformer_s12_nonorm", "S12 ablation: no normalization", **{**_S12, "norm": "none"})
_register("poolformer_s12_relu", "S12 ablation: ReLU instead of GELU", **{**_S12, "act": "relu"})
_register("poolformer_s12_silu", "S12 ablation: SiLU instead of GELU", **{**_S12, "act": "silu"})
_register(
    "poolformer_s12_noresidual",
    "S12 ablation: no residual connections (does not train)",
    **{**_S12, "residual": False},
)
_register("poolformer_s12_nomlp", "S12 ablation: no channel MLP", **{**_S12, "use_mlp": False})


# Dense prediction (Table 3/4 of the paper): Semantic FPN on ADE20K (150 classes), RetinaNet and Mask R-CNN on
# COCO (80 classes), on the PoolFormer backbones.
_DENSE = [
    ("fpn", "segmentation", "Semantic FPN", 150, ("s12", "s24", "s36", "m36", "m48")),
    ("retinanet", "detection", "RetinaNet", 80, ("s12", "s24", "s36")),
    ("mask_rcnn", "instance_segmentation", "Mask R-CNN", 80, ("s12", "s24", "s36")),
]
for _prefix, _task, _title, _classes, _sizes in _DENSE:
    for _size in _sizes:
        _trunk = _REGISTRY[f"poolformer_{_size}"]
        _name = f"{_prefix}_poolformer_{_size}"
        _REGISTRY[_name] = ModelSpec(
            _name, _trunk.config, f"{_title} on PoolFormer-{_size.upper()}", task=_task, backbone=_trunk.name,
            default_classes=_classes,
        )  # fmt: skip


def list_models(pattern: str | None = None, task: str | None = None) -> list[str]:
    """Names of the registered models, optionally those containing ``pattern`` or of one ``task``
    (classification, segmentation, detection, instance_segmentation)."""
    return [
        name
        for name, spec in _REGISTRY.items()
        if (pattern is None or pattern in name) and (task is None or spec.task == task)
    ]


def get_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `metaformer list`"
        raise ValueError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def resolve_config(name: str, **overrides: object) -> MetaFormerConfig:
    """The registered config of ``name`` with ``overrides`` applied (unknown fields are an error)."""
    config = get_spec(name).config
    fields = {f.name for f in dataclasses.fields(MetaFormerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise TypeError(f"unknown option(s) {unknown} for {name}; valid options: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **values)
