from .metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .zoo import ModelSpec, get_spec, list_models, resolve_config

__all__ = [
    "MetaFormer",
    "MetaFormerConfig",
    "MetaFormerFeatures",
    "ModelSpec",
    "get_spec",
    "list_models",
    "resolve_config",
]
