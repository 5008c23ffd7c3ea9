"""The one table of tasks: for each kind of model, the classes and functions that build, train, evaluate and run
it, the command that runs it on images, and the flags of ``train`` and ``eval`` it takes.

Entries name their code as ``module:attribute`` and are imported when used, so this table sits below everything
that reads it (``create_model``, checkpoints, the engine, the command line, the service) and costs nothing to
import. A kind that is not here is an error, never a fall-through to another task.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Task:
    """One kind of model, and where its code is."""

    kind: str
    title: str  # in messages: "a semantic segmentation model"
    model: str  # the model class (its class attributes say which layers are class-sized, where the trunk is)
    recipe: str  # the recipe class: the paper's training settings
    training: str  # the engine's TrainingTask for it
    evaluation: str  # the function that scores a model on a dataset of the task (typed arguments), for eval
    predictor: str  # the class that runs a model of this kind on photos, for the command line and the service
    command: str  # the command that runs its models on images
    unit: str  # what a run's length counts: epoch or iteration
    train_flags: tuple[str, ...]  # the task-specific flags of `metaformer train`
    eval_flags: tuple[str, ...]  # ... and of `metaformer eval`

    # Other model classes of the task, by the dense head a model spec names (a segmentation model is a Semantic FPN
    # unless its head is "upernet").
    heads: tuple[tuple[str, str], ...] = ()

    def load(self, part: str) -> Any:
        """The class or function that ``part`` (``model``, ``recipe``, ...) names, imported now."""
        return _import(getattr(self, part))

    def model_class(self, head: str | None = None) -> Any:
        """The model class of this task with the dense head ``head`` (None or an unlisted head: ``model``)."""
        return _import(dict(self.heads).get(head or "", self.model))


def _import(path: str) -> Any:
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


_CLASSIFICATION_TRAIN = (
    "--epochs",
    "--recipe",
    "--warmup-epochs",
    "--min-lr",
    "--image-size",
    "--crop-scale",
    "--label-smoothing",
    "--randaugment",
    "--random-erasing",
    "--mixup",
    "--cutmix",
    "--drop-path",
    "--head-dropout",
    "--optimizer",
    "--clip-grad",
    "--layer-decay",
    "--ema",
    "--no-augment",
    "--no-channels-last",
    "--compile",
    "--custom-backward",
    "--train-split",
    "--val-split",
    "--image-column",
    "--streaming",
    "--label-column",
)
_DETECTION_TRAIN = ("--epochs", "--warmup-iters", "--min-size", "--max-size")
_DETECTION_EVAL = ("--batch-size", "--num-workers", "--split", "--min-size", "--max-size")


def _detection(kind: str, title: str) -> Task:
    return Task(
        kind,
        title,
        f"metaformer.models.detection:{'MetaFormerRetinaNet' if kind == 'detection' else 'MetaFormerMaskRCNN'}",
        "metaformer.tasks.detection.recipe:DetectionRecipe",
        "metaformer.tasks.detection.task:DetectionTask",
        "metaformer.tasks.detection.metrics:coco_evaluate",
        "metaformer.tasks.detection.predict:Detector",
        "detect",
        "epoch",
        _DETECTION_TRAIN,
        _DETECTION_EVAL,
    )


TASKS: dict[str, Task] = {
    "classification": Task(
        "classification",
        "classification",
        "metaformer.models.metaformer:MetaFormer",
        "metaformer.tasks.classification.recipe:Recipe",
        "metaformer.tasks.classification.task:ClassificationTask",
        "metaformer.tasks.classification.metrics:evaluate",
        "metaformer.tasks.classification.predict:Classifier",
        "predict",
        "epoch",
        _CLASSIFICATION_TRAIN,
        ("--batch-size", "--num-workers", "--dtype", "--calibration", "--split"),
    ),
    "segmentation": Task(
        "segmentation",
        "segmentation",
        "metaformer.models.dense:SemanticFPN",
        "metaformer.tasks.segmentation.recipe:SegmentationRecipe",
        "metaformer.tasks.segmentation.task:SegmentationTask",
        "metaformer.tasks.segmentation.metrics:evaluate",
        "metaformer.tasks.segmentation.predict:Segmenter",
        "segment",
        "iteration",
        ("--iterations", "--crop-size", "--scale", "--num-classes", "--ignore-index"),
        ("--tta", "--num-classes", "--ignore-index", "--scale", "--split"),
        (("upernet", "metaformer.models.upernet:UperNet"),),
    ),
    "detection": _detection("detection", "detection"),
    "instance_segmentation": _detection("instance_segmentation", "instance segmentation"),
}


def task(kind: str) -> Task:
    """The table's entry for ``kind`` (a model spec's task)."""
    if kind not in TASKS:
        raise ConfigError(f"unknown task {kind!r}; the tasks are {', '.join(TASKS)}")
    return TASKS[kind]


def tasks_taking(flag: str, command: str) -> tuple[str, ...]:
    """The kinds whose ``command`` (train or eval) takes the task-specific ``flag``."""
    field = {"train": "train_flags", "eval": "eval_flags"}[command]
    return tuple(kind for kind, entry in TASKS.items() if flag in getattr(entry, field))
