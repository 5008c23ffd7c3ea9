"""What the three tasks share: saving the model, AdamW parameter groups, reading evaluation batches."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator, Sequence

import torch
from PIL import Image
from torch import nn
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..checkpoints import save_checkpoint
from ..data.guarded import Batch
from ..engine.distributed import DistributedContext
from ..engine.task import TrainingTask
from ..errors import DatasetError


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


def layer_of(name: str, depths: Sequence[int]) -> int:
    """A classifier parameter's layer for layer-wise decay: 0 the stem, 1 to L the blocks in order (a stage's
    downsampling and position table with its first block), L + 1 the final norm and the head."""
    if name.startswith("stem."):
        return 0
    match = re.match(r"stages\.(\d+)\.(?:blocks\.(\d+)|downsample|pos_embed)", name)
    if match:
        stage = int(match[1])
        return sum(depths[:stage]) + int(match[2] or 0) + 1
    return sum(depths) + 1


def layer_decay_groups(model: nn.Module, weight_decay: float, skip: set[str], rate: float) -> list[dict]:
    """``decay_groups`` per layer, each with its ``lr_scale``: ``rate ** (L + 1 - layer)``, 1 for the head."""
    depths, top = model.config.depths, sum(model.config.depths) + 1
    layers: dict[int, list[tuple[str, nn.Parameter]]] = {}
    for name, param in model.named_parameters():
        layers.setdefault(layer_of(name, depths), []).append((name, param))
    groups = []
    for layer in sorted(layers):
        decay = [p for n, p in layers[layer] if p.requires_grad and not (p.ndim <= 1 or n in skip)]
        no_decay = [p for n, p in layers[layer] if p.requires_grad and (p.ndim <= 1 or n in skip)]
        scale = rate ** (top - layer)
        groups += [
            {"params": params, "weight_decay": wd, "lr_scale": scale, "layer": layer}
            for params, wd in ((decay, weight_decay), (no_decay, 0.0))
            if params
        ]
    return groups


def photo_tensor(image: Image.Image, max_side: int | None = None) -> tuple[torch.Tensor, float]:
    """A photo as a uint8 ``[3, H, W]`` tensor, scaled down to ``max_side`` if larger, and the factor applied."""
    tensor = TF.pil_to_tensor(image)
    factor = 1.0 if max_side is None else min(1.0, max_side / max(image.size))
    if factor < 1.0:
        size = [max(1, round(side * factor)) for side in tensor.shape[-2:]]
        tensor = TF.resize(tensor, size, antialias=True)
    return tensor, factor


def to_device(value: object, device: torch.device) -> object:
    """Tensors in nested lists and dicts (detection targets) moved to ``device``."""
    if torch.is_tensor(value):
        return value.to(device, non_blocking=True)
    if isinstance(value, dict):
        return {k: to_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_device(v, device) for v in value)
    return value


def readable_batches(
    batches: Iterable[Batch], context: DistributedContext, errors: list[str], progress: bool
) -> Iterator[object]:
    """The collated data of each batch of a ``Guarded`` loader to evaluate, behind a progress bar on the main
    process; unreadable images' messages go to ``errors``. A dataset error ends the loop and stops every process once
    all have left theirs: one that went on alone would wait forever in the next collective."""
    fatal = None
    shown = progress and context.is_main
    for batch in tqdm(batches, desc="evaluating", unit="batch", leave=False, disable=not shown):
        if batch.fatal:
            fatal = DatasetError(batch.fatal[0])
            break
        errors += batch.skipped
        if batch.data is not None:
            yield batch.data
    context.raise_together(fatal, "on a dataset error")
