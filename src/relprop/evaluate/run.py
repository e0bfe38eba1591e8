"""``relprop evaluate``'s run: explain a data set with several methods, measure every map
(region perturbation, localisation, stability) and gather the figures.

Sharded with torch.distributed: under ``torchrun`` each process takes every WORLD_SIZE-th image
(one GPU per process with NCCL, gloo on CPUs), and rank 0 gathers the per-image values and alone
aggregates and writes. An image's figures depend only on the image and its seed, so the result is
the same on any number of processes.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from tqdm import tqdm

from ..explanation import class_scores
from ..images import UnreadableImage, load_image
from ..plot import input_view
from . import perturbation as pert
from .data import Item, box_mask, read_mask
from .localisation import distractor, localisation
from .stability import STABLE, stability

METRICS = ("perturbation", "localisation", "stability")
PERTURBATION_ORDERS = ("morf", "negative-first", "lerf")  # per method; `random` once per image


@dataclass
class Settings:
    """Every choice behind the figures; written into metrics.json beside them."""
    metrics: tuple = ("perturbation",)
    region: int = 9
    steps: int = 100
    fill: str = "uniform"
    orders: tuple = ("morf", "negative-first")  # the paper's two; lerf on request
    iou_quantile: float = 0.8
    sigmas: tuple = (1e-4, 1e-3, 1e-2)
    samples: int = 3
    seed: int = 0
    batch_size: int = 8  # images explained at once
    forward_batch_size: int = 16  # perturbed images per forward call (CPU: 16 ran 2.6x faster
    # per image than 64 on EfficientNet-Lite0; a GPU takes more)

    def perturbation(self) -> pert.Settings:
        return pert.Settings(self.region, self.steps, self.fill, self.forward_batch_size,
                             self.seed)


@dataclass
class Data:
    """The model's view of the data set: how an image becomes a tensor, and where its boxes and
    masks are (None: not measured)."""
    items: list[Item]
    preprocess: Callable
    resize: int
    crop: int
    boxes: dict | None = None
    masks: str | None = None
    value_range: tuple | None = None  # (low, high) per channel: the inputs' black and white
    read: Callable[[Item], Image.Image] = lambda item: load_image(item.path)
    truth: Callable[[Item], dict] | None = None  # a synthetic set's known evidence: "truth"
    # and "distractor" (H, W) bool masks, "distractor_label" (see relprop.evaluate.synthetic)


@dataclass
class Result:
    """What one process measured; rank 0 merges the processes' results."""
    rows: list = field(default_factory=list)  # per image, method and metric: one value
    curves: dict = field(default_factory=dict)  # (method, order) -> summed (steps+1, 2) curve
    counts: dict = field(default_factory=dict)  # (method, order) -> images in the sum
    skipped: list = field(default_factory=list)

    def add_curves(self, key, total: torch.Tensor, count: int) -> None:
        """Add ``count`` images' summed curve to ``key``'s sum."""
        self.curves[key] = self.curves.get(key, 0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def merge(self, other: "Result") -> None:
        self.rows += other.rows
        self.skipped += other.skipped
        for key, total in other.curves.items():
            self.add_curves(key, total, other.counts[key])


def world() -> tuple[int, int]:
    """(rank, size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# tqdm's default with whole images: perturbation advances the bar by fractions of a batch
PROGRESS_FORMAT = ("{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total_fmt} "
                   "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


@contextmanager
def processes(device_type: str):
    """torchrun's process group (its environment says so) for the run, left at its end: a gloo
    process that exits still in its group can abort as it exits (seen in CI: "terminate called
    without an active exception", exit -6, after every figure was written)."""
    joined = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized()
    if joined:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    try:
        yield
    finally:
        if joined:
            dist.destroy_process_group()


def measure(model, explainers: dict, data: Data, settings: Settings, device,
            dtype=torch.float32, resumed: Result | None = None, done: frozenset = frozenset(),
            record: Callable | None = None) -> Result | None:
    """Every metric of ``settings`` for every method on this process's share of the images;
    the merged result on rank 0, None on the others.

    ``done``: images measured before (skipped now), whose figures rank 0 brings in as
    ``resumed``; ``record(items, batch_result)`` is called after every finished batch (the
    journal that lets a killed run resume)."""
    if "perturbation" in settings.metrics:  # before any work: too many steps for the regions
        settings.perturbation().check(data.crop, data.crop)
    rank, size = world()
    mine = [item for item in data.items[rank::size] if item.index not in done]
    result = resumed if resumed is not None and rank == 0 else Result()
    progress = tqdm(total=len(mine), desc=f"evaluate {len(explainers)} methods", unit="img",
                    bar_format=PROGRESS_FORMAT,
                    file=sys.stderr, disable=rank != 0 or len(mine) < 2)
    batch, covered, part = [], [], Result()

    def finish():
        nonlocal batch, covered, part
        if batch:
            _measure_batch(model, explainers, batch, data, settings, device, dtype, part,
                           progress)
        result.merge(part)
        if record is not None:
            record(covered, part)
        batch, covered, part = [], [], Result()

    for item in mine:
        covered.append(item)
        prepared = _prepare(item, data, part.skipped)
        if prepared is None:
            progress.update(1)
            continue
        batch.append(prepared)
        if len(batch) == settings.batch_size:
            finish()
    if covered:
        finish()
    progress.close()
    if size == 1:
        return result
    gathered = [None] * size if rank == 0 else None
    dist.gather_object(result, gathered, dst=0)
    if rank != 0:
        return None
    merged = Result()
    for part in gathered:
        merged.merge(part)
    return merged


@dataclass
class _Prepared:
    item: Item
    tensor: torch.Tensor
    masks: dict  # "boxes" / "masks" / "truth" / "distractor" -> (H, W) bool, where known
    distractor_label: int | None = None


def _prepare(item: Item, data: Data, skipped: list) -> _Prepared | None:
    try:
        image = data.read(item)
        tensor = data.preprocess(image)
    except Exception as e:  # one unreadable image is skipped and listed, the run goes on
        reason = str(e) if isinstance(e, UnreadableImage) else f"{type(e).__name__}: {e}"
        tqdm.write(f"relprop: skipping {item.path}: {' '.join(reason.split())}", file=sys.stderr)
        skipped.append({"file": item.path, "reason": reason})
        return None
    masks = {}
    if data.boxes is not None and data.boxes.get(item.name):
        masks["boxes"] = box_mask(image.size, data.boxes[item.name])
    if data.masks is not None:
        mask = read_mask(data.masks, item.name)
        if mask is not None:
            masks["masks"] = mask.resize(image.size, Image.NEAREST)
    known = data.truth(item) if data.truth is not None else {}
    for key in ("truth", "distractor"):
        if known.get(key) is not None:
            masks[key] = Image.fromarray(known[key].astype(np.uint8) * 255)
    masks = {k: torch.from_numpy(np.asarray(input_view(m, data.resize, data.crop, Image.NEAREST))
                                 > 0) for k, m in masks.items()}
    return _Prepared(item, tensor, masks, known.get("distractor_label"))


def _measure_batch(model, explainers, batch, data, settings, device, dtype, result, progress):
    x = torch.stack([p.tensor for p in batch]).to(device, dtype)
    indices = [p.item.index for p in batch]
    with torch.no_grad():
        scores = class_scores(model(x))
    labels = [p.item.label for p in batch]
    target = torch.tensor([scores[i].argmax().item() if label is None else label
                           for i, label in enumerate(labels)], device=device)

    def row(i, method, metric, value):
        p = batch[i]
        result.rows.append({"index": p.item.index, "image": p.item.name, "file": p.item.path,
                            "target": int(target[i]), "method": method, "metric": metric,
                            "value": float(value)})

    heats = {}
    for method, explainer in explainers.items():
        progress.set_postfix_str(f"explaining: {method}", refresh=True)
        heats[method] = explainer(x, target).heatmap.detach()

    if "localisation" in settings.metrics:
        for reference in ("boxes", "masks", "truth"):
            have = [i for i, p in enumerate(batch) if reference in p.masks]
            if not have:
                continue
            mask = torch.stack([batch[i].masks[reference] for i in have]).to(device)
            for method, heat in heats.items():
                for metric, values in localisation(heat[have], mask,
                                                   settings.iou_quantile).items():
                    for i, v in zip(have, values):
                        row(i, method, f"localisation/{reference}/{metric}", v)

    have = [i for i, p in enumerate(batch) if "distractor" in p.masks]
    if "localisation" in settings.metrics and have:
        _distractor_rows(explainers, x, heats, batch, have, row, device)

    if "stability" in settings.metrics:
        for method, explainer in explainers.items():
            progress.set_postfix_str(f"stability: {method}", refresh=True)
            found = stability(lambda noisy: explainer(noisy, target).heatmap.detach(), x,
                              heats[method], indices, settings.sigmas, settings.samples,
                              settings.seed)
            for sigma, metrics in found.items():
                for metric, values in metrics.items():
                    for i, v in enumerate(values):
                        row(i, method, f"stability/{sigma:g}/{metric}", v)

    if "perturbation" in settings.metrics:
        _perturb(model, x, target, heats, indices, data, settings, result, row, progress,
                 len(batch))
    else:
        progress.update(len(batch))


def _distractor_rows(explainers, x, heats, batch, have, row, device):
    """The signs' places on images with a distractor: explaining the image's class (the object
    is the truth, the distractor must get no positive relevance), and explaining the
    distractor's class, where the roles swap."""
    truth = torch.stack([batch[i].masks["truth"] for i in have]).to(device)
    other = torch.stack([batch[i].masks["distractor"] for i in have]).to(device)
    swapped = torch.tensor([batch[i].distractor_label for i in have], device=device)
    for method, explainer in explainers.items():
        found = {"distractor": distractor(heats[method][have], truth, other),
                 "distractor-class": distractor(explainer(x[have], swapped).heatmap.detach(),
                                                other, truth)}
        for kind, metrics in found.items():
            for metric, values in metrics.items():
                for i, v in zip(have, values):
                    row(i, method, f"localisation/{kind}/{metric}", v)


def _perturb(model, x, target, heats, indices, data, settings, result, row, progress, n):
    ps = settings.perturbation()
    generators = [pert.image_generator(settings.seed, i) for i in indices]
    low, high = _value_range(x, data.value_range)
    fill = pert.fill_values(x, ps.fill, low, high, generators)
    regions = pert.region_count(*x.shape[2:], ps.region)
    keys, rankings = [("random", "random")], [torch.stack([pert.random_ranking(regions, g)
                                                           for g in generators]).to(x.device)]
    for method, heat in heats.items():
        for order in settings.orders:
            keys.append((method, order))
            rankings.append(pert.rank_regions(heat, ps.region, order))

    total = n * (len(keys) * ps.steps + 1)
    progress.set_postfix_str("region perturbation", refresh=True)
    curves = pert.curves(pert.scorer(model, target), x, torch.stack(rankings), fill, ps,
                         progress=lambda done: progress.update(n * done / total))
    for key, curve in zip(keys, curves):
        result.add_curves(key, curve.sum(0), len(curve))
        method, order = key
        for i, (logit_aopc, probability_aopc) in enumerate(pert.aopc(curve.transpose(1, 2))):
            row(i, method, f"perturbation/{order}/aopc", logit_aopc)
            row(i, method, f"perturbation/{order}/aopc_probability", probability_aopc)


def _value_range(x, value_range):
    """(N, C) lowest and highest input values: the model's black and white where known, else each
    image's own per-channel minimum and maximum."""
    if value_range is None:
        return x.amin((2, 3)), x.amax((2, 3))
    low, high = (torch.as_tensor(v, dtype=x.dtype, device=x.device) for v in value_range)
    return low.expand(len(x), -1), high.expand(len(x), -1)


def summarise(result: Result, methods: list[str], settings: Settings) -> dict:
    """Per method and metric, the figure over the data set: AOPC means (and the gap to random),
    localisation means (pointing: the hit rate; iou: mIoU), stability's median correlation and
    share of images below 0.9 and mean sensitivities."""
    values: dict = {}
    for r in result.rows:
        values.setdefault(r["method"], {}).setdefault(r["metric"], []).append(r["value"])
    summary = {}
    random_aopc = {k: _mean(v) for k, v in values.get("random", {}).items()}
    for method in ["random", *methods]:
        figures: dict = {}
        for metric, vals in sorted(values.get(method, {}).items()):
            kind, *rest = metric.split("/")
            place = figures.setdefault(kind, {})
            for part in rest[:-1]:
                place = place.setdefault(part, {})
            name = rest[-1]
            if kind == "stability" and name == "correlation":
                place["median_correlation"] = _median(vals)
                place[f"share_below_{STABLE:g}"] = _mean([float(v < STABLE) for v in vals
                                                          if not math.isnan(v)])
            else:
                place[name] = _mean(vals)
            if kind == "perturbation" and method != "random":
                reference = random_aopc.get(f"perturbation/random/{name}")
                if reference is not None:
                    place[f"{name}_gap_to_random"] = _mean(vals) - reference
        if figures:
            summary[method] = figures
    return summary


def mean_curves(result: Result) -> dict:
    """method -> order -> {"logit": [...], "probability": [...]}: the mean score drop f(x⁰) − f(xᵏ)
    at every step, over the images."""
    curves = {}
    for (method, order), total in result.curves.items():
        mean = total / result.counts[(method, order)]
        drop = (mean[:1] - mean).T
        curves.setdefault(method, {})[order] = {"logit": drop[0].tolist(),
                                                "probability": drop[1].tolist()}
    return curves


def _finite(values):
    return [v for v in values if not math.isnan(v)]


def _mean(values):
    values = _finite(values)
    return math.fsum(values) / len(values) if values else None


def _median(values):
    values = _finite(values)
    return statistics.median(values) if values else None
