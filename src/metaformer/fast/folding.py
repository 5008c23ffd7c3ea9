"""The algebra every folded form uses: a norm's affine and a block's scales moved into the next linear layer.

With ``n(x) = g * (x - mu) / sigma + b`` a norm (per-sample ``mu``, ``sigma`` for the one-group GroupNorm, per token
for the channel LayerNorm, constants for BatchNorm in inference), ``fc1(n(y)) = (W1 diag(g)) (y - mu) / sigma +
(W1 b + c1)``: the affine folds into ``fc1``, a layer scale ``ls`` into ``fc2`` (``ls * fc2(h) = (diag(ls) W2) h +
ls c2``), and StarReLU's ``s * relu(h)**2 + b`` into ``fc2`` too, leaving a squared ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.layers import GroupNorm1, LayerNormChannel, Scale, StarReLU


def scale_of(module: nn.Module) -> torch.Tensor | None:
    """The per-channel factor of a layer or residual scale, None where the block has none (the identity)."""
    return module.scale if isinstance(module, Scale) else None


def channel_like(block: nn.Module) -> torch.Tensor:
    """A ``[C]`` tensor of the block's width, device and dtype, for the identity's affines and scales."""
    reference = next(block.parameters())
    return torch.zeros(block.dim, device=reference.device, dtype=reference.dtype)


def norm_affine(norm: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` a norm applies after its own normalisation (BatchNorm: all of it).

    ``like`` is any ``[C]`` tensor of the block, for the identity's sizes, device and dtype.
    """
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    if isinstance(norm, (GroupNorm1, LayerNormChannel)):
        return norm.weight, norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return torch.ones_like(like), torch.zeros_like(like)


def ones_or(scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return scale if scale is not None else torch.ones_like(like)


def constant(scale: torch.Tensor | None) -> nn.Parameter | None:
    """A residual scale as a frozen ``[1, C, 1, 1]`` constant."""
    return None if scale is None else nn.Parameter(scale.view(1, -1, 1, 1).detach().clone(), requires_grad=False)


class Normalize(nn.Module):
    """The affine-free part of a norm, whose affine was folded into the next layer."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.kind = "group" if isinstance(norm, GroupNorm1) else "layer" if isinstance(norm, LayerNormChannel) else ""
        self.eps = getattr(norm, "eps", 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "group":
            return F.group_norm(x, 1, eps=self.eps)
        if self.kind == "layer":
            return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], eps=self.eps).permute(0, 3, 1, 2)
        return x


def fold_pair(
    norm: nn.Module,
    first: nn.Conv2d,
    second: nn.Conv2d,
    layer_scale: torch.Tensor | None,
    star: StarReLU | None = None,
) -> tuple[nn.Parameter, ...]:
    """Weights and biases of ``ls * second(act(first(norm(x))))`` with the norm's affine folded into ``first`` and the
    layer scale into ``second``; with ``star``, StarReLU's scale and bias too (``second(s q + b)`` is
    ``(s W2) q + (b W2 1 + c2)``), leaving a squared ReLU."""
    like = second.weight[:, 0, 0, 0]
    scale, shift = norm_affine(norm, first.weight[0, :, 0, 0])
    layer_scale = ones_or(layer_scale, like)
    w1, w2 = first.weight.flatten(1), second.weight.flatten(1)
    c1 = first.bias if first.bias is not None else torch.zeros_like(w1[:, 0])
    c2 = second.bias if second.bias is not None else torch.zeros_like(like)
    if star is not None:
        c2 = c2 + star.bias * w2.sum(1)
        w2 = w2 * star.scale
    folded = (
        (w1 * scale).view_as(first.weight),
        w1 @ shift + c1,
        (w2 * layer_scale[:, None]).view_as(second.weight),
        c2 * layer_scale,
    )
    return tuple(nn.Parameter(t, requires_grad=False) for t in folded)  # the folded forms run without autograd
