"""Loading a segmentation or detection model: a whole model (ours, mmseg's, mmdet's), or a classifier's backbone."""

from __future__ import annotations

from ..models.dense import DenseModel
from .checkpoint import Checkpoint, LoadReport, copy_into, misfit, model_name
from .formats import StateDict, classifier_key, dense_key
from .trunk import load_trunk


def load_dense(model: DenseModel, checkpoint: Checkpoint) -> LoadReport:
    if not checkpoint.is_dense:  # a classifier's or backbone's weights initialise the backbone, as in the paper
        report = load_trunk(model.trunk, checkpoint)
        prefix = model.trunk_prefix
        report.fresh = [prefix + k for k in report.fresh]
        report.fresh += [k for k in model.state_dict() if not k.startswith(prefix)]
        return report
    expected = model.state_dict()
    report = LoadReport(checkpoint.source, checkpoint.format)
    converted: StateDict = {}
    used: set[str] = set()
    missing: list[str] = []
    for key in expected:
        mapped = dense_key(checkpoint.format, model.trunk_prefix, key, model.config)
        if mapped is None or mapped[0] not in checkpoint.state_dict:
            missing.append(key)
            continue
        theirs, transform = mapped
        used.add(theirs)
        value = checkpoint.state_dict[theirs]
        converted[key] = transform(value) if transform is not None else value
    unexpected = [k for k in checkpoint.state_dict if k not in used]
    report.ignored = [k for k in unexpected if _unused_output_norm(k, model)]
    unexpected = [k for k in unexpected if k not in report.ignored]
    _adapt_class_layers(model, converted, expected, report)
    conflicts = [
        f"{k} (checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    if checkpoint.format == "mmdet" and not conflicts and not any(k.startswith("backbone.") for k in missing):
        # mmdet has more detectors than torchvision: what matches exactly loads, the rest is named.
        report.fresh += missing
        report.ignored += unexpected
        missing, unexpected = [], []
    if missing or unexpected or conflicts:
        raise misfit(checkpoint, model_name(model), missing, unexpected, conflicts)
    copy_into(model, converted)
    labels = checkpoint.labels(model.num_classes)
    if labels and not report.class_layers_replaced:
        model.set_labels(labels)
    return report


def _unused_output_norm(key: str, model: DenseModel) -> bool:
    """mmdet's RetinaNet files keep the output norm of stage 0, which RetinaNet (C3-C5) does not use."""
    trunk = model.trunk
    indices = {
        classifier_key("official", f"out_norms.{i}.weight", trunk.config).split(".")[0]: i
        for i in range(len(trunk.config.depths))
    }
    first = key.removeprefix("backbone.").split(".")[0]
    return key.startswith("backbone.") and first in indices and indices[first] not in trunk.out_indices


def _adapt_class_layers(model: DenseModel, converted: StateDict, expected: StateDict, report: LoadReport) -> None:
    """A dense checkpoint for another number of classes: every layer but the class-sized ones loads."""
    layers = [k for k in expected if k.startswith(model.class_layers)]
    if all(k not in converted or converted[k].shape == expected[k].shape for k in layers):
        return
    reference = converted.get(layers[0])
    if reference is not None and reference.shape[1:] == expected[layers[0]].shape[1:]:
        report.class_layers_replaced = True
        for key in layers:
            converted.pop(key, None)
        report.fresh += layers
