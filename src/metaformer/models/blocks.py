"""The blocks a stage is made of, one class per kind, each built as ``cls(config, stage, mixer, drop_path)``.

The MetaFormer block is the paper's two lines, ``x = x + TokenMixer(Norm(x))`` and ``x = x + ChannelMLP(Norm(x))``,
with its optional parts (layer scale, residual scale, stochastic depth) as modules that are the identity where a
model has none. InceptionNeXt's MetaNeXt block has one branch: ``x = x + ChannelMLP(Norm(TokenMixer(x)))``, and
MambaOut's Gated CNN block one too, its token mixer inside a gated channel MLP.
Faster executions of these blocks live in ``metaformer.fast``, which swaps them in and checks them against these.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import ConfigError
from .config import MetaFormerConfig, registrar
from .layers import ConvMlp, DropPath, make_activation, make_norm, scale_or_identity

BLOCKS: dict[str, type[nn.Module]] = {}


def register_block(name: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a block class under ``name``, for ``MetaFormerConfig.blocks``: a stage builds each of its blocks as
    ``cls(config, stage, mixer, drop_path)``, with the stage's token mixer and stochastic-depth rate."""
    return registrar(BLOCKS, "block", name)


def block_class(kind: str) -> type[nn.Module]:
    if kind not in BLOCKS:
        raise ConfigError(f"unknown block {kind!r}; choose one of {list(BLOCKS)} or register one (register_block)")
    return BLOCKS[kind]


@register_block("metaformer")
class MetaFormerBlock(nn.Module):
    """``x = r1(x) + drop(ls1(mixer(norm1(x))))``, then ``x = r2(x) + drop(ls2(mlp(norm2(x))))``: the layer scales
    ``ls`` (PoolFormer) and residual scales ``r`` (the Baselines' last stages) are the identity where absent."""

    def __init__(self, config: MetaFormerConfig, stage: int, mixer: nn.Module, drop_path: float) -> None:
        super().__init__()
        dim = self.dim = config.widths[stage]
        self.norm1 = make_norm(config.norm, dim)
        self.token_mixer = mixer
        self.drop_path1 = DropPath(drop_path)
        self.layer_scale1 = scale_or_identity(dim, config.layer_scale_init)
        self.res_scale1 = scale_or_identity(dim, config.res_scale_init[stage])
        self._add_mlp(config, stage, drop_path)

    def _add_mlp(self, config: MetaFormerConfig, stage: int, drop_path: float) -> None:
        dim = config.widths[stage]
        self.norm2 = make_norm(config.norm, dim)
        self.mlp = ConvMlp(dim, int(dim * config.mlp_ratios[stage]), config.act, config.drop_rate, config.mlp_bias)
        self.drop_path2 = DropPath(drop_path)
        self.layer_scale2 = scale_or_identity(dim, config.layer_scale_init)
        self.res_scale2 = scale_or_identity(dim, config.res_scale_init[stage])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.token_branch(x)  # x + TokenMixer(Norm(x))
        return self.mlp_branch(x)  # x + ChannelMLP(Norm(x))

    def token_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``x + TokenMixer(Norm(x))``."""
        return self.res_scale1(x) + self.drop_path1(self.layer_scale1(self.token_mixer(self.norm1(x))))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        """``x + ChannelMLP(Norm(x))``."""
        return self.res_scale2(x) + self.drop_path2(self.layer_scale2(self.mlp(self.norm2(x))))


@register_block("mixer_only")
class MixerOnlyBlock(MetaFormerBlock):
    """The paper's ablation without the channel MLP: the token-mixer branch alone."""

    def _add_mlp(self, config: MetaFormerConfig, stage: int, drop_path: float) -> None:
        pass

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.token_branch(x)


@register_block("no_residual")
class NoResidualBlock(MetaFormerBlock):
    """The paper's ablation without residual connections (it does not train): each branch replaces its input."""

    def token_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path1(self.layer_scale1(self.token_mixer(self.norm1(x))))

    def mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop_path2(self.layer_scale2(self.mlp(self.norm2(x))))


@register_block("metanext")
class MetaNeXtBlock(nn.Module):
    """InceptionNeXt's block (MetaNeXt): the token mixer and the channel MLP in one residual branch,
    ``x = x + drop(ls(mlp(norm(mixer(x)))))``; BatchNorm and layer scale in the official models."""

    def __init__(self, config: MetaFormerConfig, stage: int, mixer: nn.Module, drop_path: float) -> None:
        super().__init__()
        dim = self.dim = config.widths[stage]
        self.token_mixer = mixer
        self.norm = make_norm(config.norm, dim)
        hidden = int(dim * config.mlp_ratios[stage])
        self.mlp = ConvMlp(dim, hidden, config.act, config.drop_rate, config.mlp_bias)
        self.layer_scale = scale_or_identity(dim, config.layer_scale_init)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.drop_path(self.layer_scale(self.mlp(self.norm(self.token_mixer(x)))))


@register_block("gated_cnn")
class GatedCNNBlock(nn.Module):
    """MambaOut's block (a Gated CNN): ``fc1`` of the normed input makes a gate, kept channels and the channels the
    token mixer convolves; ``x = x + drop(ls(fc2(act(gate) * cat(kept, mixer(conv)))))``. The hidden width is the
    stage's MLP ratio (8/3) times its width, the mixer's part its ``channels``.

    The tensors stay ``[B, C, H, W]`` as in every block, in channels-last memory (made so once per stage), where the
    per-token norm and the pointwise layers read each token's channels contiguously, as the official code's
    ``[B, H, W, C]`` tensors do."""

    def __init__(self, config: MetaFormerConfig, stage: int, mixer: nn.Module, drop_path: float) -> None:
        super().__init__()
        dim = self.dim = config.widths[stage]
        hidden = int(dim * config.mlp_ratios[stage])
        conv = getattr(mixer, "channels", dim)  # a mixer that says nothing convolves every hidden channel it can
        if not 0 < conv <= hidden:
            raise ConfigError(f"the token mixer takes {conv} channels; the gated block has {hidden} to give it")
        self.norm = make_norm(config.norm, dim)
        self.fc1 = nn.Conv2d(dim, 2 * hidden, 1, bias=config.mlp_bias)
        self.act = make_activation(config.act)
        self.token_mixer = mixer
        self.fc2 = nn.Conv2d(hidden, dim, 1, bias=config.mlp_bias)
        self.drop = nn.Dropout(config.drop_rate)
        self.layer_scale = scale_or_identity(dim, config.layer_scale_init)
        self.drop_path = DropPath(drop_path)
        self.split_sizes = (hidden, hidden - conv, conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)  # a no-op after the stage's first block
        gate, kept, conv = torch.split(self.fc1(self.norm(x)), self.split_sizes, dim=1)
        y = self.act(gate) * torch.cat((kept, self.token_mixer(conv)), dim=1)
        return x + self.drop_path(self.layer_scale(self.drop(self.fc2(y))))
