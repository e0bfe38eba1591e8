"""Tensor algebra shared by the rules: safe division, the layers' linear maps and their
transposes, and weights stacked so that two maps cost one call."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv2d_input


def sdiv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a / b`` where ``b != 0``, exactly 0 where ``b == 0`` (rap-spec's safe division)."""
    return torch.where(b != 0, a / b, 0.0)  # a / 0 is computed and discarded


def sample_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch dimension, kept broadcastable against ``t``."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


def lin(op, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map without bias."""
    if op.kind == "linear":
        return F.linear(x, w)
    return F.conv2d(x, w, None, **op.kwargs)


def lin_t(op, s: torch.Tensor, w: torch.Tensor, x_shape) -> torch.Tensor:
    """The transpose of ``lin`` applied to ``s`` (the gradient of ``lin`` at any input)."""
    if op.kind == "linear":
        return s @ w
    return conv2d_input(tuple(x_shape), w, s, **op.kwargs)


def stack_pair(op, wa: torch.Tensor, wb: torch.Tensor) -> torch.Tensor:
    """One weight whose map gives both ``lin(x, wa)`` and ``lin(x, wb)``; groups keep their
    channels, so each group's ``wa`` rows are followed by its ``wb`` rows."""
    if op.kind == "linear" or op.kwargs["groups"] == 1:
        return torch.cat([wa, wb], 0)
    g = op.kwargs["groups"]
    rest = wa.shape[1:]
    return torch.stack([wa.reshape(g, -1, *rest), wb.reshape(g, -1, *rest)], 1).reshape(
        -1, *rest)


def split_pair(op, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo ``stack_pair`` on the output of the stacked map."""
    if op.kind == "linear":
        return z.chunk(2, dim=-1)
    g = op.kwargs["groups"]
    if g == 1:
        return z.chunk(2, dim=1)
    n, c2 = z.shape[:2]
    z = z.reshape(n, g, 2, c2 // (2 * g), *z.shape[2:])
    return (z[:, :, 0].reshape(n, c2 // 2, *z.shape[4:]),
            z[:, :, 1].reshape(n, c2 // 2, *z.shape[4:]))


def join_pair(op, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Lay two output-shaped tensors out as the stacked map's output (inverse of split_pair)."""
    if op.kind == "linear":
        return torch.cat([a, b], -1)
    g = op.kwargs["groups"]
    if g == 1:
        return torch.cat([a, b], 1)
    n, c = a.shape[:2]
    rest = a.shape[2:]
    return torch.stack([a.reshape(n, g, c // g, *rest), b.reshape(n, g, c // g, *rest)],
                       2).reshape(n, 2 * c, *rest)


def cached(run, op, tag: str, weight: torch.Tensor, make):
    """``make(weight)``, computed once per weight version and kept in the explainer's cache."""
    key = (op.name, tag)
    stamp = (weight.data_ptr(), weight._version, weight.dtype, weight.device, weight.shape)
    hit = run.cache.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    value = make(weight)
    run.cache[key] = (stamp, value)
    return value
