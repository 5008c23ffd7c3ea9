"""A checkpoint as read from a file: its tensors in their own format, and what the file says about itself."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.config import STRUCTURE, MetaFormerConfig, Settings
from ..models.pretrained import CROP_MODES
from .formats import CLASSIFIER_FORMATS, StateDict, backbone_part, classifier_key, detect_format, normalize
from .reading import read_state_dict, unwrap

ANCHORS_PER_LOCATION = 9  # RetinaNet: 3 scales x 3 ratios


def stored_structure(stored: dict) -> dict:
    """The structure fields (``config.STRUCTURE``) of a config one of our files recorded, in today's names: files of
    version 0.1 said ``bias``, ``residual``, ``use_mlp`` and ``pool_size``, and files before InceptionNeXt one
    ``mlp_ratio`` for every stage (what they cannot say is not compared)."""
    stored = dict(stored)
    depths = stored.get("depths") or ()
    if "mlp_ratio" in stored:
        stored.setdefault("mlp_ratios", (float(stored.pop("mlp_ratio")),) * len(depths))
    if "bias" in stored:
        stored.setdefault("mlp_bias", stored.pop("bias"))
    residual, use_mlp = stored.pop("residual", True), stored.pop("use_mlp", True)
    if "blocks" not in stored and depths:
        stored["blocks"] = ("no_residual" if not residual else "mixer_only" if not use_mlp else "metaformer",) * len(
            depths
        )
    pool = stored.pop("pool_size", 3)
    if "mixer_settings" not in stored and pool != 3 and "mixers" in stored:
        stored["mixer_settings"] = [{"pool_size": pool} if m == "pooling" else {} for m in stored["mixers"]]
    if "mixer_settings" in stored:
        stored["mixer_settings"] = tuple(Settings(s) for s in stored["mixer_settings"])
    return {k: tuple(v) if isinstance(v, list) else v for k, v in stored.items() if k in STRUCTURE}


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
        # A linear head, or an MLP head (the Baselines', InceptionNeXt's, MambaOut's: each format may name them apart).
        for config in (MetaFormerConfig(), MetaFormerConfig(head="metanext"), MetaFormerConfig(head="mambaout")):
            for layer in ("head", "head.fc2"):
                head = self.state_dict.get(classifier_key(self.format, f"{layer}.weight", config))
                if head is not None:
                    return head.shape[0]
        return None

    def dense_num_classes(self, task: str, class_layers: tuple[str, ...]) -> int | None:
        """The object or pixel classes of a whole dense checkpoint for a model of ``task`` whose class-sized layers
        are ``class_layers``: from its metadata, else its class layer's rows (an in-memory state dict has none)."""
        if "num_classes" in self.metadata:
            return int(self.metadata["num_classes"])
        rows = {
            ("mmseg", "segmentation"): ("decode_head.conv_seg.weight", 0),
            ("mmdet", "detection"): ("bbox_head.retina_cls.weight", 0),
            ("mmdet", "instance_segmentation"): ("roi_head.bbox_head.fc_cls.weight", -1),  # the background row
            ("metaformer-dense", "segmentation"): (class_layers[0] + "weight", 0),
            ("metaformer-dense", "detection"): (class_layers[0] + "weight", 0),
            ("metaformer-dense", "instance_segmentation"): (class_layers[0] + "cls_score.weight", -1),
        }.get((self.format, task))
        if rows is None or rows[0] not in self.state_dict:
            return None
        count = self.state_dict[rows[0]].shape[0] + rows[1]
        return count // ANCHORS_PER_LOCATION if task == "detection" else count

    def stored_architecture(self) -> dict | None:
        """The architecture the file declares (our metadata or a Hugging Face config.json), in our field names."""
        if "config" in self.metadata:
            return stored_structure(json.loads(self.metadata["config"]))
        if "hf_config" in self.metadata:
            hf = self.metadata["hf_config"]
            stages = len(hf.get("depths", ()))
            pool = hf.get("pool_size", 3)
            return {  # Hugging Face's PoolFormer is always pooling + GroupNorm with residuals and an MLP
                "blocks": ("metaformer",) * stages,
                "mixers": ("pooling",) * stages,
                "mixer_settings": (Settings({"pool_size": pool} if pool != 3 else {}),) * stages,
                "norm": "groupnorm",
                "pos_embed": (False,) * stages,
                "depths": tuple(hf.get("depths", ())),
                "widths": tuple(hf.get("hidden_sizes", ())),
                "act": hf.get("hidden_act", "gelu"),
                "mlp_ratios": (float(hf.get("mlp_ratio", 4.0)),) * stages,
            }
        return None

    def evaluation_settings(self) -> dict:
        """The input size and crop our classifier files (and timm's folders) record, which the model should be
        evaluated with: ``image_size``, ``crop_pct`` and ``crop_mode`` where recorded."""
        settings = {}
        if "config" in self.metadata:  # version 0.1 kept the crop in the architecture
            stored = json.loads(self.metadata["config"])
            settings = {k: stored[k] for k in ("image_size", "crop_pct") if k in stored}
        if "pretrained_cfg" in self.metadata:
            record = json.loads(self.metadata["pretrained_cfg"])
            if isinstance(record.get("input_size"), list) and len(record["input_size"]) == 3:
                settings["image_size"] = record["input_size"][-1]
            if isinstance(record.get("crop_pct"), (int, float)):
                settings["crop_pct"] = float(record["crop_pct"])
            if record.get("crop_mode") in CROP_MODES:
                settings["crop_mode"] = record["crop_mode"]
        return settings

    def input_settings(self) -> dict:
        """The input size our dense files record (segmentation's test scale, the detectors' training size)."""
        settings = json.loads(self.metadata.get("input", "{}"))
        if "test_scale" in self.metadata:  # files of version 0.1 recorded it on its own
            settings["test_scale"] = json.loads(self.metadata["test_scale"])
        return {k: tuple(v) if isinstance(v, list) else v for k, v in settings.items()}

    def labels(self, num_classes: int) -> tuple[str, ...] | None:
        labels = None
        if "pretrained_cfg" in self.metadata:
            labels = json.loads(self.metadata["pretrained_cfg"]).get("label_names")
        if "labels" in self.metadata:  # version 0.1, mmcv's and mmengine's class names, timm folders'
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


def model_name(model: nn.Module) -> str:
    return getattr(model, "name", None) or type(model).__name__


def summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def misfit(
    checkpoint: Checkpoint, name: str, missing: list[str], unexpected: list[str], conflicts: list[str]
) -> CheckpointError:
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


def copy_into(model: nn.Module, converted: StateDict, assign: bool = False) -> None:
    """The checkpoint's tensors into ``model``: copied into its own (of its dtype and device), or with ``assign``
    taken as they are (a model built on the meta device: no memory spent on weights that are then overwritten)."""
    expected = model.state_dict()
    if assign:
        model.load_state_dict({k: v.to(expected[k].dtype) for k, v in converted.items()}, strict=False, assign=True)
        return
    with torch.no_grad():
        for key, value in converted.items():
            expected[key].copy_(value)
