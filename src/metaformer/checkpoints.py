"""Weights in every format users meet: ours (safetensors), the official sail-sg release, timm and Hugging Face.

Each foreign format is described once, as a function from our parameter names to its names; loading inverts it
against the model's own keys, so a key that does not fit is reported, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models.layers import make_norm, resize_pos_embed
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.zoo import get_spec, list_models

FORMATS = ("metaformer", "official", "timm", "hf")
StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


class CheckpointWarning(UserWarning):
    """Something was initialised fresh or ignored while loading; loading still succeeded."""


# --------------------------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike, strip_prefixes: bool = True) -> tuple[StateDict, dict]:
    """Tensors and metadata of a checkpoint file or Hugging Face folder. Never unpickles arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        state_dict, metadata = _read_hf_folder(path)
    elif path.suffix == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
    else:
        state_dict, metadata = _torch_load(path), {}
    return (_strip_prefixes(state_dict) if strip_prefixes else state_dict), metadata


def _read_safetensors(path: Path) -> tuple[StateDict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        return load_file(str(path)), metadata
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path}: not a readable safetensors file ({error})") from error


def _torch_load(path: Path) -> StateDict:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if not unsafe:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another kind of file). Expected "
                "a state_dict file (.pth, .pth.tar, .bin), a .safetensors file or a Hugging Face model folder."
            ) from error
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors, and unpickling them "
            "could run code. If you trust it, load it yourself and re-save only its state_dict, or convert it "
            f"to safetensors. (Found {unsafe[1]}.)"
        ) from error
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({(str(error) or type(error).__name__).splitlines()[0]}). "
            "Expected a state_dict "
            "file (.pth, .pth.tar, .bin), a .safetensors file or a Hugging Face model folder."
        ) from error
    for wrapper in ("state_dict", "model", "module", "state_dict_ema"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds {type(obj).__name__}, not a state_dict of tensors")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries {not_tensors[:5]} are not tensors; expected a state_dict")
    return obj


def _strip_prefixes(state_dict: StateDict) -> StateDict:
    # DistributedDataParallel saves every name under "module."; mmdet/mmseg keep the backbone under "backbone."
    # beside their neck and heads; Hugging Face's PoolFormerModel (no classifier) has no "poolformer." prefix.
    if state_dict and all(k.startswith("module.") for k in state_dict):
        state_dict = {k[len("module.") :]: v for k, v in state_dict.items()}
    if any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone.") :]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    if any(k.startswith("encoder.patch_embeddings.") for k in state_dict):
        state_dict = {"poolformer." + k: v for k, v in state_dict.items()}
    return state_dict


