"""Pictures of relevance: a diverging red/white/blue map symmetric around zero (white = no
relevance, red = for the class, blue = against it), and the same laid over the image."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image

CMAP = "bwr"  # blue - white - red, white at the centre
CLIP_PERCENTILE = 99.5  # the colour limit; a few extreme pixels would otherwise wash out the rest
SIGNS = ("all", "positive", "negative")


def default_limit(h: np.ndarray) -> float:
    """The |relevance| shown fully saturated: the 99.5th percentile of |h| (max |h| if that is 0).

    One rule for every picture relprop draws: a percentile of the pixels' magnitudes, so that the
    0.5 % strongest pixels saturate. (Captum's visualisation clips at a cumulative share of the
    total mass instead; on maps with a few huge pixels the two differ.)"""
    a = np.abs(h)
    limit = float(np.percentile(a, CLIP_PERCENTILE))
    return limit if limit > 0 else float(a.max())


def to_numpy(heatmap, sign: str = "all") -> np.ndarray:
    """(H, W) float64 array of a heat map or of (C, H, W) relevance; ``sign`` keeps only the
    positive or the negative part."""
    if sign not in SIGNS:
        raise ValueError(f"sign must be one of {', '.join(SIGNS)}, got {sign!r}")
    if isinstance(heatmap, torch.Tensor):
        heatmap = heatmap.detach().float().cpu().numpy()
    heatmap = np.asarray(heatmap, dtype=np.float64)
    if heatmap.ndim == 3:  # (C, H, W) relevance: sum the channels
        heatmap = heatmap.sum(0)
    if heatmap.ndim != 2:
        raise ValueError(f"a heat map is (H, W) or (C, H, W); got shape {heatmap.shape}")
    if sign == "positive":
        return heatmap.clip(min=0)
    if sign == "negative":
        return heatmap.clip(max=0)
    return heatmap


def colorize(heatmap, limit: float | None = None, sign: str = "all") -> np.ndarray:
    """(H, W, 3) uint8 RGB. ``limit`` is the value shown fully saturated (default: default_limit(h)), the
    same for both signs so that 0 is always white."""
    h = to_numpy(heatmap, sign)
    limit = default_limit(h) if limit is None else float(limit)
    scaled = 0.5 + 0.5 * h / limit if limit > 0 else np.full_like(h, 0.5)
    rgb = colormaps[CMAP](np.clip(scaled, 0, 1))[..., :3]
    return (rgb * 255 + 0.5).astype(np.uint8)


def heatmap_image(heatmap, size: tuple[int, int] | None = None,
                  limit: float | None = None, sign: str = "all") -> Image.Image:
    """The heat map as a picture; ``size`` (width, height) resizes it (nearest neighbour, so
    that each relevance value stays a clean block)."""
    img = Image.fromarray(colorize(heatmap, limit, sign))
    return img.resize(size, Image.NEAREST) if size and size != img.size else img


def opacity(h: np.ndarray, limit: float) -> np.ndarray:
    """The overlay's per-pixel weight in [0, 1]: |relevance| up to the colour limit."""
    return np.clip(np.abs(h) / limit, 0, 1) if limit > 0 else np.zeros_like(h)


def overlay_image(image: Image.Image, heatmap, alpha: float = 0.6,
                  limit: float | None = None, sign: str = "all") -> Image.Image:
    """The heat map over a grey version of ``image``; opacity grows with |relevance|, so places
    without relevance show the photo."""
    h = to_numpy(heatmap, sign)
    base = image.convert("L").convert("RGB").resize((h.shape[1], h.shape[0]), Image.BILINEAR)
    limit = default_limit(h) if limit is None else float(limit)
    weight = opacity(h, limit)[..., None] * alpha
    mixed = (1 - weight) * np.asarray(base, np.float64) + weight * colorize(h, limit)
    return Image.fromarray(mixed.round().astype(np.uint8))


