"""The released weights: downloaded once into the torch hub cache, and checked against their SHA-256 on every use."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.parse
from copy import deepcopy
from importlib.resources import files
from pathlib import Path

import torch

from ..errors import CheckpointError, ConfigError
from ..models.config import class_layer
from ..models.metaformer import MetaFormer
from ..models.pretrained import release_of

# SHA-256 of released files whose digest is published; none of the sail-sg releases publish one, so others are
# pinned on first download (see ``pretrained_file``).
KNOWN_SHA256: dict[str, str] = {}
WEIGHTS_URL_ENV = "METAFORMER_WEIGHTS_URL"
IN21K_CLASSES = 21841


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_file(name: str, tag: str | None = None, progress: bool = True) -> Path:
    """Path of the released weights of ``name`` (release ``tag``, default its first), downloading them on first use.

    The Baselines' come from timm's safetensors copy on the Hugging Face Hub (cached by ``huggingface_hub``), else
    from the official file. An official file goes to the torch hub cache; its SHA-256 is checked against
    ``KNOWN_SHA256`` when published, else recorded beside the file on first download and checked on every later use,
    so a corrupted or replaced cache file is caught. Set ``METAFORMER_WEIGHTS_URL`` to a mirror's base URL to
    download the official files from elsewhere (the Hub is then not asked).
    """
    release = release_of(name, tag)
    return _download(release.name, release.url, release.hf_hub_id, progress)


def _download(name: str, url: str, hub_id: str | None, progress: bool) -> Path:
    """The file from timm's copy on the Hub (``hub_id``), else from ``url`` or the mirror into the torch hub cache."""
    filename = url.rsplit("/", 1)[1]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    sidecar = cache.with_name(cache.name + ".sha256")
    if cache.exists():
        expected = KNOWN_SHA256.get(name) or (sidecar.read_text().strip() if sidecar.exists() else None)
        if expected is None or _sha256(cache) == expected:
            return cache
        raise CheckpointError(f"{cache} does not match its SHA-256 {expected}; delete it to download it again")

    base = os.environ.get(WEIGHTS_URL_ENV)
    if base:
        _check_mirror(base)
    errors = []
    if hub_id and not base:
        try:
            return _from_hub(hub_id, "model.safetensors")
        except Exception as error:  # offline, not found, a proxy's refusal: each library raises its own type
            errors.append(f"Hugging Face Hub {hub_id}: {error}".splitlines()[0])
    source = base.rstrip("/") + "/" + filename if base else url
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(cache.name + ".partial")
    try:
        torch.hub.download_url_to_file(source, str(tmp), progress=progress)
    except Exception as error:  # urllib raises several unrelated types for an unreachable host
        errors.append(f"{source}: {error}")
        tmp.unlink(missing_ok=True)
        for stray in cache.parent.glob(f"{tmp.name}.*.partial"):  # torch.hub's own, left on some failures
            stray.unlink(missing_ok=True)
    else:
        digest = _sha256(tmp)
        if name not in KNOWN_SHA256 or digest == KNOWN_SHA256[name]:
            shutil.move(tmp, cache)
            sidecar.write_text(digest + "\n")
            return cache
        tmp.unlink()
        errors.append(f"{source}: SHA-256 {digest} differs from the published {KNOWN_SHA256[name]}")
    raise CheckpointError(
        f"could not download the weights of {name}:\n  " + "\n  ".join(errors) + "\n"
        f"Offline? Download {url} on another machine and pass it with checkpoint=PATH "
        f"(CLI: --checkpoint PATH), or copy it to {cache}."
    )


def _check_mirror(base: str) -> None:
    """A mirror URL that urllib can open: http(s) or file, with a host where one is needed."""
    try:
        parts = urllib.parse.urlsplit(base)
        parts.port  # noqa: B018  (an invalid port or IPv6 address raises only when read)
    except ValueError as error:
        raise CheckpointError(f"{WEIGHTS_URL_ENV}={base!r} is not a URL ({error})") from error
    if parts.scheme not in ("http", "https", "file") or (parts.scheme != "file" and not parts.hostname):
        raise CheckpointError(
            f"{WEIGHTS_URL_ENV}={base!r} is not a URL of a mirror: expected https://host/path/ (or file:///folder/)"
        )


def _from_hub(repo_id: str, filename: str) -> Path:
    """A file of a Hub repository, through ``huggingface_hub``'s own cache (``HF_HOME``, ``HF_HUB_OFFLINE``)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo_id, filename))


def in1k_head_from_in22k(model: MetaFormer) -> MetaFormer:
    """A copy of an ImageNet-21k model (21,841 classes, the ``sail_in22k`` releases) with an ImageNet-1k head, as
    the official ``process_21k_ckpt_before_1k_finetuning.py`` prepares one for fine-tuning: each 1k class takes its
    21k class's row, and class 850 ("teddy bear", absent from ImageNet-21k) the mean of all rows."""
    if model.num_classes != IN21K_CLASSES:
        raise ConfigError(f"expected a model with the {IN21K_CLASSES} ImageNet-21k classes, got {model.num_classes}")
    rows = [
        line.strip()
        for line in files("metaformer.data").joinpath("in1k_rows_in_in21k.txt").read_text().splitlines()
        if not line.startswith("#")
    ]
    layer = model.get_submodule(class_layer(model.config))
    copy = deepcopy(model)
    copy.reset_classifier(1000)  # ImageNet-1k's names
    target = copy.get_submodule(class_layer(copy.config))
    with torch.no_grad():
        for old, new in ((layer.weight, target.weight), (layer.bias, target.bias)):
            for index, row in enumerate(rows):
                new[index] = old.mean(0) if row == "-" else old[int(row)]
    return copy
