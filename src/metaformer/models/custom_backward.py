"""Training only: PoolFormer's token-mixer branch ``x + ls * (P(n(x)) - n(x))`` as one autograd function with a
custom backward that keeps less for it. (Inference folding is another thing: ``fused.py``.)

``n`` is the one-group GroupNorm ``g * (x - mu) * r + b`` (``r = 1 / sigma`` per sample) and ``P`` the average
pooling without padded counts. Because ``P`` is linear and maps constants to themselves, the branch is
``lerp(x, P(x), ls * g * r)``: one statistics pass, one pooling pass and one blend, where autograd through the plain
modules keeps the normalised map, the pooled map and their difference for the backward. Here only ``x`` and two
numbers per sample are kept; the backward recomputes ``P(x)``.

Stochastic depth multiplies the branch by a per-sample factor ``m`` (0, or ``1 / keep``), folded into ``r``.
"""

from __future__ import annotations

import torch

from .layers import average_pool, group_statistics


class _PoolingBranchFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, layer_scale, sample_scale, pool_size: int, eps: float):  # noqa: ANN001
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
        pool_adjoint = torch.ops.aten.avg_pool2d_backward(blended, x, [size, size], [1, 1], [size // 2, size // 2],
                                                          False, False, None)  # fmt: skip
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