def input_view(image: Image.Image, resize: int, crop: int,
               resample=Image.BILINEAR) -> Image.Image:
    """The image as the model saw it: the short side resized to ``resize``, then the centre
    ``crop`` x ``crop``, with torchvision's own geometry (its classification presets), so that an
    object mask brought along (``resample=Image.NEAREST``) lies on the same pixels."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF
    modes = {Image.BILINEAR: InterpolationMode.BILINEAR, Image.NEAREST: InterpolationMode.NEAREST}
    image = image if image.mode in ("RGB", "L", "1") else image.convert("RGB")
    return TF.center_crop(TF.resize(image, resize, modes[resample]), crop)


def outline(image: Image.Image, mask, color=(0, 255, 0)) -> Image.Image:
    """``image`` with the boundary of ``mask`` (H, W, boolean, any size: resized to the
    picture's) drawn in ``color``: the region a segmentation target explains."""
    from skimage.segmentation import find_boundaries
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != image.size[::-1]:
        mask = np.asarray(Image.fromarray(mask).resize(image.size, Image.NEAREST))
    picture = np.array(image.convert("RGB"))
    picture[find_boundaries(mask, mode="thick")] = color
    return Image.fromarray(picture)


def draw_boxes(image: Image.Image, boxes, captions, color=(0, 255, 0)) -> Image.Image:
    """``image`` with each box (x0, y0, x1, y1, in its pixels) outlined in ``color`` and its
    caption above it: a detector's detections."""
    from PIL import ImageDraw
    picture = image.convert("RGB").copy()
    draw = ImageDraw.Draw(picture)
    width = max(1, round(min(picture.size) / 200))
    for box, caption in zip(boxes, captions):
        x0, y0, x1, y1 = (float(v) for v in box)
        draw.rectangle((x0, y0, x1, y1), outline=color, width=width)
        left, top, right, bottom = draw.textbbox((x0, y0), caption)
        lift = bottom - top + 2
        y = y0 - lift if y0 >= lift else y0
        draw.rectangle((x0, y, x0 + right - left + 4, y + lift), fill=color)
        draw.text((x0 + 2, y), caption, fill=(0, 0, 0))
    return picture


def model_view(spec, image: Image.Image) -> Image.Image:
    """The image as the model of ``spec`` (a :class:`relprop.models.ModelSpec`) sees it: its
    own view where it has one (a Hugging Face processor's), else resized and centre-cropped."""
    if spec.view is not None:
        return spec.view(image)
    return input_view(image, spec.resize, spec.input_size)


def grid(rows, methods, path, cell: float = 1.6) -> None:
    """A grid of heat maps saved to ``path``: one row per image (``rows`` holds
    ``(title, picture, {method: heat map})``), the picture first, then one column per method,
    each panel with its own symmetric colour scale (``default_limit``), titled by method."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    columns = 1 + len(methods)
    fig = Figure(figsize=(cell * columns, cell * len(rows) + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), columns, squeeze=False)
    for r, (title, picture, heat) in enumerate(rows):
        panels = [("input", np.asarray(picture))] + [(m, colorize(heat[m])) for m in methods]
        for c, (label, image) in enumerate(panels):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(label, fontsize=7)
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.tight_layout(pad=0.3)
    fig.savefig(path, dpi=110)


def tensor_image(x) -> Image.Image:
    """An input tensor (C, H, W) as a picture, each channel stretched to [0, 1]: the image as
    far as it can be seen without knowing the model's normalisation."""
    a = x.detach().float().cpu().numpy()
    a = a[:3] if a.shape[0] >= 3 else np.repeat(a[:1], 3, 0)
    low = a.reshape(3, -1).min(1)[:, None, None]
    high = a.reshape(3, -1).max(1)[:, None, None]
    a = (a - low) / np.where(high > low, high - low, 1)
    return Image.fromarray((a.transpose(1, 2, 0) * 255 + 0.5).astype(np.uint8))


def explanation_figure(explanation, images=None, max_images: int = 8):
    """An Explanation drawn: per image the input, the heat map and the overlay (one row each),
    titled with the explained class and score. A layer's smaller map is shown in blocks over
    the whole picture."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    if max_images < 1:
        raise ValueError(f"max_images must be at least 1, got {max_images}")
    heat = explanation.heatmap
    if heat.dim() != 3:
        raise ValueError(f"only spatial maps can be drawn; this Explanation's heat map has shape "
                         f"{tuple(heat.shape)} (N, H, W expected)")
    if images is None:
        if explanation.inputs is None or explanation.inputs.dim() != 4:
            raise ValueError("this Explanation holds no image batch to draw; pass images=")
        images = [tensor_image(x) for x in explanation.inputs[:max_images]]
    n = min(len(heat), max_images, len(images))
    fig = Figure(figsize=(6.6, 2.2 * n + 0.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(n, 3, squeeze=False)
    for i in range(n):
        picture = images[i].convert("RGB")
        h = heat[i].detach().float().cpu().numpy()
        if h.shape != (picture.height, picture.width):  # a layer's map: blocks over the picture
            h = np.asarray(Image.fromarray(h.astype(np.float32)).resize(picture.size,
                                                                         Image.NEAREST))
        panels = (picture, heatmap_image(h), overlay_image(picture, h))
        for ax, panel, title in zip(axes[i], panels, ("input", explanation.method, "overlay")):
            ax.imshow(panel)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=8)
        axes[i][0].set_ylabel(f"class {int(explanation.target[i])}\n"
                              f"score {float(explanation.score[i]):.3g}", fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig
