"""Hugging Face datasets as classification data: ``hf:NAME_OR_FOLDER`` names a dataset on the Hub (read from the
local cache when offline), a folder written by ``save_to_disk``, or a folder of data files (parquet, or images in
class folders) that ``datasets`` recognises. Read with the ``datasets`` package (``pip install 'metaformer[data]'``);
map-style, so training samples, shuffles and resumes them exactly as image folders."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DatasetError, ImageLoadError
from .images import open_image, to_rgb
from .streams import ShardSource, StreamedImages, check_classes

PREFIX = "hf:"
DEFAULT_SPLITS = ("train", "validation")


def is_hf(data: str) -> bool:
    return str(data).startswith(PREFIX)


def load_split(data: str, split: str):  # noqa: ANN201  a datasets.Dataset
    """Split ``split`` of the dataset ``data`` (``hf:...``) names; an error naming the splits there are."""
    try:
        import datasets
    except ImportError as error:
        raise DatasetError(f"{data}: reading Hugging Face datasets needs `pip install 'metaformer[data]'`") from error
    target = data[len(PREFIX) :]
    if not target:
        raise DatasetError("hf: names a dataset: hf:NAME (on the Hub or in its cache) or hf:FOLDER")
    folder = Path(target)
    try:
        if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
            loaded = datasets.load_from_disk(str(folder))
        else:
            loaded = datasets.load_dataset(target)
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DatasetError(f"{data}: cannot read this dataset ({str(error).splitlines()[0]})") from error
    if isinstance(loaded, datasets.Dataset):  # a single split saved on its own
        return loaded
    if split not in loaded:
        raise DatasetError(f"{data} has no split {split!r}; its splits: {', '.join(loaded)}")
    return loaded[split]


def check_columns(root: str, columns: Sequence[str], image_column: str, label_column: str) -> None:
    missing = [c for c in (image_column, label_column) if c not in columns]
    if missing:
        raise DatasetError(
            f"{root} has no column(s) {missing}; its columns: {', '.join(columns) or 'not known before reading'} "
            "(--image-column, --label-column)"
        )


class HFImages(Dataset):
    """The ``(transform(image), class index)`` samples of one split, from its ``image_column`` (decoded by
    ``datasets``) and ``label_column``; class names from a ``ClassLabel`` feature, else the labels themselves. An
    image that cannot be decoded raises ``ImageLoadError``: training skips and counts it."""

    def __init__(
        self,
        data: str,
        split: str,
        transform: Callable,
        classes: Sequence[str] | None = None,
        *,
        image_column: str = "image",
        label_column: str = "label",
    ) -> None:
        self.root = f"{data} [{split}]"  # in messages, as a folder's path is
        self.split = load_split(data, split)
        check_columns(self.root, self.split.column_names, image_column, label_column)
        feature = self.split.features[label_column]
        names = list(getattr(feature, "names", None) or sorted({str(v) for v in self.split[label_column]}))
        self.classes = list(classes) if classes is not None else names
        strangers = sorted(set(names) - set(self.classes))
        if strangers:
            raise DatasetError(f"{self.root} has classes that are not among the training classes: {strangers[:10]}")
        self.to_class = [self.classes.index(name) for name in names]
        self.by_name = not hasattr(feature, "names")
        self.image_column, self.label_column, self.transform = image_column, label_column, transform

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            row = self.split[index]
            image = to_rgb(row[self.image_column])
        except Exception as error:  # noqa: BLE001  datasets' decoders raise what PIL raises, and more
            raise ImageLoadError(f"{self.root}[{index}]", f"cannot decode its image ({error})") from error
        label = row[self.label_column]
        label = self.classes.index(str(label)) if self.by_name else self.to_class[int(label)]
        return self.transform(image), label


STREAM_SHARDS = 64  # the shards a save_to_disk folder is read in when streamed, for processes and workers to share


def load_stream(data: str, split: str) -> tuple[Any, int | None]:
    """Split ``split`` of ``data`` as an iterable dataset (a Hub dataset or data files read with ``streaming=True``,
    a save_to_disk folder read in shards), and its number of rows where that is known without reading it."""
    import datasets

    target = data[len(PREFIX) :]
    folder = Path(target)
    if (folder / "dataset_dict.json").exists() or (folder / "state.json").exists():
        table = load_split(data, split)
        return table.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(table)))), len(table)
    try:
        loaded = datasets.load_dataset(target, streaming=True)
    except (FileNotFoundError, ValueError, OSError, datasets.exceptions.DatasetNotFoundError) as error:
        raise DatasetError(f"{data}: cannot stream this dataset ({str(error).splitlines()[0]})") from error
    if split not in loaded:
        raise DatasetError(f"{data} has no split {split!r}; its splits: {', '.join(loaded)}")
    split_info = (loaded[split].info.splits or {}).get(split) if loaded[split].info else None
    return loaded[split], (split_info.num_examples or None) if split_info else None


class HFStreamSource(ShardSource):
    """A split of a Hugging Face dataset read as a stream (``--streaming``): its shards dealt to the readers, its
    images decoded here (one unreadable image is skipped, not the end of the stream)."""

    def __init__(
        self,
        data: str,
        split: str,
        classes: Sequence[str] | None = None,
        *,
        image_column: str = "image",
        label_column: str = "label",
    ) -> None:
        import datasets

        self.root = f"{data} [{split}, streamed]"
        stream, self.num_samples = load_stream(data, split)
        features = stream.features or {}
        check_columns(self.root, list(features), image_column, label_column)
        names = getattr(features[label_column], "names", None)
        if not names:
            raise DatasetError(
                f"{self.root}: its {label_column!r} column is not a ClassLabel, so a stream cannot know the class "
                "names before reading every sample; read it without --streaming"
            )
        self.classes = check_classes(self.root, names, classes)
        self.to_class = [self.classes.index(n) if n in self.classes else -1 for n in names]
        self.stream = stream.cast_column(image_column, datasets.Image(decode=False))
        self.shards = tuple(range(self.stream.num_shards))
        self.image_column, self.label_column = image_column, label_column
        if self.num_samples is None and Path(data[len(PREFIX) :]).is_dir():  # a local folder: count its rows
            self.num_samples = len(load_split(data, split))

    def read(self, shard: Any) -> Iterator[dict]:
        return iter(self.stream.shard(num_shards=len(self.shards), index=shard))

    def decode(self, raw: dict, *, exif_transpose: bool) -> tuple[Any, int]:
        value, where = raw[self.image_column], f"{self.root}"
        if isinstance(value, dict):
            where = f"{self.root} {value.get('path') or ''}".rstrip()
            source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value.get("path")
        else:
            source = value
        if source is None:
            raise ImageLoadError(where, "has no image")
        image = open_image(source, where, exif_transpose=exif_transpose)
        return image, self.to_class[int(raw[self.label_column])]


def hf_stream(data: str, split: str, transform: Callable, classes: Sequence[str] | None = None, *,
              image_column: str = "image", label_column: str = "label") -> StreamedImages:  # fmt: skip
    source = HFStreamSource(data, split, classes, image_column=image_column, label_column=label_column)
    return StreamedImages(source, transform, source.num_samples)
