"""MetaFormer and PoolFormer ("MetaFormer Is Actually What You Need for Vision", Yu et al., CVPR 2022)."""

from .api import create_model
from .checkpoints import (
    CheckpointError,
    CheckpointWarning,
    convert_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from .data import ImageProcessor, imagenet_labels, load_image
from .models.fused import fuse, is_fused
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.zoo import list_models
from .profile import count_macs, count_params

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ImageProcessor",
    "MetaFormer",
    "MetaFormerConfig",
    "MetaFormerFeatures",
    "convert_checkpoint",
    "count_macs",
    "count_params",
    "create_model",
    "fuse",
    "imagenet_labels",
    "is_fused",
    "list_models",
    "load_checkpoint",
    "load_image",
    "save_checkpoint",
]
