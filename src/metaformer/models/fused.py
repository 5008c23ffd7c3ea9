"""An exact, inference-only form of a MetaFormer with the norms and layer scales folded away.

With ``n(x) = g * (x - mu) / sigma + b`` the one-group GroupNorm (per-sample ``mu``, ``sigma``) and ``P`` the average
pooling without padded counts (linear, and maps a per-channel constant to itself):

* token mixer: ``x + ls1 * (P(n(x)) - n(x)) = lerp(x, P(x), ls1 * g / sigma)``: the mean and bias cancel, only
  ``sigma`` is needed, and the branch plus the residual add is one pooling and one blend pass;
* channel MLP: ``fc1(n(y)) = (W1 diag(g)) (y - mu) / sigma + (W1 b + c1)``: the norm's affine folds into ``fc1``,
  ``ls2`` into ``fc2``; on CPU the activation and the residual add run inside oneDNN's convolution epilogues, and
  every convolution (the MLP's, the stem's, the downsampling ones) keeps its weight in oneDNN's packed layout.

BatchNorm (inference statistics) folds into constants; the identity mixer becomes one multiply-add. Mixers with no
such algebra (attention, random and spatial mixing, depthwise convolution) and the per-token LayerNorm keep their
plain token-mixer branch, and still get the fused MLP branch.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .layers import ConvEmbed, GroupNorm1, LayerNormChannel, SquaredReLU, StarReLU, average_pool, group_statistics
from .metaformer import MetaFormer, MetaFormerBlock, _Trunk
from .mixers import IdentityMixer, Pooling, SepConv
from .onednn import ONEDNN_ACT, OneDnnWeight, Packing, conv_add_, conv_pointwise, is_exporting, use_onednn


def _norm_affine(norm: nn.Module, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The per-channel ``(scale, shift)`` a norm applies after its own normalisation (BatchNorm: all of it).

    ``like`` is any ``[C]`` tensor of the block, for the identity's sizes, device and dtype.
    """
    if isinstance(norm, nn.BatchNorm2d):
        scale = norm.weight / torch.sqrt(norm.running_var + norm.eps)
        return scale, norm.bias - norm.running_mean * scale
    if isinstance(norm, (GroupNorm1, LayerNormChannel)):
        return norm.weight, norm.bias if norm.bias is not None else torch.zeros_like(norm.weight)
    return torch.ones_like(like), torch.zeros_like(like)


