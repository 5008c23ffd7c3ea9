"""The training loop every task uses: it owns devices, DDP, mixed precision, EMA, clipping, checkpoints, resume,
the metrics log and the plot; a task supplies its model, optimizer, data, one training step and its evaluation.

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``curves.png``, the weights of the
``last`` and ``best`` epochs (``*.safetensors``, written by the task) and ``last.state.pt``, everything an exact
resume needs. Every file is written to a temporary name and renamed, so a kill at any moment leaves the previous
complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm import tqdm

from ..checkpoints import atomic_write
from .distributed import DistributedContext
from .plot import plot_metrics

STATE_FILE = "last.state.pt"
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


@dataclass
class StepResult:
    """What a task's training step returns: the mean loss to back-propagate over ``count`` samples."""

    loss: torch.Tensor | None
    count: int
    skipped: int = 0  # samples of this batch that could not be read


@dataclass
class TrainerConfig:
    epochs: int
    output: Path
    amp: str = "none"  # none, bf16 or fp16 (fp16 uses a gradient scaler)
    channels_last: bool = True
    compile: bool = False
    clip_grad: float | None = None  # max gradient norm
    ema_decay: float | None = None
    best_metric: str = "top1"  # a key of the evaluation's metrics; higher is better
    stop_after_epochs: int | None = None  # stop early, as a job limit would; the schedule stays the full run's
    progress: bool = True
    run_config: dict = field(default_factory=dict)  # written to config.json


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        lr_at: Callable[[float], float],
        make_loader: Callable[[int], Iterable],
        step: Callable[[nn.Module, Any, torch.device], StepResult],
        evaluate: Callable[[nn.Module], dict[str, float]],
        save_weights: Callable[[nn.Module, Path], object],
        config: TrainerConfig,
        context: DistributedContext,
    ) -> None:
        if config.amp not in ("none", *AMP_DTYPES):
            raise ValueError(f"amp must be none, bf16 or fp16, got {config.amp!r}")
        self.config = config
        self.context = context
        self.device = context.device
        memory_format = torch.channels_last if config.channels_last else torch.preserve_format
        self.module = model.to(self.device, memory_format=memory_format)
        self.ema = None
        if config.ema_decay:
            self.ema = AveragedModel(self.module, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        self.model: nn.Module = self.module
        if context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(self.module, device_ids=ids)
        if config.compile:
            self.model = torch.compile(self.model)
        self.optimizer = optimizer
        self.lr_at = lr_at
        self.make_loader = make_loader
        self.step = step
        self.evaluate = evaluate
        self.save_weights = save_weights
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.output = Path(config.output)
        self.best: float | None = None
        self.start_epoch = 0

    # ------------------------------------------------------------------------------------------------ loop

    def fit(self, resume: Path | None = None) -> list[dict]:
        """Train until ``config.epochs``, continuing a run folder exactly if ``resume`` is given."""
        if resume is not None:
            self._load_state(Path(resume) / STATE_FILE)
        if self.context.is_main:
            self.output.mkdir(parents=True, exist_ok=True)
            atomic_write(
                self.output / "config.json", lambda tmp: tmp.write_text(json.dumps(self.config.run_config, indent=2))
            )
        records = []
        last = (
            self.config.epochs
            if self.config.stop_after_epochs is None
            else min(self.config.epochs, self.config.stop_after_epochs)
        )
        for epoch in range(self.start_epoch, last):
            record = {"epoch": epoch + 1, **self._train_epoch(epoch)}
            record.update(self.evaluate(self.module))
            if self.ema is not None:
                record.update({f"ema_{k}": v for k, v in self.evaluate(self.ema.module).items()})
            score = record.get(self.config.best_metric)
            is_best = score is not None and (self.best is None or score > self.best)
            if is_best:
                self.best = score
            if self.context.is_main:
                self._write_epoch(record, is_best)
            self._save_state(epoch + 1)
            records.append(record)
        return records

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        loader = self.make_loader(epoch)
        steps = len(loader)
        self.model.train()
        totals = torch.zeros(3)  # loss * count, count, skipped
        start = time.perf_counter()
        autocast = (
            torch.autocast(self.device.type, dtype=AMP_DTYPES[self.config.amp])
            if self.config.amp != "none"
            else contextlib.nullcontext()
        )
        bar = tqdm(loader, total=steps, desc=f"epoch {epoch + 1}/{self.config.epochs}", unit="batch",
                   disable=not (self.config.progress and self.context.is_main), leave=False)  # fmt: skip
        for index, batch in enumerate(bar):
            lr = self.lr_at(epoch + index / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            with autocast:
                result = self.step(self.model, batch, self.device)
            totals[2] += result.skipped
            loss = self._usable_loss(result, epoch, index)
            if loss is None:
                continue
            self.scaler.scale(result.loss).backward()
            if self.config.clip_grad:
                self.scaler.unscale_(self.optimizer)
                nn.utils.clip_grad_norm_(self.module.parameters(), self.config.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            if self.ema is not None:
                self.ema.update_parameters(self.module)
            totals[0] += loss * result.count
            totals[1] += result.count
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        bar.close()
        elapsed = time.perf_counter() - start
        loss_sum, count, skipped = self.context.all_reduce_sum(totals).tolist()
        if skipped and self.context.is_main:
            print(f"epoch {epoch + 1}: skipped {int(skipped)} unreadable image(s) (see the warnings above)")
        return {
            "train_loss": loss_sum / max(count, 1),
            "lr": self.lr_at(epoch + 1 - 1e-9),
            "images_per_s": count / elapsed,
            "time_s": elapsed,
            "skipped_images": int(skipped),
        }

    def _usable_loss(self, result: StepResult, epoch: int, index: int) -> float | None:
        """The step's loss value, or None to skip a batch whose images were all unreadable; stops on a non-finite
        loss. In DDP every process must take the same decision, or the gradient all-reduce would hang."""
        empty = result.count == 0 or result.loss is None
        value = 0.0 if empty else result.loss.detach().item()  # the step's one read of the loss
        flags = torch.tensor([float(empty), float(not math.isfinite(value))])
        if self.context.enabled:
            flags = self.context.all_reduce_sum(flags)
        if flags[1] > 0:
            raise NonFiniteLossError(
                f"the loss became non-finite at epoch {epoch + 1}, step {index + 1}; training stopped. The last "
                f"good checkpoint is kept in {self.output} (resume with --resume {self.output}). Try a lower "
                "--lr, --clip-grad 1.0, or --amp bf16 instead of fp16."
            )
        return None if flags[0] > 0 else value

    # --------------------------------------------------------------------------------------------- files

    def _write_epoch(self, record: dict, is_best: bool) -> None:
        with open(self.output / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.save_weights(self.module, self.output / "last.safetensors")
        if self.ema is not None:
            self.save_weights(self.ema.module, self.output / "last_ema.safetensors")
        if is_best:
            self.save_weights(self.module, self.output / "best.safetensors")
        plot_metrics(self.output / "metrics.jsonl", self.output / "curves.png")
        summary = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        print(summary, flush=True)

    def _rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state(), "python": random.getstate()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def _save_state(self, epochs_done: int) -> None:
        rng = self._rng_state()
        if self.context.enabled:  # every process's random state, so each continues its own stream
            gathered: list = [None] * self.context.world_size
            dist.all_gather_object(gathered, rng)
            rng_states = gathered
        else:
            rng_states = [rng]
        if self.context.is_main:
            state = {
                "epoch": epochs_done,
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "best": self.best,
                "rng": rng_states,
            }
            atomic_write(self.output / STATE_FILE, lambda tmp: torch.save(state, tmp))
        self.context.barrier()

    def _load_state(self, path: Path) -> None:
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: --resume takes a run folder written by `metaformer train`")
        state = torch.load(path, map_location=self.device, weights_only=True)
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.best = state["best"]
        self.start_epoch = state["epoch"]
        rng_states = state["rng"]
        rng = rng_states[self.context.rank] if self.context.rank < len(rng_states) else rng_states[0]
        torch.set_rng_state(rng["torch"].cpu())
        random.setstate(_as_random_state(rng["python"]))
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state(rng["cuda"].cpu(), self.device)


def _as_random_state(state: Any) -> tuple:
    # The state is saved as nested tuples; make sure lists (from some serialisers) come back as tuples.
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


def cosine_lr(
    base_lr: float, epochs: int, warmup_epochs: float, warmup_lr: float, min_lr: float
) -> Callable[[float], float]:
    """Linear warm-up from ``warmup_lr`` to ``base_lr``, then cosine decay to ``min_lr``; a function of the
    (fractional) epoch, so resuming needs no scheduler state."""

    def lr_at(epoch: float) -> float:
        if epoch < warmup_epochs:
            return warmup_lr + (base_lr - warmup_lr) * epoch / warmup_epochs
        progress = (epoch - warmup_epochs) / max(epochs - warmup_epochs, 1e-9)
        return min_lr + 0.5 * (base_lr - min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))

    return lr_at
