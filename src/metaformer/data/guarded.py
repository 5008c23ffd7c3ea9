"""Datasets whose failures travel back from DataLoader workers as values, not as the workers' tracebacks.

An unreadable image is skipped and counted; any other dataset error (a mask value that is no class, a box without
area) stops the run with its own one-line message, raised in the main process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError, ImageLoadError, MetaformerError


@dataclass(frozen=True)
class SampleFailure:
    message: str
    fatal: bool  # False: an unreadable image, skipped


@dataclass
class Batch:
    """The collated readable samples of a batch (None if there are none), and what went wrong with the others."""

    data: object | None
    size: int
    skipped: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def raise_fatal(self) -> None:
        if self.fatal:
            raise DatasetError(self.fatal[0])

    def pin_memory(self) -> Batch:
        """Called by DataLoader(pin_memory=True), which pins only the types it knows."""
        return Batch(_pinned(self.data), self.size, self.skipped, self.fatal)


def _pinned(data: object) -> object:
    if isinstance(data, torch.Tensor):
        return data.pin_memory()
    if isinstance(data, (list, tuple)):
        return type(data)(_pinned(item) for item in data)
    if isinstance(data, dict):
        return {key: _pinned(value) for key, value in data.items()}
    return data


class Guarded(Dataset):
    """``dataset`` with its errors returned as ``SampleFailure`` values."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> object:
        try:
            return self.dataset[index]
        except ImageLoadError as error:
            return SampleFailure(str(error), fatal=False)
        except MetaformerError as error:
            return SampleFailure(str(error), fatal=True)


class GuardedCollate:
    """Collates the good samples of a ``Guarded`` dataset's batch with ``collate`` into a ``Batch``."""

    def __init__(self, collate: Callable[[list], object]) -> None:
        self.collate = collate

    def __call__(self, items: list) -> Batch:
        good = [item for item in items if not isinstance(item, SampleFailure)]
        failures = [item for item in items if isinstance(item, SampleFailure)]
        return Batch(
            data=self.collate(good) if good else None,
            size=len(good),
            skipped=[f.message for f in failures if not f.fatal],
            fatal=[f.message for f in failures if f.fatal],
        )
