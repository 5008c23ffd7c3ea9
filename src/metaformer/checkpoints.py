"""Weights in every format users meet: ours (safetensors), the official sail-sg release, timm and Hugging Face.

Each foreign format is described once, as a function from our parameter names to its names; loading inverts it
against the model's own keys, so a key that does not fit is reported, never silently dropped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from .models.layers import make_norm
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.zoo import get_spec, list_models, resolve_config

FORMATS = ("metaformer", "official", "timm", "hf")
StateDict = dict[str, torch.Tensor]


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or does not fit the model."""


class CheckpointWarning(UserWarning):
    """Something was initialised fresh or ignored while loading; loading still succeeded."""


# --------------------------------------------------------------------------------------------- reading files


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict[str, str]]:
    """Tensors and metadata of a checkpoint file or Hugging Face folder. Never unpickles arbitrary objects."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.is_dir():
        return _read_hf_folder(path)
    if path.suffix == ".safetensors":
        return _read_safetensors(path)
    return _strip_module_prefix(_torch_load(path)), {}


def _read_safetensors(path: Path) -> tuple[StateDict, dict[str, str]]:
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
            f"{path}: not a readable PyTorch checkpoint ({str(error).splitlines()[0]}). Expected a state_dict "
            "file (.pth, .pth.tar, .bin), a .safetensors file or a Hugging Face model folder."
        ) from error
    for wrapper in ("state_dict", "model", "module"):
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: holds {type(obj).__name__}, not a state_dict of tensors")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{path}: entries {not_tensors[:5]} are not tensors; expected a state_dict")
    return obj


def _strip_module_prefix(state_dict: StateDict) -> StateDict:
    # DistributedDataParallel saves every name under "module.".
    if all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}
    return state_dict


def _read_hf_folder(path: Path) -> tuple[StateDict, dict[str, str]]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path} is a folder but has no config.json; expected a Hugging Face model folder")
    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (path / weights).exists():
            state_dict, _ = read_state_dict(path / weights)
            return state_dict, {"hf_config": config_file.read_text()}
    raise CheckpointError(f"{path}: found config.json but neither model.safetensors nor pytorch_model.bin")


# ---------------------------------------------------------------------------------------- key name mappings


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


@dataclass
class LoadReport:
    path: str
    format: str
    fresh: list[str] = field(default_factory=list)  # our keys initialised fresh (head for new classes, out norms)
    ignored: list[str] = field(default_factory=list)  # checkpoint keys deliberately not used


def _summarise(keys: list[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def _classifier_keys(config: MetaFormerConfig) -> list[str]:
    norm = make_norm(config.norm, config.widths[-1])
    return [f"norm.{k}" for k in norm.state_dict()] + ["head.weight", "head.bias"]


def load_checkpoint(model: nn.Module, path: str | os.PathLike) -> LoadReport:
    """Load ``path`` (any supported format) into ``model``, or raise a ``CheckpointError`` saying what differs.

    A classifier head of another size is left freshly initialised (fine-tuning); a feature extractor ignores the
    head and starts its output norms fresh unless the file has them. Both are reported as a ``CheckpointWarning``.
    """
    state_dict, metadata = read_state_dict(path)
    fmt = detect_format(state_dict)
    config: MetaFormerConfig = model.config
    expected = model.state_dict()
    to_theirs = {_KEY_MAPS[fmt](k, config): k for k in expected}
    report = LoadReport(str(path), fmt)

    ignorable: set[str] = set()
    if isinstance(model, MetaFormerFeatures):
        ignorable = {_KEY_MAPS[fmt](k, config) for k in _classifier_keys(config)}

    converted: StateDict = {}
    unexpected: list[str] = []
    for key, value in state_dict.items():
        if key in to_theirs:
            converted[to_theirs[key]] = value
        elif key in ignorable:
            report.ignored.append(key)
        else:
            unexpected.append(key)

    if isinstance(model, MetaFormer) and "head.weight" in converted and "head.weight" in expected:
        head, wanted = converted["head.weight"].shape, expected["head.weight"].shape
        if head[0] != wanted[0] and head[1:] == wanted[1:]:
            got = converted.pop("head.weight").shape[0]
            converted.pop("head.bias", None)
            report.fresh += ["head.weight", "head.bias"]
            warnings.warn(
                f"{path}: classifier head re-initialised for {config.num_classes} classes "
                f"(the checkpoint's head has {got}); train it before use",
                CheckpointWarning,
                stacklevel=2,
            )
    missing = [k for k in expected if k not in converted and k not in report.fresh]
    if isinstance(model, MetaFormerFeatures):
        fresh_norms = [k for k in missing if k.startswith("out_norms.")]
        if fresh_norms:
            report.fresh += fresh_norms
            missing = [k for k in missing if k not in fresh_norms]
            warnings.warn(
                f"{path}: loaded the backbone; the output norms of stages "
                f"{sorted({k.split('.')[1] for k in fresh_norms})} are initialised fresh and the classifier "
                "head is ignored",
                CheckpointWarning,
                stacklevel=2,
            )
    conflicts = [
        f"{k} (checkpoint {tuple(converted[k].shape)}, model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in converted and converted[k].shape != v.shape
    ]
    if missing or unexpected or conflicts:
        lines = [f"{path} ({fmt} format) does not fit {getattr(model, 'name', None) or type(model).__name__}:"]
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
    labels = _labels_from_metadata(metadata, config.num_classes)
    if isinstance(model, MetaFormer) and labels and not report.fresh:
        model.config = dataclasses.replace(model.config, labels=labels)
    return report


def _labels_from_metadata(metadata: dict[str, str], num_classes: int) -> tuple[str, ...] | None:
    labels = None
    if "labels" in metadata:
        labels = json.loads(metadata["labels"])
    elif "hf_config" in metadata:
        id2label = json.loads(metadata["hf_config"]).get("id2label") or {}
        labels = [id2label.get(str(i), "") for i in range(len(id2label))]
    if labels and len(labels) == num_classes and all(labels):
        return tuple(labels)
    return None


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
        _atomic_write(path, lambda tmp: save_file(converted, str(tmp), metadata=metadata))
    else:
        _atomic_write(path, lambda tmp: torch.save(converted, tmp))
    return path


def _atomic_write(path: Path, write: Callable[[Path], object]) -> None:
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
    _atomic_write(path / "model.safetensors", lambda tmp: save_file(converted, str(tmp), {"format": "pt"}))
    (path / "config.json").write_text(json.dumps(config_json, indent=2))
    return path


# ------------------------------------------------------------------------------------------ converting files


def infer_model_name(state_dict: StateDict, metadata: dict[str, str] | None = None) -> tuple[str, int]:
    """The registered model (and number of classes) whose layout matches a state_dict in any format."""
    metadata = metadata or {}
    fmt = detect_format(state_dict)
    if metadata.get("model"):
        return metadata["model"], json.loads(metadata["config"])["num_classes"]
    shapes = {k: tuple(v.shape) for k, v in state_dict.items()}
    for name in list_models():
        config = resolve_config(name)
        head = shapes.get(_KEY_MAPS[fmt]("head.weight", config))
        config = dataclasses.replace(config, num_classes=head[0] if head else 0)
        with torch.device("meta"):
            expected = MetaFormer(config).state_dict()
        if shapes == {_KEY_MAPS[fmt](k, config): tuple(v.shape) for k, v in expected.items()}:
            return name, config.num_classes
    raise CheckpointError(f"no registered model has this checkpoint's layout ({fmt} format); pass the model name")


def convert_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, to: str, model_name: str | None = None) -> Path:
    """Convert a checkpoint in any supported format into format ``to`` (see ``save_checkpoint``)."""
    from .api import create_model

    state_dict, metadata = read_state_dict(src)
    if model_name is None:
        model_name, num_classes = infer_model_name(state_dict, metadata)
    else:
        fmt = detect_format(state_dict)
        head = state_dict.get(_KEY_MAPS[fmt]("head.weight", resolve_config(model_name)))
        num_classes = head.shape[0] if head is not None else 0
    model = create_model(model_name, num_classes=num_classes, checkpoint=src)
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
