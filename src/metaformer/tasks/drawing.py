"""Pictures every task draws: a colour per class, and the confusion matrix that ``eval --output`` writes."""

from __future__ import annotations

import base64
import colorsys
import contextlib
import functools
import io
from collections.abc import Sequence

import numpy as np
import torch


def palette(num_classes: int) -> np.ndarray:
    """A fixed, well-separated colour per class: hues a golden-ratio step apart, alternating brightness."""
    colours = [
        colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0 if i % 2 == 0 else 0.7)
        for i in range(max(num_classes, 1))
    ]
    return (np.array(colours) * 255).round().astype(np.uint8)


def png_bytes(pixels: np.ndarray) -> bytes:
    """An ``[H, W, 3]`` uint8 array as PNG bytes (written atomically by the caller)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def to_base64(png: bytes) -> str:
    """PNG bytes for a JSON answer."""
    return base64.b64encode(png).decode("ascii")


@functools.cache
def caption_font() -> str | None:
    """A scalable font for readable captions: matplotlib's bundled DejaVu Sans (PIL's default is 11 px, fixed)."""
    from matplotlib import font_manager

    with contextlib.suppress(ValueError, RuntimeError):
        return font_manager.findfont("DejaVu Sans", fallback_to_default=False)
    return None


def with_caption(pixels: np.ndarray, text: str) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 picture with ``text`` on a white band above it."""
    from PIL import Image, ImageDraw, ImageFont

    width = pixels.shape[1]
    size = max(12, width // 20)
    font = ImageFont.truetype(path, size) if (path := caption_font()) else ImageFont.load_default()
    band = Image.new("RGB", (width, int(size * 1.6)), "white")
    ImageDraw.Draw(band).text((size // 3, size // 4), text, fill="black", font=font)
    return np.concatenate([np.asarray(band), pixels], axis=0)


def with_legend(pixels: np.ndarray, entries: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    """The ``[H, W, 3]`` uint8 picture with a white band below it naming each ``(text, colour)`` beside a swatch of
    its colour, in rows as wide as the picture."""
    from PIL import Image, ImageDraw, ImageFont

    width = pixels.shape[1]
    size = max(12, width // 50)
    font = ImageFont.truetype(path, size) if (path := caption_font()) else ImageFont.load_default()
    gap, line = size // 2, int(size * 1.6)
    places, x, y = [], gap, gap
    for text, colour in entries:
        extent = size + gap + int(font.getlength(text))
        if x > gap and x + extent > width - gap:  # the next row
            x, y = gap, y + line
        places.append((x, y, text, colour))
        x += extent + 2 * size
    band = Image.new("RGB", (width, y + line), "white")
    draw = ImageDraw.Draw(band)
    for x, y, text, colour in places:
        draw.rectangle((x, y + size // 8, x + size, y + size + size // 8), fill=tuple(int(c) for c in colour))
        draw.text((x + size + gap, y), text, fill="black", font=font)
    return np.concatenate([pixels, np.asarray(band)], axis=0)


def confusion_png(matrix: torch.Tensor, rows: Sequence[str], columns: Sequence[str], title: str) -> bytes:
    """The confusion matrix as a picture: each row (a true class) normalised to sum to 1, counts in the cells
    when there are few classes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = matrix.double()
    shares = counts / counts.sum(1, keepdim=True).clamp(min=1)
    side = min(4 + 0.35 * len(columns), 30)
    figure, axes = plt.subplots(figsize=(side, min(4 + 0.35 * len(rows), 30)))
    image = axes.imshow(shares.numpy(), cmap="Blues", vmin=0, vmax=1)
    figure.colorbar(image, ax=axes, fraction=0.046, label="share of the true class")
    if len(columns) <= 40:
        axes.set_xticks(range(len(columns)), columns, rotation=90)
        axes.set_yticks(range(len(rows)), rows)
    if len(columns) <= 20:
        for (row, column), count in np.ndenumerate(counts.numpy()):
            if count:
                colour = "white" if shares[row, column] > 0.5 else "black"
                axes.text(column, row, f"{int(count)}", ha="center", va="center", color=colour, fontsize=8)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
