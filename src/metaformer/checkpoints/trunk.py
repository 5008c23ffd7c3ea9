"""Loading a classifier's or a backbone's weights, from any classifier format, with a report of what does not fit."""

from __future__ import annotations

import functools

from torch import nn

from ..errors import CheckpointError
from ..models.config import class_layer, head_keys
from ..models.layers import make_norm, resize_pos_embed
from ..models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures, final_norm
from .checkpoint import Checkpoint, LoadReport, copy_into, misfit, model_name
from .formats import StateDict, as_pointwise, classifier_key


def _classifier_keys(config: MetaFormerConfig) -> list[str]:
    return [f"norm.{k}" for k in final_norm(config).state_dict()] + head_keys(config)


def _check_architecture(checkpoint: Checkpoint, config: MetaFormerConfig, name: str) -> None:
    stored = checkpoint.stored_architecture()
    if not stored:
        return
    differences = [
        f"{k}={stored[k]!r} (model: {getattr(config, k)!r})" for k in stored if stored[k] != getattr(config, k)
    ]
    if differences:
        raise CheckpointError(
            f"{checkpoint.source} was saved from another architecture than {name}: {', '.join(differences)}. "
            "Create the model it was saved from (our .safetensors files name it: `metaformer convert` infers it)."
        )


def _ignorable_keys(model: MetaFormer | MetaFormerFeatures, checkpoint: Checkpoint) -> set[str]:
    """Checkpoint keys a model may leave unused: a classifier's head in a backbone or a head-less model, and the
    output norms of stages a backbone does not return."""
    config = model.config
    theirs = functools.partial(classifier_key, checkpoint.format, config=config)
    keys: set[str] = set()
    if isinstance(model, MetaFormerFeatures):
        keys |= {theirs(k) for k in _classifier_keys(config)}
        unused = [i for i in range(len(config.depths)) if i not in model.out_indices]
        norm = make_norm(config.norm, 1).state_dict()
        keys |= {theirs(f"out_norms.{i}.{k}") for i in unused for k in norm}
    elif config.num_classes == 0:
        keys |= {theirs(k) for k in head_keys(config)}
    return keys


def load_trunk(model: MetaFormer | MetaFormerFeatures, checkpoint: Checkpoint, assign: bool = False) -> LoadReport:
    config = model.config
    name = model_name(model)
    _check_architecture(checkpoint, config, name)
    expected = model.state_dict()
    to_ours = {classifier_key(checkpoint.format, k, config): k for k in expected}
    ignorable = _ignorable_keys(model, checkpoint)
    report = LoadReport(checkpoint.source, checkpoint.format)

    converted: StateDict = {}
    unexpected: list[str] = []
    for key, value in checkpoint.state_dict.items():
        if key in to_ours:
            converted[to_ours[key]] = value
        elif key in ignorable:
            report.ignored.append(key)
        else:
            unexpected.append(key)
    _adapt_head(model, converted, expected, report)
    _adapt_pos_embed(converted, expected, report)
    _adapt_pointwise(converted, expected)
    missing = [k for k in expected if k not in converted and k not in report.fresh]
    if isinstance(model, MetaFormerFeatures):
        report.fresh += [k for k in missing if k.startswith("out_norms.")]
        missing = [k for k in missing if k not in report.fresh]
    conflicts = [
        f"{k} (checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    if missing or unexpected or conflicts:
        raise misfit(checkpoint, name, missing, unexpected, conflicts)
    if not (assign and report.fresh):  # with fresh layers a meta-built model cannot be used: the caller refuses it
        copy_into(model, converted, assign)
    labels = checkpoint.labels(config.num_classes)
    if isinstance(model, MetaFormer) and labels and not report.fresh_head():
        model.pretrained_cfg = model.pretrained_cfg.replace(label_names=labels)
    return report


def _adapt_head(model: nn.Module, converted: StateDict, expected: StateDict, report: LoadReport) -> None:
    """A checkpoint's class layer for another number of classes is left out: the model's starts fresh."""
    if not isinstance(model, MetaFormer):
        return
    weight, bias = (f"{class_layer(model.config)}.{p}" for p in ("weight", "bias"))
    if weight not in expected:
        return
    if weight in converted:
        head, wanted = converted[weight].shape, expected[weight].shape
        if head[0] == wanted[0] or head[1:] != wanted[1:]:
            return  # the same head, or another architecture: reported as a shape conflict
        report.checkpoint_classes = converted.pop(weight).shape[0]
        converted.pop(bias, None)
    report.fresh += [k for k in head_keys(model.config) if k not in converted]


def _adapt_pointwise(converted: StateDict, expected: StateDict) -> None:
    """Linear weights of channels-last code (the official Baselines, parts of timm's) into our 1x1 convolutions."""
    for key, value in converted.items():
        want = expected.get(key)
        if want is not None and value.shape != want.shape:
            reshaped = as_pointwise(value, want.shape)
            if reshaped is not None:
                converted[key] = reshaped


def _adapt_pos_embed(converted: StateDict, expected: StateDict, report: LoadReport) -> None:
    for key, value in converted.items():
        want = expected.get(key)
        if key.endswith("pos_embed") and want is not None and value.shape[:2] == want.shape[:2]:
            if value.shape != want.shape:
                converted[key] = resize_pos_embed(value.float(), tuple(want.shape[-2:])).to(value.dtype)
                report.resized.append(key)
