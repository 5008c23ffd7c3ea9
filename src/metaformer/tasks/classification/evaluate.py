"""Top-1/top-5 accuracy with the ImageNet validation protocol (the model's crop_pct, bicubic resize)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from ...data import ImageProcessor
from ...engine.distributed import DistributedContext
from ...models.metaformer import MetaFormer
from .data import ImageFolder, ShardSampler, class_to_output, collate


def eval_folder(data: str | os.PathLike) -> Path:
    """``DATA/val`` if there is one, else ``DATA`` itself."""
    data = Path(data)
    return data / "val" if (data / "val").is_dir() else data


@torch.inference_mode()
def evaluate(
    model: MetaFormer,
    loader: DataLoader,
    outputs: list[int],
    context: DistributedContext,
    progress: bool = False,
) -> dict:
    """Loss and top-1/top-5 (percent) over every image of ``loader``'s dataset, reduced over all processes.

    ``outputs[c]`` is the model output that stands for dataset class ``c``."""
    model.eval()
    device = context.device
    lookup = torch.tensor(outputs, device=device)
    totals = torch.zeros(4, device=device)  # loss sum, top-1, top-5, images: summed on the device, read once
    errors: list[str] = []
    dtype = next(model.parameters()).dtype
    for images, labels, bad in tqdm(loader, disable=not (progress and context.is_main), unit="batch", leave=False):
        errors += bad
        if len(labels) == 0:
            continue
        images = images.to(device, dtype, non_blocking=True).contiguous(memory_format=torch.channels_last)
        targets = lookup[labels.to(device)]
        logits = model(images).float()
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top5 == targets[:, None]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        counts = torch.stack([hits[:, 0].sum(), hits.any(-1).sum(), torch.tensor(len(labels), device=device)])
        totals += torch.cat([loss[None], counts.float()])
    totals = torch.cat([totals.cpu().double(), torch.tensor([float(len(errors))], dtype=torch.float64)])
    loss, top1, top5, count, unreadable = context.all_reduce_sum(totals).tolist()
    count = max(count, 1)
    return {
        "val_loss": loss / count,
        "top1": 100 * top1 / count,
        "top5": 100 * top5 / count,
        "images": int(count),
        "unreadable": int(unreadable),
        "errors": errors,
    }


def eval_loader(
    folder: Path,
    model: MetaFormer,
    batch_size: int,
    num_workers: int,
    context: DistributedContext,
    classes: list[str] | None = None,
) -> tuple[DataLoader, list[int]]:
    processor = ImageProcessor(size=model.config.image_size, crop_pct=model.config.crop_pct)
    dataset = ImageFolder(folder, processor.transform, classes=classes)
    outputs = class_to_output(dataset.classes, model.config.labels, model.num_classes)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=ShardSampler(len(dataset), context.rank, context.world_size),
        num_workers=num_workers,
        collate_fn=collate,
        pin_memory=context.device.type == "cuda",
    )
    return loader, outputs
