"""A checkpoint as read from a file: its tensors in their own format, and what the file says about itself."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.config import MetaFormerConfig
from .formats import CLASSIFIER_FORMATS, StateDict, backbone_part, classifier_key, detect_format, normalize
from .reading import read_state_dict, unwrap

ARCHITECTURE_FIELDS = (
    "depths", "widths", "mixers", "pool_size", "norm", "act", "mlp_ratio", "pos_embed", "residual", "use_mlp",
    "in_chans", "res_scale_init", "bias", "stem_norm", "downsample_norm", "head",
)  # fmt: skip
# The layers of a dense model whose size is its number of classes (replaced when fine-tuning to other classes).
CLASS_LAYERS = {
    "segmentation": ("head.classifier.",),
    "detection": ("head.classification_head.cls_logits.",),
    "instance_segmentation": ("roi_heads.box_predictor.", "roi_heads.mask_predictor.mask_fcn_logits."),
}
ANCHORS_PER_LOCATION = 9  # RetinaNet: 3 scales x 3 ratios


@dataclass
class Checkpoint:
    """A checkpoint's tensors in their own format, with what the file says about itself."""

    state_dict: StateDict
    format: str
    source: str
    metadata: dict = field(default_factory=dict)

    @property
    def is_dense(self) -> bool:
        return self.format not in CLASSIFIER_FORMATS

    def trunk(self) -> Checkpoint:
        """The backbone of a dense checkpoint, as a classifier-format checkpoint (itself for a classifier's)."""
        if not self.is_dense:
            return self
        part = backbone_part(self.state_dict)
        if not part:
            raise CheckpointError(f"{self.source}: a {self.format} file without backbone weights")
        return Checkpoint(part, detect_format(part), self.source, {})

    def num_classes(self) -> int | None:
        """Rows of a classifier checkpoint's head, or None if it has no head."""
        for layer in ("head", "head.fc2"):  # a linear head, or the Baselines' MLP head
            head = self.state_dict.get(classifier_key(self.format, f"{layer}.weight", MetaFormerConfig()))
            if head is not None:
                return head.shape[0]
        return None

    def dense_num_classes(self, task: str) -> int | None:
        """The object or pixel classes of a whole dense checkpoint: from its metadata, else its class layer's rows
        (an in-memory state dict has no metadata)."""
        if "num_classes" in self.metadata:
            return int(self.metadata["num_classes"])
        rows = {
            ("mmseg", "segmentation"): ("decode_head.conv_seg.weight", 0),
            ("mmdet", "detection"): ("bbox_head.retina_cls.weight", 0),
            ("mmdet", "instance_segmentation"): ("roi_head.bbox_head.fc_cls.weight", -1),  # the background row
            ("metaformer-dense", "segmentation"): (CLASS_LAYERS["segmentation"][0] + "weight", 0),
            ("metaformer-dense", "detection"): (CLASS_LAYERS["detection"][0] + "weight", 0),
            ("metaformer-dense", "instance_segmentation"): ("roi_heads.box_predictor.cls_score.weight", -1),
        }.get((self.format, task))
        if rows is None or rows[0] not in self.state_dict:
            return None
        count = self.state_dict[rows[0]].shape[0] + rows[1]
        return count // ANCHORS_PER_LOCATION if task == "detection" else count

    def stored_architecture(self) -> dict | None:
        """The architecture the file declares (our metadata or a Hugging Face config.json), in our field names."""
        if "config" in self.metadata:
            stored = json.loads(self.metadata["config"])
            return {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in ARCHITECTURE_FIELDS}
        if "hf_config" in self.metadata:
            hf = self.metadata["hf_config"]
            stages = len(hf.get("depths", ()))
            return {  # Hugging Face's PoolFormer is always pooling + GroupNorm with residuals and an MLP
                "mixers": ("pooling",) * stages,
                "norm": "groupnorm",
                "pos_embed": (False,) * stages,
                "residual": True,
                "use_mlp": True,
                "depths": tuple(hf.get("depths", ())),
                "widths": tuple(hf.get("hidden_sizes", ())),
                "pool_size": hf.get("pool_size", 3),
                "act": hf.get("hidden_act", "gelu"),
                "mlp_ratio": hf.get("mlp_ratio", 4.0),
            }
        return None

    def evaluation_settings(self) -> dict:
        """The input size and crop our classifier files record, which the model should be evaluated with."""
        if "config" not in self.metadata:
            return {}
        stored = json.loads(self.metadata["config"])
        return {k: stored[k] for k in ("image_size", "crop_pct") if k in stored}

    def input_settings(self) -> dict:
        """The input size our dense files record (segmentation's test scale, the detectors' training size)."""
        settings = json.loads(self.metadata.get("input", "{}"))
        if "test_scale" in self.metadata:  # files of version 0.1 recorded it on its own
            settings["test_scale"] = json.loads(self.metadata["test_scale"])
        return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}

    def labels(self, num_classes: int) -> tuple[str, ...] | None:
        labels = None
        if "labels" in self.metadata:
            labels = json.loads(self.metadata["labels"])
        elif "hf_config" in self.metadata:
            id2label = self.metadata["hf_config"].get("id2label") or {}
            labels = [id2label.get(str(i), "") for i in range(len(id2label))]
        if labels and len(labels) == num_classes and all(labels):
            return tuple(labels)
        return None


Source = str | os.PathLike | Mapping[str, torch.Tensor] | Checkpoint


def open_checkpoint(source: Source) -> Checkpoint:
    """Read a checkpoint file, Hugging Face folder or in-memory state_dict, and detect its format."""
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, Mapping):
        state_dict = normalize(unwrap(dict(source), "the state_dict"))
        return Checkpoint(state_dict, detect_format(state_dict), "the state_dict")
    state_dict, metadata = read_state_dict(source)
    state_dict = normalize(state_dict)
    return Checkpoint(state_dict, detect_format(state_dict), str(source), metadata)


@dataclass
class LoadReport:
    source: str
    format: str
    fresh: list[str] = field(default_factory=list)  # our keys initialised fresh (new head, output norms, neck)
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    resized: list[str] = field(default_factory=list)  # position embeddings resized to the model's grid
    checkpoint_classes: int | None = None  # rows of a classifier checkpoint's head, when it is replaced
    class_layers_replaced: bool = False  # a dense checkpoint for another number of classes

    def fresh_head(self) -> bool:
        return any(k.startswith("head.") for k in self.fresh)


class CheckpointWarning(UserWarning):
    """Something was initialised fresh or ignored while loading; loading still succeeded."""


def model_name(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def misfit(checkpoint: Checkpoint, name: str, missing: list[str], unexpected: list[str],
            conflicts: list[str]) -> CheckpointError:  # fmt: skip
    lines = [f"{checkpoint.source} ({checkpoint.format} format) does not fit {name}:"]
    saved_from = checkpoint.metadata.get("model")
    if saved_from and saved_from != name:
        lines[0] += f" it was saved from {saved_from}"
    if missing:
        lines.append(f"  missing from the checkpoint: {summarise(missing)}")
    if unexpected:
        lines.append(f"  unexpected in the checkpoint: {summarise(unexpected)}")
    if conflicts:
        lines.append(f"  shape conflicts: {summarise(conflicts, 4)}")
    lines.append("  Is it a checkpoint of another model? `metaformer info NAME` shows each model's layout.")
    return CheckpointError("\n".join(lines))


def copy_into(model: nn.Module, converted: StateDict) -> None:
    expected = model.state_dict()
    with torch.no_grad():
        for key, value in converted.items():
            expected[key].copy_(value)
