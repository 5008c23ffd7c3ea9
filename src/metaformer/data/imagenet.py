"""ImageNet-1k constants and the bundled class list (WordNet id and a short English name per class)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from importlib.resources import files

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@cache
def imagenet_classes() -> tuple[tuple[str, str], ...]:
    """``(wnid, name)`` of the 1000 classes in the standard order (WordNet ids sorted)."""
    text = files("metaformer.data").joinpath("imagenet1k_classes.tsv").read_text(encoding="utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines())  # type: ignore[misc]


def imagenet_labels() -> tuple[str, ...]:
    return tuple(name for _, name in imagenet_classes())


def class_names(num_classes: int, labels: Sequence[str] | None = None) -> tuple[str, ...]:
    """A classifier's class names: its own (from its checkpoint), else ImageNet-1k's for 1000 classes, else
    ``class_<i>``."""
    if labels:
        return tuple(labels)
    if num_classes == 1000:
        return imagenet_labels()
    return tuple(f"class_{i}" for i in range(num_classes))
