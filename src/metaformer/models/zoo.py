"""Named variants: the official PoolFormers, the official hybrids, one S12 model per ablation row, the MetaFormer
Baselines (IdentityFormer, RandFormer, PoolFormerV2, ConvFormer, CAFormer), InceptionNeXt, MambaOut, and the dense
models on them.

Architecture only, and no torch: what the weights are is in ``pretrained.py``, how each model was trained in its
task's recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass

from ..errors import ConfigError
from ..task_table import task as task_row
from .config import MetaFormerConfig
from .pretrained import split_tag

S_WIDTHS = (64, 128, 320, 512)
M_WIDTHS = (96, 192, 384, 768)


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its name, architecture and task."""

    name: str
    config: MetaFormerConfig
    description: str
    task: str = "classification"  # a key of metaformer.task_table.TASKS
    backbone: str | None = None  # dense models: the classifier whose trunk they use
    default_classes: int = 1000
    head: str | None = None  # dense models: fpn, upernet, retinanet or mask_rcnn (the task table's model class)


_REGISTRY: dict[str, ModelSpec] = {}


def _register(name: str, description: str, **config: object) -> None:
    _REGISTRY[name] = ModelSpec(name, MetaFormerConfig(**config), description)


# The five PoolFormers (Table 1 of the paper; official configurations).
_S12 = dict(depths=(2, 2, 6, 2), widths=S_WIDTHS, layer_scale_init=1e-5)
_POOLFORMERS = {  # name: depths, widths, layer scale
    "poolformer_s12": ((2, 2, 6, 2), S_WIDTHS, 1e-5),
    "poolformer_s24": ((4, 4, 12, 4), S_WIDTHS, 1e-5),
    "poolformer_s36": ((6, 6, 18, 6), S_WIDTHS, 1e-6),
    "poolformer_m36": ((6, 6, 18, 6), M_WIDTHS, 1e-6),
    "poolformer_m48": ((8, 8, 24, 8), M_WIDTHS, 1e-6),
}
for _name, (_depths, _widths, _scale) in _POOLFORMERS.items():
    _register(_name, f"PoolFormer-{_name[-3:].upper()}", depths=_depths, widths=_widths, layer_scale_init=_scale)

# The official hybrid and identity models (Table 5's hybrid rows and identity row; released weights).
_P, _A, _F = "pooling", "attention", "spatial_mlp"
_HYBRIDS = {  # name: description, mixers, extra settings
    "metaformer_id_s12": ("S12 with identity token mixers", ("identity",) * 4, {}),
    "metaformer_pppa_s12_224": (
        "S12 hybrid [Pool, Pool, Pool, Attention]",
        (_P, _P, _P, _A),
        {"norm": "layernorm", "pos_embed": (False, False, False, True)},
    ),
    "metaformer_ppaa_s12_224": (
        "S12 hybrid [Pool, Pool, Attention, Attention]",
        (_P, _P, _A, _A),
        {"norm": "layernorm", "pos_embed": (False, False, True, False)},
    ),
    "metaformer_pppf_s12_224": ("S12 hybrid [Pool, Pool, Pool, SpatialFC]", (_P, _P, _P, _F), {}),
    "metaformer_ppff_s12_224": ("S12 hybrid [Pool, Pool, SpatialFC, SpatialFC]", (_P, _P, _F, _F), {}),
}
for _name, (_description, _mixers, _extra) in _HYBRIDS.items():
    _register(_name, _description, **{**_S12, "mixers": _mixers, **_extra})

