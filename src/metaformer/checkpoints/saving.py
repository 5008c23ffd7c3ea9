"""Writing weights: ours (safetensors with the model's name, configuration and class names), timm's, the official
release's and Hugging Face's, each written atomically and only into a file name that says what it holds."""

from __future__ import annotations

import io
import json
import os
import warnings
from pathlib import Path

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..data.imagenet import imagenet_classes
from ..errors import ConfigError
from ..files import atomic_write, write_json
from ..models.config import class_layer
from ..models.dense import is_dense
from ..models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from ..models.pretrained import PretrainedCfg
from .formats import StateDict, classifier_key, convert_state_dict

SAVE_FORMATS = ("metaformer", "official", "timm", "hf")
# The file names each format is written to; Hugging Face's format is a folder.
SUFFIXES = {
    "metaformer": (".safetensors",),
    "timm": (".safetensors", ".pth", ".bin", ".pt"),  # or a folder, which timm's create_model reads
    "official": (".pth.tar", ".pth", ".tar", ".pt", ".bin"),
}
CHECKPOINT_SUFFIXES = (".safetensors", ".pth.tar", ".pth", ".tar", ".pt", ".bin")


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    return next((s for s in CHECKPOINT_SUFFIXES if name.endswith(s)), path.suffix.lower())


def check_destination(path: str | os.PathLike, to: str, *, overwrite: bool) -> Path:
    """Refuse a destination whose name contradicts format ``to``, or that exists unless ``overwrite``."""
    path = Path(path)
    if to not in SAVE_FORMATS:
        raise ConfigError(f"unknown format {to!r}; choose one of {SAVE_FORMATS}")
    suffix = suffix_of(path)
    timm_folder = to == "timm" and not suffix and not path.is_file()  # timm's hub layout: weights and config.json
    if to == "hf":
        if suffix in CHECKPOINT_SUFFIXES or path.is_file():
            raise ConfigError(
                f"{path}: Hugging Face's format is a folder (config.json, model.safetensors); name a folder, not a file"
            )
    elif suffix not in SUFFIXES[to] and not timm_folder:
        shown = "ours (--to safetensors)" if to == "metaformer" else f"the {to} format"
        folder = " (or a folder, named without a suffix)" if to == "timm" else ""
        raise ConfigError(
            f"{path}: {shown} is written to {' or '.join(SUFFIXES[to])} files, not "
            f"'{suffix or 'no suffix'}'{folder}; name the file {path.stem}{SUFFIXES[to][0]}"
        )
    if not overwrite and (path.is_file() or (path.is_dir() and any(path.iterdir()))):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    return path


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike, to: str = "metaformer", *, overwrite: bool = True
) -> Path:
    """Write ``model``'s weights in format ``to``: ours as ``.safetensors`` (any model of this library, dense ones
    included), timm's as ``.safetensors`` or ``.pth`` (or a folder that ``timm.create_model("local-dir:...")``
    builds and preprocesses from), the official release's as ``.pth.tar``, Hugging Face's as
    a ``save_pretrained``-style folder. Written atomically; a name that contradicts the format is refused."""
    path = check_destination(path, to, overwrite=overwrite)
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if is_dense(model):
        if to != "metaformer":
            raise ConfigError(
                f"{model.name} is a {model.task} model: it is saved in our format (.safetensors) "
                f"only; the {to} format holds classifiers"
            )
        return _write_safetensors(path, state_dict, _dense_metadata(model))
    if not isinstance(model, (MetaFormer, MetaFormerFeatures)):
        raise TypeError(f"save_checkpoint takes a model of this library, got {type(model).__name__}")
    config: MetaFormerConfig = model.config
    record: PretrainedCfg = model.pretrained_cfg
    if to == "timm" and config.is_baseline and record.architecture and not record.timm_architecture:
        raise ConfigError(
            f"timm has no {record.architecture.split('_')[0]}: a timm-format file of it could not be "
            "loaded as what it is; write ours (.safetensors) or the official format"
        )
    if to == "hf":
        return _save_hf_folder(model, state_dict, path)
    apart = timm_head_difference(model) if to == "timm" and isinstance(model, MetaFormer) else 0.0
    if apart > 1e-6:  # a 1x1 last stage (a 32-px model) pools to itself: then the two heads agree
        warnings.warn(
            f"timm's PoolFormer v1 pools before its final norm (the official model and ours: norm, then pool), so "
            f"in timm these weights give other probabilities: up to {apart:.3g} apart on random images here. Its "
            "features are equal; ours, Hugging Face's and the official code agree.",
            stacklevel=2,
        )
    converted = convert_state_dict(state_dict, config, to)
    if to == "timm" and not suffix_of(path):
        return _save_timm_folder(model, converted, path)
    if path.suffix == ".safetensors":
        metadata = {"format": to}
        if to == "metaformer":
            metadata.update(_record_metadata(model))
        return _write_safetensors(path, converted, metadata)
    buffer = io.BytesIO()
    torch.save(converted, buffer)
    return atomic_write(path, buffer.getvalue())


