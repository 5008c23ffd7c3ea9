"""The MetaFormer: a convolutional stem, then stages of blocks (``blocks.py``), then a head; and the backbone of
the dense models, built on the same trunk."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..errors import ConfigError
from .blocks import block_class
from .config import MIN_INPUT_SIDE, MetaFormerConfig
from .layers import ConvEmbed, MlpHead, Scale, SquaredReLU, StarReLU, TwoConvStem, make_norm, resize_pos_embed
from .mixers import make_mixer
from .pretrained import PretrainedCfg, Recorded, default_cfg

__all__ = ["MetaFormer", "MetaFormerConfig", "MetaFormerFeatures", "final_norm"]


# The MLP heads: hidden width over the input's, hidden activation, the hidden LayerNorm's eps (None: no norm).
MLP_HEAD_SHAPES: dict[str, tuple[float, type[nn.Module], float | None]] = {
    "mlp": (4, SquaredReLU, 1e-5),  # ConvFormer, CAFormer
    "metanext": (3, nn.GELU, 1e-6),  # InceptionNeXt
    "mambaout": (4, nn.GELU, 1e-6),  # MambaOut
    "norm_mlp": (4, nn.GELU, None),  # timm's MambaOut *_rw (GELU also where the blocks use SiLU)
}


def final_norm(config: MetaFormerConfig) -> nn.Module:
    """The norm before the head: PoolFormer normalises the last map, then pools; the Baselines and MambaOut pool,
    then apply a LayerNorm; InceptionNeXt has none (its head normalises inside)."""
    width = config.widths[-1]
    if config.is_metanext:
        return nn.Identity()
    return make_norm(config.norm, width) if config.is_poolformer_v1 else nn.LayerNorm(width, eps=1e-6)


def make_stem(config: MetaFormerConfig) -> nn.Module:
    dim = config.widths[0]
    if config.stem_kind == "two_conv":
        mid = config.stem_mid_norm
        return TwoConvStem(config.in_chans, dim, *config.stem, mid_norm=mid, norm=config.stem_norm, act=config.act)
    return ConvEmbed(config.in_chans, dim, *config.stem, norm=config.stem_norm)


class MetaFormerStage(nn.Module):
    """Optional downsampling, an optional position embedding, then the stage's blocks."""

    def __init__(self, config: MetaFormerConfig, index: int, grid: tuple[int, int], drop_paths: Sequence[float]):
        super().__init__()
        dim = config.widths[index]
        if index == 0:
            self.downsample: nn.Module = nn.Identity()
        else:
            width = config.widths[index - 1]
            norm, first = config.downsample_norm, config.downsample_norm_first
            self.downsample = ConvEmbed(width, dim, *config.downsample, norm=norm, norm_first=first)
        self.pos_embed = nn.Parameter(torch.zeros(1, dim, *grid)) if config.pos_embed[index] else None
        kind, mixer, settings = config.blocks[index], config.mixers[index], config.mixer_settings[index]
        block = block_class(kind)
        self.blocks = nn.Sequential(
            *(block(config, index, make_mixer(mixer, dim, grid, settings), rate) for rate in drop_paths)
        )
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


def take_indices(stages: int, indices: int | Sequence[int] | None) -> tuple[list[int], int]:
    """timm's rule for ``forward_intermediates``: all stages for None, the last ``n`` for an int ``n``, else those
    listed (negative counts from the end); with the largest index taken."""
    if indices is None:
        taken = list(range(stages))
    elif isinstance(indices, int):
        if not 0 < indices <= stages:
            raise ConfigError(f"indices={indices}: take the last 1 to {stages} stages")
        taken = list(range(stages - indices, stages))
    else:
        taken = [i + stages if i < 0 else i for i in indices]
        if not taken or any(not 0 <= i < stages for i in taken):
            raise ConfigError(f"indices {list(indices)} must pick stages 0..{stages - 1} (or -{stages}..-1)")
    return taken, max(taken)


