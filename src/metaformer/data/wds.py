"""WebDataset tar shards as classification data: ``wds:FOLDER`` laid out as timm's ``*-wds`` datasets (shards
named after their split, ``imagenet1k-train-0000.tar``, or listed per split in an ``_info.json``), or
``wds:PATTERN`` (``/data/val-{000..009}.tar``) for one split. A sample's image is its ``jpg``, ``jpeg``, ``png`` or
``webp`` member, its class index the text of its ``cls`` member; class names come from ``classes.txt`` (one a line)
or the ``_info.json``'s ``classes``, else are the indices. Read with the ``webdataset`` package
(``pip install 'metaformer[data]'``) through the streaming engine of ``streams.py``."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..errors import DatasetError, ImageLoadError
from .imagenet import imagenet_classes
from .images import open_image
from .streams import ShardSource, StreamedImages, check_classes

PREFIX = "wds:"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
PATTERN_CHARS = "{*?["


def is_wds(data: str) -> bool:
    return str(data).startswith(PREFIX)


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError as error:
        raise DatasetError("reading WebDataset shards needs `pip install 'metaformer[data]'`") from error
    return webdataset


def shard_files(data: str, split: str) -> tuple[list[Path], Path, dict]:
    """The shards of ``split`` (a split name, or a pattern of shard names under the folder), the folder they are in,
    and its ``_info.json`` (empty if none)."""
    target = data[len(PREFIX) :]
    if not target:
        raise DatasetError("wds: names shards: wds:FOLDER (shards named after their split) or wds:PATTERN")
    expand = _webdataset().shardlists.expand_urls
    root = Path(target)
    if any(c in target for c in PATTERN_CHARS) or target.endswith(".tar"):
        files, root = [Path(p) for p in expand(target)], Path(expand(target)[0]).parent
    elif not root.is_dir():
        raise DatasetError(f"{data}: no such folder")
    else:
        info = _info(root)
        listed = info.get("splits", {}).get(split, {}).get("filenames")
        if listed:
            files = [root / name for name in listed]
        elif any(c in split for c in PATTERN_CHARS):
            files = [Path(p) for p in expand(str(root / split))]
        else:
            files = sorted(p for p in root.glob("*.tar") if split in p.stem.replace("_", "-").split("-"))
            files = files or sorted((root / split).glob("*.tar"))
        if not files:
            there = sorted(p.name for p in root.glob("*.tar"))[:5]
            raise DatasetError(
                f"{data}: no shards of split {split!r} (looked for *-{split}-*.tar, {split}/*.tar and the "
                f"_info.json's splits); its .tar files: {there or 'none'}"
            )
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise DatasetError(f"{data}: shard(s) not found: {missing[:5]}")
    return files, root, _info(root)


def _info(root: Path) -> dict:
    path = root / "_info.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (ValueError, OSError) as error:
        raise DatasetError(f"{path}: not readable JSON ({error})") from error


def _scan(path: Path) -> tuple[int, set[int]]:
    """The samples of a shard (keys with an image member) and their class indices, from its members' headers and
    ``cls`` members alone (the images are not read)."""
    keys: set[str] = set()
    labels: set[int] = set()
    try:
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                stem, _, ext = member.name.rpartition("/")[2].partition(".")
                key = member.name.rpartition("/")[0] + "/" + stem
                if ext.lower() in IMAGE_KEYS:
                    keys.add(key)
                elif ext == "cls" and member.isfile():
                    labels.add(_label(tar.extractfile(member).read(), f"{path}:{member.name}"))
    except tarfile.TarError as error:
        raise DatasetError(f"{path}: not a tar file ({error}); WebDataset shards are tar archives") from error
    return len(keys), labels


def _label(text: bytes, where: str) -> int:
    try:
        return int(text.decode().strip())
    except ValueError as error:
        raise DatasetError(f"{where}: its cls is not a class index ({text[:20]!r})") from error


class WdsSource(ShardSource):
    def __init__(self, data: str, split: str, classes: Sequence[str] | None = None) -> None:
        files, root, info = shard_files(data, split)
        self.root = f"{data} [{split}]" if not any(c in data for c in PATTERN_CHARS) else data
        self.shards = tuple(str(p) for p in files)
        counts = dict(zip(info.get("splits", {}).get(split, {}).get("filenames", ()),
                          info.get("splits", {}).get(split, {}).get("shard_lengths", ()), strict=False))  # fmt: skip
        names = _class_names(root, info)
        scanned: set[int] = set()
        self.num_samples = 0
        for path in files:
            if path.name in counts and names is not None:
                if not tarfile.is_tarfile(path):
                    raise DatasetError(f"{path}: not a tar file; WebDataset shards are tar archives")
                self.num_samples += int(counts[path.name])
                continue
            samples, labels = _scan(path)
            self.num_samples += samples
            scanned |= labels
        if names is None:  # no names: ImageNet's WordNet ids for 1000 classes (as timm's shards), else the indices
            count = int(info.get("num_classes") or max(scanned, default=-1) + 1)
            names = [wnid for wnid, _ in imagenet_classes()] if count == 1000 else [str(i) for i in range(count)]
        unnamed = sorted(i for i in scanned if i >= len(names))
        if unnamed:
            raise DatasetError(f"{self.root}: class indices {unnamed[:10]} have no name in its {len(names)} classes")
        self.names = names
        self.classes = check_classes(self.root, names, classes)
        self.to_class = [self.classes.index(n) if n in self.classes else -1 for n in names]

    def read(self, shard: Any) -> Iterator[dict]:
        samples = _webdataset().tarfile_to_samples(handler=_reraise)
        try:
            yield from samples([{"url": shard}])
        except (tarfile.TarError, OSError, ValueError) as error:
            raise DatasetError(f"{shard}: cannot read this shard ({error})") from error

    def decode(self, raw: dict, *, exif_transpose: bool) -> tuple[Any, int]:
        where = f"{raw.get('__url__', '?')}:{raw.get('__key__', '?')}"
        key = next((k for k in IMAGE_KEYS if k in raw), None)
        if key is None:
            raise ImageLoadError(where, f"has no image member ({', '.join(IMAGE_KEYS)}); it has {sorted(raw)}")
        if "cls" not in raw:
            raise DatasetError(f"{where}: has no cls member (its class index)")
        index = _label(raw["cls"], where)
        if not 0 <= index < len(self.names):
            raise DatasetError(f"{where}: class index {index} is outside its {len(self.names)} classes")
        return open_image(io.BytesIO(raw[key]), where, exif_transpose=exif_transpose), self.to_class[index]


def _reraise(error: Exception) -> bool:
    raise error


def _class_names(root: Path, info: dict) -> list[str] | None:
    text = root / "classes.txt"
    if text.is_file():
        return [line.strip() for line in text.read_text().splitlines() if line.strip()]
    if info.get("classes"):
        return [str(name) for name in info["classes"]]
    return None


def wds_images(data: str, split: str, transform: Callable, classes: Sequence[str] | None = None) -> StreamedImages:
    source = WdsSource(data, split, classes)
    return StreamedImages(source, transform, source.num_samples)
