"""The images ``predict`` and ``embed`` take, one by one and by name: files (searched in folders), the image
members of WebDataset shards (``wds:``), the rows of a Hugging Face dataset split (``hf:``). Each is named in the
results (``SHARD.tar:KEY``, ``hf:NAME[SPLIT][ROW]``), shared out between processes in order, skipped on
``--resume`` by that name, and read only in the loader's workers."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from ..errors import DatasetError, ImageLoadError
from .hf import is_hf, load_split
from .images import find_images, open_image, to_rgb
from .wds import IMAGE_KEYS, is_wds, shard_files


@dataclass(frozen=True)
class TarImage:
    """An image member of a tar shard, read at its offset without the rest of the shard."""

    shard: str
    key: str
    offset: int
    size: int

    def __str__(self) -> str:
        return f"{self.shard}:{self.key}"

    def read_image(self, *, exif_transpose: bool) -> Image.Image:
        with open(self.shard, "rb") as file:
            file.seek(self.offset)
            data = file.read(self.size)
        return open_image(io.BytesIO(data), str(self), exif_transpose=exif_transpose)


@dataclass(frozen=True)
class RowImage:
    """The image of one row of a Hugging Face dataset split (memory-mapped: a worker reads its rows alone)."""

    rows: Any  # a datasets.Dataset
    column: str
    index: int
    name: str

    def __str__(self) -> str:
        return self.name

    def read_image(self, *, exif_transpose: bool) -> Image.Image:
        try:
            image = self.rows[self.index][self.column]
        except Exception as error:  # noqa: BLE001  datasets' decoders raise what PIL raises, and more
            raise ImageLoadError(self.name, f"cannot decode its image ({error})") from error
        if exif_transpose:
            from PIL import ImageOps

            image = ImageOps.exif_transpose(image)
        return to_rgb(image)


Sample = Path | TarImage | RowImage


def find_samples(paths: Sequence[str], *, split: str | None = None, image_column: str | None = None) -> list[Sample]:
    """Every image ``paths`` name, in order: files and folders (as ``find_images``), ``wds:`` shards (a folder's
    ``*.tar``, those of ``split``, or a pattern), ``hf:`` datasets (split ``split``, default validation)."""
    found: list[Sample] = []
    for path in paths:
        if is_wds(path):
            found += tar_images(path, split)
        elif is_hf(path):
            found += row_images(path, split or "validation", image_column or "image")
        else:
            found += find_images([path])
    if (split or image_column) and not any(is_wds(p) or is_hf(p) for p in paths):
        raise DatasetError("--split and --image-column choose the images of wds: shards or an hf: dataset")
    return found


def tar_images(data: str, split: str | None) -> list[TarImage]:
    target = Path(data[len("wds:") :])
    if split is None and target.is_dir():
        shards = sorted(target.glob("*.tar"))
        if not shards:
            raise DatasetError(f"{data}: no .tar shards in this folder")
    else:
        shards = shard_files(data, split or "")[0]
    images = []
    for shard in shards:
        try:
            with tarfile.open(shard, "r:") as tar:
                for member in tar:
                    folder, _, name = member.name.rpartition("/")
                    stem, _, ext = name.partition(".")
                    if member.isfile() and ext.lower() in IMAGE_KEYS:
                        key = f"{folder}/{stem}" if folder else stem
                        images.append(TarImage(str(shard), key, member.offset_data, member.size))
        except tarfile.TarError as error:
            raise DatasetError(f"{shard}: not a tar file ({error}); WebDataset shards are tar archives") from error
    return images


def row_images(data: str, split: str, column: str) -> list[RowImage]:
    rows = load_split(data, split)
    if column not in rows.column_names:
        raise DatasetError(f"{data} [{split}] has no column {column!r}; its columns: {', '.join(rows.column_names)}")
    return [RowImage(rows, column, index, f"{data}[{split}][{index}]") for index in range(len(rows))]
