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
    image = background(rng)
    label = int(rng.integers(len(CLASSES)))
    side = int(rng.integers(*LARGE))
    box = place(rng, side, [])
    mask = shape_mask(CLASSES[label], box)
    paint(image, mask, rng)
    if name == "shapes":
        return Sample(Image.fromarray(image), label, mask)
    other = int((label + rng.integers(1, len(CLASSES))) % len(CLASSES))
    small_side = int(rng.integers(*SMALL))
    small = shape_mask(CLASSES[other], place(rng, small_side, [box]))
    paint(image, small, rng)
    return Sample(Image.fromarray(image), label, mask, other, small)


def dataset(name: str, count: int, seed: int = 0, start: int = 0) -> list[Sample]:
    return [sample(name, i, seed) for i in range(start, start + count)]


def background(rng, size: int = SIZE) -> np.ndarray:
    """Grey-ish texture: an 8x8 grid of random levels upsampled smoothly, plus pixel noise."""
    coarse = rng.uniform(70, 180, size=(8, 8, 3)).astype(np.float32)
    coarse = coarse.mean(2, keepdims=True) * 0.7 + coarse * 0.3  # mostly grey
    smooth = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size),
                                                                        Image.BILINEAR))
    noise = rng.normal(0, 12, size=(size, size, 3))
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def place(rng, side: int, taken: list, size: int = SIZE) -> tuple[int, int, int, int]:
    """A box of ``side`` inside the image, apart from the boxes in ``taken`` (2 px gap)."""
    for _ in range(1000):
        x, y = (int(v) for v in rng.integers(1, size - side - 1, size=2))
        box = (x, y, x + side, y + side)
        if all(box[2] + 2 <= t[0] or t[2] + 2 <= box[0] or box[3] + 2 <= t[1]
               or t[3] + 2 <= box[1] for t in taken):
            return box
    raise RuntimeError("no free place for a shape")  # cannot happen at these sizes


def shape_mask(shape: str, box, size: int = SIZE) -> np.ndarray:
    x0, y0, x1, y1 = box
    layer = Image.new("L", (size, size), 0)
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


def paint(image: np.ndarray, mask: np.ndarray, rng) -> None:
    """Fill ``mask`` with one saturated colour, bright or dark, that stands out from the grey."""
    colour = rng.uniform(0, 1, size=3)
    colour[rng.integers(3)] = 1.0
    colour[rng.integers(3)] = 0.0
    level = 255 if rng.uniform() < 0.5 else 150
    image[mask] = (colour * level).astype(np.uint8)


# --------------------------------------------------------------------------- trained models

ARCHITECTURES = ("cnn", "vit")
PER_EPOCH = 3000  # fresh images every epoch: indices [e * PER_EPOCH, (e + 1) * PER_EPOCH)
EPOCHS = {"cnn": 6, "vit": 40}
LEARNING_RATE = {"cnn": 1e-3, "vit": 1e-3}
TEST_START, TEST = 1_000_000, 600  # test images, never trained on
EVALUATE_START = TEST_START + TEST  # the images `relprop evaluate` explains
RECIPE_VERSION = 2  # bump when the recipe changes, so that cached weights are retrained


def tensors(samples: list[Sample]) -> tuple:
    """(images (N, 3, SIZE, SIZE) in [-1, 1], labels (N,))."""
    import torch
    x = torch.from_numpy(np.stack([np.asarray(s.image) for s in samples])).permute(0, 3, 1, 2)
    return x.float() / 127.5 - 1, torch.tensor([s.label for s in samples])


def preprocess(image: Image.Image):
    """A synthetic image as the trained models take it."""
    import torch
    x = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    return x.float() / 127.5 - 1


def build(arch: str):
    """The untrained network: a ResNet-10 (torchvision's BasicBlock: residual additions) or a
    ViT (torchvision's VisionTransformer, 8x8 patches, 4 layers, 4 heads, width 64)."""
    import torchvision
    from torchvision.models.resnet import BasicBlock, ResNet
    if arch == "cnn":
        return ResNet(BasicBlock, [1, 1, 1, 1], num_classes=len(CLASSES))
    if arch == "vit":
        return torchvision.models.VisionTransformer(
            image_size=SIZE, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128,
            num_classes=len(CLASSES))
    raise ValueError(f"unknown architecture '{arch}'; available: {', '.join(ARCHITECTURES)}")


def train(name: str, arch: str, seed: int = 0, progress: bool = False):
    """The recipe: AdamW (weight decay 0.05, batch 64), the rate rising over the first tenth of
    the steps and then falling linearly to 0 (a fixed end point, so that the accuracy barely
    depends on the machine's rounding), on fresh images every epoch (the generator is cheap, and
    a ViT needs the data: on 3000 images seen 12 times it reached 0.55). Returns (model in eval
    mode, accuracy on the test images)."""
    import sys

    import torch
    import torch.nn.functional as F
    from tqdm import trange
    epochs, lr = EPOCHS[arch], LEARNING_RATE[arch]
    steps = epochs * -(-PER_EPOCH // 64)
    warm = max(1, steps // 10)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build(arch)
        optimiser = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: min((s + 1) / warm, (steps - s) / (steps - warm)))
        model.train()
        for epoch in trange(epochs, desc=f"training synthetic-{arch} on {name}", unit="epoch",
                            file=sys.stderr, disable=not progress):
            x, y = tensors(dataset(name, PER_EPOCH, seed, start=epoch * PER_EPOCH))
            order = torch.randperm(PER_EPOCH)
            for i in range(0, PER_EPOCH, 64):
                b = order[i:i + 64]
                optimiser.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                optimiser.step()
                schedule.step()
    model.eval()
    return model, accuracy(model, name, seed)


def accuracy(model, name: str, seed: int = 0) -> float:
    import torch
    x, y = tensors(dataset(name, TEST, seed, start=TEST_START))
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def cache_dir():
    """Where trained models are kept: ``$RELPROP_CACHE``, else ``$XDG_CACHE_HOME/relprop`` (by
    default ``~/.cache/relprop``)."""
    import os
    from pathlib import Path
    if os.environ.get("RELPROP_CACHE"):
        return Path(os.environ["RELPROP_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "relprop"


def trained(name: str, arch: str, seed: int = 0, log=None):
    """The ``arch`` network trained on set ``name`` by :func:`train`: trained once, then loaded
    from the cache. Returns (model in eval mode, test accuracy)."""
    check_name(name)
    path = cache_dir() / f"synthetic-{name}-{arch}-recipe{RECIPE_VERSION}-seed{seed}.pt"
    return cached(path, build(arch), lambda: train(name, arch, seed, progress=True),
                  f"the synthetic {arch} on {name} once (1 minute for the CNN, 3 for the ViT on "
                  "two cores)", log)


def cached(path, model, train, what: str, log=None):
    """``(model, figure)`` from ``path``, where ``train()`` saved them the first time (it
    returns the trained model and its test figure: an accuracy, a mAP); ``what`` is said while
    it trains."""
    import sys

    import torch
    if path.is_file():
        saved = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(saved["state"])
        return model.eval(), float(saved["accuracy"])
    print(f"relprop: training {what}; it is kept in {path}", file=log or sys.stderr, flush=True)
    model, found = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    torch.save({"state": model.state_dict(), "accuracy": found}, partial)
    partial.replace(path)  # whole or not at all: a run killed while saving leaves no half file
    return model, found
