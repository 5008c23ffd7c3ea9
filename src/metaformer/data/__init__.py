"""Images, class names, and the pieces every task's datasets share: samplers, failure handling, errors."""

from ..errors import DatasetError, ImageLoadError
from .imagenet import IMAGENET_MEAN, IMAGENET_STD, class_names, imagenet_classes, imagenet_labels
from .images import IMAGE_EXTENSIONS, find_images, is_image_file, load_image, open_image, to_rgb

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "DatasetError",
    "class_names",
    "ImageLoadError",
    "find_images",
    "imagenet_classes",
    "imagenet_labels",
    "is_image_file",
    "load_image",
    "open_image",
    "to_rgb",
]
