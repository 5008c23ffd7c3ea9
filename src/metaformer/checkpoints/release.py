"""The released weights: downloaded once into the torch hub cache, and checked against their SHA-256 on every use."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import torch

from ..errors import CheckpointError
from ..models.zoo import get_spec

# SHA-256 of released files whose digest is published; none of the sail-sg releases publish one, so others are
# pinned on first download (see ``pretrained_file``).
KNOWN_SHA256: dict[str, str] = {}
WEIGHTS_URL_ENV = "METAFORMER_WEIGHTS_URL"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def pretrained_file(name: str, progress: bool = True) -> Path:
    """Path of ``name``'s released weights in the torch hub cache, downloading them on first use.

    The file's SHA-256 is checked against ``KNOWN_SHA256`` when published, else recorded beside the file on first
    download and checked on every later use, so a corrupted or replaced cache file is caught. Set
    ``METAFORMER_WEIGHTS_URL`` to a mirror's base URL to download from elsewhere.
    """
    spec = get_spec(name)
    if spec.url is None:
        raise CheckpointError(f"{name} has no released weights; train it or pass checkpoint=PATH")
    filename = spec.url.rsplit("/", 1)[1]
    cache = Path(torch.hub.get_dir()) / "checkpoints" / filename
    sidecar = cache.with_name(cache.name + ".sha256")
    if cache.exists():
        expected = KNOWN_SHA256.get(name) or (sidecar.read_text().strip() if sidecar.exists() else None)
        if expected is None or _sha256(cache) == expected:
            return cache
        raise CheckpointError(f"{cache} does not match its SHA-256 {expected}; delete it to download it again")

    base = os.environ.get(WEIGHTS_URL_ENV)
    urls = [base.rstrip("/") + "/" + filename] if base else [spec.url]
    if spec.hf_hub_id and not base:
        urls.append(f"https://huggingface.co/{spec.hf_hub_id}/resolve/main/pytorch_model.bin")
    cache.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for url in urls:
        tmp = cache.with_name(cache.name + ".partial")
        try:
            torch.hub.download_url_to_file(url, str(tmp), progress=progress)
        except Exception as error:  # urllib raises several unrelated types for an unreachable host
            errors.append(f"{url}: {error}")
            tmp.unlink(missing_ok=True)
            continue
        digest = _sha256(tmp)
        if name in KNOWN_SHA256 and digest != KNOWN_SHA256[name]:
            tmp.unlink()
            errors.append(f"{url}: SHA-256 {digest} differs from the published {KNOWN_SHA256[name]}")
            continue
        shutil.move(tmp, cache)
        sidecar.write_text(digest + "\n")
        return cache
    raise CheckpointError(
        f"could not download the weights of {name}:\n  " + "\n  ".join(errors) + "\n"
        f"Offline? Download {spec.url} on another machine and pass it with checkpoint=PATH "
        f"(CLI: --checkpoint PATH), or copy it to {cache}."
    )
