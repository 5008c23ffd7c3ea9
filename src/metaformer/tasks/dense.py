"""Creating, loading and saving the dense-prediction models (segmentation and detection)."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoints import CheckpointError, atomic_write, load_checkpoint, open_checkpoint, read_state_dict
from ..models.dense import SemanticFPN, backbone_of, mask_rcnn, retinanet
from ..models.zoo import ModelSpec, resolve_config

# Keys only a whole dense model has (a classifier has "head.weight", an mmdet file "backbone.network...").
DENSE_PREFIXES = ("neck.", "head.scale_heads.", "head.classification_head.", "backbone.fpn.", "rpn.", "roi_heads.")
DETECTOR_OPTIONS = ("min_size", "max_size")  # torchvision's resize of the input (default 800, 1333)


@dataclass
class DenseRunArgs:
    """What every dense training run is given besides its recipe (which the task's subclass adds)."""

    data: str
    model: str
    output: str
    init: str | None = None  # a classification checkpoint for the backbone, or a whole dense model
    num_workers: int = 4
    device: str = "cpu"
    seed: int = 0
    amp: str = "none"
    progress: bool = True
    stop_after_epochs: int | None = None


def build_dense(spec: ModelSpec, num_classes: int, **overrides: object) -> nn.Module:
    detector_options = {k: overrides.pop(k) for k in DETECTOR_OPTIONS if k in overrides}
    config = resolve_config(spec.backbone, **overrides)
    if spec.task == "segmentation":
        if detector_options:
            raise TypeError(f"{sorted(detector_options)} are options of the detectors, not of {spec.name}")
        model: nn.Module = SemanticFPN(config, num_classes)
    elif spec.task == "detection":
        model = retinanet(config, num_classes, **detector_options)
    else:
        model = mask_rcnn(config, num_classes, **detector_options)
    model.name = spec.name
    model.task = spec.task
    model.num_classes = num_classes
    model.labels = None
    model.test_scale = (2048, 512) if spec.task == "segmentation" else None  # evaluation resize (long, short)
    return model


def _is_dense(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return any(k.startswith(DENSE_PREFIXES) for k in state_dict)


def create_dense_model(
    spec: ModelSpec,
    num_classes: int | None = None,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
    **overrides: object,
) -> nn.Module:
    """A dense model; ``checkpoint`` is either a whole dense model saved here, or any classification/backbone
    checkpoint, which initialises the backbone (the rest starts fresh, as in the paper's fine-tuning)."""
    state_dict, metadata = None, {}
    if checkpoint is not None and not isinstance(checkpoint, Mapping):
        state_dict, metadata = read_state_dict(checkpoint, strip_prefixes=False)
    elif checkpoint is not None:
        state_dict = dict(checkpoint)
    whole = state_dict is not None and _is_dense(state_dict) and not metadata.get("format") == "metaformer"
    if whole and num_classes is None and "num_classes" in metadata:
        num_classes = int(metadata["num_classes"])
    model = build_dense(spec, num_classes or spec.default_classes, **overrides)
    if state_dict is None:
        return model
    if whole:
        _load_whole(model, state_dict, str(checkpoint))
        if metadata.get("test_scale"):
            model.test_scale = tuple(json.loads(metadata["test_scale"]))
        if metadata.get("labels"):
            labels = tuple(json.loads(metadata["labels"]))
            model.labels = labels if len(labels) == model.num_classes else None
    else:
        load_checkpoint(backbone_of(model), open_checkpoint(checkpoint))
    return model


def _load_whole(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    conflicts = [f"{k} ({tuple(v.shape)} vs {tuple(expected[k].shape)})" for k, v in state_dict.items()
                 if k in expected and v.shape != expected[k].shape]  # fmt: skip
    if missing or unexpected or conflicts:
        lines = [f"{source} does not fit {model.name}:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("shape conflicts", conflicts)):
            if keys:
                lines.append(
                    f"  {title}: {', '.join(keys[:8])}" + (f" ... ({len(keys)} in all)" if len(keys) > 8 else "")
                )
        lines.append("  Was it saved from another model or number of classes? Pass the right --model/num_classes.")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state_dict)


def save_dense(model: nn.Module, path: str | os.PathLike) -> Path:
    """Our safetensors file for a dense model: weights plus name, classes and class names as metadata."""
    path = Path(path)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    metadata = {"format": "metaformer-dense", "model": model.name, "num_classes": str(model.num_classes)}
    if getattr(model, "labels", None):
        metadata["labels"] = json.dumps(list(model.labels))
    if getattr(model, "test_scale", None):
        metadata["test_scale"] = json.dumps(list(model.test_scale))
    atomic_write(path, lambda tmp: save_file(state_dict, str(tmp), metadata=metadata))
    return path


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-separated colour per class: hues a golden-ratio step apart, alternating brightness."""
    import colorsys

    colours = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0 if i % 2 == 0 else 0.7)
        for i in range(max(num_classes, 1))
    ]
    return (np.array(colours) * 255).round().astype(np.uint8)
