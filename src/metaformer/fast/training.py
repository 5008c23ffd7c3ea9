"""Training only, and opt-in (``train --custom-backward``, ``use_custom_backward``): PoolFormer's two branches,
each as one autograd function with a custom backward that keeps less for it and makes fewer passes over memory.
``table.py`` says which blocks they apply to; every other block, and any part with a hook or of another class,
trains through the reference modules. (Inference folding is another thing: ``inference.py``.)

The token mixer ``x + ls * (P(n(x)) - n(x))``:

``n`` is the one-group GroupNorm ``g * (x - mu) * r + b`` (``r = 1 / sigma`` per sample) and ``P`` the average
pooling without padded counts. Because ``P`` is linear and maps constants to themselves, the branch is
``lerp(x, P(x), ls * g * r)``: one statistics pass, one pooling pass and one blend, where autograd through the plain
modules keeps the normalised map, the pooled map and their difference for the backward. Here only ``x`` and two
numbers per sample are kept; the backward recomputes ``P(x)``.

Stochastic depth multiplies the branch by a per-sample factor ``m`` (0, or ``1 / keep``), folded into ``r``.

The channel MLP ``x + m * ls * fc2(gelu(fc1(n(x))))``: the norm's affine folds into ``fc1`` and ``ls`` into ``fc2``
(their gradients follow from the folded weights' by the chain rule), the 1x1 convolutions are matrix products over
the channels-last tokens, and the residual add is the last product's epilogue. Autograd through the plain modules
keeps the norm's input and output, GELU's input and output and fc2's output; here only the normalised map and
GELU's input are kept, and the backward recomputes GELU's output from its input.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from ..models.blocks import MetaFormerBlock
from ..models.layers import average_pool, group_statistics
from .folding import scale_of


class BranchRow(Protocol):
    """A training row of ``table.py``: whether it fits a block, and the branch it computes."""

    fits: Callable[[nn.Module], str | None]
    replacement: Callable[[nn.Module, torch.Tensor], torch.Tensor]


class _PoolingBranchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer_scale, sample_scale, pool_size: int, eps: float):  # noqa: ANN001
        x = x.to(_residual_dtype(x, layer_scale))
        mean, rstd = group_statistics(x, eps)
        blend = (layer_scale * weight)[None, :, None, None] * (rstd * sample_scale)[:, None, None, None]
        ctx.save_for_backward(x, weight, layer_scale, sample_scale, mean, rstd)
        ctx.pool_size = pool_size
        ctx.bias_shape = bias.shape
        return torch.lerp(x, average_pool(x, pool_size), blend.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        x, weight, layer_scale, sample_scale, mean, rstd = ctx.saved_tensors
        size = ctx.pool_size
        batch, channels = x.shape[:2]
        scale = layer_scale * weight  # [C]
        per_sample = rstd * sample_scale  # [B]
        diff = average_pool(x, size) - x
        # Per-(sample, channel) sums of grad * (P(x) - x): everything the parameters and sigma need.
        sums = (grad * diff).sum((2, 3), dtype=mean.dtype)  # [B, C]
        shared = (sums * per_sample[:, None]).sum(0)  # [C]
        grad_weight, grad_layer_scale = layer_scale * shared, weight * shared
        grad_rstd = (sums * scale).sum(1) * sample_scale  # [B]
        blended = grad * (scale[None, :, None, None] * per_sample[:, None, None, None]).to(grad.dtype)
        pool_adjoint = torch.ops.aten.avg_pool2d_backward(
            blended, x, [size, size], [1, 1], [size // 2, size // 2], False, False, None
        )
        # d(1/sigma)/dx = -(x - mean) / (N sigma^3) with N = C*H*W values per sample.
        coefficient = (-grad_rstd * rstd.pow(3) / x[0].numel())[:, None, None, None]
        grad_x = grad - blended + pool_adjoint
        grad_x = grad_x + (coefficient * (x - mean[:, None, None, None])).to(grad.dtype)
        grad_bias = torch.zeros(ctx.bias_shape, dtype=weight.dtype, device=weight.device)  # the bias cancels
        return grad_x, grad_weight.to(weight.dtype), grad_bias, grad_layer_scale.to(layer_scale.dtype), None, None, None


def pooling_branch_with_custom_backward(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    layer_scale: torch.Tensor,
    pool_size: int,
    eps: float,
    sample_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x + m * layer_scale * (P(n(x)) - n(x))`` with ``n`` the GroupNorm ``(weight, bias, eps)``; ``m`` per sample."""
    if sample_scale is None:
        sample_scale = torch.ones(x.shape[0], device=x.device, dtype=torch.float32)
    return _PoolingBranchFunction.apply(x, weight, bias, layer_scale, sample_scale, pool_size, eps)


