"""Reading image files as an image viewer shows them, for everything in relprop that reads images.

``Image.open(path).convert("RGB")`` alone gets three kinds of files wrong: 16-bit images come out
all white (convert clips at 255 instead of scaling), photos whose camera stored the orientation in
EXIF come out on their side, and transparent pixels come out as whatever colour they happen to
hold, often black.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # one channel, 0..65535
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
BACKGROUND = (255, 255, 255)  # transparent pixels are shown on white
# The files a folder of images is taken to hold (evaluate's --data, serve's --images).
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm"}


class UnreadableImage(ValueError):
    """A file that is no image relprop can read; the message says why, without the path."""


def load_image(path: str | Path, min_size: int | None = None) -> Image.Image:
    """The image in ``path`` as an 8-bit RGB picture, as a viewer shows it.

    - 16-bit (and 32-bit integer) greyscale is scaled to 8 bits (value / 257), not clipped.
    - The EXIF orientation is applied, so a portrait photo comes back upright.
    - Transparent pixels (RGBA, LA, palette or greyscale with a transparent colour) are composited
      on a white background.
    - ``min_size``: the short side the caller needs at least. JPEGs are then decoded at a reduced
      scale (1/2, 1/4, 1/8) where both sides stay at least ``min_size``, saving memory and time on
      large photos without losing detail the caller would keep.

    Raises :class:`UnreadableImage` for anything that cannot be read (missing, not an image,
    truncated, corrupt, or larger than Pillow's decompression-bomb limit).
    """
    try:
        with Image.open(path) as img:
            if min_size and img.format == "JPEG":
                img.draft("RGB", (min_size, min_size))
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except Exception as e:  # any failure is about this one file; the caller skips it
        raise UnreadableImage(_why_unreadable(e)) from e


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in SIXTEEN_BIT_MODES:
        eight_bit = (np.asarray(img, dtype=np.float64) / 257).round().clip(0, 255)
        img = Image.fromarray(eight_bit.astype(np.uint8))
    if img.mode in ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, BACKGROUND + (255,)), rgba)
    return img.convert("RGB")


def _why_unreadable(e: Exception) -> str:
    if isinstance(e, FileNotFoundError):
        return "no such file"
    if isinstance(e, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(e, PermissionError):
        return "permission denied"
    if isinstance(e, UnidentifiedImageError):
        return "not an image file (Pillow recognises no image format in it)"
    detail = " ".join(str(e).split()) or type(e).__name__
    if isinstance(e, Image.DecompressionBombError):
        return (f"too large, refused as a possible decompression bomb ({detail}); raise "
                "PIL.Image.MAX_IMAGE_PIXELS if you trust the file")
    if isinstance(e, (OSError, SyntaxError, EOFError)):
        return f"truncated or corrupt ({detail})"
    return f"could not be decoded ({type(e).__name__}: {detail})"
