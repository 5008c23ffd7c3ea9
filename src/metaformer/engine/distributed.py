"""Process-group set-up from torchrun's environment, and the few collectives the engine needs."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError, MetaformerError


@dataclass(frozen=True)
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over all processes (a copy, in float64 on the engine's device)."""
        total = values.detach().to(self.device, torch.float64).clone()
        if self.enabled:
            dist.all_reduce(total)
        return total

    def raise_together(self, error: Exception | None, what: str) -> None:
        """Raise ``error`` in the process that met it and a pointer to it in every other one: a process that
        went on alone would wait forever in the next collective."""
        failed = torch.tensor([float(error is not None)])
        if self.enabled:
            failed = self.all_reduce_sum(failed)
        if error is not None:
            raise error
        if failed[0] > 0:
            raise MetaformerError(f"another process stopped {what}; its error is above")

    def gather_lists(self, items: list) -> list:
        """Every process's ``items``, concatenated in rank order, in every process."""
        if not self.enabled:
            return items
        gathered: list = [None] * self.world_size
        dist.all_gather_object(gathered, items)
        return [item for part in gathered for item in part]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_object(self, value: object) -> object:
        if not self.enabled:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]


def init_distributed(device: str = "cpu") -> DistributedContext:
    """One process, or the process group torchrun describes (NCCL for CUDA, gloo for CPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but PyTorch sees no CUDA GPU here")
        target = torch.device("cuda", local_rank if world_size > 1 else (target.index or 0))
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if target.type == "cuda" else "gloo", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, target)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
