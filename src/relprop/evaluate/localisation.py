"""Localisation: does the relevance lie on the object? Compared with an object mask (filled
boxes, or a segmentation mask), per image and batched:

- ``outside_inside``: mean positive relevance per pixel outside the object over the mean inside
  (the RAP paper's outside–inside ratio; lower is better, 1 is no localisation at all);
- ``mass_inside``: the share of the positive relevance that lies inside (Quantus's
  ``AttributionLocalisation`` with positive attributions, not weighted by the object's size);
- ``pointing``: 1 where the map's maximum lies inside (Quantus's ``PointingGame``; the first
  maximum in row-major order where several pixels tie);
- ``iou``: the intersection over union of the object and the pixels whose relevance is at or
  above the map's ``quantile`` (the top 1 − quantile of pixels).

An image with no object pixels, or nothing outside them, gets NaN where a ratio is undefined.
"""
from __future__ import annotations

import torch

METRICS = ("outside_inside", "mass_inside", "pointing", "iou")


def localisation(heat: torch.Tensor, mask: torch.Tensor, quantile: float = 0.8) -> dict:
    """``heat`` (N, H, W) relevance maps, ``mask`` (N, H, W) bool object masks -> metric name ->
    (N,) float64 values."""
    if not 0 <= quantile < 1:
        raise ValueError(f"the IoU quantile must lie in [0, 1), got {quantile}")
    if heat.shape != mask.shape:
        raise ValueError(f"maps {tuple(heat.shape)} and masks {tuple(mask.shape)} differ in shape")
    heat, inside = heat.double().flatten(1), mask.bool().flatten(1)
    outside = ~inside
    positive = heat.clamp(min=0)
    n_in, n_out = inside.sum(1).double(), outside.sum(1).double()
    mass_in = (positive * inside).sum(1)
    mass_out = (positive * outside).sum(1)
    ratio = (mass_out / n_out) / (mass_in / n_in)
    ratio[(n_in == 0) | (n_out == 0)] = float("nan")
    share = mass_in / (mass_in + mass_out)
    pointing = inside.gather(1, heat.argmax(1, keepdim=True)).squeeze(1).double()
    threshold = torch.quantile(heat, quantile, dim=1, keepdim=True)
    top = heat >= threshold
    iou = (top & inside).sum(1).double() / (top | inside).sum(1).double()
    return {"outside_inside": ratio, "mass_inside": share, "pointing": pointing, "iou": iou}


DISTRACTOR_METRICS = ("positive_on_object", "positive_on_distractor", "negative_on_distractor")


def distractor(heat: torch.Tensor, target: torch.Tensor, other: torch.Tensor) -> dict:
    """Where a map puts its signs when the image holds the explained object (``target``) and an
    object of another class (``other``), masks (N, H, W): the share of the positive relevance on
    the object and on the distractor, and of the negative relevance on the distractor (RAP's
    claim: positive on the object, negative, or none, on the distractor). NaN where a map has no
    relevance of that sign."""
    heat = heat.double().flatten(1)
    target, other = target.bool().flatten(1), other.bool().flatten(1)
    positive, negative = heat.clamp(min=0), -heat.clamp(max=0)
    pos_total, neg_total = positive.sum(1), negative.sum(1)
    return {"positive_on_object": (positive * target).sum(1) / pos_total,
            "positive_on_distractor": (positive * other).sum(1) / pos_total,
            "negative_on_distractor": (negative * other).sum(1) / neg_total}
