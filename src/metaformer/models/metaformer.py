"""The MetaFormer: a convolutional stem, four stages of ``x + mixer(norm(x))`` / ``x + mlp(norm(x))`` blocks."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from torchvision.ops import stochastic_depth

from ..data.imagenet import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from .config import DOWNSAMPLE, MIN_INPUT_SIDE, STEM, MetaFormerConfig
from .custom_backward import mlp_branch_with_custom_backward, pooling_branch_with_custom_backward
from .layers import (
    ConvEmbed,
    ConvMlp,
    GroupNorm1,
    MlpHead,
    StarReLU,
    make_norm,
    resize_pos_embed,
)
from .mixers import Pooling, make_mixer

__all__ = ["MetaFormer", "MetaFormerConfig", "MetaFormerFeatures", "final_norm"]


class MetaFormerBlock(nn.Module):
    """``r1 * x + drop_path(ls1 * mixer(norm1(x)))`` then ``r2 * x + drop_path(ls2 * mlp(norm2(x)))``, with the
    layer scales ``ls`` (PoolFormer) and residual scales ``r`` (the Baselines' last stages) where configured."""

    def __init__(self, config: MetaFormerConfig, dim: int, mixer: nn.Module, drop_path: float,
                 res_scale_init: float | None = None) -> None:  # fmt: skip
        super().__init__()
        self.residual = config.residual
        self.drop_path = drop_path
        self.norm1 = make_norm(config.norm, dim)
        self.token_mixer = mixer
        self.layer_scale1 = _scale(config.layer_scale_init, dim)
        self.res_scale1 = _scale(res_scale_init, dim)
        self.norm2: nn.Module | None = None
        self.mlp: nn.Module | None = None
        self.layer_scale2: nn.Parameter | None = None
        self.res_scale2: nn.Parameter | None = None
        if config.use_mlp:
            self.norm2 = make_norm(config.norm, dim)
            self.mlp = ConvMlp(dim, int(dim * config.mlp_ratio), config.act, config.drop_rate, config.bias)
            self.layer_scale2 = _scale(config.layer_scale_init, dim)
            self.res_scale2 = _scale(res_scale_init, dim)
        # PoolFormer's own block trains each branch through one function with a custom backward.
        self.custom_backward = self.has_custom_backward()
        self.custom_mlp_backward = self.has_custom_mlp_backward()

    def has_custom_backward(self) -> bool:
        """PoolFormer's own block (one-group norm with bias, pooling, plain residual): the branch
        ``custom_backward.py`` computes."""
        return (
            isinstance(self.token_mixer, Pooling)
            and isinstance(self.norm1, GroupNorm1)
            and self.norm1.bias is not None
            and self.residual
            and self.res_scale1 is None
        )

    def has_custom_mlp_backward(self) -> bool:
        """An exact-GELU MLP with biases and no dropout after a one-group norm, plain residual: the branch
        ``custom_backward.py`` computes."""
        mlp = self.mlp
        return (
            isinstance(mlp, ConvMlp)
            and type(mlp.fc1) is nn.Conv2d  # not a subclass (fake quantization, adapters) with its own forward
            and type(mlp.fc2) is nn.Conv2d
            and isinstance(mlp.act, nn.GELU)
            and mlp.act.approximate == "none"
            and mlp.drop.p == 0
            and mlp.fc1.bias is not None
            and mlp.fc2.bias is not None
            and isinstance(self.norm2, GroupNorm1)
            and self.residual
            and self.res_scale2 is None
        )

    def _add(self, x: torch.Tensor, branch: torch.Tensor, scale: nn.Parameter | None,
             res_scale: nn.Parameter | None) -> torch.Tensor:  # fmt: skip
        dropping = self.training and self.drop_path > 0
        if scale is not None and self.residual and not dropping and res_scale is None:
            return torch.addcmul(x, branch, scale[:, None, None])  # scale and residual add in one pass
        if scale is not None:
            branch = branch * scale[:, None, None]
        branch = stochastic_depth(branch, self.drop_path, "row", self.training)
        if not self.residual:
            return branch
        return x + branch if res_scale is None else torch.addcmul(branch, x, res_scale[:, None, None])

    def _sample_scale(self, x: torch.Tensor) -> torch.Tensor | None:
        """Stochastic depth's per-sample factor, drawn exactly as torchvision's ``stochastic_depth`` draws it."""
        if not (self.training and self.drop_path > 0):
            return None
        keep = 1.0 - self.drop_path
        noise = torch.empty(x.shape[0], dtype=x.dtype, device=x.device).bernoulli_(keep)
        return noise.div_(keep).float() if keep > 0 else noise.float()

    def _pooling_branch(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm1
        layer_scale = self.layer_scale1 if self.layer_scale1 is not None else torch.ones_like(norm.weight)
        pool_size = self.token_mixer.pool.kernel_size
        sample_scale = self._sample_scale(x)
        return pooling_branch_with_custom_backward(x, norm.weight, norm.bias, layer_scale, pool_size, norm.eps,
                                                   sample_scale)  # fmt: skip

    def _mlp_branch(self, x: torch.Tensor) -> torch.Tensor:
        norm = self.norm2
        layer_scale = self.layer_scale2 if self.layer_scale2 is not None else torch.ones_like(norm.weight)
        return mlp_branch_with_custom_backward(x, norm.weight, norm.bias, self.mlp.fc1, self.mlp.fc2, layer_scale,
                                               norm.eps, self._sample_scale(x))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        training = torch.is_grad_enabled()
        if self.custom_backward and training:
            x = self._pooling_branch(x)
        else:
            x = self._add(x, self.token_mixer(self.norm1(x)), self.layer_scale1, self.res_scale1)
        # Training only: in eval mode with gradients (Grad-CAM, hooks on the MLP's modules) the modules run.
        if self.mlp is not None and self.custom_mlp_backward and training and self.training:
            x = self._mlp_branch(x)
        elif self.mlp is not None:
            x = self._add(x, self.mlp(self.norm2(x)), self.layer_scale2, self.res_scale2)
        return x


def final_norm(config: MetaFormerConfig) -> nn.Module:
    """The norm before the head: PoolFormer normalises the last map, then pools; the Baselines pool, then apply a
    LayerNorm."""
    width = config.widths[-1]
    return nn.LayerNorm(width, eps=1e-6) if config.is_baseline else make_norm(config.norm, width)


def _scale(init: float | None, dim: int) -> nn.Parameter | None:
    return None if init is None else nn.Parameter(torch.full((dim,), float(init)))


class MetaFormerStage(nn.Module):
    """Optional downsampling, an optional position embedding, then the stage's blocks."""

    def __init__(
        self,
        config: MetaFormerConfig,
        index: int,
        grid: tuple[int, int],
        drop_paths: Sequence[float],
    ) -> None:
        super().__init__()
        dim = config.widths[index]
        if index == 0:
            self.downsample: nn.Module = nn.Identity()
        else:
            self.downsample = ConvEmbed(config.widths[index - 1], dim, *DOWNSAMPLE, norm=config.downsample_norm,
                                        norm_first=True)  # fmt: skip
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *grid)) if config.pos_embed[index] else None
        kind, res_scale = config.mixers[index], config.res_scale_init[index]
        self.blocks = nn.Sequential(*(
            MetaFormerBlock(config, dim, make_mixer(kind, dim, grid, pool_size=config.pool_size, bias=config.bias),
                            rate, res_scale)
            for rate in drop_paths
        ))  # fmt: skip
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.downsample(x)
        if self.pos_embed is not None:
            x = x + resize_pos_embed(self.pos_embed, x.shape[-2:])
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                x = checkpoint(block, x, use_reentrant=False)
            return x
        return self.blocks(x)


