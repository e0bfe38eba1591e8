"""Pictures of relevance: a diverging red/white/blue map symmetric around zero (white = no
relevance, red = for the class, blue = against it), and the same laid over the image."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

CMAP = "bwr"  # blue - white - red, white at the centre
CLIP_PERCENTILE = 99.5  # as Captum's outlier clipping: a few extreme pixels would wash out the rest


def default_limit(h: np.ndarray) -> float:
    """The |relevance| shown fully saturated: the 99.5th percentile of |h| (max |h| if that is 0)."""
    a = np.abs(h)
    limit = float(np.percentile(a, CLIP_PERCENTILE))
    return limit if limit > 0 else float(a.max())


def to_numpy(heatmap) -> np.ndarray:
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim == 3:  # (C, H, W) relevance: sum the channels
        heatmap = heatmap.sum(0)
    if heatmap.ndim != 2:
        raise ValueError(f"a heat map is (H, W) or (C, H, W); got shape {heatmap.shape}")
    return heatmap


def colorize(heatmap, limit: float | None = None) -> np.ndarray:
    """(H, W, 3) uint8 RGB. ``limit`` is the value shown fully saturated (default: default_limit(h)), the
    same for both signs so that 0 is always white."""
    h = to_numpy(heatmap)
    limit = default_limit(h) if limit is None else float(limit)
    scaled = 0.5 + 0.5 * h / limit if limit > 0 else np.full_like(h, 0.5)
    rgb = colormaps[CMAP](np.clip(scaled, 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def heatmap_image(heatmap, size: tuple[int, int] | None = None,
                  limit: float | None = None) -> Image.Image:
    """The heat map as a picture; ``size`` (width, height) resizes it (nearest neighbour, so
    that each relevance value stays a clean block)."""
    img = Image.fromarray(colorize(heatmap, limit))
    return img.resize(size, Image.NEAREST) if size and size != img.size else img


def overlay_image(image: Image.Image, heatmap, alpha: float = 0.6,
                  limit: float | None = None) -> Image.Image:
    """The heat map over a grey version of ``image``; opacity grows with |relevance|, so places
    without relevance show the photo."""
    h = to_numpy(heatmap)
    base = image.convert("L").convert("RGB").resize((h.shape[1], h.shape[0]), Image.BILINEAR)
    limit = default_limit(h) if limit is None else float(limit)
    weight = np.clip(np.abs(h) / limit, 0, 1)[..., None] * alpha if limit > 0 else 0.0
    mixed = (1 - weight) * np.asarray(base, np.float64) + weight * colorize(h, limit)
    return Image.fromarray(mixed.round().astype(np.uint8))


def input_view(image: Image.Image, resize: int, crop: int) -> Image.Image:
    """The image as the model saw it: the short side resized to ``resize``, then the centre
    ``crop`` x ``crop`` (torchvision's classification presets)."""
    h = w = crop
    scale = resize / min(image.height, image.width)
    resized = image.convert("RGB").resize((round(image.width * scale), round(image.height * scale)),
                                          Image.BILINEAR)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))
