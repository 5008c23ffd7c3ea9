"""A run's plan: how its optimizer steps fall into rounds (epochs or evaluation intervals), and how to name them."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import ConfigError
from .task import TrainingTask

FEW_STEPS = 8  # an epoch of fewer optimizer steps is worth a warning: a warm-up of a few steps, one update per epoch
DROPPED_SHARE = 0.2  # ... and so is an epoch that leaves out more than this share of the data


@dataclass(frozen=True)
class Plan:
    """How a run's optimizer steps fall into rounds, and which rounds evaluate. A round ends at the next multiple
    of ``round_steps`` (an epoch, or ``--eval-every`` iterations), at the end of the run, or at ``--stop-after``,
    so a run extended or stopped anywhere continues from the step it reached."""

    unit: str
    steps_per_epoch: int
    total_steps: int
    round_steps: int
    eval_every: int
    last_step: int  # where this invocation stops: the end, or --stop-after

    @classmethod
    def make(cls, task: TrainingTask, steps_per_epoch: int) -> Plan:
        total = task.total_steps(steps_per_epoch)
        eval_every = task.settings.eval_every or task.default_eval_every
        if eval_every < 1:
            raise ConfigError(f"--eval-every must be a positive number of {task.unit}s, got {eval_every}")
        per_unit = steps_per_epoch if task.unit == "epoch" else 1
        round_steps = steps_per_epoch if task.unit == "epoch" else eval_every
        stop = task.settings.stop_after
        last = total if stop is None else min(total, stop * per_unit)
        return cls(task.unit, steps_per_epoch, total, round_steps, eval_every, last)

    def rounds_from(self, step: int) -> Iterator[tuple[int, int]]:
        """The ``(start, stop)`` steps of each round from ``step`` to ``last_step``."""
        while step < self.last_step:
            stop = min((step // self.round_steps + 1) * self.round_steps, self.last_step)
            yield step, stop
            step = stop

    @property
    def epochs(self) -> int:
        return -(-self.total_steps // self.steps_per_epoch)

    def evaluates(self, stop: int) -> bool:
        if self.unit == "iteration" or stop == self.total_steps:
            return True
        return (stop // self.steps_per_epoch) % self.eval_every == 0

    def position(self, stop: int) -> dict:
        if self.unit == "epoch":
            return {"epoch": stop // self.steps_per_epoch}
        return {"iteration": stop, "epoch": round(stop / self.steps_per_epoch, 3)}

    def position_of(self, step: int) -> dict:
        """Where a logged step lies, in the unit the rounds' records use (epochs as a fraction)."""
        if self.unit == "epoch":
            return {"epoch": round(step / self.steps_per_epoch, 4)}
        return self.position(step)

    def title(self, stop: int) -> str:
        if self.unit == "epoch":
            return f"epoch {stop // self.steps_per_epoch}/{self.epochs}"
        return f"iterations to {stop}/{self.total_steps}"

    def where(self, step: int) -> str:
        if self.unit == "epoch":
            return f"epoch {step // self.steps_per_epoch + 1}, step {step % self.steps_per_epoch + 1}"
        return f"iteration {step + 1}"

    def reached(self, step: int) -> str:
        if self.unit == "epoch":
            return f"epoch {step // self.steps_per_epoch}"
        return f"iteration {step}"


def plan_warnings(plan: Plan, task: TrainingTask, samples: int, world_size: int) -> list[str]:
    """A run that is not the one the user meant: an epoch of a few steps, much data left out of each epoch, a
    warm-up as long as the run, or what the task itself has to say."""
    global_batch = task.global_batch
    steps, dropped = plan.steps_per_epoch, samples - plan.steps_per_epoch * global_batch
    messages = []
    if (plan.unit == "epoch" and steps < FEW_STEPS) or dropped > samples * DROPPED_SHARE:
        smaller = 2 ** int(math.log2(max(1, samples // (FEW_STEPS * 2 * world_size))))
        messages.append(
            f"{task.settings.data}: {samples} training samples in global batches of {global_batch} make {steps} "
            f"optimizer step(s) an epoch, and {dropped} sample(s) ({dropped / samples:.0%}) are left out of each "
            f"epoch (the last, partial batch is dropped): pass a smaller --batch-size (say {smaller}) for a run "
            "that learns from all of them"
        )
    warmup, flag = task.warmup(steps)
    if warmup >= plan.total_steps:
        messages.append(
            f"the learning rate's warm-up ({warmup} steps) is as long as the whole run ({plan.total_steps} steps), "
            f"so it never reaches its peak: shorten it with {flag}, or train longer"
        )
    return messages + task.plan_warnings(steps)
