"""Reading checkpoint files without running anything in them: safetensors, PyTorch state_dicts loaded with
``weights_only=True``, and Hugging Face model folders."""

from __future__ import annotations

import io
import json
import os
import pickle
import pickletools
import re
import warnings
import zipfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from ..errors import CheckpointError
from ..files import file_problem, read_json_object
from ..models.pretrained import CROP_MODES

StateDict = dict[str, torch.Tensor]
WRAPPERS = ("state_dict", "model", "module", "state_dict_ema")  # keys under which trainers nest the weights
EXPECTED = "Expected a state_dict file (.pth, .pth.tar, .bin), a .safetensors file or a Hugging Face model folder."


def read_state_dict(path: str | os.PathLike) -> tuple[StateDict, dict]:
    """Tensors and metadata of a checkpoint file or Hugging Face folder, unwrapped (``state_dict``/``model``
    wrappers, DistributedDataParallel's ``module.`` prefix). Never unpickles anything but tensors."""
    path = Path(path)
    if path.is_dir():
        return _read_hf_folder(path)
    problem = file_problem(path)
    if problem:
        error = FileNotFoundError if problem.startswith("no such file") else CheckpointError
        raise error(f"checkpoint {path}: {problem}")
    if path.suffix == ".safetensors":
        state_dict, metadata = _read_safetensors(path)
        return unwrap(state_dict, str(path)), metadata
    saved = _torch_load(path)
    return unwrap(saved, str(path)), _recorded_classes(saved)


def unwrap(obj: object, source: str) -> StateDict:
    """The state_dict inside a trainer's checkpoint dict, with DistributedDataParallel's prefix removed."""
    for wrapper in WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(wrapper), dict):
            obj = obj[wrapper]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{source}: holds {type(obj).__name__}, not a state_dict of tensors")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source}: entries {not_tensors[:5]} are not tensors; expected a state_dict")
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def _recorded_classes(saved: object) -> dict:
    """The class names mmcv (``meta.CLASSES``) or mmengine (``meta.dataset_meta.classes``) saved beside the weights."""
    meta = saved.get("meta") if isinstance(saved, dict) else None
    if not isinstance(meta, dict):
        return {}
    classes = meta.get("CLASSES") or (meta.get("dataset_meta") or {}).get("classes")
    if isinstance(classes, (list, tuple)) and all(isinstance(c, str) for c in classes):
        return {"labels": json.dumps(list(classes))}
    return {}


def _read_safetensors(path: Path) -> tuple[StateDict, dict]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = dict(handle.metadata() or {})
        state_dict = load_file(str(path))
    except Exception as error:  # noqa: BLE001  SafetensorError, OSError, ValueError and more on a damaged file
        reason = (str(error) or type(error).__name__).splitlines()[0][:200]
        raise CheckpointError(f"{path}: not a readable safetensors file ({reason})") from error
    return _checked(state_dict, metadata, path)


# What our metadata keys (and a timm folder's) hold once parsed as JSON: anything else is a damaged or foreign file.
METADATA_TYPES: dict[str, type | tuple[type, ...]] = {
    "config": dict,
    "pretrained_cfg": dict,
    "input": dict,
    "labels": list,
    "test_scale": (list, int),
}


def _checked(state_dict: StateDict, metadata: dict, path: Path) -> tuple[StateDict, dict]:
    """The file's metadata, each JSON field of the right shape, or an error naming the file and the field."""
    for key, kind in METADATA_TYPES.items():
        if key not in metadata:
            continue
        try:
            value = json.loads(metadata[key])
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: metadata field {key!r} is not valid JSON ({error})") from error
        if not isinstance(value, kind):
            raise CheckpointError(f"{path}: metadata field {key!r} holds {type(value).__name__}, not {_name(kind)}")
    if "num_classes" in metadata and not str(metadata["num_classes"]).isdigit():
        raise CheckpointError(f"{path}: metadata field 'num_classes' is {metadata['num_classes']!r}, not a number")
    return state_dict, metadata


def _name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join({"dict": "an object", "list": "a list", "int": "a number", "str": "a string"}[k.__name__]
                       for k in kinds)  # fmt: skip


def _torch_load(path: Path) -> object:
    try:
        with warnings.catch_warnings():  # torch's note on a pickle protocol it may not read: the refusal says more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        unsafe = _python_object_in(path, error)
        if unsafe is None:
            raise CheckpointError(
                f"{path}: not a readable PyTorch checkpoint (corrupt, truncated or another kind of file). {EXPECTED}"
            ) from error
        raise CheckpointError(
            f"{path}: refused to load: the file holds Python objects other than tensors, and unpickling them "
            "could run code. If you trust it, load it yourself and re-save only its state_dict, or convert it "
            f"to safetensors. (Found {unsafe}.)"
        ) from error
    except Exception as error:  # noqa: BLE001  torch's unpickler raises KeyError, IndexError, struct.error... on junk
        reason = (str(error) or type(error).__name__).splitlines()[0][:200]
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({reason}). {EXPECTED}") from error