def _write_safetensors(path: Path, state_dict: StateDict, metadata: dict[str, str]) -> Path:
    # Serialised in memory and written by Python, so a full disk is an OSError naming the file.
    return atomic_write(path, safetensors_bytes(state_dict, metadata=metadata))


def _record_metadata(model: nn.Module) -> dict[str, str]:
    """What our files say about the model: its name, architecture and record (evaluation, classes and names)."""
    return {
        "model": model.name or "",
        "config": json.dumps(model.config.to_dict()),
        "pretrained_cfg": json.dumps(model.pretrained_cfg.to_dict()),
    }


def _dense_metadata(model: nn.Module) -> dict[str, str]:
    return {
        "format": "metaformer-dense",
        **_record_metadata(model),
        "num_classes": str(model.num_classes),
        "input": json.dumps(model.input_settings()),
    }


def hf_config(config: MetaFormerConfig, record: PretrainedCfg) -> dict:
    """The ``config.json`` of Hugging Face's ``PoolFormerForImageClassification`` for this architecture and record
    (its class names)."""
    if not config.is_poolformer_v1:
        raise ConfigError(
            "Hugging Face transformers has PoolFormer v1 only, not the MetaFormer Baselines, InceptionNeXt or "
            "MambaOut; write ours (safetensors), the official format or timm's"
        )
    unsupported = []
    if set(config.mixers) != {"pooling"} or config.norm != "groupnorm" or any(config.pos_embed):
        unsupported.append("only pooling mixers with GroupNorm")
    if set(config.blocks) != {"metaformer"} or config.layer_scale_init is None:
        unsupported.append("residuals, channel MLP and layer scale")
    if len(set(config.mlp_ratios)) > 1:
        unsupported.append("one MLP ratio for every stage")
    pool_sizes = {settings.get("pool_size", 3) for settings in config.mixer_settings}
    if len(pool_sizes) > 1 or any(set(settings) - {"pool_size"} for settings in config.mixer_settings):
        unsupported.append("one pool size for every stage")
    if unsupported:
        raise ConfigError(f"Hugging Face's PoolFormer supports {' and '.join(unsupported)}; this model differs")
    labels = record.labels
    return {
        "architectures": ["PoolFormerForImageClassification"],
        "model_type": "poolformer",
        "num_channels": config.in_chans,
        "patch_size": 16,
        "stride": 16,
        "pool_size": pool_sizes.pop(),
        "mlp_ratio": config.mlp_ratios[0],  # one for every stage (checked above)
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


def hf_preprocessor_config(record: PretrainedCfg) -> dict:
    """The ``preprocessor_config.json`` of ``PoolFormerImageProcessor`` that equals our evaluation transform: the
    short side to ``size / crop_pct`` (bicubic), the centre crop, the record's normalisation."""
    if record.interpolation != "bicubic":
        raise ConfigError(
            f"Hugging Face's PoolFormer processor resizes bicubically; this model is evaluated with "
            f"{record.interpolation}"
        )
    return {
        "image_processor_type": "PoolFormerImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": record.image_size},
        "crop_pct": record.crop_pct,
        "resample": 3,  # PIL's BICUBIC
        "do_center_crop": True,
        "crop_size": {"height": record.image_size, "width": record.image_size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(record.mean),
        "image_std": list(record.std),
    }


def _save_hf_folder(model: nn.Module, state_dict: StateDict, path: Path) -> Path:
    if not isinstance(model, MetaFormer):
        raise ConfigError("Hugging Face's format holds classifiers; create the model without features_only")
    config_json = hf_config(model.config, model.pretrained_cfg)
    converted = convert_state_dict(state_dict, model.config, "hf")
    _write_safetensors(path / "model.safetensors", converted, {"format": "pt"})
    write_json(path / "preprocessor_config.json", hf_preprocessor_config(model.pretrained_cfg))
    write_json(path / "config.json", config_json)  # last: a folder with a config.json is complete
    return path


@torch.no_grad()
def timm_head_difference(model: MetaFormer, pixels: torch.Tensor | None = None) -> float:
    """The largest difference in probability between a PoolFormer v1 and timm's reading of its weights, whose head
    takes the final norm after the pooling, on ``pixels`` (default: two seeded random images)."""
    if not model.config.is_poolformer_v1:  # timm's other heads are the official ones
        return 0.0
    parameter = next(model.parameters())
    if pixels is None:
        pixels = torch.randn(2, *model.pretrained_cfg.input_size, generator=torch.Generator().manual_seed(0))
    training = model.training
    try:
        features = model.eval().forward_features(pixels.to(parameter))
        ours = model.head(model.norm(features).mean((-2, -1)))
        theirs = model.head(model.norm(features.mean((-2, -1), keepdim=True)).flatten(1))
    finally:
        model.train(training)
    return (ours.float().softmax(-1) - theirs.float().softmax(-1)).abs().max().item()


def timm_config(model: MetaFormer) -> dict:
    """The ``config.json`` of a timm hub folder: the architecture, the classes and the evaluation transform, which
    ``timm.create_model("local-dir:FOLDER", pretrained=True)`` and ``timm.data.resolve_data_config`` read."""
    record: PretrainedCfg = model.pretrained_cfg
    timm_name = record.timm_architecture
    if not timm_name:
        raise ConfigError(
            f"timm has no architecture equal to {model.name or 'this model'}: a timm folder could not "
            "be built by timm; write ours (.safetensors) or the official format"
        )
    config: MetaFormerConfig = model.config
    size = record.image_size
    pretrained_cfg = {
        "input_size": list(record.input_size),
        "fixed_input_size": False,
        "interpolation": record.interpolation,
        "crop_pct": record.crop_pct,
        "crop_mode": record.crop_mode,
        "mean": list(record.mean),
        "std": list(record.std),
        "num_classes": config.num_classes,
        "pool_size": [size // 32, size // 32],
        "first_conv": _timm_layer(config, f"stem.{next(model.stem.named_parameters())[0]}"),
        "classifier": _timm_layer(config, f"{class_layer(config)}.weight"),
    }
    if record.test_input_size:
        pretrained_cfg["test_input_size"] = list(record.test_input_size)
    if record.test_crop_pct:
        pretrained_cfg["test_crop_pct"] = record.test_crop_pct
    result = {
        "architecture": timm_name,
        "num_classes": config.num_classes,
        "num_features": config.widths[-1],
        "global_pool": "avg",
        "pretrained_cfg": pretrained_cfg,
    }
    if record.label_names:
        result["label_names"] = list(record.label_names)
    elif config.num_classes == 1000:  # timm's convention: WordNet ids as names, the English names as descriptions
        result["label_names"] = [wnid for wnid, _ in imagenet_classes()]
        result["label_descriptions"] = dict(imagenet_classes())
    return result


def _timm_layer(config: MetaFormerConfig, parameter: str) -> str:
    """The layer holding our ``parameter`` as timm names it."""
    return classifier_key("timm", parameter, config).rsplit(".", 1)[0]


def _save_timm_folder(model: nn.Module, converted: StateDict, path: Path) -> Path:
    if not isinstance(model, MetaFormer):
        raise ConfigError("a timm folder holds a classifier; create the model without features_only")
    config_json = timm_config(model)
    _write_safetensors(path / "model.safetensors", converted, {"format": "pt"})
    write_json(path / "config.json", config_json)  # last: a folder with a config.json is complete
    return path
