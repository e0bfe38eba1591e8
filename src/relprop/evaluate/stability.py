"""Stability under noise a person cannot see: explain the input and the input plus Gaussian noise
of std σ (in the model's input units) for the same class, and compare the two maps.

Per image and σ, over ``samples`` noise draws:
- ``correlation``: Pearson correlation of the two heat maps, averaged over the draws (1: the map
  did not change; a map that rounding-sized noise replaces is not an explanation);
- ``avg_sensitivity`` / ``max_sensitivity``: mean / max over the draws of
  ‖e(x) − e(x + δ)‖_F / ‖e(x)‖_F, Quantus's ``AvgSensitivity`` / ``MaxSensitivity`` with
  ``normalise=False`` and the same δ (Quantus draws uniform noise of its own by default).

The noise of an image comes from its own seed: every method sees the same noisy inputs.
"""
from __future__ import annotations

import torch

from .perturbation import image_generator

METRICS = ("correlation", "avg_sensitivity", "max_sensitivity")
SIGMAS = (1e-4, 1e-3, 1e-2)  # in normalised input units; one 8-bit grey level is about 8e-3
STABLE = 0.9  # a map correlating less than this with its noisy twin counts as replaced


def noise(shape, sigmas, samples: int, seed: int, indices) -> torch.Tensor:
    """(S, N, ...) standard normal draws per image (index) and sample, scaled per σ by the
    caller: the same direction at every σ, the same for every method."""
    draws = []
    for index in indices:
        g = image_generator(seed + 1, int(index))  # a stream apart from perturbation's
        draws.append(torch.randn(samples, *shape, generator=g, dtype=torch.float64))
    return torch.stack(draws, 1)


def correlation(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, ...) x (N, ...) -> (N,) Pearson correlation per image; NaN for a constant map."""
    a, b = a.double().flatten(1), b.double().flatten(1)
    a, b = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1))


def stability(heat_of, x: torch.Tensor, heat: torch.Tensor, indices, sigmas=SIGMAS,
              samples: int = 3, seed: int = 0) -> dict:
    """``heat_of(inputs)`` explains a batch for the images' own targets and returns (N, H, W)
    maps; ``heat`` is the map of ``x`` itself; ``indices`` the images' places in the data set.
    Returns σ -> metric -> (N,) float64 values."""
    draws = noise(x.shape[1:], sigmas, samples, seed, indices).to(x.device)
    result = {}
    for sigma in sigmas:
        corr, sens = [], []
        for draw in draws:
            noisy = heat_of((x.double() + sigma * draw).to(x.dtype))
            corr.append(correlation(heat, noisy))
            sens.append(((heat - noisy).double().flatten(1).norm(dim=1)
                         / heat.double().flatten(1).norm(dim=1)))
        corr, sens = torch.stack(corr), torch.stack(sens)
        result[sigma] = {"correlation": corr.mean(0).cpu(), "avg_sensitivity": sens.mean(0).cpu(),
                         "max_sensitivity": sens.max(0).values.cpu()}
    return result
