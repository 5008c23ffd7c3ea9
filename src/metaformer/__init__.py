"""MetaFormer and PoolFormer ("MetaFormer Is Actually What You Need for Vision", Yu et al., CVPR 2022) and the
MetaFormer Baselines (Yu et al., TPAMI 2024) for PyTorch.

Importing the package costs nothing: each name below is imported when first used (the command line's ``--help``,
``list`` and ``info`` need no torch).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name: the module that defines it
_EXPORTS = {
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "DatasetError": "errors",
    "ImageLoadError": "errors",
    "MetaformerError": "errors",
    "CheckpointWarning": "checkpoints",
    "LoadReport": "checkpoints",
    "load_checkpoint": "checkpoints",
    "save_checkpoint": "checkpoints",
    "in1k_head_from_in22k": "checkpoints.release",
    "imagenet_labels": "data",
    "load_image": "data",
    "convert_checkpoint": "api",
    "create_model": "api",
    "infer_model_name": "api",
    "grad_cam": "explain",
    "fuse": "fast",
    "is_fused": "fast",
    "prepare": "fast",
    "quantize": "fast",
    "use_custom_backward": "fast",
    "count_macs": "models.complexity",
    "count_params": "models.complexity",
    "MetaFormer": "models.metaformer",
    "MetaFormerFeatures": "models.metaformer",
    "MetaFormerConfig": "models.config",
    "PretrainedCfg": "models.pretrained",
    "register_block": "models.blocks",
    "register_mixer": "models.mixers",
    "get_spec": "models.zoo",
    "list_models": "models.zoo",
    "register_model": "models.zoo",
    "ImageProcessor": "processor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
        globals()[name] = value  # once imported, an attribute like any other
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule: ``metaformer.api``
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


if TYPE_CHECKING:  # for type checkers and IDEs: the names as if imported here
    from .api import convert_checkpoint, create_model, infer_model_name  # noqa: F401
    from .checkpoints import CheckpointWarning, LoadReport, load_checkpoint, save_checkpoint  # noqa: F401
    from .checkpoints.release import in1k_head_from_in22k  # noqa: F401
    from .data import imagenet_labels, load_image  # noqa: F401
    from .errors import CheckpointError, ConfigError, DatasetError, ImageLoadError, MetaformerError  # noqa: F401
    from .explain import grad_cam  # noqa: F401
    from .fast import fuse, is_fused, prepare, quantize, use_custom_backward  # noqa: F401
    from .models.blocks import register_block  # noqa: F401
    from .models.complexity import count_macs, count_params  # noqa: F401
    from .models.config import MetaFormerConfig  # noqa: F401
    from .models.metaformer import MetaFormer, MetaFormerFeatures  # noqa: F401
    from .models.mixers import register_mixer  # noqa: F401
    from .models.pretrained import PretrainedCfg  # noqa: F401
    from .models.zoo import get_spec, list_models, register_model  # noqa: F401
    from .processor import ImageProcessor  # noqa: F401
