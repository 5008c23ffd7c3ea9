"""The parameter names of every format we read and write, each described once as a map from our names to theirs.

Loading inverts a map against the model's own keys, so a key that does not fit is reported, never dropped.
Classifier formats (one MetaFormer trunk, with or without its head): ours, the official sail-sg release, timm,
Hugging Face and mmcls/mmpretrain. Dense formats (a whole segmentation or detection model): ours, and the files
mmsegmentation and mmdetection write (the paper's official dense checkpoints were made with them).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

import torch

from ..errors import CheckpointError
from ..models.config import MetaFormerConfig
from ..models.mixers import mixer_class

StateDict = dict[str, torch.Tensor]
CLASSIFIER_FORMATS = ("metaformer", "official", "timm", "hf", "mmcls")
POOLFORMER_ONLY = ("hf", "mmcls")  # Hugging Face transformers and mmpretrain have PoolFormer v1 alone
DENSE_FORMATS = ("metaformer-dense", "mmseg", "mmdet")
# Keys only a whole dense model of ours has (a classifier has "head.weight"; an mmcls file "backbone.network...").
OUR_DENSE_PREFIXES = (
    "neck.",
    "aux_head.",
    "head.scale_heads.",
    "head.classification_head.",
    "backbone.fpn.",
    "backbone.body.",
    "rpn.",
    "roi_heads.",
)


# ----------------------------------------------------------------------------------------- classifier formats


@functools.cache
def official_indices(config: MetaFormerConfig) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Positions in the official ``network`` list of each stage's blocks, downsampling and position embedding."""
    blocks, downsample, pos_embed = {}, {}, {}
    index = 0
    for stage in range(len(config.depths)):
        if stage > 0:
            downsample[stage] = index
            index += 1
        if config.pos_embed[stage]:
            pos_embed[stage] = index
            index += 1
        blocks[stage] = index
        index += 1
    return blocks, downsample, pos_embed