def _residual_dtype(x: torch.Tensor, layer_scale: torch.Tensor) -> torch.dtype:
    """The literal modules' ``addcmul(x, branch, layer_scale)`` promotes a bfloat16 block input (the stem's output
    under autocast) to the float32 of the layer scale; so do these functions. In bfloat16, ``x + 1e-5 * branch``
    would round back to ``x``."""
    return torch.promote_types(x.dtype, layer_scale.dtype)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The products' dtype: autocast's where it is on (as the plain convolutions would run), else the input's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _tokens(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W]`` as ``[B*H*W, C]``: a view of a channels-last tensor."""
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def _feature_map(tokens: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    batch, _, height, width = like.shape
    return tokens.view(batch, height, width, -1).permute(0, 3, 1, 2)


def _folded_weights(
    w1: torch.Tensor, w2: torch.Tensor, norm_weight: torch.Tensor, layer_scale: torch.Tensor, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """fc1's weight with the norm's scale folded in, fc2's with the layer scale, as ``[out, in]`` in ``dtype``."""
    return (w1.flatten(1) * norm_weight).to(dtype), (w2.flatten(1) * layer_scale[:, None]).to(dtype)


class _MlpBranchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, norm_weight, norm_bias, w1, b1, w2, b2, layer_scale, sample_scale, eps: float):  # noqa: ANN001
        dtype = _compute_dtype(x)
        x = x.to(_residual_dtype(x, layer_scale))
        with torch.autocast(x.device.type, enabled=False):
            batch, channels, height, width = x.shape
            normalised, _, rstd = torch.native_group_norm(x, None, None, batch, channels, height * width, 1, eps)
            w1_folded, w2_folded = _folded_weights(w1, w2, norm_weight, layer_scale, dtype)
            b1_folded = (b1 if norm_bias is None else torch.addmv(b1, w1.flatten(1), norm_bias)).to(dtype)
            b2_folded = (b2 * layer_scale).to(dtype)
            tokens = _tokens(normalised).to(dtype)
            hidden = torch.addmm(b1_folded, tokens, w1_folded.t())
            out = torch.addmm(b2_folded, F.gelu(hidden), w2_folded.t())
            branch = _feature_map(out, x)
            result = x + branch if sample_scale is None else torch.addcmul(x, branch, sample_scale.view(-1, 1, 1, 1))
        # The folded weights are recomputed in the backward: at small batches they would outweigh the activations.
        ctx.save_for_backward(tokens, hidden, rstd, norm_weight, norm_bias, w1, w2, b2, layer_scale, sample_scale)
        ctx.shape, ctx.has_norm_bias, ctx.dtype = x.shape, norm_bias is not None, dtype
        return result

    @staticmethod
    def backward(ctx, grad):  # noqa: ANN001, ANN205
        tokens, hidden, rstd, norm_weight, norm_bias, w1, w2, b2, layer_scale, sample_scale = ctx.saved_tensors
        batch, channels, height, width = ctx.shape
        with torch.autocast(grad.device.type, enabled=False):
            w1_2d, w2_2d = w1.flatten(1), w2.flatten(1)
            w1_folded, w2_folded = _folded_weights(w1, w2, norm_weight, layer_scale, ctx.dtype)
            grad_branch = grad if sample_scale is None else grad * sample_scale.view(-1, 1, 1, 1).to(grad.dtype)
            grad_out = _tokens(grad_branch).to(ctx.dtype)
            # fc2: its input, GELU's output, is recomputed rather than kept
            grad_w2_folded = grad_out.t().mm(F.gelu(hidden)).to(w2.dtype)
            grad_b2_folded = grad_out.sum(0, dtype=b2.dtype)
            grad_hidden = torch.ops.aten.gelu_backward(grad_out.mm(w2_folded), hidden)
            grad_w1_folded = grad_hidden.t().mm(tokens).to(w1.dtype)
            grad_b1_folded = grad_hidden.sum(0, dtype=w1.dtype)
            grad_tokens = grad_hidden.mm(w1_folded)
            # Through the normalisation: the group-norm backward of the normalised map itself (mean 0, rstd 1)
            # is the bracket of d/dx, which the true 1/sigma then scales.
            # (in float32: under autocast the block input may be bfloat16 while its statistics are float32)
            normalised = _feature_map(tokens, grad).to(rstd.dtype)
            bracket = torch.ops.aten.native_group_norm_backward(
                _feature_map(grad_tokens, grad).to(rstd.dtype),
                normalised,
                torch.zeros_like(rstd),
                torch.ones_like(rstd),
                None,
                batch,
                channels,
                height * width,
                1,
                [True, False, False],
            )[0]
            grad_x = torch.addcmul(grad, bracket.to(grad.dtype), rstd.view(-1, 1, 1, 1).to(grad.dtype))
            grad_w2 = (grad_w2_folded * layer_scale[:, None]).view_as(w2)
            grad_layer_scale = (grad_w2_folded * w2_2d).sum(1) + grad_b2_folded * b2
            grad_b2 = grad_b2_folded * layer_scale
            grad_w1 = grad_w1_folded * norm_weight
            if ctx.has_norm_bias:  # fc1's folded bias is b1 + W1 beta
                grad_w1 = grad_w1.addr(grad_b1_folded, norm_bias)
            grad_w1 = grad_w1.view_as(w1)
            grad_norm_weight = (grad_w1_folded * w1_2d).sum(0)
            grad_norm_bias = w1_2d.t().mv(grad_b1_folded) if ctx.has_norm_bias else None
        return (
            grad_x,
            grad_norm_weight,
            grad_norm_bias,
            grad_w1,
            grad_b1_folded,
            grad_w2,
            grad_b2,
            grad_layer_scale,
            None,
            None,
        )


def mlp_branch_with_custom_backward(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor | None,
    fc1: torch.nn.Conv2d,
    fc2: torch.nn.Conv2d,
    layer_scale: torch.Tensor,
    eps: float,
    sample_scale: torch.Tensor | None = None,
) -> torch.Tensor:
    """``x + m * layer_scale * fc2(gelu(fc1(n(x))))`` with ``n`` the one-group GroupNorm ``(norm_weight, norm_bias,
    eps)``, ``fc1``/``fc2`` 1x1 convolutions with biases and ``m`` a per-sample factor (stochastic depth)."""
    return _MlpBranchFunction.apply(
        x, norm_weight, norm_bias, fc1.weight, fc1.bias, fc2.weight, fc2.bias, layer_scale, sample_scale, eps
    )


def _ones_like_norm(norm: nn.Module, scale: torch.Tensor | None) -> torch.Tensor:
    return scale if scale is not None else torch.ones_like(norm.weight)


def _sample_scale(drop_path: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
    scale = drop_path.sample_scale(x)
    return None if scale is None else scale.view(-1).float()


def pooling_branch(block: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's token branch through ``_PoolingBranchFunction``."""
    norm = block.norm1
    layer_scale = _ones_like_norm(norm, scale_of(block.layer_scale1))
    return pooling_branch_with_custom_backward(
        x,
        norm.weight,
        norm.bias,
        layer_scale,
        block.token_mixer.pool.kernel_size,
        norm.eps,
        _sample_scale(block.drop_path1, x),
    )


def mlp_branch(block: MetaFormerBlock, x: torch.Tensor) -> torch.Tensor:
    """The block's channel-MLP branch through ``_MlpBranchFunction``."""
    norm = block.norm2
    layer_scale = _ones_like_norm(norm, scale_of(block.layer_scale2))
    return mlp_branch_with_custom_backward(
        x,
        norm.weight,
        norm.bias,
        block.mlp.fc1,
        block.mlp.fc2,
        layer_scale,
        norm.eps,
        _sample_scale(block.drop_path2, x),
    )


class TrainingBlock(MetaFormerBlock):
    """A reference block's own parts (the same modules, so the same parameters and state-dict keys) with each
    branch run through its training function where ``token``/``mlp`` (rows of the table) still fit the parts:
    checked at every call, so a part swapped or hooked later runs as the reference module. In evaluation mode, or
    without gradients, both branches are the reference ones."""

    def __init__(self, block: MetaFormerBlock, token: BranchRow | None, mlp: BranchRow | None) -> None:
        nn.Module.__init__(self)  # the parts are adopted, not built
        self.dim = block.dim
        for name, child in block.named_children():
            self.add_module(name, child)
        self.token_swap, self.mlp_swap = token, mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = self.training and torch.is_grad_enabled()
        token = self.token_swap if training and self.token_swap and not self.token_swap.fits(self) else None
        x = token.replacement(self, x) if token else self.token_branch(x)
        mlp = self.mlp_swap if training and self.mlp_swap and not self.mlp_swap.fits(self) else None
        return mlp.replacement(self, x) if mlp else self.mlp_branch(x)
