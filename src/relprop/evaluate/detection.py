"""Is a detection's map right? Measured on the synthetic detection set, where every shape's mask
is known (:mod:`relprop.evaluate.synthetic_detection`), per method and per detection:

- ``on_object``: the share of the positive relevance on the detection's own shape (the true
  shape of its class that its box overlaps most, IoU >= 0.5);
- ``on_others``: the share on the picture's other shapes (evidence for other detections);
- ``pointing``: 1 where the map's maximum lies on its own shape;
- ``aopc``: region perturbation of the detection's logit, most relevant regions first, at the
  boxes of the unperturbed picture (the constants of its recording): the mean fall of the logit
  over the steps (higher: the map found what the logit needs).

A detection that matches no shape (a false positive) is counted as such and left out of the
shares.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..detection import DetectionExplainer, Detections, PerImage, iou, scene
from . import perturbation, synthetic_detection
from .localisation import distractor, localisation

METRICS = ("on_object", "on_others", "pointing", "aopc")


@dataclass(frozen=True)
class Settings:
    detections: int = 3  # per picture, the highest scores first
    min_score: float = 0.5
    region: int = 8  # perturbed squares, in pixels
    steps: int = 32  # squares replaced, one more per step
    fill: str = "uniform"
    seed: int = 0


def matched(box, label: int, picture) -> int | None:
    """The picture's shape that a detection of ``label`` (the detector's class, 1 + the shape's)
    finds: the best overlap of its class, at IoU >= 0.5."""
    candidates = [k for k, shape in enumerate(picture.labels) if shape + 1 == label]
    best = max(candidates, key=lambda k: iou(box, picture.boxes[k]), default=None)
    return best if best is not None and iou(box, picture.boxes[best]) >= 0.5 else None


def measure(model, index: int, methods: list[str], settings: Settings) -> list[dict]:
    """One row per (explained detection of picture ``index``, method)."""
    picture = synthetic_detection.sample(index, settings.seed)
    x = synthetic_detection.to_tensor(picture.image)[None]
    found = scene(model, x)
    picked = Detections(settings.detections, settings.min_score).select(found.detections, 0)
    rows = []
    if not picked:
        return rows
    masks = torch.from_numpy(picture.masks)
    score = _logit_scorer(found)
    for method in methods:
        e = DetectionExplainer(model, method).explain_scene(found, x, picked)
        for r, d in enumerate(e.detections):
            shape = matched(d.box, d.label, picture)
            row = {"picture": index, "method": method, "detection": d.index, "label": d.label,
                   "score": d.score, "logit": float(e.score[r]), "matched": shape is not None,
                   "delta": float(e.delta[r])}
            heat = e.heatmap[r:r + 1].double()
            if shape is not None:
                own = masks[shape][None]
                others = (masks.sum(0) > 0)[None] & ~own
                row["on_object"] = float(localisation(heat, own)["mass_inside"][0])
                row["pointing"] = float(localisation(heat, own)["pointing"][0])
                row["on_others"] = float(distractor(heat, own, others)["positive_on_distractor"][0])
            row["aopc"] = _aopc(heat, x, d.position, score, settings, index)
            rows.append(row)
    return rows


def _logit_scorer(found):
    module = PerImage(found.logit_model)

    def score(position):
        def of(inputs, image):
            with torch.no_grad():
                y = module(inputs)[:, position]
            return torch.stack([y, y], 1)
        return of
    return score


def _aopc(heat, x, position, score, settings: Settings, index: int) -> float:
    regions = perturbation.region_count(*x.shape[2:], settings.region)
    steps = min(settings.steps, regions)
    ranking = perturbation.rank_regions(heat, settings.region, "morf")[None]  # (1, 1, R)
    generator = perturbation.image_generator(settings.seed, index)
    fill = perturbation.fill_values(x, settings.fill, x.amin((2, 3)), x.amax((2, 3)),
                                    [generator])
    curve = perturbation.curves(score(position), x, ranking, fill,
                                perturbation.Settings(settings.region, steps, settings.fill))
    return float(perturbation.aopc(curve[0, 0, :, 0]))


def summary(rows: list[dict]) -> dict:
    """method -> {metric: mean over the matched detections (AOPC over all), detections,
    false positives}."""
    table = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        hits = [r for r in mine if r["matched"]]
        # a map with no positive relevance (a Grad-CAM that its ReLU zeroes) has no shares:
        # left out of their means, and counted
        entry = {m: float(np.nanmean([r[m] for r in hits]))
                 if any(not np.isnan(r[m]) for r in hits) else float("nan")
                 for m in ("on_object", "on_others", "pointing")}
        entry["no_positive"] = sum(1 for r in hits if np.isnan(r["on_object"]))
        entry["aopc"] = float(np.mean([r["aopc"] for r in mine]))
        entry["detections"] = len(mine)
        entry["unmatched"] = len(mine) - len(hits)
        entry["max_delta"] = max(abs(r["delta"]) / max(1.0, abs(r["logit"])) for r in mine)
        table[method] = entry
    return table


def markdown(table: dict, mean_average_precision: float, pictures: int) -> str:
    lines = [f"Synthetic detection set ({synthetic_detection.NAME}): {pictures} pictures, "
             f"detector mAP@0.5 {mean_average_precision:.3f} on its test pictures.", "",
             "| method | detections | on its object | on other objects | pointing | AOPC |",
             "|---|---|---|---|---|---|"]
    for method, e in table.items():
        lines.append(f"| {method} | {e['detections']} | {e['on_object']:.3f} | "
                     f"{e['on_others']:.3f} | {e['pointing']:.3f} | {e['aopc']:.3f} |")
    empty = [f"{method} {e['no_positive']}" for method, e in table.items()
             if e.get("no_positive")]
    if empty:
        lines += ["", "Maps with no positive relevance, left out of the shares: "
                  f"{', '.join(empty)}."]
    return "\n".join(lines) + "\n"
