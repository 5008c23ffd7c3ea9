"""What the three tasks' training share: creating the model from --init, saving it, AdamW parameter groups."""

from __future__ import annotations

import os

import torch
from torch import nn

from ..checkpoints import save_checkpoint
from ..engine.task import TrainingTask


class LibraryTask(TrainingTask):
    """A task whose models are this library's: saved as our checkpoints, which ``create_model`` reads back."""

    def save_weights(self, model: nn.Module, path: os.PathLike) -> None:
        save_checkpoint(model, path)


def decay_groups(model: nn.Module, weight_decay: float, skip: set[str] = frozenset()) -> list[dict]:
    """AdamW groups: no weight decay on 1-D tensors (norms, biases, layer scales) and on the names in ``skip``."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if param.ndim <= 1 or name in skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def to_device(value: object, device: torch.device) -> object:
    """Tensors in nested lists and dicts (detection targets) moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value