# The other ablation rows of Table 5, each a change of PoolFormer-S12 (no released weights).
_ABLATIONS = {  # name: description, change
    **{
        f"poolformer_s12_pool{k}": (f"S12 ablation: pooling size {k}", {"mixer_settings": {"pool_size": k}})
        for k in (5, 7, 9)
    },
    "metaformer_random_s12": (
        "S12 ablation: frozen global random matrix per block (+21.1M frozen)",
        {"mixers": ("random",) * 4},
    ),
    "metaformer_dwconv_s12": ("S12 ablation: 3x3 depthwise convolution mixer", {"mixers": ("dwconv",) * 4}),
    "poolformer_s12_layernorm": ("S12 ablation: LayerNorm over channels instead of MLN", {"norm": "layernorm"}),
    "poolformer_s12_batchnorm": ("S12 ablation: BatchNorm instead of MLN", {"norm": "batchnorm"}),
    "poolformer_s12_nonorm": ("S12 ablation: no normalization", {"norm": "none"}),
    "poolformer_s12_relu": ("S12 ablation: ReLU instead of GELU", {"act": "relu"}),
    "poolformer_s12_silu": ("S12 ablation: SiLU instead of GELU", {"act": "silu"}),
    "poolformer_s12_noresidual": (
        "S12 ablation: no residual connections (does not train)",
        {"blocks": ("no_residual",) * 4},
    ),
    "poolformer_s12_nomlp": ("S12 ablation: no channel MLP", {"blocks": ("mixer_only",) * 4}),
}
for _name, (_description, _change) in _ABLATIONS.items():
    _register(_name, _description, **{**_S12, **_change})


# The Baselines (Yu et al., "MetaFormer Baselines for Vision", TPAMI 2024; sail-sg/metaformer): StarReLU, no biases,
# normed stem and downsampling, residual scales in the last two stages, pooled-then-normed heads.
_V2 = dict(
    layer_scale_init=None,
    res_scale_init=(None, None, 1.0, 1.0),
    mlp_bias=False,
    act="starrelu",
    stem_norm="layernorm_nobias",
    downsample_norm="layernorm_nobias",
    init="baselines",
)
_V2_SIZES = {
    "s12": ((2, 2, 6, 2), S_WIDTHS),
    "s24": ((4, 4, 12, 4), S_WIDTHS),
    "s36": ((6, 6, 18, 6), S_WIDTHS),
    "m36": ((6, 6, 18, 6), M_WIDTHS),
    "m48": ((8, 8, 24, 8), M_WIDTHS),
}
_CONV_SIZES = {
    "s18": ((3, 3, 9, 3), S_WIDTHS),
    "s36": ((3, 12, 18, 3), S_WIDTHS),
    "m36": ((3, 12, 18, 3), (96, 192, 384, 576)),
    "b36": ((3, 12, 18, 3), (128, 256, 512, 768)),
}
_NO_BIAS = {"proj_bias": False}  # CAFormer's attention projects without a bias
_BASELINES = {  # family: title, sizes, mixers, their settings, norm, head
    "identityformer": ("IdentityFormer", _V2_SIZES, ("identity",) * 4, {}, "groupnorm_nobias", "linear"),
    "randformer": (
        "RandFormer",
        _V2_SIZES,
        ("identity", "identity", "random", "random"),
        {},
        "groupnorm_nobias",
        "linear",
    ),
    "poolformerv2": ("PoolFormerV2", _V2_SIZES, ("pooling",) * 4, {}, "groupnorm_nobias", "linear"),
    "convformer": ("ConvFormer", _CONV_SIZES, ("sepconv",) * 4, {}, "layernorm_nobias", "mlp"),
    "caformer": (
        "CAFormer",
        _CONV_SIZES,
        ("sepconv", "sepconv", "attention", "attention"),
        ({}, {}, _NO_BIAS, _NO_BIAS),
        "layernorm_nobias",
        "mlp",
    ),
}
for _family, (_title, _sizes, _mixers, _settings, _norm, _head) in _BASELINES.items():
    for _size, (_depths, _widths) in _sizes.items():
        _register(
            f"{_family}_{_size}",
            f"{_title}-{_size.upper()} (MetaFormer Baselines)",
            **_V2,
            depths=_depths,
            widths=_widths,
            mixers=_mixers,
            mixer_settings=_settings,
            norm=_norm,
            head=_head,
        )

