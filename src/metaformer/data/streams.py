"""Streamed datasets: samples read in order from shards (WebDataset tar files, a streamed Hugging Face dataset),
never by index. One engine deals the shards to processes and loader workers, shuffles through a buffer, and cuts
an epoch of a given number of samples into batches.

What an epoch reads is a pure function of the seed, the epoch, the number of processes and the number of loader
workers: each pass over the shards deals them, in an order drawn from ``(seed, epoch, pass)``, to the
``processes x workers`` readers, each reader shuffling its samples through a buffer seeded by
``(seed, epoch, reader)``. Training resumes at the end of an epoch (every checkpoint of a classification run is
taken there), so a resumed run reads exactly what the straight run read, given the same processes and workers.
Within one pass no sample is read twice; a reader whose shards run out before its share of the epoch starts a new
pass (timm's and webdataset's resampling), as does every reader when the shards are fewer than the readers.
"""

from __future__ import annotations

import abc
import itertools
import random
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from torch.utils.data import IterableDataset, get_worker_info

from ..errors import DatasetError, ImageLoadError, MetaformerError
from .guarded import SampleFailure

SHUFFLE_BUFFER = 2048  # samples each reader holds to shuffle (timm's wds reader holds 1000 to 5000)


@dataclass(frozen=True)
class Deal:
    """A reader's share of a pass: these shards, of whose concatenated samples it keeps every ``stride``-th
    from ``offset`` (a stride of 1 when there are at least as many shards as readers)."""

    shards: tuple
    stride: int = 1
    offset: int = 0

    def split(self, parts: int, part: int) -> Deal:
        if self.stride == 1 and len(self.shards) >= parts:
            return Deal(self.shards[part::parts])
        return Deal(self.shards, self.stride * parts, self.offset + self.stride * part)


class ShardSource(abc.ABC):
    """Where a stream's samples come from: its shards, how one shard is read (raw samples, undecoded), and how a raw
    sample becomes ``(PIL image, class index)``."""

    root: str  # for messages: the dataset and split, as a folder's path is
    classes: list[str]
    shards: tuple

    @abc.abstractmethod
    def read(self, shard: Any) -> Iterator[Any]: ...

    @abc.abstractmethod
    def decode(self, raw: Any, *, exif_transpose: bool) -> tuple[Any, int]:
        """Raises ``ImageLoadError`` for an unreadable image (skipped), another ``MetaformerError`` to stop."""


@dataclass(frozen=True)
class Window:
    """What one ``iter()`` of a stream yields: training (an epoch's first ``batches`` batches of each process,
    shuffled) or evaluation (every sample once, in order)."""

    training: bool
    rank: int = 0
    world_size: int = 1
    batch_size: int = 1
    seed: int = 0
    epoch: int = 0
    batches: int = 0


