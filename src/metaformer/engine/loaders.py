"""The batches a training round reads: by index from a map-style dataset (``StreamSampler``: any step range, the
same for any split of a global batch), or by whole epochs from a streamed one (``streams.py``)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from torch.utils.data import DataLoader, Dataset

from ..data.guarded import Guarded, GuardedCollate
from ..data.samplers import StreamSampler
from ..data.streams import is_streamed
from ..errors import ConfigError
from .plan import Plan
from .task import TrainingTask


def in_groups(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive groups of ``size`` items (a step's micro-batches); a shorter last group if the items run out."""
    group: list = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def training_loader(dataset: Dataset, task: TrainingTask, plan: Plan, start: int, stop: int) -> DataLoader:
    """This process's micro-batches for the optimizer steps ``[start, stop)``."""
    settings, context = task.settings, task.context
    pin = context.device.type == "cuda"
    collate = GuardedCollate(task.collate)
    if not is_streamed(dataset):
        sampler = StreamSampler(len(dataset), task.batch_size, context.rank, context.world_size, settings.seed,
                                start, stop, settings.grad_accum_steps)  # fmt: skip
        return DataLoader(Guarded(dataset), batch_size=task.batch_size, sampler=sampler,
                          num_workers=settings.num_workers, collate_fn=collate, pin_memory=pin)  # fmt: skip
    # A stream is read by whole epochs, where every round of a run counted in epochs starts (and a run resumes).
    epoch, offset = divmod(start, plan.steps_per_epoch)
    if plan.unit != "epoch" or offset:
        raise ConfigError(f"a streamed dataset is read by whole epochs; this round starts at {plan.where(start)}")
    stream = dataset.for_training(
        seed=settings.seed,
        epoch=epoch,
        rank=context.rank,
        world_size=context.world_size,
        batch_size=task.batch_size,
        batches=(stop - start) * settings.grad_accum_steps,
    )
    return DataLoader(stream, batch_size=None, num_workers=settings.num_workers, collate_fn=collate, pin_memory=pin)
