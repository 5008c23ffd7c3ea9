"""Image loading, preprocessing and class names."""

from .imagenet import IMAGENET_MEAN, IMAGENET_STD, imagenet_classes, imagenet_labels
from .transforms import ImageLoadError, ImageProcessor, load_image

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageLoadError",
    "ImageProcessor",
    "imagenet_classes",
    "imagenet_labels",
    "load_image",
]