class _Trunk(nn.Module):
    """Stem and stages, shared by the classifier and the feature extractor (same parameter names)."""

    def __init__(self, config: MetaFormerConfig) -> None:
        super().__init__()
        self.config = config
        self.stem = ConvEmbed(config.in_chans, config.widths[0], *STEM, norm=config.stem_norm)
        total = sum(config.depths)
        # Stochastic depth rises linearly from 0 at the first block to drop_path_rate at the last.
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        grids = config.stage_grids()
        stages = []
        for index, depth in enumerate(config.depths):
            start = sum(config.depths[:index])
            stages.append(MetaFormerStage(config, index, grids[index], rates[start : start + depth]))
        self.stages = nn.ModuleList(stages)

    @property
    def pretrained_cfg(self) -> dict:
        """Evaluation preprocessing, in the keys timm uses."""
        size = self.config.image_size
        return {
            "input_size": (self.config.in_chans, size, size),
            "crop_pct": self.config.crop_pct,
            "interpolation": "bicubic",
            "mean": IMAGENET_MEAN,
            "std": IMAGENET_STD,
        }

    def no_weight_decay(self) -> set[str]:
        """Parameters the papers' recipes do not decay besides norms and biases: layer and residual scales,
        StarReLU's scalars, position tables."""
        scalars = {f"{m}.{p}" for m, module in self.named_modules() if isinstance(module, StarReLU)
                   for p, _ in module.named_parameters()}  # fmt: skip
        scales = {n for n, _ in self.named_parameters() if n.endswith(("layer_scale1", "layer_scale2", "res_scale1",
                                                                       "res_scale2", "pos_embed"))}  # fmt: skip
        return scalars | scales

    def _init_weights(self, root: nn.Module | None = None) -> None:
        # As the official code: truncated normal for every linear map and the MLP's 1x1 convolutions (PoolFormer),
        # or every convolution (the Baselines).
        every_conv = self.config.init == "baselines"
        for module in (root or self).modules():
            conv = isinstance(module, nn.Conv2d) and (every_conv or module.kernel_size == (1, 1))
            if isinstance(module, nn.Linear) or conv:
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def set_custom_backward(self, enable: bool = True) -> None:
        """Train PoolFormer blocks' token mixers through one function with a custom, leaner backward (default), or
        through the literal modules. Outputs and gradients are the same; only memory and speed differ."""
        for module in self.modules():
            if isinstance(module, MetaFormerBlock):
                module.custom_backward = enable and module.has_custom_backward()
                module.custom_mlp_backward = enable and module.has_custom_mlp_backward()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected a [B, {self.config.in_chans}, H, W] tensor, got shape {list(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIDE:
            raise ValueError(f"input sides must be >= {MIN_INPUT_SIDE} pixels, got {x.shape[-2]}x{x.shape[-1]}")


class MetaFormer(_Trunk):
    """MetaFormer image classifier: trunk, final norm, global average pooling, linear head (official order)."""

    def __init__(self, config: MetaFormerConfig) -> None:
        super().__init__(config)
        self.num_features = config.widths[-1]
        # PoolFormer normalises the last map, then pools; the Baselines pool, then apply a LayerNorm.
        self.norm = final_norm(config)
        self.head = self._new_head(config.num_classes)
        self._init_weights()

    def _new_head(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        if self.config.head == "mlp":
            return MlpHead(self.num_features, num_classes, dropout=self.config.head_dropout)
        return nn.Linear(self.num_features, num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's ``[B, C, H/32, W/32]`` map, before the final norm (as timm's ``forward_features``)."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.norm(x.mean((-2, -1))) if self.config.is_baseline else self.norm(x).mean((-2, -1))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *, labels: Sequence[str] | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes (fine-tuning)."""
        self.config = dataclasses.replace(
            self.config, num_classes=num_classes, labels=tuple(labels) if labels else None
        )
        reference = self.stem.proj.weight
        if num_classes and isinstance(self.head, MlpHead):  # keep the trained hidden layer; new class rows
            self.head.fc2 = nn.Linear(self.head.fc2.in_features, num_classes)
            fresh: nn.Module = self.head.fc2
        else:
            self.head = fresh = self._new_head(num_classes)
        fresh.to(reference.device, reference.dtype)
        self._init_weights(fresh)


class MetaFormerFeatures(_Trunk):
    """Backbone for dense prediction: each selected stage's output through its own norm (official ``fork_feat``).

    ``forward`` returns a list of ``[B, C_i, H/s_i, W/s_i]`` maps with strides ``s_i`` of 4, 8, 16, 32.
    """

    def __init__(self, config: MetaFormerConfig, out_indices: Sequence[int] = (0, 1, 2, 3)) -> None:
        super().__init__(config)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(len(config.depths)) for i in self.out_indices):
            raise ConfigError(f"out_indices {self.out_indices} must pick stages 0..{len(config.depths) - 1}")
        self.out_norms = nn.ModuleDict({str(i): make_norm(config.norm, config.widths[i]) for i in self.out_indices})
        self.out_channels = [config.widths[i] for i in self.out_indices]
        self.strides = [STEM[1] * DOWNSAMPLE[1] ** i for i in self.out_indices]
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, c, r in zip(self.out_indices, self.out_channels, self.strides, strict=True)
        ]
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self._check_input(x)
        x = self.stem(x)
        outs = []
        for index, stage in enumerate(self.stages[: max(self.out_indices) + 1]):
            x = stage(x)
            if index in self.out_indices:
                outs.append(self.out_norms[str(index)](x))
        return outs