class _Trunk(Recorded, nn.Module):
    """Stem and stages, shared by the classifier and the feature extractor (same parameter names)."""

    def __init__(self, config: MetaFormerConfig, pretrained_cfg: PretrainedCfg | None = None) -> None:
        super().__init__()
        self.config = config
        self.pretrained_cfg = (
            default_cfg("", config.image_size, config.in_chans) if pretrained_cfg is None else pretrained_cfg
        )
        self.stem = make_stem(config)
        total = sum(config.depths)
        # Stochastic depth rises linearly from 0 at the first block to drop_path_rate at the last.
        rates = [config.drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        grids = config.stage_grids()
        stages = []
        for index, depth in enumerate(config.depths):
            start = sum(config.depths[:index])
            stages.append(MetaFormerStage(config, index, grids[index], rates[start : start + depth]))
        self.stages = nn.ModuleList(stages)

    def no_weight_decay(self) -> set[str]:
        """Parameters the papers' recipes do not decay besides norms and biases: layer and residual scales,
        StarReLU's scalars, position tables."""
        skipped = {
            f"{m}.{p}"
            for m, module in self.named_modules()
            if isinstance(module, (StarReLU, Scale))
            for p, _ in module.named_parameters()
        }
        return skipped | {n for n, _ in self.named_parameters() if n.endswith("pos_embed")}

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

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass to save memory."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(f"expected a [B, {self.config.in_chans}, H, W] tensor, got shape {list(x.shape)}")
        if min(x.shape[-2:]) < MIN_INPUT_SIDE:
            raise ValueError(f"input sides must be >= {MIN_INPUT_SIDE} pixels, got {x.shape[-2]}x{x.shape[-1]}")

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        norm: bool = False,
        stop_early: bool = False,
        output_fmt: str = "NCHW",
        intermediates_only: bool = False,
    ) -> list[torch.Tensor] | tuple[torch.Tensor, list[torch.Tensor]]:
        """The outputs of the stages ``indices`` picks (timm's rule: None all, ``n`` the last n, or a list), with
        timm's semantics: ``(final map, intermediates)``, or only the intermediates. ``norm`` is taken as timm
        takes it and, as there, changes nothing: no norm of the model acts on a stage's map alone (the final one
        belongs to the head). ``stop_early`` runs no stage past the last one taken."""
        if output_fmt != "NCHW":
            raise ConfigError(f"output_fmt {output_fmt!r}: MetaFormer's maps are NCHW")
        taken, last = take_indices(len(self.stages), indices)
        final, outputs = self._stage_outputs(x, taken, last if stop_early else len(self.stages) - 1)
        return outputs if intermediates_only else (final, outputs)

    def _stage_outputs(self, x: torch.Tensor, taken: Sequence[int], last: int) -> tuple[torch.Tensor, list]:
        self._check_input(x)
        x = self.stem(x)
        outputs = []
        for index, stage in enumerate(self.stages[: last + 1]):
            x = stage(x)
            if index in taken:
                outputs.append(x)
        return x, outputs


