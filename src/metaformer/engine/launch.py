"""Starting a run: the process group, the run folder and its lock, a new run or a resumed one, and one decision
for every process when the main one fails."""

from __future__ import annotations

from collections.abc import Callable

from .distributed import DistributedContext, init_distributed, on_main, shutdown_distributed
from .run_folder import RunFolder
from .task import RunSettings, TrainingTask
from .trainer import Trainer


def run_training(
    make_task: Callable[[DistributedContext], TrainingTask],
    settings: RunSettings,
    kind: str,
    *,
    resume: bool = False,
    force: bool = False,
) -> list[dict]:
    """Start (or resume) the run ``make_task`` describes in ``settings.output``, in one process or under torchrun."""
    context = init_distributed(settings.device)
    folder = RunFolder(settings.output)
    try:
        on_main(context, folder.lock)  # before anything is deleted or read: a live run keeps its folder
        if not resume:
            on_main(context, lambda: folder.prepare_new(force))
        trainer = Trainer(make_task(context), context, folder)
        if resume:
            trainer.load_state()  # before config.json changes: a state that cannot be resumed leaves it as it was
        else:
            on_main(context, folder.remove_temporaries)
        on_main(context, lambda: folder.write_config(trainer.config_record(kind)))
        return trainer.fit()
    except BaseException:
        if context.is_main and not resume:
            folder.discard_unstarted()  # a data error found by the first batch leaves the folder as it was
        raise
    finally:
        if context.is_main:
            folder.unlock()
        shutdown_distributed()
