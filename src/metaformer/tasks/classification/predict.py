"""Classifying image files: decoded and preprocessed in worker processes, the model run in batches."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from ...data import ImageLoadError, class_names, find_images
from ...errors import ConfigError
from ...models.metaformer import MetaFormer
from ...processor import ImageProcessor


@dataclass
class Prediction:
    path: str
    topk: list[dict] = field(default_factory=list)  # [{"index", "label", "prob"}], most probable first
    error: str | None = None

    def to_dict(self) -> dict:
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        return {"path": self.path, "topk": self.topk}


class _ImageFiles(Dataset):
    def __init__(self, paths: Sequence[Path], processor: ImageProcessor) -> None:
        self.paths = paths
        self.processor = processor

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        path = self.paths[index]
        try:
            return index, self.processor.transform(path), None
        except ImageLoadError as error:
            return index, None, error.reason


def _collate(items: list[tuple[int, torch.Tensor | None, str | None]]) -> list:
    return items


def input_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype of the pixels a model takes: its weights' (an int8 program says float32 itself)."""
    return getattr(model, "input_dtype", None) or next(model.parameters()).dtype


def class_labels(model: MetaFormer) -> Sequence[str]:
    """The model's class names: from its checkpoint, else ImageNet-1k's for 1000 classes, else ``class_<i>``."""
    return class_names(model.num_classes, model.config.labels)


@torch.inference_mode()
def predict(
    model: MetaFormer,
    paths: Sequence[str | os.PathLike],
    processor: ImageProcessor,
    topk: int = 5,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    progress: bool = False,
) -> Iterator[Prediction]:
    """Top-k predictions for each file, in order; unreadable files yield a ``Prediction`` with ``error`` set."""
    files = find_images(paths)
    labels = class_labels(model)
    topk = min(topk, model.num_classes)
    model = model.eval().to(device)
    if model.num_classes == 0:
        raise ConfigError("the model has no classifier head (num_classes=0); load a classification checkpoint")
    dtype = input_dtype(model)
    loader = DataLoader(
        _ImageFiles(files, processor),
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_collate,
        pin_memory=torch.device(device).type == "cuda",
    )
    with tqdm(total=len(files), unit="img", disable=not progress, leave=False) as bar:
        for batch in loader:
            good = [(i, x) for i, x, _ in batch if x is not None]
            results: dict[int, Prediction] = {}
            if good:
                images = (
                    torch.stack([x for _, x in good]).to(device, dtype).contiguous(memory_format=torch.channels_last)
                )
                probs = model(images).float().softmax(-1)
                values, indices = probs.topk(topk, dim=-1)
                for (i, _), top_values, top_indices in zip(good, values.tolist(), indices.tolist(), strict=False):
                    top = [
                        {"index": c, "label": labels[c], "prob": round(p, 6)}
                        for p, c in zip(top_values, top_indices, strict=False)
                    ]
                    results[i] = Prediction(str(files[i]), top)
            for i, _, error in batch:
                if error is not None:
                    results[i] = Prediction(str(files[i]), error=error)
            for i, _, _ in batch:
                yield results[i]
            bar.update(len(batch))
