"""Measuring a classifier: loss, top-1 and top-k, per-class accuracy and the confusion matrix, over every image of
a dataset once (sharded over the processes under torchrun)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, default_collate

from ...data.guarded import Guarded, GuardedCollate
from ...data.samplers import ShardSampler
from ...data.streams import is_streamed
from ...engine.distributed import DistributedContext
from ..common import readable_batches
from .data import ImageFolder
from .predict import input_dtype


def top_k(num_outputs: int) -> int:
    """The k of top-k: 5, or fewer for a model with few classes (a top-k of all classes would always be 100%)."""
    return min(5, num_outputs - 1)


@dataclass
class Evaluation:
    """What ``evaluate`` measured: ``confusion[c, p]`` counts images of dataset class ``c`` predicted as class
    ``p``; its last column counts predictions of model outputs that are none of the dataset's classes."""

    classes: list[str]
    confusion: torch.Tensor
    loss: float
    top1: float
    topk: float | None
    k: int
    images: int
    errors: list[str] = field(default_factory=list)

    def per_class(self) -> dict[str, float | None]:
        """Accuracy (percent) of each class; None for a class without images."""
        totals = self.confusion.sum(1)
        hits = self.confusion.diagonal()
        return {c: (100 * hits[i].item() / totals[i].item() if totals[i] else None) for i, c in enumerate(self.classes)}

    def metrics(self) -> dict[str, float | int | None]:
        """The figures a training run logs."""
        result = {"val_loss": self.loss, "top1": self.top1, "images": self.images, "unreadable": len(self.errors)}
        if self.topk is not None:
            result[f"top{self.k}"] = self.topk
        return result


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    dataset: ImageFolder,
    outputs: list[int],
    context: DistributedContext,
    *,
    batch_size: int,
    num_workers: int,
    progress: bool = False,
) -> Evaluation:
    """Every image of ``dataset`` once; ``outputs[c]`` is the model output that stands for dataset class ``c``."""
    model.eval()
    device = context.device
    num_outputs = model.num_classes
    classes = len(dataset.classes)
    k = top_k(num_outputs)
    lookup = torch.tensor(outputs, device=device)
    to_class = torch.full((num_outputs,), classes, dtype=torch.long, device=device)  # "other" by default
    to_class[lookup] = torch.arange(classes, device=device)
    confusion = torch.zeros(classes, classes + 1, dtype=torch.float64, device=device)
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # loss sum, top-k hits: summed on the device
    errors: list[str] = []
    dtype = input_dtype(model)
    if is_streamed(dataset):  # each process reads its share of the shards, every sample once
        stream = dataset.for_evaluation(rank=context.rank, world_size=context.world_size, batch_size=batch_size)
        loader = DataLoader(stream, batch_size=None, collate_fn=GuardedCollate(default_collate),
                            num_workers=num_workers, pin_memory=device.type == "cuda")  # fmt: skip
    else:
        loader = DataLoader(
            Guarded(dataset),
            batch_size=batch_size,
            collate_fn=GuardedCollate(default_collate),
            sampler=ShardSampler(len(dataset), context.rank, context.world_size),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
    for images, labels in readable_batches(loader, context, errors, progress):
        images = images.to(device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        labels = labels.to(device)
        logits = model(images).float()
        targets = lookup[labels]
        confusion.index_put_(
            (labels, to_class[logits.argmax(-1)]),
            torch.ones(len(labels), dtype=torch.float64, device=device),
            accumulate=True,
        )
        hits = (logits.topk(max(k, 1), dim=-1).indices == targets[:, None]).any(-1).sum()
        loss = F.cross_entropy(logits, targets, reduction="sum")
        totals += torch.stack([loss.double(), hits.double()])
    confusion = context.all_reduce_sum(confusion).cpu()
    loss_sum, topk_hits = context.all_reduce_sum(totals).tolist()
    errors = context.gather_lists(errors)
    images = int(confusion.sum().item())
    top1 = 100 * confusion.diagonal().sum().item() / images if images else None
    return Evaluation(
        classes=list(dataset.classes),
        confusion=confusion,
        loss=loss_sum / images if images else None,
        top1=top1,
        topk=100 * topk_hits / images if images and k > 1 else None,
        k=k,
        images=images,
        errors=errors,
    )
