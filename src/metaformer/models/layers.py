"""Building blocks shared by every MetaFormer: norms, activations, scales, stochastic depth, the channel MLP, the
embeddings and the heads."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError

NormFactory = Callable[[int], nn.Module]


class GroupNorm1(nn.GroupNorm):
    """GroupNorm with a single group: normalises over (C, H, W), the paper's "modified LayerNorm" (MLN). The
    Baselines' version has no bias (and eps 1e-6)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__(1, num_channels, eps=eps)
        if not bias:
            self.register_parameter("bias", None)


def group_statistics(x: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample mean and ``1 / sigma`` over (C, H, W), each ``[B]``, by GroupNorm's own fast statistics kernel.

    Returned in at least float32; for bf16/fp16 input the kernel accumulates in float32 but rounds its results to
    the input's dtype, as ``F.group_norm`` itself uses them.
    """
    batch, channels, height, width = x.shape
    _, mean, rstd = torch.native_group_norm(x, None, None, batch, channels, height * width, 1, eps)
    if x.dtype in (torch.float16, torch.bfloat16):
        return mean.view(batch).float(), rstd.view(batch).float()
    return mean.view(batch), rstd.view(batch)


def average_pool(x: torch.Tensor, size: int) -> torch.Tensor:
    """PoolFormer's pooling: stride 1, same size out, padded positions not counted."""
    return F.avg_pool2d(x, size, 1, size // 2, count_include_pad=False)


class LayerNormChannel(nn.Module):
    """LayerNorm over the channel axis only of a ``[B, C, H, W]`` tensor (each token normalised alone)."""

    def __init__(self, num_channels: int, eps: float = 1e-5, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels)) if bias else None
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class StarReLU(nn.Module):
    """``s * relu(x) ** 2 + b`` with learnable scalars ``s`` and ``b`` (the Baselines' activation)."""

    def __init__(self, scale: float = 1.0, bias: float = 0.0) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([scale]))
        self.bias = nn.Parameter(torch.tensor([bias]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.relu(x).square() + self.bias


class SquaredReLU(nn.Module):
    """``relu(x) ** 2`` (the hidden activation of ConvFormer's and CAFormer's MLP head)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x).square()


# The Baselines' norms have no bias and eps 1e-6; MambaOut's LayerNorm has a bias and eps 1e-6.
NORMS: dict[str, NormFactory] = {
    "groupnorm": GroupNorm1,
    "groupnorm_nobias": lambda num_channels: GroupNorm1(num_channels, eps=1e-6, bias=False),
    "layernorm": LayerNormChannel,
    "layernorm_nobias": lambda num_channels: LayerNormChannel(num_channels, eps=1e-6, bias=False),
    "layernorm_eps1e-6": lambda num_channels: LayerNormChannel(num_channels, eps=1e-6),
    "batchnorm": nn.BatchNorm2d,
    "none": lambda num_channels: nn.Identity(),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "starrelu": StarReLU}


def make_norm(kind: str, num_channels: int) -> nn.Module:
    if kind not in NORMS:
        raise ConfigError(f"norm must be one of {sorted(NORMS)}, got {kind!r}")
    return NORMS[kind](num_channels)


def make_activation(kind: str) -> nn.Module:
    if kind not in ACTIVATIONS:
        raise ConfigError(f"act must be one of {sorted(ACTIVATIONS)}, got {kind!r}")
    return ACTIVATIONS[kind]()


class Scale(nn.Module):
    """A learnable per-channel scale of a ``[B, C, H, W]`` map: PoolFormer's layer scale, the Baselines' residual
    scale."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, -1, 1, 1)


def scale_or_identity(dim: int, init: float | None) -> nn.Module:
    return nn.Identity() if init is None else Scale(dim, init)


class DropPath(nn.Module):
    """Stochastic depth: in training, each sample's branch is dropped with probability ``p`` and the others scaled
    by ``1 / (1 - p)``; the identity otherwise."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """The per-sample factor ``[B, 1, 1, 1]`` of this call, or None when nothing is dropped. The fast training
        functions draw theirs here, so both paths consume the random stream alike."""
        if not (self.training and self.p > 0):
            return None
        keep = 1.0 - self.p
        noise = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return noise.div_(keep) if keep > 0 else noise

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.sample_scale(x)
        return x if scale is None else x * scale

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ConvMlp(nn.Module):
    """The channel MLP as two 1x1 convolutions, so tensors stay ``[B, C, H, W]``."""

    def __init__(self, dim: int, hidden_dim: int, act: str = "gelu", drop: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(dim, hidden_dim, 1, bias=bias)
        self.act = make_activation(act)
        self.fc2 = nn.Conv2d(hidden_dim, dim, 1, bias=bias)
        self.drop = nn.Dropout(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(self.drop(self.act(self.fc1(x)))))


class ConvEmbed(nn.Module):
    """Patch embedding and between-stage downsampling: one strided convolution, in the Baselines with a norm
    after it (the stem) or before it (downsampling)."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        norm: str = "none",
        norm_first: bool = False,
    ) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.norm = None if norm == "none" else make_norm(norm, in_dim if norm_first else out_dim)
        self.proj = nn.Conv2d(in_dim, out_dim, kernel_size, stride=stride, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm is None:
            return self.proj(x)
        if self.norm_first:
            return self.proj(self.norm(x))
        return self.norm(self.proj(x))


class TwoConvStem(nn.Module):
    """MambaOut's stem (from InternImage): a convolution to half the width, a norm (or none), the activation, a
    convolution to the width and a norm; each convolution of ``kernel_size``, ``stride`` and ``padding``."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        kernel_size: int,
        stride: int,
        padding: int,
        *,
        mid_norm: str,
        norm: str,
        act: str,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_dim, out_dim // 2, kernel_size, stride=stride, padding=padding)
        self.norm1 = make_norm(mid_norm, out_dim // 2)
        self.act = make_activation(act)
        self.conv2 = nn.Conv2d(out_dim // 2, out_dim, kernel_size, stride=stride, padding=padding)
        self.norm2 = make_norm(norm, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm2(self.conv2(self.act(self.norm1(self.conv1(x)))))


class MlpHead(nn.Module):
    """The MLP classifiers: fc to ``ratio`` x width, an activation, LayerNorm (none where ``eps`` is None),
    dropout, fc. ConvFormer's and CAFormer's: ratio 4, SquaredReLU, eps 1e-5; InceptionNeXt's: ratio 3, GELU, eps
    1e-6; MambaOut's: ratio 4, GELU, eps 1e-6; timm's MambaOut *_rw: ratio 4, GELU, no norm."""

    def __init__(
        self,
        dim: int,
        num_classes: int,
        ratio: float = 4,
        dropout: float = 0.0,
        act: type[nn.Module] = SquaredReLU,
        eps: float | None = 1e-5,
    ) -> None:
        super().__init__()
        hidden = int(ratio * dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act()
        self.norm = nn.Identity() if eps is None else nn.LayerNorm(hidden, eps=eps)
        self.drop = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.drop(self.norm(self.act(self.fc1(x)))))


def resize_pos_embed(pos_embed: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ``[1, C, H, W]`` position table to another token grid (bicubic, the usual fine-tuning choice)."""
    if tuple(pos_embed.shape[-2:]) == tuple(size):
        return pos_embed
    return F.interpolate(pos_embed, size=size, mode="bicubic", align_corners=False)
