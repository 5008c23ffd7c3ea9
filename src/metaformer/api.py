"""The entry points that know every kind of model: ``create_model``, ``convert_checkpoint`` and which registered
model a checkpoint file belongs to."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn

from .checkpoints import Checkpoint, load_checkpoint, open_checkpoint, pretrained_file, save_checkpoint
from .checkpoints.formats import CLASSIFIER_FORMATS, POOLFORMER_ONLY, convert_state_dict
from .checkpoints.saving import CHECKPOINT_SUFFIXES, check_destination
from .errors import CheckpointError, ConfigError
from .models.dense import DenseModel
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.pretrained import default_cfg, release_of, split_tag
from .models.zoo import ModelSpec, get_spec, list_models, resolve_config
from .task_table import task

CheckpointSource = str | os.PathLike | Mapping[str, torch.Tensor] | Checkpoint


def create_model(
    name: str,
    *,
    pretrained: bool | str = False,
    checkpoint: CheckpointSource | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    strict: bool = False,
    labels: Sequence[str] | None = None,
    **overrides: object,
) -> MetaFormer | MetaFormerFeatures | DenseModel:
    """Build the registered model ``name``: a classifier, a backbone, or a segmentation or detection model.
    ``name`` may carry a release tag as timm spells it (``caformer_s18.sail_in22k_ft_in1k_384``): the model then
    takes that release's input size and classes.

    Args:
        pretrained: load released weights (downloaded once and cached): True for the name's tag or the model's
            first release (ImageNet-1k at 224), or a tag (``"sail_in1k_384"``). The Baselines' come from timm's
            copies on the Hugging Face Hub, else the official files. For a dense model, they initialise the
            backbone.
        checkpoint: load weights from a file, Hugging Face folder or state_dict in any supported format instead.
            A dense model takes its own checkpoints, mmseg/mmdet files, or a classifier's (the backbone only).
        num_classes: classes of the head (default: the checkpoint's, else the model's); a number that differs
            from the checkpoint's gets a fresh head, for fine-tuning.
        features_only: return the backbone for dense prediction (stage outputs, each through its own norm).
        out_indices: the stages whose outputs the backbone returns.
        strict: refuse a checkpoint that leaves any layer untrained (for inference and evaluation). The model is
            then built without initialising the weights the checkpoint replaces.
        labels: the class names (default: the checkpoint's, else ImageNet-1k's for 1000 classes).
        overrides: any ``MetaFormerConfig`` field, e.g. ``drop_path_rate=0.1`` or ``image_size=384``; ``crop_pct``
            (the evaluation crop); dense models also take their input size (``test_scale``, or ``min_size`` and
            ``max_size``).

    The model's ``pretrained_cfg`` is the record of its weights: the release's, or its architecture's evaluation
    settings with what the checkpoint says (input size, crop, classes and their names).
    """
    if pretrained and checkpoint is not None:
        raise ConfigError("pass either pretrained=True or checkpoint=PATH, not both")
    name, tag = _split_tag(name, pretrained)
    spec = get_spec(name)
    if spec.task != "classification":
        if features_only:
            raise ConfigError(f"{name} is a {spec.task} model; features_only takes a classifier's name")
        if pretrained:
            checkpoint = pretrained_file(spec.backbone or name, tag)  # ImageNet weights initialise the backbone
        return _create_dense(spec, checkpoint, num_classes, strict, labels, overrides)
    release = release_of(name, tag) if tag or pretrained else None
    record = release if pretrained else release.without_weights() if release else default_cfg(name)
    if release is not None:
        overrides.setdefault("image_size", release.image_size)
        num_classes = release.num_classes if num_classes is None and checkpoint is None else num_classes
    if pretrained:
        checkpoint = pretrained_file(name, tag)
    source = open_checkpoint(checkpoint) if checkpoint is not None else None
    if source is not None:
        if num_classes is None and not features_only:
            num_classes = source.trunk().num_classes() or 0
        settings = source.evaluation_settings()  # evaluate as the model was trained, unless told otherwise
        overrides.setdefault("image_size", settings.get("image_size", record.image_size))
        overrides.setdefault("crop_pct", settings.get("crop_pct", record.crop_pct))
        record = record.replace(crop_mode=settings.get("crop_mode", record.crop_mode))
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    crop_pct = overrides.pop("crop_pct", record.crop_pct)
    config = resolve_config(spec, **overrides)
    size = config.image_size
    record = record.replace(
        input_size=(config.in_chans, size, size),
        crop_pct=crop_pct,
        num_classes=config.num_classes,
        label_names=tuple(labels) if labels else None,
    )
    assign = strict and source is not None and not features_only  # every weight comes from the file
    with torch.device("meta") if assign else contextlib.nullcontext():
        model = MetaFormerFeatures(config, out_indices, record) if features_only else MetaFormer(config, record)
    if source is not None:
        load_checkpoint(model, source, strict=strict, assign=assign)
    return model


def _split_tag(name: str, pretrained: bool | str) -> tuple[str, str | None]:
    """The architecture and the release tag of ``name`` (``arch.tag``) or of ``pretrained`` (a tag)."""
    arch, release = split_tag(name)
    tag = release.tag if release else None
    if isinstance(pretrained, str) and pretrained:
        if tag and tag != pretrained:
            raise ConfigError(f"{name} names release {tag!r} but pretrained={pretrained!r}; give one of them")
        tag = pretrained
        split_tag(f"{get_spec(arch).backbone or arch}.{tag}")  # a release of the trunk, or a clear error
    return arch, tag


def _create_dense(
    spec: ModelSpec,
    source: CheckpointSource | None,
    num_classes: int | None,
    strict: bool,
    labels: Sequence[str] | None,
    overrides: dict,
) -> DenseModel:
    model_class = task(spec.task).model_class(spec.head)
    input_size = {k: overrides.pop(k) for k in model_class.input_options if k in overrides}
    checkpoint = open_checkpoint(source) if source is not None else None
    if checkpoint is not None and checkpoint.is_dense:
        saved_classes = checkpoint.dense_num_classes(spec.task, model_class.class_layers)
        num_classes = num_classes or saved_classes
        for key, value in checkpoint.input_settings().items():
            input_size.setdefault(key, value)  # evaluate at the size it was trained at, unless told otherwise
    num_classes = num_classes or spec.default_classes
    config = resolve_config(spec, **overrides)
    given = {k: v for k, v in input_size.items() if v is not None}
    model = model_class(config, num_classes, name=spec.name, labels=labels, **given)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    if labels is not None:
        model.set_labels(labels)
    return model


def infer_model_name(checkpoint: Checkpoint) -> str:
    """The registered model a checkpoint belongs to: the name it records, else the one classifier whose layout and
    declared architecture fit (the file name breaks ties, as in the official releases' names)."""
    if checkpoint.metadata.get("model"):
        return checkpoint.metadata["model"]
    if checkpoint.is_dense:
        raise CheckpointError(
            f"{checkpoint.source}: a {checkpoint.format} file does not name its model; "
            "name it (--model NAME, e.g. fpn_poolformer_s12)"
        )
    num_classes = checkpoint.num_classes() or 0
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state_dict.items()}
    stored = checkpoint.stored_architecture() or {}
    candidates = []
    for name in list_models(task="classification"):
        spec = get_spec(name)
        config = dataclasses.replace(spec.config, num_classes=num_classes)
        if checkpoint.format == "timm" and not default_cfg(name).timm_architecture:
            continue  # a model timm does not have
        if checkpoint.format in POOLFORMER_ONLY and not config.is_poolformer_v1:
            continue
        if any(getattr(config, k) != v for k, v in stored.items()):
            continue
        if _layout(config, checkpoint.format) == shapes:
            candidates.append(name)
    hint = _name_hint(checkpoint.source)
    if hint in candidates:
        return hint
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise CheckpointError(f"{checkpoint.source}: no registered model has this layout ({checkpoint.format} format)")
    raise CheckpointError(
        f"{checkpoint.source}: the layout fits several models ({', '.join(candidates)}); name one (--model NAME)"
    )


