"""Named variants: the official PoolFormers, the official hybrids, one S12 model per ablation row, and the
MetaFormer Baselines (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer)."""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from ..errors import ConfigError
from .config import MetaFormerConfig
from .pretrained import IN_TIMM, POOLFORMER_HOST, split_tag

S_WIDTHS = (64, 128, 320, 512)
M_WIDTHS = (96, 192, 384, 768)


@dataclass(frozen=True)
class TrainDefaults:
    """What a model's official ImageNet-1k training script sets (300 epochs; the rest is the shared recipe)."""

    drop_path: float = 0.1
    optimizer: str = "adamw"  # or lamb (CAFormer)
    base_lr: float = 1e-3  # per 1024 images of global batch: PoolFormer's 1e-3, the Baselines' 4e-3 at 4096
    warmup_epochs: float = 5
    head_dropout: float = 0.0  # the MLP head's (ConvFormer, CAFormer)
    # The official fine-tuning at 384 from the 224 weights (30 epochs, constant lr): lr per 1024 images, drop path,
    # head dropout; None where none was published.
    finetune_384: tuple[float, float, float] | None = None


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its architecture and what is known about it (weights, peers, training defaults)."""

    name: str
    config: MetaFormerConfig
    description: str
    url: str | None = None  # official release file
    hf_hub_id: str | None = None  # Hugging Face copy (transformers format)
    timm_name: str | None = None  # the same architecture in timm
    task: str = "classification"  # or segmentation, detection, instance_segmentation
    backbone: str | None = None  # dense models: the classifier whose trunk they use
    default_classes: int = 1000
    training: TrainDefaults = TrainDefaults()


_REGISTRY: dict[str, ModelSpec] = {}


def _register_official(name: str, description: str, *, hf_and_timm: bool, drop_path: float = 0.1,
                       **config: object) -> None:  # fmt: skip
    _REGISTRY[name] = ModelSpec(
        name=name,
        config=MetaFormerConfig(**config),
        description=description,
        url=POOLFORMER_HOST + name + ".pth.tar",
        hf_hub_id="sail/" + name if hf_and_timm else None,
        timm_name=name if hf_and_timm else None,
        training=TrainDefaults(drop_path=drop_path),
    )


# The five PoolFormers (Table 1 of the paper; official configurations and stochastic depth).
_S12 = dict(depths=(2, 2, 6, 2), widths=S_WIDTHS, layer_scale_init=1e-5, crop_pct=0.9)
_POOLFORMERS = {  # name: depths, widths, layer scale, crop_pct, drop path
    "poolformer_s12": ((2, 2, 6, 2), S_WIDTHS, 1e-5, 0.9, 0.1),
    "poolformer_s24": ((4, 4, 12, 4), S_WIDTHS, 1e-5, 0.9, 0.1),
    "poolformer_s36": ((6, 6, 18, 6), S_WIDTHS, 1e-6, 0.9, 0.2),
    "poolformer_m36": ((6, 6, 18, 6), M_WIDTHS, 1e-6, 0.95, 0.3),
    "poolformer_m48": ((8, 8, 24, 8), M_WIDTHS, 1e-6, 0.95, 0.4),
}
for _name, (_depths, _widths, _scale, _crop, _drop) in _POOLFORMERS.items():
    _register_official(_name, f"PoolFormer-{_name[-3:].upper()}", hf_and_timm=True, drop_path=_drop, depths=_depths,
                       widths=_widths, layer_scale_init=_scale, crop_pct=_crop)  # fmt: skip

# The official hybrid and identity models (Table 5's hybrid rows and identity row; released weights).
_P, _A, _F = "pooling", "attention", "spatial_mlp"
_ATTENTION = {"norm": "layernorm", "crop_pct": 0.95}
_HYBRIDS = {  # name: description, mixers, extra settings
    "metaformer_id_s12": ("S12 with identity token mixers", ("identity",) * 4, {}),
    "metaformer_pppa_s12_224": ("S12 hybrid [Pool, Pool, Pool, Attention]", (_P, _P, _P, _A),
                                {**_ATTENTION, "pos_embed": (False, False, False, True)}),
    "metaformer_ppaa_s12_224": ("S12 hybrid [Pool, Pool, Attention, Attention]", (_P, _P, _A, _A),
                                {**_ATTENTION, "pos_embed": (False, False, True, False)}),
    "metaformer_pppf_s12_224": ("S12 hybrid [Pool, Pool, Pool, SpatialFC]", (_P, _P, _P, _F), {}),
    "metaformer_ppff_s12_224": ("S12 hybrid [Pool, Pool, SpatialFC, SpatialFC]", (_P, _P, _F, _F),
                                {"crop_pct": 0.95}),
}  # fmt: skip
for _name, (_description, _mixers, _extra) in _HYBRIDS.items():
    _register_official(_name, _description, hf_and_timm=False, **{**_S12, "mixers": _mixers, **_extra})

# The other ablation rows of Table 5, each a change of PoolFormer-S12 (no released weights; S12's recipe).
_ABLATIONS = {  # name: description, change
    **{f"poolformer_s12_pool{k}": (f"S12 ablation: pooling size {k}", {"pool_size": k}) for k in (5, 7, 9)},
    "metaformer_random_s12": ("S12 ablation: frozen global random matrix per block (+21.1M frozen)",
                              {"mixers": ("random",) * 4}),
    "metaformer_dwconv_s12": ("S12 ablation: 3x3 depthwise convolution mixer", {"mixers": ("dwconv",) * 4}),
    "poolformer_s12_layernorm": ("S12 ablation: LayerNorm over channels instead of MLN", {"norm": "layernorm"}),
    "poolformer_s12_batchnorm": ("S12 ablation: BatchNorm instead of MLN", {"norm": "batchnorm"}),
    "poolformer_s12_nonorm": ("S12 ablation: no normalization", {"norm": "none"}),
    "poolformer_s12_relu": ("S12 ablation: ReLU instead of GELU", {"act": "relu"}),
    "poolformer_s12_silu": ("S12 ablation: SiLU instead of GELU", {"act": "silu"}),
    "poolformer_s12_noresidual": ("S12 ablation: no residual connections (does not train)", {"residual": False}),
    "poolformer_s12_nomlp": ("S12 ablation: no channel MLP", {"use_mlp": False}),
}  # fmt: skip
for _name, (_description, _change) in _ABLATIONS.items():
    _REGISTRY[_name] = ModelSpec(_name, MetaFormerConfig(**{**_S12, **_change}), _description)


# The Baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024; sail-sg/metaformer): StarReLU, no biases,
# normed stem and downsampling, residual scales in the last two stages, pooled-then-normed heads.
_V2 = dict(layer_scale_init=None, res_scale_init=(None, None, 1.0, 1.0), bias=False, act="starrelu", crop_pct=1.0,
           stem_norm="layernorm_nobias", downsample_norm="layernorm_nobias", init="baselines")  # fmt: skip
_V2_SIZES = {"s12": ((2, 2, 6, 2), S_WIDTHS), "s24": ((4, 4, 12, 4), S_WIDTHS), "s36": ((6, 6, 18, 6), S_WIDTHS),
             "m36": ((6, 6, 18, 6), M_WIDTHS), "m48": ((8, 8, 24, 8), M_WIDTHS)}  # fmt: skip
_CONV_SIZES = {"s18": ((3, 3, 9, 3), S_WIDTHS), "s36": ((3, 12, 18, 3), S_WIDTHS),
               "m36": ((3, 12, 18, 3), (96, 192, 384, 576)), "b36": ((3, 12, 18, 3), (128, 256, 512, 768))}  # fmt: skip
_BASELINES = {  # family: title, sizes, mixers, norm, head
    "identityformer": ("IdentityFormer", _V2_SIZES, ("identity",) * 4, "groupnorm_nobias", "linear"),
    "randformer": ("RandFormer", _V2_SIZES, ("identity", "identity", "random", "random"), "groupnorm_nobias",
                   "linear"),
    "poolformerv2": ("PoolFormerV2", _V2_SIZES, ("pooling",) * 4, "groupnorm_nobias", "linear"),
    "convformer": ("ConvFormer", _CONV_SIZES, ("sepconv",) * 4, "layernorm_nobias", "mlp"),
    "caformer": ("CAFormer", _CONV_SIZES, ("sepconv", "sepconv", "attention", "attention"), "layernorm_nobias", "mlp"),
}  # fmt: skip
# The official scripts (scripts/*.sh): AdamW at 4e-3 for 4096 images (LAMB at 8e-3 for CAFormer), warm-up of 5
# epochs (20 for ConvFormer and CAFormer), and per model a drop path (and CAFormer a head dropout).
_BASELINES_TRAINING = {  # family: optimizer, lr per 1024 images, warm-up, drop path per size, head dropout per size
    "identityformer": ("adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.4), (0.0,) * 5),
    "randformer": ("adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.3), (0.0,) * 5),
    "poolformerv2": ("adamw", 1e-3, 5, (0.1, 0.1, 0.2, 0.3, 0.4), (0.0,) * 5),
    "convformer": ("adamw", 1e-3, 20, (0.2, 0.3, 0.4, 0.6), (0.0,) * 4),
    "caformer": ("lamb", 2e-3, 20, (0.15, 0.3, 0.4, 0.6), (0.0, 0.4, 0.4, 0.5)),
}
_FINETUNE_384 = {  # family: lr at 1024 images, drop path per size, head dropout per size (scripts/*/finetune_*_384.sh)
    "convformer": (5e-5, (0.3, 0.5, 0.8, 0.8), (0.4, 0.4, 0.5, 0.5)),
    "caformer": (1e-4, (0.3, 0.5, 0.7, 0.8), (0.4, 0.4, 0.4, 0.5)),
}
for _family, (_title, _sizes, _mixers, _norm, _head) in _BASELINES.items():
    _optimizer, _lr, _warmup, _drops, _head_drops = _BASELINES_TRAINING[_family]
    _ft_lr, _ft_drops, _ft_heads = _FINETUNE_384.get(_family, (None, (None,) * 5, (None,) * 5))
    for _i, ((_size, (_depths, _widths)), _drop, _head_drop) in enumerate(
        zip(_sizes.items(), _drops, _head_drops, strict=True)
    ):
        _name = f"{_family}_{_size}"
        _finetune = (_ft_lr, _ft_drops[_i], _ft_heads[_i]) if _ft_lr else None
        _REGISTRY[_name] = ModelSpec(
            _name,
            MetaFormerConfig(**_V2, depths=_depths, widths=_widths, mixers=_mixers, norm=_norm, head=_head),
            f"{_title}-{_size.upper()} (MetaFormer Baselines)",
            timm_name=_name if _family in IN_TIMM else None,
            training=TrainDefaults(_drop, _optimizer, _lr, _warmup, _head_drop, _finetune),
        )

# Dense prediction (Table 3/4 of the paper): Semantic FPN on ADE20K (150 classes), RetinaNet and Mask R-CNN on
# COCO (80 classes), on the PoolFormer backbones; and the same on the Baselines (which published no dense models).
# RandFormer has none: its frozen token mixing fixes the input to 224x224.
_POOLFORMERS_DET = ("poolformer_s12", "poolformer_s24", "poolformer_s36")
_CONV_DET = ("convformer_s18", "convformer_s36", "caformer_s18", "caformer_s36")
_SEGMENTATION_TRUNKS = [*_POOLFORMERS, *(f"{family}_{size}" for family in ("identityformer", "poolformerv2")
                                        for size in _V2_SIZES), *(f"{family}_{size}" for family in ("convformer",
                                        "caformer") for size in _CONV_SIZES)]  # fmt: skip
_DENSE = [
    ("fpn", "segmentation", "Semantic FPN", 150, _SEGMENTATION_TRUNKS),
    ("retinanet", "detection", "RetinaNet", 80, [*_POOLFORMERS_DET, *_CONV_DET]),
    ("mask_rcnn", "instance_segmentation", "Mask R-CNN", 80, [*_POOLFORMERS_DET, *_CONV_DET]),
]
for _prefix, _task, _title, _classes, _trunks in _DENSE:
    for _trunk_name in _trunks:
        _trunk = _REGISTRY[_trunk_name]
        _name = f"{_prefix}_{_trunk_name}"
        _REGISTRY[_name] = ModelSpec(
            _name, _trunk.config, f"{_title} on {_trunk.description.split(' (')[0]}", task=_task,
            backbone=_trunk.name, default_classes=_classes, training=TrainDefaults(drop_path=0.0),
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
    """The registered model ``name``; a release tag (``caformer_s18.sail_in1k_384``) names its architecture."""
    if isinstance(name, str) and "." in name:
        name = split_tag(name)[0]
    if not isinstance(name, str) or name not in _REGISTRY:
        close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; see `metaformer list`"
        raise ConfigError(f"unknown model {name!r}{hint}")
    return _REGISTRY[name]


def resolve_config(name: str, **overrides: object) -> MetaFormerConfig:
    """The registered config of ``name`` with ``overrides`` applied (unknown fields are an error)."""
    config = get_spec(name).config
    fields = {f.name for f in dataclasses.fields(MetaFormerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {name}; valid options: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **values)