def _python_object_in(path: Path, error: Exception) -> str | None:
    """The first non-tensor Python object that ``weights_only`` refused, from its message or, whatever its
    wording (it changes between releases), from the pickle's own opcodes, read without running them."""
    named = re.search(r"GLOBAL ([\w.]+)", str(error))
    if named:
        return named[1]
    for name in _pickled_globals(path):
        if not name.startswith(("torch.", "collections.OrderedDict", "builtins.set")):
            return name
    return None


def _pickled_globals(path: Path) -> list[str]:
    """The ``module.name`` of every class or function a torch or plain pickle file refers to."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                data = next((archive.read(n) for n in archive.namelist() if n.endswith("data.pkl")), b"")
        else:
            data = path.read_bytes()
    except (OSError, zipfile.BadZipFile):
        return []
    stream, names = io.BytesIO(data), []
    for _ in range(4):  # a legacy torch file is a few pickles in a row
        strings: list[str] = []
        memo: dict[int, str] = {}
        try:
            for opcode, arg, _ in pickletools.genops(stream):
                if isinstance(arg, str) and "UNICODE" in opcode.name:
                    strings.append(arg)
                elif opcode.name == "MEMOIZE" and strings:
                    memo[len(memo)] = strings[-1]
                elif opcode.name in ("BINGET", "LONG_BINGET") and arg in memo:
                    strings.append(memo[arg])
                elif opcode.name == "GLOBAL":
                    names.append(str(arg).replace(" ", "."))
                elif opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    names.append(f"{strings[-2]}.{strings[-1]}")
        except (ValueError, EOFError, pickle.UnpicklingError):
            break
    return names


def _read_hf_folder(path: Path) -> tuple[StateDict, dict]:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(
            f"{path} is a folder but has no config.json; expected a Hugging Face or timm model folder"
        )
    config = _json_object(config_file)
    for key, kind in (("pretrained_cfg", dict), ("label_names", list), ("label_descriptions", dict),
                      ("id2label", dict), ("depths", list), ("hidden_sizes", list)):  # fmt: skip
        if key in config and not isinstance(config[key], kind):
            raise CheckpointError(f"{config_file}: {key!r} holds {type(config[key]).__name__}, not {_name(kind)}")

    for weights in ("model.safetensors", "pytorch_model.bin"):
        if (path / weights).exists():
            state_dict, _ = read_state_dict(path / weights)
            if "architecture" in config:  # timm's hub folder: the model's name and its evaluation settings
                return state_dict, _timm_folder_metadata(config)
            return state_dict, {"hf_config": config, **_hf_preprocessor_metadata(path)}
    raise CheckpointError(f"{path}: found config.json but neither model.safetensors nor pytorch_model.bin")


def _hf_preprocessor_metadata(folder: Path) -> dict:
    """The evaluation size and crop a Hugging Face folder's ``preprocessor_config.json`` holds, as our files record
    them: a folder reads back with the settings it was written with."""
    file = folder / "preprocessor_config.json"
    if not file.is_file():
        return {}
    processor, record = _json_object(file), {}
    crop, size = processor.get("crop_size"), processor.get("size")
    side = crop.get("height") if isinstance(crop, dict) else None
    if side is None and isinstance(size, dict):
        side = size.get("shortest_edge", size.get("height"))
    if side is not None:
        if not isinstance(side, int) or side < 32:
            raise CheckpointError(f"{file}: 'crop_size' / 'size' give {side!r}, not a side of at least 32 pixels")
        record["input_size"] = [3, side, side]
    crop_pct = processor.get("crop_pct")
    if crop_pct is not None:
        if not isinstance(crop_pct, (int, float)) or not 0 < crop_pct <= 1:
            raise CheckpointError(f"{file}: 'crop_pct' is {crop_pct!r}, not a fraction in (0, 1]")
        record["crop_pct"] = float(crop_pct)
    return {"pretrained_cfg": json.dumps(record)} if record else {}


def _json_object(file: Path) -> dict:
    return read_json_object(file, CheckpointError, "an object; is it a model folder's?")


def _timm_folder_metadata(config: dict) -> dict:
    """What a timm hub folder's ``config.json`` says, in the metadata keys our own files use."""
    metadata = {"model": str(config["architecture"])}
    pretrained = config.get("pretrained_cfg") or {}
    evaluation = {}
    if isinstance(pretrained.get("input_size"), list) and len(pretrained["input_size"]) == 3:
        evaluation["image_size"] = pretrained["input_size"][-1]
    if isinstance(pretrained.get("crop_pct"), (int, float)):
        evaluation["crop_pct"] = float(pretrained["crop_pct"])
    if pretrained.get("crop_mode") in CROP_MODES:
        evaluation["crop_mode"] = pretrained["crop_mode"]
    if evaluation:
        record = {k: evaluation[k] for k in ("crop_pct", "crop_mode") if k in evaluation}
        if "image_size" in evaluation:
            record["input_size"] = [3, evaluation["image_size"], evaluation["image_size"]]
        metadata["pretrained_cfg"] = json.dumps(record)
    names = config.get("label_names")
    descriptions = config.get("label_descriptions")
    if isinstance(names, list) and names:
        if isinstance(descriptions, dict):  # ImageNet's: WordNet ids as names, what people call them as descriptions
            names = [descriptions.get(name, name) for name in names]
        metadata["labels"] = json.dumps([str(name) for name in names])
    return metadata