@functools.cache
def _layout(config: MetaFormerConfig, format: str) -> dict[str, tuple[int, ...]]:
    """The key and shape of every tensor of a classifier of ``config`` in ``format`` (built on the meta device)."""
    with torch.device("meta"):
        in_format = convert_state_dict(MetaFormer(config).state_dict(), config, format)
    return {k: tuple(v.shape) for k, v in in_format.items()}


def _name_hint(source: str) -> str:
    name = Path(source).name
    for suffix in CHECKPOINT_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def convert_checkpoint(
    src: str | os.PathLike, dst: str | os.PathLike, to: str, model_name: str | None = None, *, overwrite: bool = False
) -> Path:
    """Convert a checkpoint in any supported format into format ``to`` (see ``save_checkpoint``); an existing
    ``dst`` is kept unless ``overwrite``. Dense checkpoints (ours, mmseg's, mmdet's) convert to ours. A file that
    lacks any layer of the model is refused."""
    check_destination(dst, to, overwrite=overwrite)  # before the work, and before anything is written
    checkpoint = open_checkpoint(src)
    # strict: a layer the file lacks would be written out as random weights that look trained
    model: nn.Module = create_model(model_name or infer_model_name(checkpoint), checkpoint=checkpoint, strict=True)
    if checkpoint.format not in CLASSIFIER_FORMATS and model.task == "classification":
        raise CheckpointError(
            f"{checkpoint.source} is a whole {checkpoint.format} model; name its dense model "
            "(--model fpn_poolformer_s12, ...)"
        )
    return save_checkpoint(model, dst, to, overwrite=overwrite)
