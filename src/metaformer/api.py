"""``create_model``: every named variant, with weights from a file or the official release."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch

from .checkpoints import Checkpoint, load_checkpoint, open_checkpoint, pretrained_file
from .models.metaformer import MetaFormer, MetaFormerFeatures
from .models.zoo import get_spec, resolve_config


def create_model(
    name: str,
    *,
    pretrained: bool = False,
    checkpoint: str | os.PathLike | Mapping[str, torch.Tensor] | Checkpoint | None = None,
    num_classes: int | None = None,
    features_only: bool = False,
    out_indices: Sequence[int] = (0, 1, 2, 3),
    **overrides: object,
) -> MetaFormer | MetaFormerFeatures:
    """Build the registered model ``name``.

    Args:
        pretrained: load the official ImageNet-1k release (downloaded once into the torch hub cache).
        checkpoint: load weights from a file, Hugging Face folder or state_dict in any supported format instead.
        num_classes: classes of the head (default: the checkpoint's, else 1000); a number that differs from the
            checkpoint's gets a fresh head, for fine-tuning.
        features_only: return the backbone for dense prediction (stage outputs, each through its own norm).
        out_indices: the stages whose outputs the backbone returns.
        overrides: any ``MetaFormerConfig`` field, e.g. ``drop_path_rate=0.1`` or ``image_size=384``.
    """
    if pretrained and checkpoint is not None:
        raise ValueError("pass either pretrained=True or checkpoint=PATH, not both")
    spec = get_spec(name)
    if spec.task != "classification":
        from .tasks.dense import create_dense_model

        if pretrained:
            checkpoint = pretrained_file(spec.backbone)  # ImageNet weights initialise the backbone
        return create_dense_model(spec, num_classes=num_classes, checkpoint=checkpoint, **overrides)
    if pretrained:
        checkpoint = pretrained_file(name)
    if checkpoint is not None:
        checkpoint = open_checkpoint(checkpoint)
        if num_classes is None and not features_only:
            num_classes = checkpoint.num_classes() or 0
        for key, value in checkpoint.evaluation_settings().items():
            overrides.setdefault(key, value)  # evaluate as the model was trained, unless told otherwise
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    config = resolve_config(name, **overrides)
    model = MetaFormerFeatures(config, out_indices) if features_only else MetaFormer(config)
    model.name = name
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model