def _read_hf_folder(path: Path) -> tuple[StateDict, dict]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} is a folder but has no config.json; expected a Hugging Face model folder")
    try:
        config = json.loads(config_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{config_file}: not valid JSON ({error})") from error
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (path / weights).exists():
            state_dict, _ = read_state_dict(path / weights)
            return state_dict, {"hf_config": config}
    raise CheckpointError(f"{path}: found config.json but neither model.safetensors nor pytorch_model.bin")


# ---------------------------------------------------------------------------------------- key name mappings


@functools.cache
def _official_indices(config: MetaFormerConfig) -> tuple[dict[int, int], dict[int, int], dict[int, int]]:
    """Positions in the official ``network`` list of each stage's blocks, downsampling and position embedding."""
    blocks, downsample, pos_embed = {}, {}, {}
    index = 0
    for stage in range(len(config.depths)):
        if stage > 0:
            downsample[stage] = index
            index += 1
        if config.pos_embed[stage]:
            pos_embed[stage] = index
            index += 1
        blocks[stage] = index
        index += 1
    return blocks, downsample, pos_embed


def _to_official(key: str, config: MetaFormerConfig) -> str:
    blocks, downsample, pos_embed = _official_indices(config)
    key = re.sub(r"^stem\.proj\.", "patch_embed.proj.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.", lambda m: f"network.{downsample[int(m[1])]}.", key)
    key = re.sub(r"^stages\.(\d+)\.pos_embed$", lambda m: f"network.{pos_embed[int(m[1])]}.pos_embed", key)
    key = re.sub(r"^stages\.(\d+)\.blocks\.", lambda m: f"network.{blocks[int(m[1])]}.", key)
    key = re.sub(r"^out_norms\.(\d+)\.", lambda m: f"norm{blocks[int(m[1])]}.", key)
    return re.sub(r"\.layer_scale(\d)$", r".layer_scale_\1", key)


def _to_timm(key: str, config: MetaFormerConfig) -> str:
    key = re.sub(r"^stem\.proj\.", "stem.conv.", key)
    key = key.replace(".downsample.proj.", ".downsample.conv.")
    key = re.sub(r"\.layer_scale(\d)$", r".layer_scale\1.scale", key)
    key = re.sub(r"^norm\.", "head.norm.", key)
    return re.sub(r"^head\.(weight|bias)$", r"head.fc.\1", key)


_HF_BLOCK_PARTS = {
    "norm1.": "before_norm.",
    "norm2.": "after_norm.",
    "mlp.fc1.": "output.conv1.",
    "mlp.fc2.": "output.conv2.",
    "layer_scale1": "layer_scale_1",
    "layer_scale2": "layer_scale_2",
}


def _to_hf(key: str, config: MetaFormerConfig) -> str:
    key = re.sub(r"^stem\.proj\.", "poolformer.encoder.patch_embeddings.0.projection.", key)
    key = re.sub(r"^stages\.(\d+)\.downsample\.proj\.", r"poolformer.encoder.patch_embeddings.\1.projection.", key)
    match = re.match(r"^stages\.(\d+)\.blocks\.(\d+)\.(.*)$", key)
    if match:
        rest = match[3]
        for ours, theirs in _HF_BLOCK_PARTS.items():
            if rest.startswith(ours):
                rest = theirs + rest[len(ours) :]
        key = f"poolformer.encoder.block.{match[1]}.{match[2]}.{rest}"
    return re.sub(r"^head\.", "classifier.", key)


_KEY_MAPS: dict[str, Callable[[str, MetaFormerConfig], str]] = {
    "metaformer": lambda key, config: key,
    "official": _to_official,
    "timm": _to_timm,
    "hf": _to_hf,
}


def detect_format(state_dict: StateDict) -> str:
    """Which of ``FORMATS`` a state_dict is in, from its parameter names."""
    keys = set(state_dict)
    if any(k.startswith("poolformer.encoder.") for k in keys):
        return "hf"
    if "patch_embed.proj.weight" in keys:
        return "official"
    if "stem.conv.weight" in keys:
        return "timm"
    if "stem.proj.weight" in keys:
        return "metaformer"
    raise CheckpointError(
        "unrecognised checkpoint layout: expected MetaFormer/PoolFormer weights in our, the official, timm's or "
        f"Hugging Face's format; the first keys are {sorted(keys)[:5]}"
    )


def convert_state_dict(state_dict: StateDict, config: MetaFormerConfig, to: str) -> StateDict:
    """Rename our state_dict's keys into format ``to`` (values are shared, not copied)."""
    if to not in _KEY_MAPS:
        raise ValueError(f"unknown format {to!r}; choose one of {FORMATS}")
    return {_KEY_MAPS[to](k, config): v for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------- loading weights

ARCHITECTURE_FIELDS = (
    "depths", "widths", "mixers", "pool_size", "norm", "act",
    "mlp_ratio", "pos_embed", "residual", "use_mlp", "in_chans",
)  # fmt: skip


@dataclass
class Checkpoint:
    """A checkpoint's tensors in their own format, with what the file says about itself."""

    state_dict: StateDict
    format: str
    source: str
    metadata: dict = field(default_factory=dict)

    def num_classes(self) -> int | None:
        """Rows of the classifier head, or None if the checkpoint has no head."""
        head = self.state_dict.get(_KEY_MAPS[self.format]("head.weight", MetaFormerConfig()))
        return None if head is None else head.shape[0]

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
        """The input size and crop our files record, which the model should be evaluated with."""
        if "config" not in self.metadata:
            return {}
        stored = json.loads(self.metadata["config"])
        return {k: stored[k] for k in ("image_size", "crop_pct") if k in stored}

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


def open_checkpoint(source: str | os.PathLike | Mapping[str, torch.Tensor] | Checkpoint) -> Checkpoint:
    """Read a checkpoint file, Hugging Face folder or in-memory state_dict, and detect its format."""
    if isinstance(source, Checkpoint):
        return source
    if isinstance(source, Mapping):
        state_dict = _strip_prefixes(dict(source))
        not_tensors = [k for k, v in state_dict.items() if not isinstance(v, torch.Tensor)]
        if not_tensors:
            raise CheckpointError(f"state_dict entries {not_tensors[:5]} are not tensors")
        return Checkpoint(state_dict, detect_format(state_dict), "state_dict")
    state_dict, metadata = read_state_dict(source)
    return Checkpoint(state_dict, detect_format(state_dict), str(source), metadata)


@dataclass
class LoadReport:
    source: str
    format: str
    fresh: list[str] = field(default_factory=list)  # our keys initialised fresh (new head, output norms)
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used
    resized: list[str] = field(default_factory=list)  # position embeddings resized to the model's grid
    checkpoint_classes: int | None = None  # rows of the checkpoint's head, when it is replaced


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _classifier_keys(config: MetaFormerConfig) -> list[str]:
    norm = make_norm(config.norm, config.widths[-1])
    return [f"norm.{k}" for k in norm.state_dict()] + ["head.weight", "head.bias"]


def _check_architecture(checkpoint: Checkpoint, config: MetaFormerConfig, model_name: str) -> None:
    stored = checkpoint.stored_architecture()
    if not stored:
        return
    differences = [
        f"{k}={stored[k]!r} (model: {getattr(config, k)!r})" for k in stored if stored[k] != getattr(config, k)
    ]
    if differences:
        raise CheckpointError(
            f"{checkpoint.source} was saved from another architecture than {model_name}: {', '.join(differences)}. "
            "Create the model it was saved from (our .safetensors files name it: `metaformer convert` infers it)."
        )


def _ignorable_keys(model: nn.Module, checkpoint: Checkpoint) -> set[str]:
    """Checkpoint keys a model may leave unused: a classifier's head in a backbone or a head-less model, and the
    output norms of stages a backbone does not return."""
    config: MetaFormerConfig = model.config
    to_theirs = _KEY_MAPS[checkpoint.format]
    keys: set[str] = set()
    if isinstance(model, MetaFormerFeatures):
        keys |= {to_theirs(k, config) for k in _classifier_keys(config)}
        unused = [i for i in range(len(config.depths)) if i not in model.out_indices]
        norm = make_norm(config.norm, 1).state_dict()
        keys |= {to_theirs(f"out_norms.{i}.{k}", config) for i in unused for k in norm}
    elif config.num_classes == 0:
        keys |= {to_theirs(k, config) for k in ("head.weight", "head.bias")}
    return keys


def load_checkpoint(
    model: MetaFormer | MetaFormerFeatures, source: str | os.PathLike | Mapping[str, torch.Tensor] | Checkpoint
) -> LoadReport:
    """Load weights in any supported format into ``model``, or raise a ``CheckpointError`` saying what differs.

    Left fresh, with a ``CheckpointWarning``: a classifier head of another size or absent from the file
    (fine-tuning), and a backbone's output norms when the file has none. A position embedding of another grid is
    resized bicubically.
    """
    checkpoint = open_checkpoint(source)
    config: MetaFormerConfig = model.config
    name = getattr(model, "name", None) or type(model).__name__
    _check_architecture(checkpoint, config, name)
    expected = model.state_dict()
    to_ours = {_KEY_MAPS[checkpoint.format](k, config): k for k in expected}
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
        lines = [f"{checkpoint.source} ({checkpoint.format} format) does not fit {name}:"]
        if missing:
            lines.append(f"  missing from the checkpoint: {_summarise(missing)}")
        if unexpected:
            lines.append(f"  unexpected in the checkpoint: {_summarise(unexpected)}")
        if conflicts:
            lines.append(f"  shape conflicts: {_summarise(conflicts, 4)}")
        lines.append("  Is it a checkpoint of another model? `metaformer info NAME` shows each model's layout.")
        raise CheckpointError("\n".join(lines))

    with torch.no_grad():
        for key, value in converted.items():
            expected[key].copy_(value)
    _warn_about(report, model)
    labels = checkpoint.labels(config.num_classes)
    if isinstance(model, MetaFormer) and labels and "head.weight" not in report.fresh:
        model.config = dataclasses.replace(model.config, labels=labels)
    return report


def _adapt_head(model: nn.Module, converted: StateDict, expected: StateDict, report: LoadReport) -> None:
    if not isinstance(model, MetaFormer) or "head.weight" not in expected:
        return
    if "head.weight" in converted:
        head, wanted = converted["head.weight"].shape, expected["head.weight"].shape
        if head[0] == wanted[0] or head[1:] != wanted[1:]:
            return  # the same head, or another architecture: reported as a shape conflict
        report.checkpoint_classes = converted.pop("head.weight").shape[0]
        converted.pop("head.bias", None)
    report.fresh += ["head.weight", "head.bias"]


def _adapt_pos_embed(converted: StateDict, expected: StateDict, report: LoadReport) -> None:
    for key, value in converted.items():
        want = expected.get(key)
        if key.endswith("pos_embed") and want is not None and value.shape[:2] == want.shape[:2]:
            if value.shape != want.shape:
                converted[key] = resize_pos_embed(value.float(), tuple(want.shape[-2:])).to(value.dtype)
                report.resized.append(key)


def _warn_about(report: LoadReport, model: nn.Module) -> None:
    source = report.source
    warn = functools.partial(warnings.warn, category=CheckpointWarning, stacklevel=4)  # the user's create_model
    if "head.weight" in report.fresh:
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


# ------------------------------------------------------------------------------------------- saving weights


def save_checkpoint(model: MetaFormer | MetaFormerFeatures, path: str | os.PathLike, to: str = "metaformer") -> Path:
    """Write ``model``'s weights in format ``to``: ours and timm's as safetensors (or ``.pth``), official as
    ``.pth.tar``, Hugging Face as a ``save_pretrained``-style folder. Written atomically."""
    path = Path(path)
    config: MetaFormerConfig = model.config
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if to == "hf":
        return _save_hf_folder(model, state_dict, path)
    converted = convert_state_dict(state_dict, config, to)
    if path.suffix == ".safetensors":
        metadata = {"format": to}
        if to == "metaformer":
            metadata["model"] = getattr(model, "name", None) or ""
            metadata["config"] = json.dumps(config.to_dict())
            if config.labels:
                metadata["labels"] = json.dumps(list(config.labels))
        atomic_write(path, lambda tmp: save_file(converted, str(tmp), metadata=metadata))
    else:
        atomic_write(path, lambda tmp: torch.save(converted, tmp))
    return path


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """Write ``path`` through ``write(tmp)`` on a temporary file in the same folder, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", delete=False) as handle:
        tmp = Path(handle.name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def hf_config(config: MetaFormerConfig) -> dict:
    """The ``config.json`` of Hugging Face's ``PoolFormerForImageClassification`` for this architecture."""
    unsupported = []
    if set(config.mixers) != {"pooling"} or config.norm != "groupnorm" or any(config.pos_embed):
        unsupported.append("only pooling mixers with GroupNorm")
    if not (config.residual and config.use_mlp and config.layer_scale_init is not None):
        unsupported.append("residuals, channel MLP and layer scale")
    if unsupported:
        raise ValueError(f"Hugging Face's PoolFormer supports {' and '.join(unsupported)}; this model differs")
    labels = config.labels or tuple(f"LABEL_{i}" for i in range(config.num_classes))
    return {
        "architectures": ["PoolFormerForImageClassification"],
        "model_type": "poolformer",
        "num_channels": config.in_chans,
        "patch_size": 16,
        "stride": 16,
        "pool_size": config.pool_size,
        "mlp_ratio": config.mlp_ratio,
        "depths": list(config.depths),
        "hidden_sizes": list(config.widths),
        "patch_sizes": [7] + [3] * (len(config.depths) - 1),
        "strides": [4] + [2] * (len(config.depths) - 1),
        "padding": [2] + [1] * (len(config.depths) - 1),
        "num_encoder_blocks": len(config.depths),
        "drop_path_rate": config.drop_path_rate,
        "hidden_act": config.act,
        "use_layer_scale": True,
        "layer_scale_init_value": config.layer_scale_init,
        "initializer_range": 0.02,
        "id2label": {str(i): label for i, label in enumerate(labels)},
        "label2id": {label: i for i, label in enumerate(labels)},
    }


def _save_hf_folder(model: nn.Module, state_dict: StateDict, path: Path) -> Path:
    if not isinstance(model, MetaFormer):
        raise ValueError("Hugging Face's format holds classifiers; create the model without features_only")
    config_json = hf_config(model.config)
    path.mkdir(parents=True, exist_ok=True)
    converted = convert_state_dict(state_dict, model.config, "hf")
    atomic_write(path / "model.safetensors", lambda tmp: save_file(converted, str(tmp), {"format": "pt"}))
    (path / "config.json").write_text(json.dumps(config_json, indent=2))
    return path


# ------------------------------------------------------------------------------------------ converting files

_SUFFIXES = (".safetensors", ".pth.tar", ".pth", ".bin", ".pt", ".tar")


def _name_hint(source: str) -> str:
    name = Path(source).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def infer_model_name(checkpoint: Checkpoint) -> str:
    """The registered model a checkpoint belongs to: the name it records, else the one model whose layout and
    declared architecture fit (the file name breaks ties, as in the official releases' names)."""
    if checkpoint.metadata.get("model"):
        return checkpoint.metadata["model"]
    num_classes = checkpoint.num_classes() or 0
    shapes = {k: tuple(v.shape) for k, v in checkpoint.state_dict.items()}
    stored = checkpoint.stored_architecture() or {}
    candidates = []
    for name in list_models(task="classification"):
        spec = get_spec(name)
        config = dataclasses.replace(spec.config, num_classes=num_classes)
        if checkpoint.format == "timm" and not spec.timm_name:
            continue  # timm has only the PoolFormers
        if any(getattr(config, k) != v for k, v in stored.items()):
            continue
        with torch.device("meta"):
            layout = {
                _KEY_MAPS[checkpoint.format](k, config): tuple(v.shape)
                for k, v in MetaFormer(config).state_dict().items()
            }
        if layout == shapes:
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


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str, model_name: str | None = None) -> Path:
    """Convert a checkpoint in any supported format into format ``to`` (see ``save_checkpoint``)."""
    from .api import create_model

    checkpoint = open_checkpoint(src)
    model = create_model(model_name or infer_model_name(checkpoint), checkpoint=checkpoint)
    return save_checkpoint(model, dst, to)


# ------------------------------------------------------------------------------------------ released weights

# SHA-256 of released files whose digest is published; none of the sail-sg releases publish one, so others are
# pinned on first download (see ``pretrained_file``).
KNOWN_SHA256: dict[str, str] = {}
WEIGHTS_URL_ENV = "METAFORMER_WEIGHTS_URL"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_file(name: str, progress: bool = True) -> Path:
    """Path of ``name``'s released weights in the torch hub cache, downloading them on first use.

    The file's SHA-256 is checked against ``KNOWN_SHA256`` when published, else recorded beside the file on first
    download and checked on every later use, so a corrupted or replaced cache file is caught. Set
    ``METAFORMER_WEIGHTS_URL`` to a mirror's base URL to download from elsewhere.
    """
    spec = get_spec(name)
    if spec.url is None:
        raise CheckpointError(f"{name} has no released weights; train it or pass checkpoint=PATH")
    filename = spec.url.rsplit("/", 1)[1]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    sidecar = cache.with_name(cache.name + ".sha256")
    if cache.exists():
        expected = KNOWN_SHA256.get(name) or (sidecar.read_text().strip() if sidecar.exists() else None)
        if expected is None or _sha256(cache) == expected:
            return cache
        raise CheckpointError(f"{cache} does not match its SHA-256 {expected}; delete it to download it again")

    base = os.environ.get(WEIGHTS_URL_ENV)
    urls = [base.rstrip("/") + "/" + filename] if base else [spec.url]
    if spec.hf_hub_id and not base:
        urls.append(f"https://huggingface.co/{spec.hf_hub_id}/resolve/main/pytorch_model.bin")
    cache.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        tmp = cache.with_name(cache.name + ".partial")
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=progress)
        except Exception as error:  # urllib raises several unrelated types for an unreachable host
            errors.append(f"{url}: {error}")
            tmp.unlink(missing_ok=True)
            continue
        digest = _sha256(tmp)
        if name in KNOWN_SHA256 and digest != KNOWN_SHA256[name]:
            tmp.unlink()
            errors.append(f"{url}: SHA-256 {digest} differs from the published {KNOWN_SHA256[name]}")
            continue
        shutil.move(tmp, cache)
        sidecar.write_text(digest + "\n")
        return cache
    raise CheckpointError(
        f"could not download the weights of {name}:\n  " + "\n  ".join(errors) + "\n"
        f"Offline? Download {spec.url} on another machine and pass it with checkpoint=PATH "
        f"(CLI: --checkpoint PATH), or copy it to {cache}."
    )