class MetaFormer(_Trunk):
    """MetaFormer image classifier: trunk, final norm, global average pooling, head (the official order).

    ``pretrained_cfg`` is the record of its weights and how it is evaluated (``pretrained.PretrainedCfg``).
    """

    task: ClassVar[str] = "classification"

    def __init__(self, config: MetaFormerConfig, pretrained_cfg: PretrainedCfg | None = None) -> None:
        super().__init__(config, pretrained_cfg)
        self.num_features = config.widths[-1]
        self.norm = final_norm(config)
        self.head = self._new_head(config.num_classes)
        self.pretrained_cfg = self.pretrained_cfg.replace(num_classes=config.num_classes)
        self._init_weights()

    def _new_head(self, num_classes: int) -> nn.Module:
        if not num_classes:
            return nn.Identity()
        if self.config.head in MLP_HEAD_SHAPES:
            ratio, act, eps = MLP_HEAD_SHAPES[self.config.head]
            return MlpHead(self.num_features, num_classes, ratio, self.config.head_dropout, act, eps)
        return nn.Linear(self.num_features, num_classes)

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's ``[B, C, H/32, W/32]`` map, before the final norm (as timm's ``forward_features``)."""
        return self._stage_outputs(x, (), len(self.stages) - 1)[0]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        # PoolFormer normalises the map, then pools; the others pool first.
        x = self.norm(x).mean((-2, -1)) if self.config.is_poolformer_v1 else self.norm(x.mean((-2, -1)))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def prune_intermediate_layers(
        self, indices: int | Sequence[int] = 1, prune_norm: bool = False, prune_head: bool = True
    ) -> list[int]:
        """Drop what ``forward_intermediates(indices)`` does not need (timm's semantics): the stages after the last
        one taken, and the head (also when stages were dropped: it would no longer fit); the final norm with
        ``prune_norm``. Returns the indices taken."""
        taken, last = take_indices(len(self.stages), indices)
        dropped_stages = last < len(self.stages) - 1
        if dropped_stages:
            self.stages = self.stages[: last + 1]
            self.config = self.config.first_stages(last + 1)
            self.num_features = self.config.widths[-1]
        if prune_head or dropped_stages:
            self.reset_classifier(0)
        if prune_norm or dropped_stages:
            self.norm = nn.Identity()
        return taken

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, *, labels: Sequence[str] | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` classes (fine-tuning); ``labels``
        names them in the model's record."""
        labels = tuple(labels) if labels else None
        if labels is not None and len(labels) != num_classes:
            raise ConfigError(f"{len(labels)} labels for {num_classes} classes: give one name per class")
        self.config = dataclasses.replace(self.config, num_classes=num_classes)
        self.pretrained_cfg = self.pretrained_cfg.without_weights().replace(num_classes=num_classes, label_names=labels)
        reference = next(self.stem.parameters())
        if num_classes and isinstance(self.head, MlpHead):  # keep the trained hidden layer; new class rows
            self.head.fc2 = nn.Linear(self.head.fc2.in_features, num_classes)
            fresh: nn.Module = self.head.fc2
        else:
            self.head = fresh = self._new_head(num_classes)
        fresh.to(reference.device, reference.dtype)
        self._init_weights(fresh)


class MetaFormerFeatures(_Trunk):
    """Backbone for dense prediction: each selected stage's output through its own norm (official ``fork_feat``),
    from ``forward_intermediates``' stage outputs.

    ``forward`` returns a list of ``[B, C_i, H/s_i, W/s_i]`` maps with strides ``s_i`` of 4, 8, 16, 32.
    """

    def __init__(
        self,
        config: MetaFormerConfig,
        out_indices: Sequence[int] = (0, 1, 2, 3),
        pretrained_cfg: PretrainedCfg | None = None,
    ) -> None:
        super().__init__(config, pretrained_cfg)
        self.out_indices = tuple(out_indices)
        if not self.out_indices or any(i not in range(len(config.depths)) for i in self.out_indices):
            raise ConfigError(f"out_indices {self.out_indices} must pick stages 0..{len(config.depths) - 1}")
        self.out_norms = nn.ModuleDict({str(i): make_norm(config.norm, config.widths[i]) for i in self.out_indices})
        self.out_channels = [config.widths[i] for i in self.out_indices]
        self.strides = [config.strides()[i] for i in self.out_indices]
        self.feature_info = [
            {"num_chs": c, "reduction": r, "module": f"stages.{i}"}
            for i, c, r in zip(self.out_indices, self.out_channels, self.strides, strict=True)
        ]
        self._init_weights()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outputs = self.forward_intermediates(x, self.out_indices, stop_early=True, intermediates_only=True)
        return [self.out_norms[str(i)](o) for i, o in zip(self.out_indices, outputs, strict=True)]
