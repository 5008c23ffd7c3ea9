"""The entry points that know every kind of model: ``create_model``, ``convert_checkpoint`` and which registered
model a checkpoint file belongs to."""

from __future__ import annotations

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
from .models.dense import INPUT_OPTIONS, DenseModel, build_dense_model
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.pretrained import RELEASES, split_tag
from .models.zoo import ModelSpec, get_spec, list_models, resolve_config

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
        strict: refuse a checkpoint that leaves any layer untrained (for inference and evaluation).
        overrides: any ``MetaFormerConfig`` field, e.g. ``drop_path_rate=0.1`` or ``image_size=384``; dense
            models also take their input size (``test_scale``, or ``min_size`` and ``max_size``).
    """
    if pretrained and checkpoint is not None:
        raise ConfigError("pass either pretrained=True or checkpoint=PATH, not both")
    name, tag = _split_tag(name, pretrained)
    spec = get_spec(name)
    if spec.task != "classification":
        if features_only:
            raise ConfigError(f"{name} is a {spec.task} model; features_only takes a classifier's name")
        if pretrained:
            checkpoint = pretrained_file(spec.backbone, tag)  # ImageNet weights initialise the backbone
        return _create_dense(spec, checkpoint, num_classes, strict, overrides)
    if tag is not None:
        release = RELEASES[f"{name}.{tag}"]
        overrides.setdefault("image_size", release.image_size)
        num_classes = release.num_classes if num_classes is None and checkpoint is None else num_classes
    if pretrained:
        checkpoint = pretrained_file(name, tag)
    if checkpoint is not None:
        checkpoint = open_checkpoint(checkpoint)
        trunk = checkpoint.trunk()
        if num_classes is None and not features_only:
            num_classes = trunk.num_classes() or 0
        for key, value in checkpoint.evaluation_settings().items():
            overrides.setdefault(key, value)  # evaluate as the model was trained, unless told otherwise
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    config = resolve_config(name, **overrides)
    model = MetaFormerFeatures(config, out_indices) if features_only else MetaFormer(config)
    model.name = name
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
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


def _create_dense(spec: ModelSpec, source: CheckpointSource | None, num_classes: int | None, strict: bool,
                  overrides: dict) -> DenseModel:  # fmt: skip
    input_size = {k: overrides.pop(k) for k in INPUT_OPTIONS[spec.task] if k in overrides}
    labels = overrides.pop("labels", None)
    checkpoint = open_checkpoint(source) if source is not None else None
    if checkpoint is not None and checkpoint.is_dense:
        saved_classes = checkpoint.dense_num_classes(spec.task)
        num_classes = num_classes or saved_classes
        for key, value in checkpoint.input_settings().items():
            input_size.setdefault(key, value)  # evaluate at the size it was trained at, unless told otherwise
    num_classes = num_classes or spec.default_classes
    config = resolve_config(spec.backbone, **overrides)
    model = build_dense_model(spec.task, config, num_classes, name=spec.name, **input_size)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint, strict=strict)
    if labels is not None:
        model.labels = tuple(labels)
    return model


def infer_model_name(checkpoint: Checkpoint) -> str:
    """The registered model a checkpoint belongs to: the name it records, else the one classifier whose layout and
    declared architecture fit (the file name breaks ties, as in the official releases' names)."""
    if checkpoint.metadata.get("model"):
        return checkpoint.metadata["model"]
    if checkpoint.is_dense:
        raise CheckpointError(f"{checkpoint.source}: a {checkpoint.format} file does not name its model; "
                              "name it (--model NAME, e.g. fpn_poolformer_s12)")  # fmt: skip
    num_classes = checkpoint.num_classes() or 0
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state_dict.items()}
    stored = checkpoint.stored_architecture() or {}
    candidates = []
    for name in list_models(task="classification"):
        spec = get_spec(name)
        config = dataclasses.replace(spec.config, num_classes=num_classes)
        if checkpoint.format == "timm" and not spec.timm_name:
            continue  # a model timm does not have
        if checkpoint.format in POOLFORMER_ONLY and config.is_baseline:
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


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str, model_name: str | None = None, *,
                       overwrite: bool = False) -> Path:  # fmt: skip
    """Convert a checkpoint in any supported format into format ``to`` (see ``save_checkpoint``); an existing
    ``dst`` is kept unless ``overwrite``. Dense checkpoints (ours, mmseg's, mmdet's) convert to ours. A file that
    lacks any layer of the model is refused."""
    check_destination(dst, to, overwrite=overwrite)  # before the work, and before anything is written
    checkpoint = open_checkpoint(src)
    # strict: a layer the file lacks would be written out as random weights that look trained
    model: nn.Module = create_model(model_name or infer_model_name(checkpoint), checkpoint=checkpoint, strict=True)
    if checkpoint.format not in CLASSIFIER_FORMATS and getattr(model, "task", "classification") == "classification":
        raise CheckpointError(
            f"{checkpoint.source} is a whole {checkpoint.format} model; name its dense model "
            "(--model fpn_poolformer_s12, ...)"
        )
    return save_checkpoint(model, dst, to, overwrite=overwrite)