# InceptionNeXt (Yu et al., "InceptionNeXt: When Inception Meets ConvNeXt", CVPR 2024; sail-sg/inceptionnext):
# MetaNeXt blocks with the Inception depthwise mixer, BatchNorm, a 4x4 patch stem and 2x2 downsampling, an MLP head.
# Named as timm names them (the official code says inceptionnext_tiny).
_METANEXT = dict(
    blocks=("metanext",) * 4,
    mixers=("inception",) * 4,
    norm="batchnorm",
    mlp_ratios=(4, 4, 4, 3),
    layer_scale_init=1e-6,
    stem=(4, 4, 0),
    stem_norm="batchnorm",
    downsample=(2, 2, 0),
    downsample_norm="batchnorm",
    head="metanext",
    init="baselines",
)
_INCEPTION_SIZES = {  # size: depths, widths, mixer settings
    "atto": ((2, 2, 6, 2), (40, 80, 160, 320), {"band_kernel_size": 9, "branch_ratio": 0.25}),
    "tiny": ((3, 3, 9, 3), M_WIDTHS, {}),
    "small": ((3, 3, 27, 3), M_WIDTHS, {}),
    "base": ((3, 3, 27, 3), (128, 256, 512, 1024), {}),
}
for _size, (_depths, _widths, _settings) in _INCEPTION_SIZES.items():
    _register(
        f"inception_next_{_size}",
        f"InceptionNeXt-{_size.capitalize()}",
        **_METANEXT,
        depths=_depths,
        widths=_widths,
        mixer_settings=_settings,
    )

# MambaOut (Yu and Wang, "MambaOut: Do We Really Need Mamba for Vision?", 2024; yuweihao/MambaOut): Gated CNN
# blocks (hidden width 8/3, a 7x7 depthwise convolution on part of it), LayerNorm (eps 1e-6), a two-convolution
# stem and normed 3x3 downsampling, a pooled-then-normed MLP head. The *_rw models are timm's own (no middle norm in
# the stem, the norm before each downsampling convolution, layer scale, an MLP head without a hidden norm).
_MAMBAOUT = dict(
    blocks=("gated_cnn",) * 4,
    mixers=("partial_dwconv",) * 4,
    norm="layernorm_eps1e-6",
    mlp_ratios=8 / 3,
    layer_scale_init=None,
    stem=(3, 2, 1),
    stem_kind="two_conv",
    stem_norm="layernorm_eps1e-6",
    stem_mid_norm="layernorm_eps1e-6",
    downsample=(3, 2, 1),
    downsample_norm="layernorm_eps1e-6",
    downsample_norm_first=False,
    head="mambaout",
    init="baselines",
)
_MAMBAOUT_RW = dict(stem_mid_norm="none", downsample_norm_first=True, layer_scale_init=1e-6, head="norm_mlp")
_B_WIDTHS = (128, 256, 512, 768)
_MAMBAOUT_SIZES = {  # name: description, depths, widths, changes
    "femto": ("Femto", (3, 3, 9, 3), (48, 96, 192, 288), {}),
    "kobe": ("Kobe (24 blocks)", (3, 3, 15, 3), (48, 96, 192, 288), {}),
    "tiny": ("Tiny", (3, 3, 9, 3), (96, 192, 384, 576), {}),
    "small": ("Small", (3, 4, 27, 3), (96, 192, 384, 576), {}),
    "base": ("Base", (3, 4, 27, 3), _B_WIDTHS, {}),
    "small_rw": ("Small (timm's)", (3, 4, 27, 3), (96, 192, 384, 576), _MAMBAOUT_RW),
    "base_short_rw": (
        "Base short (timm's)",
        (3, 3, 25, 3),
        _B_WIDTHS,
        {**_MAMBAOUT_RW, "mlp_ratios": 3.0, "mixer_settings": {"conv_ratio": 1.25}},
    ),
    "base_tall_rw": (
        "Base tall (timm's)",
        (3, 4, 30, 3),
        _B_WIDTHS,
        {**_MAMBAOUT_RW, "mlp_ratios": 2.5, "mixer_settings": {"conv_ratio": 1.25}},
    ),
    "base_wide_rw": (
        "Base wide (timm's)",
        (3, 4, 27, 3),
        _B_WIDTHS,
        {**_MAMBAOUT_RW, "mlp_ratios": 3.0, "mixer_settings": {"conv_ratio": 1.5}, "act": "silu"},
    ),
    "base_plus_rw": (
        "Base plus (timm's)",
        (3, 4, 30, 3),
        _B_WIDTHS,
        {**_MAMBAOUT_RW, "mlp_ratios": 3.0, "mixer_settings": {"conv_ratio": 1.5}, "act": "silu"},
    ),
}
for _size, (_title, _depths, _widths, _change) in _MAMBAOUT_SIZES.items():
    _register(
        f"mambaout_{_size}",
        f"MambaOut-{_title}",
        **{**_MAMBAOUT, "depths": _depths, "widths": _widths, **_change},
    )

