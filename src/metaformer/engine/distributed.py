"""Process-group set-up from torchrun's environment, and the few collectives the engine needs."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ..errors import ConfigError, MetaformerError, RunFolderError


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


def process_ranks(environ: dict[str, str] | os._Environ = os.environ) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables, else from SLURM's (``srun`` starting one
    process per task, as timm reads them), else one process. SLURM gives no rendezvous address: the job script sets
    ``MASTER_ADDR`` (its first node) and ``MASTER_PORT``."""
    if "WORLD_SIZE" in environ:
        return int(environ.get("RANK", "0")), int(environ["WORLD_SIZE"]), int(environ.get("LOCAL_RANK", "0"))
    tasks = int(environ.get("SLURM_NTASKS", "1"))
    if tasks > 1 and "SLURM_PROCID" in environ:
        missing = [name for name in ("MASTER_ADDR", "MASTER_PORT") if name not in environ]
        if missing:
            raise ConfigError(
                f"srun started {tasks} tasks, but {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} "
                "not set: export MASTER_ADDR=$(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) and "
                "MASTER_PORT=29500 in the job script (or run `srun torchrun ...`)"
            )
        return int(environ["SLURM_PROCID"]), tasks, int(environ.get("SLURM_LOCALID", "0"))
    return 0, 1, 0


def init_distributed(device: str = "cpu") -> DistributedContext:
    """One process, or the process group torchrun (or srun) describes (NCCL for CUDA, gloo for CPU)."""
    rank, world_size, local_rank = process_ranks()
    target = torch.device(device)
    if target.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"--device {device} asked for, but PyTorch sees no CUDA GPU here")
        target = torch.device("cuda", local_rank if world_size > 1 else (target.index or 0))
        torch.cuda.set_device(target)
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if target.type == "cuda" else "gloo"
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size)
    return DistributedContext(rank, world_size, local_rank, target)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def on_main(context: DistributedContext, action: Callable[[], Any]) -> None:
    """Run ``action`` on the main process; its error (a refusal, a failed write) stops every process."""
    error: Exception | None = None
    if context.is_main:
        try:
            action()
        except (MetaformerError, OSError) as raised:
            error = raised
    message = context.broadcast_object(str(error) if error is not None else None)
    if error is not None:
        raise error
    if message is not None:
        raise RunFolderError(f"the main process stopped: {message}")