def _layer_scale(scale: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return scale if scale is not None else torch.ones_like(like)


def _res_scale(scale: torch.Tensor | None) -> nn.Parameter | None:
    """A residual scale as a ``[1, C, 1, 1]`` constant."""
    return None if scale is None else nn.Parameter(scale.view(1, -1, 1, 1).detach().clone(), requires_grad=False)


class _Normalize(nn.Module):
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


def _fold_pair(norm: nn.Module, first: nn.Conv2d, second: nn.Conv2d, layer_scale: torch.Tensor | None,
               star: StarReLU | None = None) -> tuple[nn.Parameter, ...]:  # fmt: skip
    """Weights and biases of ``ls * second(act(first(norm(x))))`` with the norm's affine folded into ``first`` and the
    layer scale into ``second``; with ``star``, StarReLU's scale and bias too (``second(s q + b)`` is
    ``(s W2) q + (b W2 1 + c2)``), leaving a squared ReLU."""
    like = second.weight[:, 0, 0, 0]
    scale, shift = _norm_affine(norm, first.weight[0, :, 0, 0])
    layer_scale = _layer_scale(layer_scale, like)
    w1, w2 = first.weight.flatten(1), second.weight.flatten(1)
    c1 = first.bias if first.bias is not None else torch.zeros_like(w1[:, 0])
    c2 = second.bias if second.bias is not None else torch.zeros_like(like)
    if star is not None:
        c2 = c2 + star.bias * w2.sum(1)
        w2 = w2 * star.scale
    folded = ((w1 * scale).view_as(first.weight), w1 @ shift + c1, (w2 * layer_scale[:, None]).view_as(second.weight),
              c2 * layer_scale)  # fmt: skip
    return tuple(nn.Parameter(t, requires_grad=False) for t in folded)  # fuse() runs without autograd


class FusedMlp(Packing):
    """``r2 * y + ls2 * fc2(act(fc1(norm(y))))`` with the norm's affine in ``fc1`` and ``ls2`` in ``fc2``. StarReLU's
    scale and bias fold into ``fc2`` too (``fc2(s q + b) = (s W2) q + (b W2 1 + c2)``), leaving a squared ReLU: on
    oneDNN, a ReLU epilogue then an in-place square."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        mlp = block.mlp
        self.square = isinstance(mlp.act, StarReLU)
        self.act = SquaredReLU() if self.square else mlp.act
        self.normalize = _Normalize(block.norm2)
        star = mlp.act if self.square else None
        self.fc1_weight, self.fc1_bias, self.fc2_weight, self.fc2_bias = _fold_pair(
            block.norm2, mlp.fc1, mlp.fc2, block.layer_scale2, star
        )
        self.res_scale = _res_scale(block.res_scale2)
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


class FusedSepConv(Packing):
    """ConvFormer's mixer branch ``r1 * x + ls1 * pw2(dw(star(pw1(norm(x)))))`` with the norm's affine in ``pw1``,
    the layer scale in ``pw2``, and StarReLU as a ReLU epilogue and one ``b + s q * q`` pass. The block's input may
    be needed elsewhere, so the residual is added out of place."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        mixer: SepConv = block.token_mixer
        self.normalize = _Normalize(block.norm1)
        self.pw1_weight, self.pw1_bias, self.pw2_weight, self.pw2_bias = _fold_pair(
            block.norm1, mixer.pwconv1, mixer.pwconv2, block.layer_scale1
        )
        self.star_scale = float(mixer.act1.scale)
        self.register_buffer("star_bias", mixer.act1.bias.detach().clone(), persistent=False)  # moves with the model
        self.dwconv = mixer.dwconv
        self.res_scale = _res_scale(block.res_scale1)
        self.pw1_packed = OneDnnWeight([0, 0], [1, 1])
        self.pw2_packed = OneDnnWeight([0, 0], [1, 1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = self.normalize(x)
        onednn = use_onednn(n)
        h = conv_pointwise(n, self.pw1_weight, self.pw1_bias, self.pw1_packed, "relu") if onednn else F.relu(
            F.conv2d(n, self.pw1_weight, self.pw1_bias))  # fmt: skip
        h = self.dwconv(torch.addcmul(self.star_bias, h, h, value=self.star_scale))
        out = conv_pointwise(h, self.pw2_weight, self.pw2_bias, self.pw2_packed) if onednn else F.conv2d(
            h, self.pw2_weight, self.pw2_bias)  # fmt: skip
        return out.add_(x) if self.res_scale is None else out.addcmul_(x, self.res_scale)


class FusedPooling(nn.Module):
    """``x + ls1 * (P(norm(x)) - norm(x))`` as ``lerp(x, P(x), weight)``, weight ``ls1 * g / sigma`` (GroupNorm)."""

    def __init__(self, block: MetaFormerBlock, like: torch.Tensor) -> None:
        super().__init__()
        pool: nn.AvgPool2d = block.token_mixer.pool
        scale, _ = _norm_affine(block.norm1, like)
        layer_scale = _layer_scale(block.layer_scale1, like)
        self.kernel_size = pool.kernel_size
        self.per_sample = isinstance(block.norm1, GroupNorm1)
        self.eps = getattr(block.norm1, "eps", 0.0)
        self.weight = nn.Parameter((layer_scale * scale).view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        self.res_scale = _res_scale(block.res_scale1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        if self.per_sample:
            weight = weight * group_statistics(x, self.eps)[1].view(-1, 1, 1, 1).to(x.dtype)
        if self.res_scale is None:
            return torch.lerp(x, average_pool(x, self.kernel_size), weight)
        return torch.addcmul(x * (self.res_scale - weight), average_pool(x, self.kernel_size), weight)


class FusedIdentity(nn.Module):
    """``x + ls1 * norm(x)`` as one multiply-add ``x * (1 + k / sigma) + ls1 * (b - k * mu / sigma)``, ``k = ls1 g``."""

    def __init__(self, block: MetaFormerBlock, like: torch.Tensor) -> None:
        super().__init__()
        scale, shift = _norm_affine(block.norm1, like)
        layer_scale = _layer_scale(block.layer_scale1, like)
        self.per_sample = isinstance(block.norm1, GroupNorm1)
        self.eps = getattr(block.norm1, "eps", 0.0)
        self.scale = nn.Parameter((layer_scale * scale).view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        self.shift = nn.Parameter((layer_scale * shift).view(1, -1, 1, 1).detach().clone(), requires_grad=False)
        self.residual = _res_scale(block.res_scale1)
        if self.residual is None:
            self.residual = nn.Parameter(torch.ones_like(self.scale), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.per_sample:
            return torch.addcmul(self.shift, x, self.scale + self.residual)
        mean, rstd = (s.view(-1, 1, 1, 1).to(x.dtype) for s in group_statistics(x, self.eps))
        factor = self.scale * rstd
        return torch.addcmul(self.shift - factor * mean, x, factor + self.residual)


class PlainMixer(nn.Module):
    """The token-mixer branch as in the plain block, for mixers without a fold."""

    def __init__(self, block: MetaFormerBlock) -> None:
        super().__init__()
        self.norm = block.norm1
        self.mixer = block.token_mixer
        self.layer_scale = block.layer_scale1
        self.res_scale = _res_scale(block.res_scale1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.mixer(self.norm(x))
        if self.layer_scale is not None:
            branch = branch * self.layer_scale[:, None, None]
        return branch + x if self.res_scale is None else torch.addcmul(branch, x, self.res_scale)


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


class FusedBlock(nn.Module):
    def __init__(self, block: MetaFormerBlock, like: torch.Tensor) -> None:
        super().__init__()
        foldable_norm = isinstance(block.norm1, (GroupNorm1, nn.BatchNorm2d, nn.Identity))
        if isinstance(block.token_mixer, Pooling) and foldable_norm:
            self.mix: nn.Module = FusedPooling(block, like)
        elif isinstance(block.token_mixer, IdentityMixer) and foldable_norm:
            self.mix = FusedIdentity(block, like)
        elif isinstance(block.token_mixer, SepConv):
            self.mix = FusedSepConv(block)
        else:
            self.mix = PlainMixer(block)
        self.mlp = FusedMlp(block) if block.mlp is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mix(x)
        return self.mlp(x) if self.mlp is not None else x


# On CPU a batch runs in slices whose widest activation (the first stage's MLP hidden map) stays below this size:
# glibc hands out larger blocks as fresh mmap pages, which page-fault on every pass; smaller ones are reused.
CPU_SLICE_BYTES = 32 * 2**20


class FusedMetaFormer(MetaFormer):
    """What ``fuse`` returns for a classifier: the same module tree with folded blocks; on CPU, large batches run
    in slices."""

    @classmethod
    def copy_of(cls, model: MetaFormer) -> FusedMetaFormer:
        """A new instance with copies of ``model``'s weights (built on the meta device: nothing is initialised)."""
        with torch.device("meta"):
            fused = cls(model.config)
        fused.load_state_dict(copy.deepcopy(model.state_dict()), assign=True)
        fused.name = getattr(model, "name", None)
        return fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_image = self.config.widths[0] * self.config.mlp_ratio * x[0, 0].numel() / 16 * x.element_size()
        slice_size = max(1, int(CPU_SLICE_BYTES // per_image))
        tracing = torch.compiler.is_compiling() or is_exporting()
        if x.device.type != "cpu" or tracing or x.shape[0] <= slice_size:
            return super().forward(x)
        slices = -(-x.shape[0] // slice_size)
        return torch.cat([super(FusedMetaFormer, self).forward(part) for part in x.tensor_split(slices)])


def _fusable(block: MetaFormerBlock) -> bool:
    # Without the residual the identities above do not hold; such blocks (an ablation) keep the plain path.
    return block.residual


def _fuse_trunk(trunk: _Trunk) -> None:
    reference = trunk.stem.proj.weight
    trunk.stem = FusedConvEmbed(trunk.stem)
    for stage, width in zip(trunk.stages, trunk.config.widths, strict=True):
        if isinstance(stage.downsample, ConvEmbed):
            stage.downsample = FusedConvEmbed(stage.downsample)
        like = torch.zeros(width, device=reference.device, dtype=reference.dtype)  # identity affines' shape
        stage.blocks = nn.Sequential(*(FusedBlock(b, like) if _fusable(b) else b for b in stage.blocks))


def fuse(model: nn.Module) -> nn.Module:
    """A copy of ``model`` for inference with every block folded (see the module's docstring); same outputs.

    Takes a MetaFormer classifier, or any model built on MetaFormer backbones (the segmentation and detection
    models). The copy is in eval mode with frozen parameters; keep the original for training or saving checkpoints.
    """
    if not any(isinstance(m, _Trunk) for m in model.modules()):
        raise TypeError(f"fuse() takes a MetaFormer or a model with a MetaFormer backbone, got {type(model).__name__}")
    fused = FusedMetaFormer.copy_of(model) if isinstance(model, MetaFormer) else copy.deepcopy(model)
    fused.eval()
    trunks = [m for m in fused.modules() if isinstance(m, _Trunk)]  # listed first: fusing replaces submodules
    with torch.no_grad():
        for trunk in trunks:
            _fuse_trunk(trunk)
    fused.requires_grad_(False)
    fused.is_fused = True
    return fused


def is_fused(model: nn.Module) -> bool:
    return bool(getattr(model, "is_fused", False))