def _to_official(key: str, config: MetaFormerConfig) -> str:
    if config.is_baseline:
        return _to_official_baselines(key)
    if config.is_metanext:
        return _to_metanext(key)
    if config.is_mambaout:
        return _to_official_mambaout(key)
    blocks, downsample, pos_embed = official_indices(config)
    key = re.sub(r"^stem\.proj\.", "patch_embed.proj.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"network.{downsample[int(m[1])]}.", key)
    key = re.sub(r"^stages\.(\d+)\.pos_embed$", lambda m: f"network.{pos_embed[int(m[1])]}.pos_embed", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{blocks[int(m[1])]}.", key)
    key = re.sub(r"^out_norms\.(\d+)\.", lambda m: f"norm{blocks[int(m[1])]}.", key)
    return re.sub(r"\.layer_scale(\d)\.scale$", r".layer_scale_\1", key)


def _to_official_baselines(key: str) -> str:
    # sail-sg/metaformer's metaformer_baselines.py: the stem is downsampling layer 0, with its norm after it.
    key = re.sub(r"^stem\.proj\.", "downsample_layers.0.conv.", key)
    key = re.sub(r"^stem\.norm\.", "downsample_layers.0.post_norm.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.proj\.", r"downsample_layers.\1.conv.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.pre_norm.", key)
    return re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)


def _to_metanext(key: str) -> str:
    # sail-sg/inceptionnext, whose names timm kept: stem and downsampling as Sequentials, the layer scale "gamma".
    key = re.sub(r"^stem\.proj\.", "stem.0.", key)
    key = re.sub(r"^stem\.norm\.", "stem.1.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"stages.\1.downsample.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.proj\.", r"stages.\1.downsample.1.", key)
    return re.sub(r"\.layer_scale\.scale$", ".gamma", key)


def _to_official_mambaout(key: str) -> str:
    # yuweihao/MambaOut: the stem is downsampling layer 0; blocks hold their convolution directly.
    key = re.sub(r"^stem\.", "downsample_layers.0.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.proj\.", r"downsample_layers.\1.conv.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.norm\.", r"downsample_layers.\1.norm.", key)
    key = key.replace(".token_mixer.conv.", ".conv.")
    return re.sub(r"^stages\.(\d+)\.blocks\.(\d+)\.", r"stages.\1.\2.", key)


def _to_timm_mambaout(key: str) -> str:
    # timm's MambaOut: the final norm and the MLP head's layers are all in its head; the layer scale is "ls.gamma".
    key = key.replace(".downsample.proj.", ".downsample.conv.")
    key = key.replace(".token_mixer.conv.", ".conv.")
    key = re.sub(r"\.layer_scale\.scale$", ".ls.gamma", key)
    key = re.sub(r"^head\.fc1\.", "head.pre_logits.fc.", key)
    key = re.sub(r"^head\.norm\.", "head.pre_logits.norm.", key)
    key = re.sub(r"^head\.fc2\.", "head.fc.", key)
    return re.sub(r"^norm\.", "head.norm.", key)


def _to_mmcls(key: str, config: MetaFormerConfig) -> str:
    # mmcls/mmpretrain's PoolFormer has the official names under "backbone."; its classifier's final norm is the
    # last stage's output norm, and its head a LinearClsHead.
    if key.startswith("head."):
        return "head.fc." + key[len("head.") :]
    if key.startswith("norm."):
        key = f"out_norms.{len(config.depths) - 1}." + key[len("norm.") :]
    return "backbone." + _to_official(key, config)


def _to_timm(key: str, config: MetaFormerConfig) -> str:
    if config.is_metanext:
        return _to_metanext(key)
    if config.is_mambaout:
        return _to_timm_mambaout(key)
    key = re.sub(r"^stem\.proj\.", "stem.conv.", key)
    key = key.replace(".downsample.proj.", ".downsample.conv.")
    key = re.sub(r"^head\.(fc1|norm|fc2)\.", r"head.fc.\1.", key)  # ConvFormer's and CAFormer's MLP head
    key = re.sub(r"^norm\.", "head.norm.", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


_HF_BLOCK_PARTS = {
    "norm1.": "before_norm.",
    "norm2.": "after_norm.",
    "mlp.fc1.": "output.conv1.",
    "mlp.fc2.": "output.conv2.",
    "layer_scale1.scale": "layer_scale_1",
    "layer_scale2.scale": "layer_scale_2",
}


def _to_hf(key: str, config: MetaFormerConfig) -> str:
    key = re.sub(r"^stem\.proj\.", "poolformer.encoder.patch_embeddings.0.projection.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.proj\.", r"poolformer.encoder.patch_embeddings.\1.projection.", key)
    match = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if match:
        rest = match[3]
        for ours, theirs in _HF_BLOCK_PARTS.items():
            if rest.startswith(ours):
                rest = theirs + rest[len(ours) :]
        key = f"poolformer.encoder.block.{match[1]}.{match[2]}.{rest}"
    return re.sub(r"^head\.", "classifier.", key)


CLASSIFIER_KEYS: dict[str, Callable[[str, MetaFormerConfig], str]] = {
    "metaformer": lambda key, config: key,
    "official": _to_official,
    "timm": _to_timm,
    "hf": _to_hf,
    "mmcls": _to_mmcls,
}


def classifier_key(format: str, key: str, config: MetaFormerConfig) -> str:
    """Our trunk, norm or head parameter ``key`` as format ``format`` names it."""
    return CLASSIFIER_KEYS[format](key, config)


_POINTWISE = re.compile(r"^stages\.(\d+)\.blocks\.\d+\.(mlp\.fc[12]|token_mixer\.pwconv[12]|fc[12])\.weight$")


def stored_as_linear(format: str, key: str, config: MetaFormerConfig) -> bool:
    """Whether ``format`` keeps our 1x1 convolution ``key`` as an ``nn.Linear`` weight ``[out, in]``: the
    Baselines' official code runs channels-last throughout, timm only in CAFormer's attention stages; MambaOut's
    official code and timm's both run channels-last."""
    match = _POINTWISE.match(key)
    if match and config.is_mambaout:
        return format in ("official", "timm")
    if not match or not config.is_baseline:
        return False
    if format == "official":
        return True
    sequence_stage = getattr(mixer_class(config.mixers[int(match[1])]), "sequence_mixer", False)
    return format == "timm" and match[2].startswith("mlp") and sequence_stage


def convert_state_dict(state_dict: StateDict, config: MetaFormerConfig, to: str) -> StateDict:
    """Our classifier state_dict in format ``to``: keys renamed, pointwise weights shaped as the format keeps
    them (values are shared, not copied)."""
    if to not in CLASSIFIER_KEYS:
        raise CheckpointError(f"unknown format {to!r}; choose one of {CLASSIFIER_FORMATS}")
    if to in POOLFORMER_ONLY and not config.is_poolformer_v1:
        raise CheckpointError(
            f"the {to} format has PoolFormer v1 only, not the MetaFormer Baselines, InceptionNeXt or MambaOut; "
            "write ours (safetensors), the official one or timm's"
        )
    return {
        classifier_key(to, k, config): v.flatten(1) if stored_as_linear(to, k, config) else v
        for k, v in state_dict.items()
    }


def as_pointwise(value: torch.Tensor, wanted: torch.Size) -> torch.Tensor | None:
    """A linear weight ``[out, in]`` as the 1x1 convolution ``wanted`` (or back), None if it is not one."""
    pointwise = [shape for shape in (value.shape, wanted) if len(shape) == 4 and tuple(shape[2:]) == (1, 1)]
    linear = [shape for shape in (value.shape, wanted) if len(shape) == 2]
    if len(pointwise) == 1 and len(linear) == 1 and tuple(value.shape[:2]) == tuple(wanted[:2]):
        return value.reshape(wanted)
    return None


# -------------------------------------------------------------------------------------------- dense formats

# A dense key map gives, for one of our keys, the foreign key and how its value becomes ours (None: as it is).
Transform = Callable[[torch.Tensor], torch.Tensor] | None
DenseKey = tuple[str, Transform]


def _background_first(rows: torch.Tensor) -> torch.Tensor:
    # mmdet's box classifier puts the background class last; torchvision's first.
    return torch.cat([rows[-1:], rows[:-1]])


def _background_zeros(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    # mmdet's class-specific box regression and mask logits have no rows for the background, which torchvision
    # computes and never uses.
    return lambda rows: torch.cat([rows.new_zeros(size, *rows.shape[1:]), rows])


_MMSEG = [  # (our pattern, their replacement) for Semantic FPN's neck and head
    (r"^neck\.lateral\.(\d+)\.", r"neck.lateral_convs.\1.conv."),
    (r"^neck\.output\.(\d+)\.", r"neck.fpn_convs.\1.conv."),
    (r"^head\.scale_heads\.(\d+)\.(\d+)\.0\.", r"decode_head.scale_heads.\1.\2.conv."),
    (r"^head\.scale_heads\.(\d+)\.(\d+)\.1\.", r"decode_head.scale_heads.\1.\2.bn."),
    (r"^head\.classifier\.", r"decode_head.conv_seg."),
    (r"^aux_head\.classifier\.", r"auxiliary_head.conv_seg."),
]
_CONV_MODULE = {"0": "conv", "1": "bn"}  # mmcv's ConvModule, our ConvNormReLU's layers
_MMSEG_UPERNET = [  # UperNet's head and auxiliary head, each ending in a ConvNormReLU's layer index
    (r"^head\.pyramid\.stages\.(\d+)\.1\.", r"decode_head.psp_modules.\1.1."),
    (r"^head\.bottleneck\.", r"decode_head.bottleneck."),
    (r"^head\.lateral\.(\d+)\.", r"decode_head.lateral_convs.\1."),
    (r"^head\.output\.(\d+)\.", r"decode_head.fpn_convs.\1."),
    (r"^head\.fuse\.", r"decode_head.fpn_bottleneck."),
    (r"^aux_head\.conv\.", r"auxiliary_head.convs.0."),
]
_MMDET_NECK = [
    (r"^backbone\.fpn\.inner_blocks\.(\d+)\.0\.", r"neck.lateral_convs.\1.conv."),
    (r"^backbone\.fpn\.layer_blocks\.(\d+)\.0\.", r"neck.fpn_convs.\1.conv."),
]
_MMDET_RETINANET = [
    (r"^backbone\.fpn\.extra_blocks\.p6\.", r"neck.fpn_convs.3.conv."),
    (r"^backbone\.fpn\.extra_blocks\.p7\.", r"neck.fpn_convs.4.conv."),
    (r"^head\.classification_head\.conv\.(\d+)\.0\.", r"bbox_head.cls_convs.\1.conv."),
    (r"^head\.classification_head\.cls_logits\.", r"bbox_head.retina_cls."),
    (r"^head\.regression_head\.conv\.(\d+)\.0\.", r"bbox_head.reg_convs.\1.conv."),
    (r"^head\.regression_head\.bbox_reg\.", r"bbox_head.retina_reg."),
]
_MMDET_MASK_RCNN = [
    (r"^rpn\.head\.conv\.0\.0\.", r"rpn_head.rpn_conv."),
    (r"^rpn\.head\.cls_logits\.", r"rpn_head.rpn_cls."),
    (r"^rpn\.head\.bbox_pred\.", r"rpn_head.rpn_reg."),
    (r"^roi_heads\.box_head\.fc6\.", r"roi_head.bbox_head.shared_fcs.0."),
    (r"^roi_heads\.box_head\.fc7\.", r"roi_head.bbox_head.shared_fcs.1."),
    (r"^roi_heads\.mask_head\.(\d+)\.0\.", r"roi_head.mask_head.convs.\1.conv."),
    (r"^roi_heads\.mask_predictor\.conv5_mask\.", r"roi_head.mask_head.upsample."),
]
_MMDET_MASK_RCNN_CLASSES = {  # our key: their key, transform
    "roi_heads.box_predictor.cls_score.weight": ("roi_head.bbox_head.fc_cls.weight", _background_first),
    "roi_heads.box_predictor.cls_score.bias": ("roi_head.bbox_head.fc_cls.bias", _background_first),
    "roi_heads.box_predictor.bbox_pred.weight": ("roi_head.bbox_head.fc_reg.weight", _background_zeros(4)),
    "roi_heads.box_predictor.bbox_pred.bias": ("roi_head.bbox_head.fc_reg.bias", _background_zeros(4)),
    "roi_heads.mask_predictor.mask_fcn_logits.weight": ("roi_head.mask_head.conv_logits.weight", _background_zeros(1)),
    "roi_heads.mask_predictor.mask_fcn_logits.bias": ("roi_head.mask_head.conv_logits.bias", _background_zeros(1)),
}


def dense_key(format: str, trunk: str, key: str, config: MetaFormerConfig) -> DenseKey | None:
    """Our dense model's ``key`` in ``format``, with its value transform; None if the format has no such key.
    ``trunk`` is where the model keeps its MetaFormer trunk (``DenseModel.trunk_prefix``)."""
    if format == "metaformer-dense":
        return key, None
    if key.startswith(trunk):  # the backbone: the official names under "backbone."
        return "backbone." + classifier_key("official", key[len(trunk) :], config), None
    if key in _MMDET_MASK_RCNN_CLASSES and format == "mmdet":
        return _MMDET_MASK_RCNN_CLASSES[key]
    if format == "mmseg":
        for pattern, replacement in _MMSEG_UPERNET:
            if re.match(pattern, key):
                rest = re.sub(pattern, "", key)  # "0.weight": the ConvNormReLU's layer, then the parameter
                layer, _, parameter = rest.partition(".")
                return re.match(pattern, key).expand(replacement) + f"{_CONV_MODULE[layer]}.{parameter}", None
    table = {"mmseg": _MMSEG, "mmdet": _MMDET_NECK + _MMDET_RETINANET + _MMDET_MASK_RCNN}[format]
    for pattern, replacement in table:
        if re.match(pattern, key):
            return re.sub(pattern, replacement, key), None
    return None


# ------------------------------------------------------------------------------------------------ detection


def detect_format(state_dict: StateDict) -> str:
    """Which of ``CLASSIFIER_FORMATS`` or ``DENSE_FORMATS`` a state_dict is in, from its parameter names."""
    keys = set(state_dict)
    if any(k.startswith("decode_head.") for k in keys):
        return "mmseg"
    if any(k.startswith(("bbox_head.", "rpn_head.", "roi_head.")) for k in keys):
        return "mmdet"
    if any(k.startswith(OUR_DENSE_PREFIXES) for k in keys):
        return "metaformer-dense"
    if any(k.startswith(("poolformer.encoder.", "encoder.patch_embeddings.")) for k in keys):
        return "hf"
    if "backbone.patch_embed.proj.weight" in keys:
        return "mmcls"
    if {"patch_embed.proj.weight", "downsample_layers.0.conv.weight", "downsample_layers.0.conv1.weight"} & keys:
        return "official"
    if "stem.conv1.weight" in keys:  # MambaOut's stem is named alike in ours and timm's; its blocks are not
        return "metaformer" if any(".token_mixer." in k for k in keys) else "timm"
    if "stem.conv.weight" in keys or "stem.0.weight" in keys:  # InceptionNeXt's official names are timm's
        return "timm"
    if "stem.proj.weight" in keys:
        return "metaformer"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected MetaFormer/PoolFormer weights in our, the official, timm's, "
        f"Hugging Face's, mmcls', mmseg's or mmdet's format; the first keys are {sorted(keys)[:5]}"
    )


_OUR_OLD_SCALE = re.compile(r"\.(layer|res)_scale[12]$")


def normalize(state_dict: StateDict) -> StateDict:
    """Keys as their format names them today: Hugging Face's PoolFormerModel (without a classifier) saves its keys
    without the ``poolformer.`` prefix, and our files of version 0.1 named the scales' parameters ``layer_scale1``
    where they are now ``layer_scale1.scale`` (scales became modules, as timm's)."""
    if any(k.startswith("encoder.patch_embeddings.") for k in state_dict):
        return {"poolformer." + k: v for k, v in state_dict.items()}
    if any(_OUR_OLD_SCALE.search(k) for k in state_dict):
        return {k + ".scale" if _OUR_OLD_SCALE.search(k) else k: v for k, v in state_dict.items()}
    return state_dict


def backbone_part(state_dict: StateDict) -> StateDict:
    """The trunk of a dense file (mmseg, mmdet, ours) under the official names, for a classifier or backbone."""
    if any(k.startswith("backbone.body.") for k in state_dict):  # our detectors
        return {k[len("backbone.body.") :]: v for k, v in state_dict.items() if k.startswith("backbone.body.")}
    return {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
