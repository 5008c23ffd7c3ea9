"""Which dataset indices each process reads: shuffled training batches that resume exactly, and evaluation shards."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``, no padding: each image is evaluated exactly once."""

    def __init__(self, length: int, rank: int = 0, world_size: int = 1) -> None:
        self.indices = list(range(rank, length, world_size))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


class StreamSampler(Sampler[int]):
    """This process's indices for the training steps ``[start, stop)`` of a run.

    The run reads the dataset in passes (epochs); pass ``p`` is a permutation drawn from ``seed + p``, cut into
    global batches of ``batch_size x world_size x accumulation`` (a last incomplete one is dropped). A step's global
    batch is read as ``accumulation`` micro-batches in turn, of which process ``rank`` takes its own ``batch_size``
    slice. Any step range is a pure function of the seed, so a run resumed at a step reads exactly what it would
    have read, and the union of the processes' micro-batches at a step is the same for any split of one global batch
    (8 processes of 4, or 1 process of 8 accumulating 4 micro-batches: the same 32 images).
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        rank: int,
        world_size: int,
        seed: int,
        start: int,
        stop: int,
        accumulation: int = 1,
    ) -> None:
        self.micro_batch = batch_size * world_size
        self.global_batch = self.micro_batch * accumulation
        self.steps_per_epoch = length // self.global_batch
        if self.steps_per_epoch == 0:
            raise ValueError(f"{length} samples do not fill one global batch of {self.global_batch}")
        self.length, self.batch_size, self.rank, self.seed = length, batch_size, rank, seed
        self.start, self.stop, self.accumulation = start, stop, accumulation

    def __iter__(self) -> Iterator[int]:
        permutation, epoch = None, None
        for step in range(self.start, self.stop):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                generator = torch.Generator().manual_seed(self.seed + epoch)
                permutation = torch.randperm(self.length, generator=generator).tolist()
            for micro in range(self.accumulation):
                first = (step % self.steps_per_epoch) * self.global_batch + micro * self.micro_batch
                first += self.rank * self.batch_size
                yield from permutation[first : first + self.batch_size]

    def __len__(self) -> int:
        return (self.stop - self.start) * self.accumulation * self.batch_size
