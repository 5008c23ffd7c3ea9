"""What the service does to an upload before a predictor sees it, without any web framework."""

from __future__ import annotations

import io

from PIL import Image

from ..data import open_image
from ..errors import ImageLoadError

# Dense models keep their inputs bounded themselves, but paste their outputs back at the photo's size (class
# probabilities per pixel, instance masks): larger photos are scaled down to this first.
MAX_DENSE_SIDE = 2048


def decode(data: bytes, name: str) -> Image.Image:
    """Upload bytes as upright 8-bit RGB, as ``load_image`` reads a file; a specific ``ImageLoadError`` otherwise."""
    if not data:
        raise ImageLoadError(name, "the upload is empty: send the image file's bytes")
    return open_image(io.BytesIO(data), name)
