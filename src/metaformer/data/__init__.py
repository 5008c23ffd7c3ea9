"""Images, class names, and the pieces every task's datasets share: samplers, failure handling, errors.

The names are imported when first used: the class-name tables (read by the model records) need neither numpy nor
PIL, and the command line's parser imports them.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import DatasetError, ImageLoadError

_WHERE = {
    "IMAGENET_MEAN": "imagenet",
    "IMAGENET_STD": "imagenet",
    "class_names": "imagenet",
    "imagenet_classes": "imagenet",
    "imagenet_labels": "imagenet",
    "IMAGE_EXTENSIONS": "images",
    "find_images": "images",
    "is_image_file": "images",
    "load_image": "images",
    "open_image": "images",
    "to_rgb": "images",
}

__all__ = ["DatasetError", "ImageLoadError", *_WHERE]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
