"""Loading weights in any supported format into any model of this library, with a report of every key that does
not fit, and warnings for what starts fresh."""

from __future__ import annotations

import functools
import warnings

from torch import nn

from ..errors import CheckpointError, CheckpointWarning
from ..models.dense import is_dense
from ..models.metaformer import MetaFormer, MetaFormerFeatures
from .checkpoint import LoadReport, Source, model_name, open_checkpoint, summarise
from .dense import load_dense
from .formats import CLASSIFIER_FORMATS
from .trunk import load_trunk


def load_checkpoint(model: nn.Module, source: Source, *, strict: bool = False, assign: bool = False) -> LoadReport:
    """Load weights in any supported format into ``model`` (a classifier, a backbone or a dense model), or raise a
    ``CheckpointError`` saying what differs.

    Left fresh, with a ``CheckpointWarning``: a head for another number of classes (fine-tuning), a backbone's
    output norms when the file has none, and a dense model's neck and heads when the file holds only a backbone.
    With ``strict`` anything left fresh is an error instead: for evaluating, where a fresh layer means noise.
    ``assign`` (with ``strict``, for a classifier built on the meta device) takes the file's tensors as the model's
    own instead of copying them.
    """
    if assign and not strict:
        raise ValueError("assign=True needs strict=True: a layer left fresh would stay on the meta device")
    checkpoint = open_checkpoint(source)
    if is_dense(model):
        report = load_dense(model, checkpoint)
    elif isinstance(model, (MetaFormer, MetaFormerFeatures)):
        report = load_trunk(model, checkpoint.trunk(), assign=assign)
    else:
        raise TypeError(f"load_checkpoint takes a model of this library, got {type(model).__name__}")
    if strict and report.fresh:
        raise CheckpointError(
            f"{checkpoint.source} does not hold all the weights of {model_name(model)}: "
            f"{summarise(report.fresh)} would start untrained. Pass a checkpoint of the whole model "
            "(`metaformer train` writes one), or train from this one with --init."
        )
    _warn_about(report, model)
    return report


def _warn_about(report: LoadReport, model: nn.Module) -> None:
    source = report.source
    warn = functools.partial(warnings.warn, category=CheckpointWarning, stacklevel=4)  # the user's create_model
    if is_dense(model):
        if report.class_layers_replaced:
            warn(
                f"{source}: class layers initialised fresh for {model.num_classes} classes (the checkpoint has "
                "another number of classes); train them"
            )
        elif report.fresh and report.format in CLASSIFIER_FORMATS:
            warn(f"{source}: loaded the backbone; the neck and heads of {model_name(model)} start fresh (train them)")
        elif report.fresh:
            warn(f"{source}: {summarise(report.fresh)} have no counterpart in the {report.format} file and start fresh")
        if report.ignored and report.format == "mmdet":
            foreign = [k for k in report.ignored if not _is_norm_key(k)]
            if foreign:
                warn(f"{source}: not loaded (no counterpart in torchvision's detector): {summarise(foreign)}")
        return
    if report.fresh_head():
        had = report.checkpoint_classes
        why = f"the checkpoint's head has {had}" if had is not None else "the checkpoint has no head"
        warn(f"{source}: classifier head initialised fresh for {model.config.num_classes} classes ({why}); train it")
    norms = sorted({k.split(".")[1] for k in report.fresh if k.startswith("out_norms.")})
    if norms:
        warn(
            f"{source}: loaded the backbone; the output norms of stages {norms} are initialised fresh "
            "(train them, or use a dense-prediction checkpoint)"
        )
    elif isinstance(model, MetaFormer) and report.ignored:
        warn(f"{source}: the checkpoint's classifier head is not used (num_classes=0)")
    if report.resized:
        warn(f"{source}: position embedding resized to the model's token grid")


def _is_norm_key(key: str) -> bool:
    return key.startswith("backbone.norm")
