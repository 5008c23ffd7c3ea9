"""The one table of alternate executions: each row replaces one reference part by a faster form that computes the
same, for the parts it fits. ``fuse`` (inference), ``use_custom_backward`` (training), ``quantize`` (int8) and
the exporters read it; the parity tests run every row on its example model.

A row fits only parts of exactly the reference classes it was written for (a subclass may compute something else)
that have no hooks (a hook on a reference module must fire). What does not fit runs as the reference module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from ..models.blocks import GatedCNNBlock, MetaFormerBlock, MetaNeXtBlock, MixerOnlyBlock
from ..models.layers import ConvEmbed, ConvMlp, GroupNorm1, LayerNormChannel, Scale, SquaredReLU, StarReLU
from ..models.mixers import IdentityMixer, PartialDepthwiseConv, Pooling, SepConv
from .inference import (
    DecomposedGroupNorm1,
    FusedConvEmbed,
    FusedGatedCNN,
    FusedIdentity,
    FusedMetaNeXt,
    FusedMlp,
    FusedPooling,
    FusedSepConv,
    LinearMlp,
)
from .training import TrainingBlock, mlp_branch, pooling_branch

Reason = str | None  # why a row does not fit a part; None: it fits

USES = ("inference", "training", "int8", "export")
PARTS = ("token", "mlp", "module")  # a block's token-mixer branch, its channel-MLP branch, or a whole module


@dataclass(frozen=True)
class Swap:
    """One row: where a faster form applies and what it is.

    ``replacement``: for a ``module`` row, builds the module that replaces the matched one; for a block branch at
    inference, builds the branch's module from the block; in training, computes the branch in its place
    (``replacement(block, x)``).
    """

    use: str
    part: str
    name: str
    fits: Callable[[nn.Module], Reason]
    replacement: Callable
    example: str  # a registered model it applies to, on which the parity tests run it
    tolerance: float = 1e-4  # the largest float32 output difference from the reference the tests allow


def _unhooked(*modules: nn.Module) -> Reason:
    for module in modules:
        if module._forward_hooks or module._forward_pre_hooks or module._backward_hooks:
            return f"{type(module).__name__} has hooks, which must see it run"
    return None


def _exactly(module: nn.Module, *classes: type) -> Reason:
    if type(module) in classes:
        return None
    return f"{type(module).__name__} is not {' or '.join(c.__name__ for c in classes)}"


def _first(*checks: Callable[[], Reason]) -> Reason:
    for check in checks:
        reason = check()
        if reason:
            return reason
    return None


def _scale(module: nn.Module) -> Reason:
    return _exactly(module, Scale, nn.Identity)


def _token_parts(block: nn.Module, mixer: type, norms: tuple[type, ...]) -> Reason:
    return _first(
        lambda: _exactly(block.token_mixer, mixer),
        lambda: _exactly(block.norm1, *norms),
        lambda: _scale(block.layer_scale1),
        lambda: _scale(block.res_scale1),
        lambda: _unhooked(block.norm1, block.token_mixer, block.layer_scale1, block.res_scale1),
    )


# Norms whose affine folds through each form (the per-token LayerNorm does not commute with the pooling).
_SHIFT_FREE = (GroupNorm1, nn.BatchNorm2d, nn.Identity)
_AFFINE = (GroupNorm1, LayerNormChannel, nn.BatchNorm2d, nn.Identity)
_FOLDED_ACTS = (nn.GELU, nn.ReLU, nn.SiLU, StarReLU)


def _mlp_parts(block: nn.Module) -> Reason:
    if not hasattr(block, "mlp"):
        return "the block has no channel MLP"
    mlp = block.mlp
    return _first(
        lambda: _exactly(mlp, ConvMlp),
        lambda: _exactly(mlp.fc1, nn.Conv2d) or _exactly(mlp.fc2, nn.Conv2d),
        lambda: _exactly(block.norm2, *_AFFINE),
        lambda: _scale(block.layer_scale2),
        lambda: _scale(block.res_scale2),
        lambda: _unhooked(block.norm2, mlp, mlp.fc1, mlp.act, mlp.fc2, block.layer_scale2, block.res_scale2),
    )


def _folded_mlp(block: nn.Module) -> Reason:
    return _mlp_parts(block) or _exactly(block.mlp.act, *_FOLDED_ACTS)


def _plain_residual(module: nn.Module) -> Reason:
    return None if isinstance(module, nn.Identity) else "the residual is scaled"


def _training_pooling(block: nn.Module) -> Reason:
    return _first(
        lambda: _token_parts(block, Pooling, (GroupNorm1,)),
        lambda: None if block.norm1.bias is not None else "the norm has no bias",
        lambda: _plain_residual(block.res_scale1),
    )


def _training_mlp(block: nn.Module) -> Reason:
    # Exact GELU with biases and no dropout after a one-group norm with a plain residual: what the function computes.
    mlp = getattr(block, "mlp", None)
    return _first(
        lambda: _mlp_parts(block),
        lambda: _exactly(block.norm2, GroupNorm1),
        lambda: _exactly(mlp.act, nn.GELU),
        lambda: None if mlp.act.approximate == "none" else "GELU is the tanh approximation",
        lambda: None if mlp.drop.p == 0 else "the MLP has dropout",
        lambda: None if mlp.fc1.bias is not None and mlp.fc2.bias is not None else "the MLP has no biases",
        lambda: _plain_residual(block.res_scale2),
    )


def _metanext_block(block: nn.Module) -> Reason:
    mlp = getattr(block, "mlp", None)
    return _first(
        lambda: _exactly(block, MetaNeXtBlock),
        lambda: _exactly(block.norm, *_AFFINE),
        lambda: _exactly(mlp, ConvMlp),
        lambda: _exactly(mlp.fc1, nn.Conv2d) or _exactly(mlp.fc2, nn.Conv2d),
        lambda: _exactly(mlp.act, nn.GELU, nn.ReLU, nn.SiLU),
        lambda: _scale(block.layer_scale),
        lambda: _unhooked(block, block.token_mixer, block.norm, mlp, mlp.fc1, mlp.act, mlp.fc2, block.layer_scale),
    )


def _gated_cnn_block(block: nn.Module) -> Reason:
    return _first(
        lambda: _exactly(block, GatedCNNBlock),
        lambda: _exactly(block.norm, *_AFFINE),
        lambda: _exactly(block.fc1, nn.Conv2d) or _exactly(block.fc2, nn.Conv2d),
        lambda: _exactly(block.token_mixer, PartialDepthwiseConv),
        lambda: _exactly(block.act, nn.GELU, nn.ReLU, nn.SiLU),
        lambda: _scale(block.layer_scale),
        lambda: _unhooked(block, block.norm, block.fc1, block.act, block.token_mixer, block.fc2, block.layer_scale),
    )


def _int8_mlp(mlp: nn.Module) -> Reason:
    return _exactly(mlp, FusedMlp) or _exactly(mlp.act, nn.GELU, nn.ReLU, nn.SiLU, SquaredReLU)


SWAPS: list[Swap] = [
    # inference (fuse): a block's branches, then whole modules
    Swap(
        "inference",
        "token",
        "pooling mixer as one blend: lerp(x, P(x), ls * g / sigma)",
        lambda b: _token_parts(b, Pooling, _SHIFT_FREE),
        FusedPooling,
        "poolformer_s12",
    ),
    Swap(
        "inference",
        "token",
        "identity mixer as one multiply-add",
        lambda b: _token_parts(b, IdentityMixer, _SHIFT_FREE),
        FusedIdentity,
        "metaformer_id_s12",
    ),
    Swap(
        "inference",
        "token",
        "separable convolution with the norm and scales folded into its pointwise layers",
        lambda b: _token_parts(b, SepConv, _AFFINE),
        FusedSepConv,
        "convformer_s18",
    ),
    Swap(
        "inference",
        "mlp",
        "channel MLP with the norm and scales folded into fc1 and fc2, oneDNN epilogues",
        _folded_mlp,
        FusedMlp,
        "poolformer_s12",
    ),
    Swap(
        "inference",
        "module",
        "InceptionNeXt's block with the norm and layer scale folded into the MLP, oneDNN epilogues",
        _metanext_block,
        FusedMetaNeXt,
        "inception_next_atto",
    ),
    Swap(
        "inference",
        "module",
        "MambaOut's Gated CNN block with the norm and layer scale folded, the gate's activation an epilogue",
        _gated_cnn_block,
        FusedGatedCNN,
        "mambaout_femto",
    ),
    Swap(
        "inference",
        "module",
        "stem and downsampling convolutions with oneDNN-packed weights",
        lambda m: _exactly(m, ConvEmbed) or _unhooked(m),
        FusedConvEmbed,
        "poolformer_s12",
    ),
    # training (use_custom_backward): a block's branches through one autograd function each
    Swap(
        "training",
        "token",
        "pooling branch as one function; the backward recomputes the pooling",
        _training_pooling,
        pooling_branch,
        "poolformer_s12",
        1e-3,
    ),
    Swap(
        "training",
        "mlp",
        "MLP branch as one function over channels-last tokens; GELU recomputed",
        _training_mlp,
        mlp_branch,
        "poolformer_s12",
        1e-3,
    ),
    # int8 (quantize): the folded MLP as linear layers, whose activation the quantizer fuses
    Swap("int8", "module", "folded MLP as token-wise linear layers", _int8_mlp, LinearMlp, "poolformer_s12"),
    # export: the one-group norm as reductions every runtime reads alike
    Swap(
        "export",
        "module",
        "one-group GroupNorm as plain reductions",
        lambda m: _exactly(m, GroupNorm1) or _unhooked(m),
        DecomposedGroupNorm1,
        "poolformer_s12",
    ),
]

# The block classes whose branches the block rows were written for.
FOLDED_BLOCKS = (MetaFormerBlock, MixerOnlyBlock)
TRAINED_BLOCKS = (MetaFormerBlock, TrainingBlock)


def rows(use: str, part: str) -> list[Swap]:
    return [swap for swap in SWAPS if swap.use == use and swap.part == part]


def choose(use: str, part: str, module: nn.Module) -> Swap | None:
    """The first row of ``use`` for ``part`` that fits ``module``, or None."""
    return next((swap for swap in rows(use, part) if swap.fits(module) is None), None)


def why_not(use: str, part: str, module: nn.Module) -> list[str]:
    """Each row's reason not to fit ``module``, for reports."""
    return [f"{swap.name}: {swap.fits(module)}" for swap in rows(use, part) if swap.fits(module) is not None]
