"""MetaFormer and PoolFormer ("MetaFormer Is Actually What You Need for Vision", Yu et al., CVPR 2022)."""

from .api import convert_checkpoint, create_model, infer_model_name
from .checkpoints import CheckpointWarning, LoadReport, load_checkpoint, save_checkpoint
from .checkpoints.release import in1k_head_from_in22k
from .data import imagenet_labels, load_image
from .errors import CheckpointError, ConfigError, DatasetError, ImageLoadError, MetaformerError
from .explain import grad_cam
from .int8 import quantize
from .models.complexity import count_macs, count_params
from .models.fused import fuse, is_fused
from .models.metaformer import MetaFormer, MetaFormerConfig, MetaFormerFeatures
from .models.zoo import list_models
from .processor import ImageProcessor

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "CheckpointWarning",
    "ConfigError",
    "DatasetError",
    "ImageLoadError",
    "ImageProcessor",
    "LoadReport",
    "MetaFormer",
    "MetaFormerConfig",
    "MetaFormerFeatures",
    "MetaformerError",
    "convert_checkpoint",
    "count_macs",
    "count_params",
    "create_model",
    "fuse",
    "grad_cam",
    "imagenet_labels",
    "in1k_head_from_in22k",
    "infer_model_name",
    "is_fused",
    "list_models",
    "load_checkpoint",
    "load_image",
    "quantize",
    "save_checkpoint",
]