class StreamedImages(IterableDataset):
    """The ``(transform(image), class index)`` samples of a ``ShardSource``, yielded as lists of ``batch_size``
    guarded samples (``SampleFailure`` for those that failed), for a DataLoader with ``batch_size=None`` and
    ``GuardedCollate``. ``len()`` is the number of samples of an epoch."""

    streamed = True

    def __init__(self, source: ShardSource, transform: Callable, num_samples: int | None) -> None:
        self.source, self.transform, self.num_samples = source, transform, num_samples
        self.root, self.classes = source.root, source.classes
        self.window: Window | None = None  # set on the copies that are read
        self.exif_transpose = True

    def __len__(self) -> int:
        """The samples of an epoch; once given a window, what a DataLoader over it yields: a training window's
        batches (an evaluation window's share is not known before it is read: a TypeError, as for any iterable)."""
        if self.window is not None:
            if not self.window.training:
                raise TypeError("an evaluation stream's length is known once read")
            return self.window.batches
        if self.num_samples is None:
            raise DatasetError(
                f"{self.root}: the size of this split is not recorded with the dataset, and a stream's epoch is a "
                "number of samples: read it without --streaming"
            )
        return self.num_samples

    def for_training(self, *, seed: int, epoch: int, rank: int, world_size: int, batch_size: int,
                     batches: int) -> StreamedImages:  # fmt: skip
        """This process's first ``batches`` batches of epoch ``epoch``."""
        window = Window(True, rank, world_size, batch_size, seed, epoch, batches)
        return self._with(window)

    def for_evaluation(self, *, rank: int, world_size: int, batch_size: int) -> StreamedImages:
        """This process's share of every sample, once each, in batches (the last may be short)."""
        return self._with(Window(False, rank, world_size, batch_size))

    def deal_warning(self, processes: int, workers: int) -> str | None:
        """What to say when the shards cannot be dealt evenly to the readers (some then hold more samples than
        others, and a reader whose shards run out before its share of an epoch starts them over)."""
        shards, readers = len(self.source.shards), processes * max(1, workers)
        if shards % readers == 0:
            return None
        return (
            f"{self.root}: {shards} shard(s) for {readers} readers ({processes} process(es) x {max(1, workers)} "
            "loader worker(s)) cannot be dealt evenly: readers with fewer samples start their shards over within "
            f"an epoch, so some samples are read twice in it; a multiple of {readers} shards (or other "
            "--num-workers) deals every sample once"
        )

    def _with(self, window: Window) -> StreamedImages:
        stream = StreamedImages(self.source, self.transform, self.num_samples)
        stream.window, stream.exif_transpose = window, self.exif_transpose
        return stream

    # ------------------------------------------------------------------------------------------- reading

    def __iter__(self) -> Iterator[list]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        window = self.window or Window(training=False)
        if not window.training:
            deal = Deal(tuple(self.source.shards)).split(window.world_size, window.rank).split(workers, worker)
            yield from self._batches(self._read(deal))
            return
        # DataLoader takes batch i from worker i % workers: this worker reads only those batches' samples.
        mine = len(range(worker, window.batches, workers)) * window.batch_size
        taken = itertools.islice(self._passes(window, workers, worker), mine)
        yield from self._batches(taken)

    def _passes(self, window: Window, workers: int, worker: int) -> Iterator[Any]:
        """The reader's samples, pass after pass over the shards, each pass dealt in its own order and shuffled on
        its own (the buffer never reaches into the next pass, so no sample comes twice before a pass ends)."""
        buffer_rng = _rng(window.seed, window.epoch, window.rank * workers + worker, "buffer")
        for number in range(1_000_000):
            order = list(self.source.shards)
            _rng(window.seed, window.epoch, number, "shards").shuffle(order)
            deal = Deal(tuple(order)).split(window.world_size, window.rank).split(workers, worker)
            count = 0
            for raw in _shuffled(self._read(deal), buffer_rng):
                count += 1
                yield raw
            if count == 0:
                raise DatasetError(f"{self.root}: a pass over its shards gave this reader no sample")

    def _read(self, deal: Deal) -> Iterator[Any]:
        index = 0
        for shard in deal.shards:
            for raw in self.source.read(shard):
                if index % deal.stride == deal.offset:
                    yield raw
                index += 1

    def _batches(self, raws: Iterator[Any]) -> Iterator[list]:
        batch: list = []
        for raw in raws:
            batch.append(self._sample(raw))
            if len(batch) == (self.window or Window(False)).batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    def _sample(self, raw: Any) -> object:
        try:
            image, label = self.source.decode(raw, exif_transpose=self.exif_transpose)
            return self.transform(image), label
        except ImageLoadError as error:
            return SampleFailure(str(error), fatal=False)
        except MetaformerError as error:
            return SampleFailure(str(error), fatal=True)


def is_streamed(dataset: object) -> bool:
    return getattr(dataset, "streamed", False)


def _rng(*parts: object) -> random.Random:
    return random.Random("/".join(map(str, parts)))  # str seeds are hashed with SHA-512: stable across runs


def _shuffled(items: Iterator[Any], rng: random.Random, size: int = SHUFFLE_BUFFER) -> Iterator[Any]:
    """``items`` through a shuffle buffer of ``size``: each new item takes the place of a random one, yielded."""
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        slot = rng.randrange(size)
        yield buffer[slot]
        buffer[slot] = item
    rng.shuffle(buffer)
    yield from buffer


def check_classes(root: str, names: Sequence[str], classes: Sequence[str] | None) -> list[str]:
    """The training classes: ``classes`` where given (a validation split must have no class outside them)."""
    if classes is None:
        return list(names)
    strangers = sorted(set(names) - set(classes))
    if strangers:
        raise DatasetError(f"{root} has classes that are not among the training classes: {strangers[:10]}")
    return list(classes)
