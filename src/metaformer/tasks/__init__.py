"""The tasks: classification, semantic segmentation, and detection (RetinaNet; Mask R-CNN's instance
segmentation trains as detection). Each folder holds the same files: ``data.py`` (datasets), ``recipe.py`` (the
paper's training settings), ``task.py`` (its part of training, for the engine), ``metrics.py`` (evaluation) and
``predict.py`` (inference on images)."""

from __future__ import annotations

import dataclasses
import os
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..models.zoo import get_spec
from ..task_table import task

if TYPE_CHECKING:  # the engine (torch) is imported when a run starts: the recipes are read without it
    from ..engine.task import RunSettings, TrainingTask

__all__ = ["RunSettings", "resume", "train", "training_parts"]


def training_parts(kind: str) -> tuple[type[TrainingTask], type]:
    """The task class and recipe class that train models of ``kind`` (from the task table)."""
    entry = task(kind)
    return entry.load("training"), entry.load("recipe")


def train(settings: RunSettings, recipe: Any | None = None, *, force: bool = False) -> list[dict]:
    """Train ``settings.model`` on ``settings.data`` into ``settings.output`` with ``recipe`` (default: the
    paper's for that task); returns a metrics record per round. ``force`` replaces a run already in the folder."""
    from ..engine.launch import run_training

    kind = get_spec(settings.model).task
    task_class, recipe_class = training_parts(kind)
    recipe = recipe if recipe is not None else recipe_class()
    return run_training(lambda context: task_class(settings, recipe, context), settings, kind, force=force)


def resume(
    run: str | os.PathLike,
    *,
    stop_after: int | None = None,
    progress: bool | None = None,
    schedule_extend: bool = False,
    **longer: int,
) -> list[dict]:
    """Continue the run in folder ``run`` exactly where it stopped; ``longer`` extends it (``epochs=`` or
    ``iterations=``, by task). The learning-rate schedule keeps its length unless ``schedule_extend`` spreads it
    over the longer run; which of the two happens is printed."""
    from ..engine.launch import run_training
    from ..engine.run_folder import RunFolder
    from ..engine.task import RunSettings, dataclass_from_dict

    config = RunFolder(run).check_resumable()
    kind = config["task"]
    task_class, recipe_class = training_parts(kind)
    recipe = dataclass_from_dict(recipe_class, config["recipe"])
    recipe = extended(recipe, kind, {k: v for k, v in longer.items() if v is not None}, str(run), schedule_extend)
    settings = dataclass_from_dict(RunSettings, config["settings"])
    settings.output, settings.stop_after = str(run), stop_after
    if progress is not None:
        settings.progress = progress
    return run_training(lambda context: task_class(settings, recipe, context), settings, kind, resume=True)


def extended(recipe: Any, kind: str, longer: dict[str, int], run: str, schedule_extend: bool = False) -> Any:
    """``recipe`` made longer by ``longer`` (``epochs=`` or ``iterations=``, whichever ``kind`` counts in); the
    recipe itself says what becomes of its schedule, and that is printed."""
    unit = f"{task(kind).unit}s"
    for name in longer:
        if name != unit:
            raise UsageError(f"{run} is a {kind} run, which is extended with --{unit}, not --{name}")
    length, before = longer.get(unit), getattr(recipe, unit)
    if length is None or length <= before:
        if schedule_extend:
            raise UsageError(
                f"--schedule-extend spreads the schedule over a longer run: give --{unit} more than the run's {before}"
            )
        return dataclasses.replace(recipe, **longer)
    recipe, note = recipe.extended(length, schedule_extend)
    if int(os.environ.get("RANK", "0")) == 0:  # torchrun's other processes stay quiet
        print(f"{run}: extended from {before} to {length} {unit}: {note}", flush=True)
    return recipe


def __getattr__(name: str) -> Any:
    if name == "RunSettings":  # ``metaformer.tasks.RunSettings``: the engine's, imported when asked for
        from ..engine.task import RunSettings

        return RunSettings
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
