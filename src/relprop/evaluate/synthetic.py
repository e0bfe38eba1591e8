"""Image sets where the evidence is known by construction (as CLEVR-XAI and FunnyBirds do for
their fields): every image comes with a per-pixel mask of the evidence for its class.

- ``shapes``: one shape of ``CLASSES`` (disc, square, triangle, cross) at a random place, size
  and colour on a textured random background; the mask is the shape.
- ``shapes-distractor``: the same with a smaller shape of another class beside it. The class is
  the large shape's; its mask is the truth for that class, and the small shape's mask is where
  positive relevance must not be (explaining the small shape's class, the roles swap).

Generated on the fly, deterministic per (seed, index): the same image on every machine, no
download. The pixels of the mask are exactly the pixels drawn in the shape's colour.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("disc", "square", "triangle", "cross")
SETS = ("shapes", "shapes-distractor")
SIZE = 64  # pixels per side
LARGE = (20, 29)  # the class object's side, [low, high)
SMALL = (10, 15)  # the distractor's


@dataclass(frozen=True)
class Sample:
    image: Image.Image  # RGB, SIZE x SIZE
    label: int  # the large shape's class
    mask: np.ndarray  # (SIZE, SIZE) bool: the large shape
    distractor_label: int | None = None
    distractor_mask: np.ndarray | None = None  # (SIZE, SIZE) bool: the small shape


def check_name(name: str) -> str:
    if name not in SETS:
        raise ValueError(f"unknown synthetic set '{name}'; available: {', '.join(SETS)}")
    return name


def sample(name: str, index: int, seed: int = 0) -> Sample:
    """Image ``index`` of set ``name`` under ``seed``."""
    check_name(name)
    rng = np.random.default_rng([seed, index, SETS.index(name)])
    image = _background(rng)
    label = int(rng.integers(len(CLASSES)))
    side = int(rng.integers(*LARGE))
    box = _place(rng, side, [])
    mask = _shape_mask(CLASSES[label], box)
    _paint(image, mask, rng)
    if name == "shapes":
        return Sample(Image.fromarray(image), label, mask)
    other = int((label + rng.integers(1, len(CLASSES))) % len(CLASSES))
    small_side = int(rng.integers(*SMALL))
    small = _shape_mask(CLASSES[other], _place(rng, small_side, [box]))
    _paint(image, small, rng)
    return Sample(Image.fromarray(image), label, mask, other, small)


def dataset(name: str, count: int, seed: int = 0, start: int = 0) -> list[Sample]:
    return [sample(name, i, seed) for i in range(start, start + count)]


def _background(rng) -> np.ndarray:
    """Grey-ish texture: an 8x8 grid of random levels upsampled smoothly, plus pixel noise."""
    coarse = rng.uniform(70, 180, size=(8, 8, 3)).astype(np.float32)
    coarse = coarse.mean(2, keepdims=True) * 0.7 + coarse * 0.3  # mostly grey
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((SIZE, SIZE),
                                                                        Image.BILINEAR))
    noise = rng.normal(0, 12, size=(SIZE, SIZE, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def _place(rng, side: int, taken: list) -> tuple[int, int, int, int]:
    """A box of ``side`` inside the image, apart from the boxes in ``taken`` (2 px gap)."""
    for _ in range(1000):
        x, y = (int(v) for v in rng.integers(1, SIZE - side - 1, size=2))
        box = (x, y, x + side, y + side)
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1]
               or t[3] + 2 <= box[1] for t in taken):
            return box
    raise RuntimeError("no free place for a shape")  # cannot happen at these sizes


def _shape_mask(shape: str, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    layer = Image.new("L", (SIZE, SIZE), 0)
    draw = ImageDraw.Draw(layer)
    if shape == "disc":
        draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "square":
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=255)
    elif shape == "triangle":
        draw.polygon([((x0 + x1 - 1) / 2, y0), (x0, y1 - 1), (x1 - 1, y1 - 1)], fill=255)
    else:  # cross: two bars of a third of the side
        third = (x1 - x0) / 3
        draw.rectangle((x0 + third, y0, x1 - 1 - third, y1 - 1), fill=255)
        draw.rectangle((x0, y0 + third, x1 - 1, y1 - 1 - third), fill=255)
    return np.asarray(layer) > 0


def _paint(image: np.ndarray, mask: np.ndarray, rng) -> None:
    """Fill ``mask`` with one saturated colour, bright or dark, that stands out from the grey."""
    colour = rng.uniform(0, 1, size=3)
    colour[rng.integers(3)] = 1.0
    colour[rng.integers(3)] = 0.0
    level = 255 if rng.uniform() < 0.5 else 150
    image[mask] = (colour * level).astype(np.uint8)
