"""Inference-only forms of the reference modules, each exact (to rounding) for the modules ``table.py`` lets it
replace: folded block branches, packed convolutions, and the forms int8 and the exporters need.

With ``n`` the one-group GroupNorm (per-sample ``mu``, ``sigma``) and ``P`` the average pooling without padded
counts (linear, and maps a per-channel constant to itself):

* pooling mixer: ``x + ls1 * (P(n(x)) - n(x)) = lerp(x, P(x), ls1 * g / sigma)``: the mean and bias cancel, only
  ``sigma`` is needed, and the branch plus the residual add is one pooling and one blend pass;
* channel MLP and ConvFormer's separable convolution: the norm's affine and the layer scale fold into the two
  pointwise layers (``folding.py``); on CPU the activation and the residual add run inside oneDNN's convolution
  epilogues, and every convolution keeps its weight in oneDNN's packed layout;
* identity mixer: ``x + ls1 * n(x)`` is one multiply-add;
* InceptionNeXt's block: BatchNorm (its statistics and affine) and the layer scale fold into the MLP's layers;
* MambaOut's Gated CNN block: the LayerNorm's affine and the layer scale fold into ``fc1`` and ``fc2``, and the gate
  is its own rows of ``fc1`` with the activation as their epilogue, multiplied in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..models.blocks import GatedCNNBlock, MetaFormerBlock, MetaNeXtBlock
from ..models.layers import ConvEmbed, GroupNorm1, SquaredReLU, StarReLU, average_pool, group_statistics
from .folding import Normalize, channel_like, constant, fold_pair, norm_affine, ones_or, scale_of
from .onednn import ONEDNN_ACT, OneDnnWeight, Packing, conv_add_, conv_pointwise, is_tracing, use_onednn


class FusedMlp(Packing):
    """The channel-MLP branch ``r2 * y + ls2 * fc2(act(fc1(norm2(y))))`` with the norm's affine in ``fc1`` and the
    layer scale (and StarReLU's scalars) in ``fc2``; the residual is ``fc2``'s epilogue on oneDNN."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        mlp = block.mlp
        self.square = isinstance(mlp.act, StarReLU)
        self.act = SquaredReLU() if self.square else mlp.act
        self.normalize = Normalize(block.norm2)
        star = mlp.act if self.square else None
        self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias = fold_pair(
            block.norm2, mlp.fc1, mlp.fc2, scale_of(block.layer_scale2), star
        )
        self.res_scale = constant(scale_of(block.res_scale2))
        self.onednn_act = ("relu", "") if self.square else ONEDNN_ACT.get(type(self.act))
        self.fc1_packed = OneDnnWeight([0, 0], [1, 1])
        self.fc2_packed = OneDnnWeight([0, 0], [1, 1])

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = self.normalize(y)
        if self.onednn_act is not None and use_onednn(x):
            h = conv_pointwise(x, self.fc1_weight, self.fc1_bias, self.fc1_packed, *self.onednn_act)
            if self.square:
                h = h.mul_(h)
            if self.res_scale is None:
                # fc2 accumulates into y in place: y is this block's own fresh tensor (the mixer's output).
                return conv_add_(y, h, self.fc2_weight, self.fc2_bias, self.fc2_packed)
            return conv_pointwise(h, self.fc2_weight, self.fc2_bias, self.fc2_packed).addcmul_(y, self.res_scale)
        h = self.act(F.conv2d(x, self.fc1_weight, self.fc1_bias))
        out = F.conv2d(h, self.fc2_weight, self.fc2_bias)
        return out.add_(y) if self.res_scale is None else out.addcmul_(y, self.res_scale)


class FusedMetaNeXt(Packing):
    """InceptionNeXt's block ``x + ls * fc2(act(fc1(norm(mixer(x)))))`` with the norm's affine (BatchNorm's
    statistics too) in ``fc1`` and the layer scale in ``fc2``; on oneDNN the activation is ``fc1``'s epilogue. The
    residual is added out of place: the block's input may be a stage's output that ``forward_intermediates``
    returns."""

    def __init__(self, block: MetaNeXtBlock) -> None:
        super().__init__()
        mlp = block.mlp
        self.token_mixer = block.token_mixer
        self.normalize = Normalize(block.norm)
        self.act = mlp.act
        self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias = fold_pair(
            block.norm, mlp.fc1, mlp.fc2, scale_of(block.layer_scale)
        )
        self.onednn_act = ONEDNN_ACT.get(type(self.act))
        self.fc1_packed = OneDnnWeight([0, 0], [1, 1])
        self.fc2_packed = OneDnnWeight([0, 0], [1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.normalize(self.token_mixer(x))
        if self.onednn_act is not None and use_onednn(y):
            h = conv_pointwise(y, self.fc1_weight, self.fc1_bias, self.fc1_packed, *self.onednn_act)
            return conv_pointwise(h, self.fc2_weight, self.fc2_bias, self.fc2_packed).add_(x)
        h = self.act(F.conv2d(y, self.fc1_weight, self.fc1_bias))
        return F.conv2d(h, self.fc2_weight, self.fc2_bias).add_(x)


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor.detach().contiguous(), requires_grad=False)


class FusedGatedCNN(Packing):
    """MambaOut's block ``x + ls * fc2(act(g) * cat(i, mixer(c)))`` with ``(g, i, c) = fc1(norm(x))``: the norm's
    affine in ``fc1``, the layer scale in ``fc2``. ``fc1`` runs as two layers, the gate's rows (the activation their
    oneDNN epilogue) and the others', so the product is taken in place on the gate without a concatenation. The
    residual is added out of place, as in every block form here whose input may be a tensor the caller keeps."""

    def __init__(self, block: GatedCNNBlock) -> None:
        super().__init__()
        w1, b1, w2, b2 = fold_pair(block.norm, block.fc1, block.fc2, scale_of(block.layer_scale))
        hidden, self.kept, _ = block.split_sizes
        self.normalize = Normalize(block.norm)
        self.act = block.act
        self.token_mixer = block.token_mixer
        self.gate_weight, self.gate_bias = _frozen(w1[:hidden]), _frozen(b1[:hidden])
        self.value_weight, self.value_bias = _frozen(w1[hidden:]), _frozen(b1[hidden:])
        self.fc2_weight, self.fc2_bias = w2, b2
        self.onednn_act = ONEDNN_ACT.get(type(self.act))
        self.gate_packed = OneDnnWeight([0, 0], [1, 1])
        self.value_packed = OneDnnWeight([0, 0], [1, 1])
        self.fc2_packed = OneDnnWeight([0, 0], [1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        n = self.normalize(x)
        onednn = self.onednn_act is not None and use_onednn(n)
        if onednn:
            gate = conv_pointwise(n, self.gate_weight, self.gate_bias, self.gate_packed, *self.onednn_act)
            values = conv_pointwise(n, self.value_weight, self.value_bias, self.value_packed)
        else:
            gate = self.act(F.conv2d(n, self.gate_weight, self.gate_bias))
            values = F.conv2d(n, self.value_weight, self.value_bias)
        if is_tracing():
            # Out of place: traced, the slice writes become scatters that inductor's int8 lowering fails to rewrite
            # (torch 2.14: "FakeTensorUpdater cannot recompute metadata"); inductor fuses the product either way.
            gate = gate * torch.cat((values[:, : self.kept], self.token_mixer(values[:, self.kept :])), 1)
        else:
            gate[:, : self.kept].mul_(values[:, : self.kept])
            gate[:, self.kept :].mul_(self.token_mixer(values[:, self.kept :]))
        if onednn:
            return conv_pointwise(gate, self.fc2_weight, self.fc2_bias, self.fc2_packed).add_(x)
        return F.conv2d(gate, self.fc2_weight, self.fc2_bias).add_(x)


class FusedSepConv(Packing):
    """ConvFormer's mixer branch ``r1 * x + ls1 * pw2(dw(star(pw1(norm(x)))))`` with the norm's affine in ``pw1``,
    the layer scale in ``pw2``, and StarReLU as a ReLU epilogue and one ``b + s q * q`` pass. The block's input may
    be needed elsewhere, so the residual is added out of place."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        mixer = block.token_mixer
        self.normalize = Normalize(block.norm1)
        self.pw1_weight, self.pw1_bias, self.pw2_weight, self.pw2_bias = fold_pair(
            block.norm1, mixer.pwconv1, mixer.pwconv2, scale_of(block.layer_scale1)
        )
        self.star_scale = float(mixer.act1.scale)
        self.register_buffer("star_bias", mixer.act1.bias.detach().clone(), persistent=False)  # moves with the model
        self.dwconv = mixer.dwconv
        self.res_scale = constant(scale_of(block.res_scale1))
        self.pw1_packed = OneDnnWeight([0, 0], [1, 1])
        self.pw2_packed = OneDnnWeight([0, 0], [1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.normalize(x)
        if use_onednn(n):
            h = conv_pointwise(n, self.pw1_weight, self.pw1_bias, self.pw1_packed, "relu")
        else:
            h = F.relu(F.conv2d(n, self.pw1_weight, self.pw1_bias))
        h = self.dwconv(torch.addcmul(self.star_bias, h, h, value=self.star_scale))
        if use_onednn(h):
            out = conv_pointwise(h, self.pw2_weight, self.pw2_bias, self.pw2_packed)
        else:
            out = F.conv2d(h, self.pw2_weight, self.pw2_bias)
        return out.add_(x) if self.res_scale is None else out.addcmul_(x, self.res_scale)


class FusedPooling(nn.Module):
    """``r1 * x + ls1 * (P(norm(x)) - norm(x))`` as ``lerp(x, P(x), w)``, ``w = ls1 * g / sigma`` (GroupNorm), or
    ``ls1 * g`` for BatchNorm and no norm, whose shifts cancel in ``P(.) - .``."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        like = channel_like(block)
        scale, _ = norm_affine(block.norm1, like)
        self.kernel_size = block.token_mixer.pool.kernel_size
        self.per_sample = isinstance(block.norm1, GroupNorm1)
        self.eps = getattr(block.norm1, "eps", 0.0)
        weight = ones_or(scale_of(block.layer_scale1), like) * scale
        self.weight = nn.Parameter(weight.view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        self.res_scale = constant(scale_of(block.res_scale1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.per_sample:
            weight = weight * group_statistics(x, self.eps)[1].view(-1, 1, 1, 1).to(x.dtype)
        if self.res_scale is None:
            return torch.lerp(x, average_pool(x, self.kernel_size), weight)
        return torch.addcmul(x * (self.res_scale - weight), average_pool(x, self.kernel_size), weight)


class FusedIdentity(nn.Module):
    """``r1 * x + ls1 * norm(x)`` as one multiply-add ``x * (r1 + k / sigma) + ls1 * (b - k * mu / sigma)``,
    ``k = ls1 g``."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        like = channel_like(block)
        scale, shift = norm_affine(block.norm1, like)
        layer_scale = ones_or(scale_of(block.layer_scale1), like)
        self.per_sample = isinstance(block.norm1, GroupNorm1)
        self.eps = getattr(block.norm1, "eps", 0.0)
        self.scale = nn.Parameter((layer_scale * scale).view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        self.shift = nn.Parameter((layer_scale * shift).view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        residual = ones_or(scale_of(block.res_scale1), like)
        self.residual = nn.Parameter(residual.view(1, -1, 1, 1).detach().clone(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_sample:
            return torch.addcmul(self.shift, x, self.scale + self.residual)
        mean, rstd = (s.view(-1, 1, 1, 1).to(x.dtype) for s in group_statistics(x, self.eps))
        factor = self.scale * rstd
        return torch.addcmul(self.shift - factor * mean, x, factor + self.residual)


class PlainToken(nn.Module):
    """The token-mixer branch as the reference block computes it, for mixers without a fold (attention, random
    and spatial mixing, depthwise convolution, a mixer of the user's)."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        for name in ("norm1", "token_mixer", "drop_path1", "layer_scale1", "res_scale1"):
            self.add_module(name, getattr(block, name))

    forward = MetaFormerBlock.token_branch  # the one formula, on the same parts


class PlainMlp(nn.Module):
    """The channel-MLP branch as the reference block computes it, for MLPs without a fold."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        for name in ("norm2", "mlp", "drop_path2", "layer_scale2", "res_scale2"):
            self.add_module(name, getattr(block, name))

    forward = MetaFormerBlock.mlp_branch


class FusedBlock(nn.Module):
    """A block as its two branches' inference forms (``mlp`` None: the block has no channel MLP)."""

    def __init__(self, token: nn.Module, mlp: nn.Module | None) -> None:
        super().__init__()
        self.token = token
        self.mlp = mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token(x)
        return self.mlp(x) if self.mlp is not None else x


class FusedConvEmbed(Packing):
    """The stem or a downsampling convolution, with its weight packed for oneDNN (same parameter names), and the
    Baselines' norm before or after it."""

    def __init__(self, embed: ConvEmbed) -> None:
        super().__init__()
        self.proj = embed.proj
        self.norm, self.norm_first = embed.norm, embed.norm_first
        self.packed = OneDnnWeight(list(self.proj.padding), list(self.proj.stride))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is not None and self.norm_first:
            x = self.norm(x)
        x = self._conv(x)
        return self.norm(x) if self.norm is not None and not self.norm_first else x

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        return conv_pointwise(x, self.proj.weight, self.proj.bias, self.packed) if use_onednn(x) else self.proj(x)


class LinearMlp(nn.Module):
    """A folded MLP branch ``r2 * y + fc2(act(fc1(normalize(y))))`` as token-wise linear layers on the channels-last
    map, for int8: the quantizer fuses an activation into a linear layer's int8 kernel (not a convolution's), and
    the residual add into ``fc2``'s."""

    def __init__(self, mlp: FusedMlp) -> None:
        super().__init__()
        self.normalize = mlp.normalize
        self.fc1 = _linear(mlp.fc1_weight, mlp.fc1_bias)
        # StarReLU was folded into fc2 as a squared ReLU: the quantizer fuses the ReLU, the square is one pass.
        self.act = nn.ReLU() if mlp.square else mlp.act
        self.square = mlp.square
        self.fc2 = _linear(mlp.fc2_weight, mlp.fc2_bias)
        self.res_scale = mlp.res_scale

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        tokens = self.normalize(y).permute(0, 2, 3, 1)  # a view: y is channels-last
        hidden = self.act(self.fc1(tokens))
        if self.square:
            hidden = hidden * hidden
        residual = y.permute(0, 2, 3, 1)
        out = self.fc2(hidden) + (residual if self.res_scale is None else residual * self.res_scale.view(-1))
        return out.permute(0, 3, 1, 2)


def _linear(weight: torch.Tensor, bias: torch.Tensor) -> nn.Linear:
    with torch.device("meta"):
        layer = nn.Linear(weight.shape[1], weight.shape[0])
    layer.weight = nn.Parameter(weight.detach().flatten(1).clone(), requires_grad=False)
    layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer


class DecomposedGroupNorm1(nn.Module):
    """The one-group GroupNorm as plain reductions, for exporters: mean and variance by ``ReduceMean`` over
    (C, H, W), then ``(x - mean) / sqrt(var + eps) * weight + bias``. PyTorch's exporter would write a reshape into
    ``InstanceNormalization`` (or a ``GroupNormalization``), which runtimes read differently: TensorRT 10.16
    computes ``GroupNormalization(num_groups=1)`` per channel, which is wrong. Plain reductions mean the same to
    every runtime."""

    def __init__(self, norm: GroupNorm1) -> None:
        super().__init__()
        self.weight = norm.weight
        self.bias = norm.bias
        self.eps = norm.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean((1, 2, 3), keepdim=True)
        centred = x - mean
        variance = (centred * centred).mean((1, 2, 3), keepdim=True)
        x = centred / torch.sqrt(variance + self.eps) * self.weight[:, None, None]
        return x if self.bias is None else x + self.bias[:, None, None]
