"""The training loop every task uses: devices, DDP, mixed precision, EMA, clipping, the sampling of batches,
checkpoints, exact resume, the metrics log and the plot. A task (``task.py``) supplies the rest.

A run is cut into rounds: an epoch, or (for tasks counted in iterations) the iterations between two evaluations.
Each round ends with a checkpoint, so a run resumes exactly at any round's end.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import random
import time
import warnings

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..data.guarded import Batch
from ..data.streams import is_streamed
from ..errors import ConfigError, DatasetError, MetaformerError, NonFiniteLossError, RunFolderError
from .distributed import DistributedContext, on_main
from .loaders import in_groups, training_loader
from .plan import Plan, plan_warnings
from .run_folder import RunFolder, random_state, set_random_state
from .task import TrainingTask
from .tensorboard import TensorBoardLog, check_log

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(self, task: TrainingTask, context: DistributedContext, folder: RunFolder) -> None:
        settings = task.settings
        if settings.amp not in ("none", *AMP_DTYPES):
            raise ConfigError(f"amp must be none, bf16 or fp16, got {settings.amp!r}")
        if settings.log_every < 1:
            raise ConfigError(f"log_every must be a positive number of steps, got {settings.log_every}")
        if settings.grad_accum_steps < 1:
            raise ConfigError(
                f"grad_accum_steps must be a positive number of micro-batches, got {settings.grad_accum_steps}"
            )
        check_log(settings.log)
        self.task, self.settings, self.context, self.folder = task, settings, context, folder
        self.board: TensorBoardLog | None = None  # opened by the main process at its first round's end
        self.device = context.device
        self.dataset = task.train_dataset()
        global_batch = task.global_batch
        if len(self.dataset) < global_batch:
            accumulated = f" x {settings.grad_accum_steps} accumulated" if settings.grad_accum_steps > 1 else ""
            raise DatasetError(
                f"{settings.data}: {len(self.dataset)} training samples, fewer than one global "
                f"batch ({task.batch_size}{accumulated} x {context.world_size} processes); lower --batch-size"
            )
        self.plan = Plan.make(task, len(self.dataset) // global_batch)
        if context.is_main:
            messages = plan_warnings(self.plan, task, len(self.dataset), context.world_size)
            if is_streamed(self.dataset):
                messages.append(self.dataset.deal_warning(context.world_size, settings.num_workers))
            for message in filter(None, messages):
                warnings.warn(message, stacklevel=2)
        torch.manual_seed(settings.seed)  # the same initial weights in every process
        model = task.build_model()
        if settings.grad_checkpointing:
            trunk = getattr(model, "trunk", model)  # a dense model's MetaFormer trunk, or the classifier itself
            trunk.set_grad_checkpointing(True)
        torch.manual_seed(settings.seed + context.rank)  # each process its own augmentation stream
        random.seed(settings.seed + context.rank)
        memory_format = torch.channels_last if task.channels_last else torch.preserve_format
        self.module = model.to(self.device, memory_format=memory_format)
        self.ema = None
        if task.ema_decay:
            self.ema = AveragedModel(self.module, multi_avg_fn=get_ema_multi_avg_fn(task.ema_decay), use_buffers=True)
        self.model: nn.Module = self.module
        self.ddp: DistributedDataParallel | None = None
        if context.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.model = self.ddp = DistributedDataParallel(self.module, device_ids=ids)
        if settings.compile:
            self.model = torch.compile(self.model)
        self.optimizer = task.build_optimizer(self.module)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=settings.amp == "fp16")
        self.records: list[dict] = []
        self.steps: list[dict] = []  # the training loss and learning rate every --log-every steps
        self.best: float | None = None
        self.skipped_steps = 0  # fp16 steps the gradient scaler skipped (inf/NaN gradients) in this round
        self.start_step = 0
        self.reported: set[str] = set()

    def config_record(self, kind: str) -> dict:
        """config.json: every setting, the recipe, and what the task and the plan resolved."""
        settings = {k: v for k, v in self.settings.to_dict().items() if k != "stop_after"}
        resolved = {
            **self.task.describe(),
            "world_size": self.context.world_size,
            "steps_per_epoch": self.plan.steps_per_epoch,
            "total_steps": self.plan.total_steps,
        }
        return {
            "task": kind,
            "model": self.settings.model,
            "settings": settings,
            "recipe": dataclasses.asdict(self.task.recipe),
            "resolved": resolved,
        }

    # ------------------------------------------------------------------------------------------------ loop

    def fit(self) -> list[dict]:
        """Train to the end of the plan (or ``--stop-after``); returns the records of the rounds run now."""
        trained = []
        for start, stop in self.plan.rounds_from(self.start_step):
            record = {**self.plan.position(stop), **self._train_round(start, stop)}
            if self.plan.evaluates(stop):
                record.update(self.task.evaluate(self.module, self._progress))
                if self.ema is not None:
                    record.update({f"ema_{k}": v for k, v in self.task.evaluate(self.ema.module, False).items()})
            score = record.get(self.task.best_metric)
            is_best = isinstance(score, (int, float)) and (self.best is None or score > self.best)
            if is_best:
                self.best = score
            self.records.append(record)
            self._finish_round(stop, is_best)
            trained.append(record)
        return trained

    @property
    def _progress(self) -> bool:
        return self.settings.progress and self.context.is_main

    def _loader(self, start: int, stop: int) -> DataLoader:
        return training_loader(self.dataset, self.task, self.plan, start, stop)

    def _train_round(self, start: int, stop: int) -> dict[str, float]:
        plan = self.plan
        self.model.train()
        totals = torch.zeros(3, dtype=torch.float64)  # loss * count, count, skipped
        began = time.perf_counter()
        title = plan.title(stop)
        bar = tqdm(
            self._loader(start, stop),
            total=(stop - start) * self.settings.grad_accum_steps,
            desc=title,
            unit="batch",
            leave=False,
            disable=not self._progress,
        )
        lr = 0.0
        window = torch.zeros(2, dtype=torch.float64)  # loss * count, count since the last logged step
        self.skipped_steps = 0
        for offset, micro_batches in enumerate(in_groups(bar, self.settings.grad_accum_steps)):
            step = start + offset
            lr = self.task.lr_at(step, plan.steps_per_epoch)
            size = sum(batch.size for batch in micro_batches)
            totals[2] += sum(len(batch.skipped) for batch in micro_batches)
            value = self._step(step, lr, micro_batches)
            if value is not None:
                counted = torch.tensor([value * size, size], dtype=torch.float64)
                totals[:2] += counted
                window += counted
                bar.set_postfix(loss=f"{value:.4f}", lr=f"{lr:.2e}")
            if (step + 1) % self.settings.log_every == 0:
                self._log_step(step + 1, lr, window)
                window.zero_()
        bar.close()
        elapsed = time.perf_counter() - began
        loss_sum, count, skipped = self.context.all_reduce_sum(totals).tolist()
        if count == 0:
            where = plan.reached(stop) if plan.unit == "epoch" else f"iterations {start + 1}-{stop}"
            raise DatasetError(
                f"no training sample could be read in {where} ({int(skipped)} unreadable, see the "
                f"warnings above): check {self.settings.data}"
            )
        if skipped and self.context.is_main:
            print(f"{title}: skipped {int(skipped)} unreadable image(s) (see the warnings above)")
        return {
            "train_loss": loss_sum / count,
            "lr": lr,
            "images_per_s": count / elapsed,
            "time_s": elapsed,
            "skipped_images": int(skipped),
            **({"amp_skipped_steps": self.skipped_steps} if self.scaler.is_enabled() else {}),
        }

    def _step(self, step: int, lr: float, micro_batches: list[Batch]) -> float | None:
        """One optimizer step on its micro-batches (one without accumulation): each one's mean loss weighed by its
        share of the step's samples, so N micro-batches of B give the gradient of one batch of N x B; DDP syncs the
        gradients on the last backward only. Returns the step's loss, or None where no micro-batch had samples on
        every process."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        for batch in micro_batches:
            self._warn_skipped(batch.skipped)
        used = [batch for batch, usable in zip(micro_batches, self._usable(micro_batches), strict=True) if usable]
        if not used:
            return None
        amp = self.settings.amp
        samples = sum(batch.size for batch in used)
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for index, batch in enumerate(used):
            last = index == len(used) - 1
            sync = contextlib.nullcontext() if last or self.ddp is None else self.ddp.no_sync()
            with sync:
                with torch.autocast(self.device.type, dtype=AMP_DTYPES.get(amp), enabled=amp != "none"):
                    loss = self.task.training_step(self.model, batch.data, self.device)
                share = batch.size / samples
                total += loss.detach().double() * share
                self.scaler.scale(loss * share if len(used) > 1 else loss).backward()
        value = self._finite(total, step)  # before the optimizer steps: a bad step changes no weight
        if self.task.clip_grad:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.module.parameters(), self.task.clip_grad)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if scale is not None and self.scaler.get_scale() < scale:  # inf/NaN gradients: the step was skipped
            self.skipped_steps += 1
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update_parameters(self.module)
        return value

    def _log_step(self, steps: int, lr: float, window: torch.Tensor) -> None:
        """The mean training loss since the last logged step, over every process. The window starts afresh with
        each round, which is where a run resumes, so a resumed run logs what the straight run logs."""
        loss_sum, count = self.context.all_reduce_sum(window).tolist()
        if count:
            position = self.plan.position_of(steps)
            self.steps.append({"step": steps, **position, "train_loss": loss_sum / count, "lr": lr})

    def _warn_skipped(self, messages: list[str]) -> None:
        for message in messages:
            if message not in self.reported:
                self.reported.add(message)
                warnings.warn(f"skipping unreadable training image: {message}", stacklevel=2)

    def _usable(self, micro_batches: list[Batch]) -> list[bool]:
        """Which micro-batches every process has samples of, to train on. A dataset error stops every process (its
        own message where it happened); in DDP all must take the same decisions, or a collective (and the backward
        passes that sync) would wait forever."""
        flags = torch.tensor([float(any(b.fatal for b in micro_batches))] + [float(b.size == 0) for b in micro_batches])
        if self.context.enabled:
            flags = self.context.all_reduce_sum(flags)  # one collective a step for every question
        if flags[0] > 0:
            for batch in micro_batches:
                if batch.fatal:
                    batch.raise_fatal()
            raise MetaformerError("another training process stopped on a dataset error; its error is above")
        return [bool(flag == 0) for flag in flags[1:]]

    def _finite(self, loss: torch.Tensor, step: int) -> float:
        value = loss.detach().item()  # the step's one read of the loss from the device
        bad = torch.tensor([float(not math.isfinite(value))])
        if self.context.enabled:
            bad = self.context.all_reduce_sum(bad)
        if bad[0] > 0:
            output = self.settings.output
            raise NonFiniteLossError(
                f"the loss became non-finite at {self.plan.where(step)}; training stopped. The last good "
                f"checkpoint is kept in {output} (resume with --resume {output}). Try a lower --lr, "
                "--clip-grad 1.0, or --amp bf16 instead of fp16."
            )
        return value

    # --------------------------------------------------------------------------------------------- files

    def _finish_round(self, step: int, is_best: bool) -> None:
        rng = random_state(self.device)
        rng_states = [rng]
        if self.context.enabled:  # every process's random state, so each continues its own stream
            rng_states = [None] * self.context.world_size
            dist.all_gather_object(rng_states, rng)
        failure: Exception | None = None
        if self.context.is_main:
            try:
                self._write_files(step, is_best, rng_states)
            except OSError as error:
                failure = error
        self.context.raise_together(failure, "writing the run's files")
        if self.context.is_main:
            record = self.records[-1]
            print(
                "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()), flush=True
            )

    def _write_files(self, step: int, is_best: bool, rng_states: list) -> None:
        output = self.folder.path
        self.task.save_weights(self.module, output / "last.safetensors")
        if self.ema is not None:
            self.task.save_weights(self.ema.module, output / "last_ema.safetensors")
        if is_best:
            self.task.save_weights(self.module, output / "best.safetensors")
        self.folder.save_state(
            {
                "step": step,
                "round": len(self.records),
                "model": self.module.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": self.ema.state_dict() if self.ema is not None else None,
                "best": self.best,
                "records": self.records,
                "steps": self.steps,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "rng": rng_states,
            }
        )
        self.folder.write_metrics(self.records, self.steps, self.plan.unit)
        if self.settings.log == "tensorboard":
            if self.board is None:
                self.board, self.board_step = TensorBoardLog(output, self.start_step), self.start_step
            self.board.write(step, self.records[-1], [s for s in self.steps if s["step"] > self.board_step])
            self.board_step = step

    def load_state(self) -> None:
        """Continue from the run folder's last.state.pt: weights, optimizer, random streams and the step reached."""
        state = self.folder.load_state(self.device)
        if "step" not in state:
            raise RunFolderError(
                f"{self.folder.path}: the training state was written by another version of "
                "metaformer train; it cannot be resumed"
            )
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])
        self.best, self.records = state["best"], list(state["records"])
        self.steps = list(state.get("steps", []))  # states written before step logging have none
        self.start_step = state["step"]
        plan = self.plan
        if state["steps_per_epoch"] != plan.steps_per_epoch:
            warnings.warn(
                f"the training set changed since the run started ({state['steps_per_epoch']} steps per "
                f"epoch, now {plan.steps_per_epoch}): the continuation is not the run it would have "
                "been",
                stacklevel=2,
            )
            if plan.unit == "epoch":  # the epochs done stay done
                self.start_step = state["step"] // state["steps_per_epoch"] * plan.steps_per_epoch
        saved = state["rng"]
        if len(saved) == self.context.world_size:
            set_random_state(saved[self.context.rank], self.device)
        else:
            # Another number of processes: no saved stream belongs to this process. Each gets its own new one.
            torch.manual_seed(self.settings.seed + 1_000_003 * self.start_step + self.context.rank)
            random.seed(self.settings.seed + 1_000_003 * self.start_step + self.context.rank)
            if self.context.is_main:
                warnings.warn(
                    f"the run was saved by {len(saved)} process(es) and resumes with "
                    f"{self.context.world_size}: each process draws a new random stream, so the "
                    "continuation is not bit-identical",
                    stacklevel=2,
                )
        on_main(self.context, self._heal_folder)
        if self.context.is_main:
            self._say_if_idle()

    def _heal_folder(self) -> None:
        """Drop a killed write's temporaries; rewrite the log from the state (a kill may have cut it short)."""
        self.folder.remove_temporaries()
        self.folder.write_metrics(self.records, self.steps, self.plan.unit)

    def _say_if_idle(self) -> None:
        plan, path = self.plan, self.folder.path
        more = "--epochs" if plan.unit == "epoch" else "--iterations"
        if self.start_step >= plan.total_steps:
            print(
                f"{path}: the run had already finished at {plan.reached(self.start_step)} (its log and plot are up "
                f"to date); pass a larger {more} with --resume to extend it",
                flush=True,
            )
        elif self.start_step >= plan.last_step:
            print(
                f"{path}: the run is already at {plan.reached(self.start_step)}, beyond --stop-after "
                f"{self.settings.stop_after}; nothing to do (give a later --stop-after, or none)",
                flush=True,
            )
