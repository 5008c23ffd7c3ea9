"""Token mixers: the one part of a MetaFormer block that lets tokens exchange information."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .config import registrar
from .layers import StarReLU


class Pooling(nn.Module):
    """PoolFormer's mixer: ``avgpool(x) - x``; subtracting ``x`` because the block already adds it back."""

    def __init__(self, dim: int, pool_size: int = 3) -> None:
        super().__init__()
        if pool_size < 1 or pool_size % 2 != 1:
            raise ValueError(f"pool_size must be odd to keep the token grid, got {pool_size}")
        self.pool = nn.AvgPool2d(pool_size, stride=1, padding=pool_size // 2, count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) - x


class IdentityMixer(nn.Identity):
    """No mixing at all: the paper's lower bound ("identity mapping" row)."""

    def __init__(self, dim: int) -> None:
        super().__init__()


class DepthwiseConv(nn.Module):
    """A depthwise convolution over each channel's token grid."""

    def __init__(self, dim: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, kernel_size, padding=kernel_size // 2, groups=dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def _check_grid(module: nn.Module, grid: tuple[int, int], x: torch.Tensor) -> None:
    if tuple(x.shape[-2:]) != grid:
        raise ConfigError(
            f"{type(module).__name__} mixes a fixed {grid[0]}x{grid[1]} token grid but got "
            f"{x.shape[-2]}x{x.shape[-1]}; models with this mixer only accept the input size they were "
            "built for (create the model with image_size=... to build it for another size)"
        )


class RandomMixing(nn.Module):
    """Global random mixing: a frozen, row-normalised random ``N x N`` matrix over the ``N = H*W`` tokens.

    Kept as a parameter that never trains so checkpoints carry it and parameter counts include it.
    """

    fixed_grid: ClassVar[bool] = True

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)
        num_tokens = grid[0] * grid[1]
        matrix = torch.softmax(torch.rand(num_tokens, num_tokens), dim=-1)
        self.random_matrix = nn.Parameter(matrix, requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_grid(self, self.grid, x)
        return (x.flatten(2) @ self.random_matrix.t()).reshape(x.shape)


class SpatialFc(nn.Module):
    """Spatial MLP mixer: one bias-free linear layer over the tokens of each channel (official ``SpatialFc``)."""

    fixed_grid: ClassVar[bool] = True

    def __init__(self, dim: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = tuple(grid)
        num_tokens = grid[0] * grid[1]
        self.fc = nn.Linear(num_tokens, num_tokens, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_grid(self, self.grid, x)
        return self.fc(x.flatten(2)).reshape(x.shape)


class SepConv(nn.Module):
    """ConvFormer's mixer, MobileNetV2's inverted separable convolution: pointwise to twice the width, StarReLU,
    7x7 depthwise, pointwise back."""

    def __init__(self, dim: int, bias: bool = False, expansion: int = 2, kernel_size: int = 7) -> None:
        super().__init__()
        hidden = expansion * dim
        self.pwconv1 = nn.Conv2d(dim, hidden, 1, bias=bias)
        self.act1 = StarReLU()
        self.dwconv = nn.Conv2d(hidden, hidden, kernel_size, padding=kernel_size // 2, groups=hidden, bias=bias)
        self.pwconv2 = nn.Conv2d(hidden, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pwconv2(self.dwconv(self.act1(self.pwconv1(x))))


class Attention(nn.Module):
    """Multi-head self-attention over the ``H*W`` tokens, heads of ``head_dim`` channels, no position embedding
    (PoolFormer's hybrids: a bias in the output projection; CAFormer: none)."""

    # It mixes a sequence of tokens: timm runs the stages of such mixers channels-last, with nn.Linear MLPs.
    sequence_mixer: ClassVar[bool] = True

    def __init__(self, dim: int, head_dim: int = 32, proj_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        if dim % head_dim != 0:
            raise ValueError(f"attention width {dim} is not a multiple of head_dim {head_dim}")
        self.head_dim = head_dim
        self.num_heads = dim // head_dim
        self.attn_drop = attn_drop
        self.qkv = nn.Linear(dim, dim * 3, bias=False)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        tokens = x.flatten(2).transpose(1, 2)
        qkv = self.qkv(tokens).reshape(batch, -1, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        dropout = self.attn_drop if self.training else 0.0
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=1 / math.sqrt(self.head_dim))
        out = self.proj(out.transpose(1, 2).reshape(batch, -1, channels))
        return out.transpose(1, 2).reshape(batch, channels, height, width)


class InceptionDWConv(nn.Module):
    """InceptionNeXt's mixer: the channels split four ways, ``branch_ratio`` of them each through a square
    ``k x k``, a ``1 x band`` and a ``band x 1`` depthwise convolution, the rest left as they are."""

    def __init__(
        self, dim: int, square_kernel_size: int = 3, band_kernel_size: int = 11, branch_ratio: float = 0.125
    ) -> None:
        super().__init__()
        branch = int(dim * branch_ratio)
        if not 0 < 3 * branch <= dim:
            raise ValueError(f"branch_ratio {branch_ratio} of {dim} channels leaves no channel for a branch")
        square, band = square_kernel_size, band_kernel_size
        self.dwconv_hw = nn.Conv2d(branch, branch, square, padding=square // 2, groups=branch)
        self.dwconv_w = nn.Conv2d(branch, branch, (1, band), padding=(0, band // 2), groups=branch)
        self.dwconv_h = nn.Conv2d(branch, branch, (band, 1), padding=(band // 2, 0), groups=branch)
        self.split_sizes = (dim - 3 * branch, branch, branch, branch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, square, wide, tall = torch.split(x, self.split_sizes, dim=1)
        return torch.cat((kept, self.dwconv_hw(square), self.dwconv_w(wide), self.dwconv_h(tall)), dim=1)


class PartialDepthwiseConv(nn.Module):
    """MambaOut's mixer: a ``k x k`` depthwise convolution over the ``int(conv_ratio * dim)`` channels the Gated
    CNN block gives it (``channels``), the only place its tokens meet."""

    def __init__(self, dim: int, kernel_size: int = 7, conv_ratio: float = 1.0) -> None:
        super().__init__()
        self.channels = int(conv_ratio * dim)
        if self.channels < 1:
            raise ValueError(f"conv_ratio {conv_ratio} of {dim} channels leaves no channel to convolve")
        self.conv = nn.Conv2d(self.channels, self.channels, kernel_size, padding=kernel_size // 2, groups=self.channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def register_mixer(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a token mixer class under ``name``, for ``MetaFormerConfig.mixers`` (also from user code).

    A stage builds it as ``cls(dim, **settings)``: ``dim`` the stage's width, ``settings`` the config's
    ``mixer_settings`` of that stage, and ``grid=(H, W)``, the stage's token grid, when the class says
    ``fixed_grid = True`` (a mixer holding a matrix over the tokens, which takes only the size it was built for).
    """
    return registrar(MIXERS, "token mixer", name)


MIXERS: dict[str, type[nn.Module]] = {}
for _name, _class in {
    "pooling": Pooling,
    "identity": IdentityMixer,
    "random": RandomMixing,
    "dwconv": DepthwiseConv,
    "attention": Attention,
    "spatial_mlp": SpatialFc,
    "sepconv": SepConv,
    "inception": InceptionDWConv,
    "partial_dwconv": PartialDepthwiseConv,
}.items():
    register_mixer(_name)(_class)


def mixer_class(kind: str) -> type[nn.Module]:
    if kind not in MIXERS:
        raise ConfigError(
            f"unknown token mixer {kind!r}; choose one of {list(MIXERS)} or register one (metaformer.register_mixer)"
        )
    return MIXERS[kind]


def make_mixer(kind: str, dim: int, grid: tuple[int, int], settings: Mapping[str, object]) -> nn.Module:
    """The mixer ``kind`` for a stage of width ``dim`` whose token grid is ``grid``, built with ``settings``."""
    cls = mixer_class(kind)
    extra = {"grid": tuple(grid)} if getattr(cls, "fixed_grid", False) else {}
    try:
        return cls(dim, **settings, **extra)
    except (TypeError, ValueError) as error:  # an unknown or impossible setting: say which mixer and stage
        raise ConfigError(f"token mixer {kind!r} ({cls.__name__}) with settings {dict(settings)}: {error}") from error
