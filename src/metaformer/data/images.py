"""Reading images: any file Pillow can open, as upright 8-bit RGB, and finding image files in folders."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import ImageLoadError
from ..files import file_problem

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".jfif"}
)


def load_image(path: str | os.PathLike, *, exif_transpose: bool = True) -> Image.Image:
    """Open ``path`` as an 8-bit RGB image, whatever its mode or bit depth.

    With ``exif_transpose`` the EXIF orientation is applied, as a photo viewer shows the photo; the ImageNet
    evaluation protocol (the official pipeline, Hugging Face's processor) reads the stored pixels as they are.
    """
    problem = file_problem(path)
    if problem:
        raise ImageLoadError(path, problem)
    return open_image(path, path, exif_transpose=exif_transpose)


def open_image(
    source: str | os.PathLike | IO[bytes], name: str | os.PathLike, *, exif_transpose: bool = True
) -> Image.Image:
    """A file or a stream of bytes (an upload) as 8-bit RGB, as ``load_image``; a specific ``ImageLoadError``
    naming ``name`` otherwise."""
    try:
        with Image.open(source) as image:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image) if exif_transpose else image)
    except Image.DecompressionBombError as error:
        reason = f"cannot read as an image: refused as a possible decompression bomb ({error})"
        raise ImageLoadError(name, reason) from error
    except UnidentifiedImageError as error:
        raise ImageLoadError(
            name, "cannot read as an image: not an image in a format Pillow reads (JPEG, PNG, WebP, TIFF, ...)"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:  # truncated data, bad chunks, broken headers
        raise ImageLoadError(name, f"cannot read as an image: corrupt or truncated ({error})") from error


def to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB; transparent pixels are composited on white, wide integer or float pixels rescaled to 0-255."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        pixels = np.asarray(image, dtype=np.float64) / 257.0  # 16-bit range onto 8-bit
        image = Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        pixels = np.asarray(image, dtype=np.float64)
        scale = 255.0 if pixels.max(initial=0.0) <= 1.0 else 1.0
        image = Image.fromarray(np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8))
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def is_image_file(path: Path) -> bool:
    """An image file a folder search picks up: a regular file with an image extension, not hidden."""
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".") and path.is_file()


def find_images(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named directly (whatever their extension, checked when read) and image files found recursively in
    folders, sorted within each folder."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if is_image_file(p))
        else:
            found.append(path)
    return found
