"""Applying the table: ``fuse`` for inference, ``use_custom_backward`` for training, and module swaps for the other
uses (int8, export). Each is a swap of blocks or modules; nothing here computes a branch itself."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..models.blocks import MetaFormerBlock
from ..models.metaformer import MetaFormer, _Trunk
from .inference import FusedBlock, PlainMlp, PlainToken
from .onednn import is_tracing
from .table import FOLDED_BLOCKS, choose, rows
from .training import TrainingBlock

# On CPU a batch runs in slices whose widest activation (the first stage's MLP hidden map) stays below this size:
# glibc hands out larger blocks as fresh mmap pages, which page-fault on every pass; smaller ones are reused.
CPU_SLICE_BYTES = 32 * 2**20


class FusedMetaFormer(MetaFormer):
    """What ``fuse`` returns for a classifier: the same module tree with folded parts; on CPU, large batches run in
    slices."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        per_image = self.config.widths[0] * self.config.mlp_ratios[0] * x[0, 0].numel() / 16 * x.element_size()
        slice_size = max(1, int(CPU_SLICE_BYTES // per_image))
        if x.device.type != "cpu" or is_tracing() or x.shape[0] <= slice_size:
            return super().forward(x)
        slices = -(-x.shape[0] // slice_size)
        return torch.cat([super(FusedMetaFormer, self).forward(part) for part in x.tensor_split(slices)])


def _fused_block(block: nn.Module) -> nn.Module:
    if type(block) not in FOLDED_BLOCKS:
        return block  # another block kind (an ablation, a block of the user's) runs as it is
    token = choose("inference", "token", block)
    mlp = choose("inference", "mlp", block) if hasattr(block, "mlp") else None
    token_form = token.replacement(block) if token else PlainToken(block)
    mlp_form = (mlp.replacement(block) if mlp else PlainMlp(block)) if hasattr(block, "mlp") else None
    return FusedBlock(token_form, mlp_form)


def swap_modules(root: nn.Module, use: str) -> list[str]:
    """Replace, in place, every module of ``root`` that a ``module`` row of ``use`` fits; returns their names."""
    swapped = []
    for name, module in list(root.named_modules()):
        swap = choose(use, "module", module) if rows(use, "module") else None
        if swap is not None and name:
            parent, _, child = name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, swap.replacement(module))
            swapped.append(name)
    return swapped


def _fuse_trunk(trunk: _Trunk) -> None:
    for stage in trunk.stages:
        stage.blocks = nn.Sequential(*(_fused_block(block) for block in stage.blocks))
    swap_modules(trunk, "inference")


def fuse(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` for inference in which every part the table fits is swapped for its folded form (see
    ``inference.py``); same outputs. Parts it does not fit (another class, a subclass, a hooked module) run as they
    are.

    Takes a MetaFormer classifier, or any model built on MetaFormer backbones (the segmentation and detection
    models). The copy is in eval mode with frozen parameters; keep the original for training or saving checkpoints.
    ``inplace`` folds ``model`` itself (no copy of the weights), which is then spent.
    """
    if not any(isinstance(m, _Trunk) for m in model.modules()):
        raise TypeError(f"fuse() takes a MetaFormer or a model with a MetaFormer backbone, got {type(model).__name__}")
    fused = model if inplace else copy.deepcopy(model)
    if type(fused) is MetaFormer:
        fused = _as(FusedMetaFormer, fused)
    fused.eval()
    trunks = [m for m in fused.modules() if isinstance(m, _Trunk)]  # listed first: fusing replaces submodules
    with torch.no_grad():
        for trunk in trunks:
            _fuse_trunk(trunk)
    fused.requires_grad_(False)
    fused.is_fused = True
    return fused


def _as(cls: type[nn.Module], module: nn.Module) -> nn.Module:
    """``module``'s state (children, parameters, settings) as an instance of its subclass ``cls``: the same module
    tree with another forward."""
    converted = cls.__new__(cls)
    converted.__dict__.update(module.__dict__)
    return converted


def is_fused(model: nn.Module) -> bool:
    return bool(getattr(model, "is_fused", False))


def use_custom_backward(model: nn.Module) -> list[str]:
    """Train ``model``'s blocks through the table's training functions where they fit (PoolFormer's pooling and
    MLP branches: less memory kept for the backward, fewer passes), in place; returns the blocks swapped.

    The blocks keep their modules, so parameters, state-dict keys and checkpoints are unchanged. A branch whose
    parts stop fitting (a mixer swapped in later, a hook added) runs through its modules again. By default training
    runs the reference modules: this is opt-in (``metaformer train --custom-backward``).
    """
    swapped = []
    for name, module in list(model.named_modules()):
        for index, block in enumerate(getattr(module, "blocks", ())):
            if type(block) is not MetaFormerBlock:
                continue
            token, mlp = (next(iter(rows("training", part)), None) for part in ("token", "mlp"))
            if (token and token.fits(block) is None) or (mlp and mlp.fits(block) is None):
                module.blocks[index] = TrainingBlock(block, token, mlp)
                swapped.append(f"{name}.blocks.{index}" if name else f"blocks.{index}")
    return swapped
