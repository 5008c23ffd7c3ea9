"""The contract between the training engine and a task: what every run is given, and what each task supplies."""

from __future__ import annotations

import abc
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.utils.data import Dataset, default_collate

from .distributed import DistributedContext


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the platform tells it, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_num_workers() -> int:
    """Data-loading processes per training process: up to 4, no more than the cores this process may use (more
    make DataLoader warn and only compete with the model for the same cores)."""
    cores = usable_cores()
    local = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("SLURM_NTASKS_PER_NODE", "1"))  # torchrun, srun
    processes = int(local) if local.isdigit() else 1
    return max(0, min(4, cores // processes))


@dataclass
class RunSettings:
    """What every training run is given, whatever its task; the task's recipe holds the rest."""

    data: str
    model: str
    output: str
    init: str | None = None  # initial weights: a classifier for the backbone, or a whole model of this task
    device: str = "cpu"
    seed: int = 0
    amp: str = "none"  # none, bf16 or fp16 (fp16 uses a gradient scaler)
    compile: bool = False
    # PoolFormer's blocks through the custom autograd functions of ``fast.training`` (less memory, fewer passes on
    # some CPUs, slower on others; README "Training speed"); off: the reference modules, hooks and all.
    custom_backward: bool = False
    channels_last: bool = True
    num_workers: int = dataclasses.field(default_factory=default_num_workers)
    progress: bool = True
    stop_after: int | None = None  # in the task's unit; the schedule stays the full run's (as a job limit)
    eval_every: int | None = None  # in the task's unit; None: the task's default
    log_every: int = 50  # optimizer steps between two lines of steps.jsonl (timm's --log-interval)
    # Micro-batches of the recipe's batch size per optimizer step (timm's --grad-accum-steps): the global batch is
    # batch x this x processes, which the learning-rate rule, the schedule and every count of steps use.
    grad_accum_steps: int = 1
    grad_checkpointing: bool = False  # recompute each block's activations in the backward: less memory, more time
    # Classification data: the splits (folders, or a Hugging Face dataset's splits) and an hf: dataset's columns;
    # None: train and val (folders), train and validation (hf:), columns image and label.
    train_split: str | None = None
    val_split: str | None = None
    image_column: str | None = None
    label_column: str | None = None
    streaming: bool = False  # an hf: dataset read as a stream (wds: shards always are)
    log: str | None = None  # also write the figures of metrics.jsonl and steps.jsonl for TensorBoard

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def dataclass_from_dict(cls: type, values: dict) -> Any:
    """A dataclass from its ``asdict`` form read back from JSON (lists become tuples again)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names})


class TrainingTask(abc.ABC):
    """One task's part of a training run. The engine owns the loop, devices, DDP, mixed precision, EMA, gradient
    clipping, the data loader's sampling, checkpoints, exact resume, the metrics log and the plot."""

    unit: ClassVar[str] = "epoch"  # what the run's length, --eval-every and --stop-after count: epoch or iteration
    best_metric: ClassVar[str]  # the key of ``evaluate``'s result that picks best.safetensors; higher is better
    default_eval_every: ClassVar[int] = 1

    def __init__(self, settings: RunSettings, recipe: Any, context: DistributedContext) -> None:
        self.settings = settings
        self.recipe = recipe
        self.context = context

    # --- data
    @property
    def global_batch(self) -> int:
        """Images per optimizer step over every process and accumulated micro-batch."""
        return self.batch_size * self.settings.grad_accum_steps * self.context.world_size

    @property
    def batch_size(self) -> int:
        """Samples per process and micro-batch (a step's, without accumulation)."""
        return self.recipe.batch_size

    @abc.abstractmethod
    def train_dataset(self) -> Dataset:
        """The training samples; a sample that raises ``ImageLoadError`` is skipped and counted, any other
        ``MetaformerError`` stops the run with its message."""

    def collate(self, samples: list) -> object:
        return default_collate(samples)

    # --- the model and how it learns
    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The model to train (the engine seeds the random generator first, so every process builds the same)."""

    @abc.abstractmethod
    def build_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    @abc.abstractmethod
    def total_steps(self, steps_per_epoch: int) -> int:
        """Optimizer steps of the whole run."""

    @abc.abstractmethod
    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of optimizer step ``step`` (from 0); a pure function, so resuming needs no state."""

    def warmup(self, steps_per_epoch: int) -> tuple[int, str]:
        """The optimizer steps of the learning rate's warm-up, and the flag that sets it ("" for none)."""
        return 0, ""

    def plan_warnings(self, steps_per_epoch: int) -> list[str]:
        """What the user should hear about this run's settings before it starts (say, a recipe far from home)."""
        return []

    @abc.abstractmethod
    def training_step(self, model: nn.Module, batch: Any, device: torch.device) -> torch.Tensor:
        """The mean loss of one batch (already collated by ``collate``), to back-propagate."""

    @property
    def ema_decay(self) -> float | None:
        return None

    @property
    def clip_grad(self) -> float | None:
        return None

    @property
    def channels_last(self) -> bool:
        return self.settings.channels_last

    # --- evaluation and files
    @abc.abstractmethod
    def evaluate(self, model: nn.Module, progress: bool) -> dict[str, float | None]:
        """Validation metrics, the same in every process (reduced over them)."""

    @abc.abstractmethod
    def save_weights(self, model: nn.Module, path: os.PathLike) -> None:
        """Write the model's weights as a checkpoint users can load (called on the main process only)."""

    def describe(self) -> dict:
        """Values the task resolved (classes, learning rate, ...), recorded in config.json."""
        return {}