# Dense prediction (Table 3/4 of the paper): Semantic FPN on ADE20K (150 classes), RetinaNet and Mask R-CNN on
# COCO (80 classes), on the PoolFormer backbones; and the same on the Baselines (which published no dense models).
# UperNet, the ADE20K head of the InceptionNeXt and MambaOut papers, on every trunk Semantic FPN takes.
# RandFormer has none: its frozen token mixing fixes the input to 224x224.
_POOLFORMERS_DET = ("poolformer_s12", "poolformer_s24", "poolformer_s36")
_CONV_DET = ("convformer_s18", "convformer_s36", "caformer_s18", "caformer_s36")
# InceptionNeXt published no FPN or detectors (its paper reports UperNet): these take its trunk as the others do,
# each stage's output through a BatchNorm of its own.
_INCEPTION_DET = ("inception_next_tiny", "inception_next_small")
# MambaOut's paper reports Mask R-CNN on Tiny and Small; its code has no dense models: each stage's output through a
# LayerNorm of its own, as for the Baselines.
_MAMBAOUT_DET = ("mambaout_tiny", "mambaout_small")
_SEGMENTATION_TRUNKS = [
    *_POOLFORMERS,
    *(f"{family}_{size}" for family in ("identityformer", "poolformerv2") for size in _V2_SIZES),
    *(f"{family}_{size}" for family in ("convformer", "caformer") for size in _CONV_SIZES),
    *(f"inception_next_{size}" for size in _INCEPTION_SIZES),
    *(f"mambaout_{size}" for size in _MAMBAOUT_SIZES if not size.endswith("_rw")),
]
_DETECTION_TRUNKS = [*_POOLFORMERS_DET, *_CONV_DET, *_INCEPTION_DET, *_MAMBAOUT_DET]
_DENSE = [
    ("fpn", "segmentation", "Semantic FPN", 150, _SEGMENTATION_TRUNKS),
    ("upernet", "segmentation", "UperNet", 150, _SEGMENTATION_TRUNKS),
    ("retinanet", "detection", "RetinaNet", 80, _DETECTION_TRUNKS),
    ("mask_rcnn", "instance_segmentation", "Mask R-CNN", 80, _DETECTION_TRUNKS),
]
for _prefix, _task, _title, _classes, _trunks in _DENSE:
    for _trunk_name in _trunks:
        _trunk = _REGISTRY[_trunk_name]
        _name = f"{_prefix}_{_trunk_name}"
        _description = f"{_title} on {_trunk.description.split(' (')[0]}"
        _REGISTRY[_name] = ModelSpec(_name, _trunk.config, _description, _task, _trunk.name, _classes, _prefix)


def register_model(
    name: str,
    config: MetaFormerConfig,
    description: str = "",
    *,
    task: str = "classification",
    num_classes: int = 1000,
    head: str | None = None,
) -> ModelSpec:
    """Register a model of architecture ``config`` under ``name`` (user code: a model with a mixer of its own), for
    ``create_model``, ``list_models`` and the command line run from that code. ``task`` makes it a dense model on
    that trunk (``"segmentation"``: a Semantic FPN, or UperNet with ``head="upernet"``; ``"detection"``: RetinaNet;
    ``"instance_segmentation"``: Mask R-CNN) with ``num_classes`` classes."""
    row = task_row(task)  # an unknown kind is an error
    if head is not None and head not in dict(row.heads):
        known = [h for h, _ in row.heads]
        raise ConfigError(f"head {head!r}: a {task} model takes {known or 'no'} other head(s) than its default")
    if name in _REGISTRY:
        raise ConfigError(f"a model is already registered as {name!r}")
    if "." in name:
        raise ConfigError(f"{name!r}: a '.' separates a release tag; name the model without one")
    spec = ModelSpec(name, config, description or f"{name} (registered)", task, None, num_classes, head)
    _REGISTRY[name] = spec
    return spec


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


def resolve_config(spec: ModelSpec, **overrides: object) -> MetaFormerConfig:
    """The architecture of ``spec`` (a dense model's: its backbone's) with ``overrides`` applied (unknown fields are
    an error)."""
    config, name = spec.config, spec.name
    fields = {f.name for f in dataclasses.fields(MetaFormerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {name}; valid options: {sorted(fields)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    return dataclasses.replace(config, **values)
