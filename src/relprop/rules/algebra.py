"""Tensor algebra shared by the rules: safe division, the layers' linear maps and their
transposes, and weights stacked so that two maps cost one call."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.grad import conv1d_input, conv2d_input, conv3d_input



def _transposed_input(conv):
    """The input gradient of a transposed convolution: the convolution with the same weight."""
    def gradient(x_shape, w, s, stride, padding, output_padding, groups, dilation):
        return conv(s, w, None, stride, padding, dilation, groups)
    return gradient


_INPUT_GRADIENTS = {F.conv1d: conv1d_input, F.conv2d: conv2d_input, F.conv3d: conv3d_input,
                    F.conv_transpose1d: _transposed_input(F.conv1d),
                    F.conv_transpose2d: _transposed_input(F.conv2d)}
TRANSPOSED = (F.conv_transpose1d, F.conv_transpose2d)  # weights (in, out / groups, ...)


def sdiv(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``a / b`` where ``b != 0``, exactly 0 where ``b == 0`` (rap-spec's safe division), into
    ``out`` if given.

    Dividing first and zeroing the non-finite quotients takes two passes instead of three; a
    quotient that overflows with ``b != 0`` (a denormal ``b``) becomes 0 too, not inf."""
    return torch.div(a, b, out=out).nan_to_num_(nan=0.0, posinf=0.0, neginf=0.0)


def lost_where_zero(relevance: torch.Tensor, denominator: torch.Tensor):
    """The relevance that arrives where ``denominator`` is 0 (which the z-rule would drop), or
    None where there is none: the usual case, found from the mask alone, without the product."""
    zero = denominator == 0
    if not zero.any():
        return None
    lost = relevance * zero
    return lost if lost.any() else None


def live_units(op, relevance: torch.Tensor):
    """The output units of a Linear layer that receive relevance, as an index of its last dim
    (a slice where they are one run), where at most 3/4 of them do; None otherwise. Attention's
    fused Q/K/V projection is the case: CP-LRP gives Q and K none, and a rule that maps only the
    V rows does a third of the work. A unit without relevance adds exactly 0, so dropping it
    changes the result by the order of a sum only."""
    if op.kind != "linear" or relevance.dim() == 0:
        return None
    first = relevance[(0,) * (relevance.dim() - 1)]
    if bool(first.ne(0).all()):  # the usual case, told by one position: every unit is live
        return None
    alive = relevance.ne(0).reshape(-1, relevance.shape[-1]).any(0)
    count = int(alive.sum())
    if count > 0.75 * alive.numel():
        return None
    index = alive.nonzero().flatten()
    if count and int(index[-1] - index[0]) + 1 == count:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def sample_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over all but the batch dimension, kept broadcastable against ``t``."""
    return t.sum(dim=tuple(range(1, t.dim())), keepdim=True)


def lin(op, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The layer's linear map without bias."""
    if op.kind == "linear":
        return F.linear(x, w)
    return op.fn(x, w, None, **op.kwargs)  # F.conv1d, F.conv2d or F.conv3d


def unit_view(op, t: torch.Tensor, dims: int) -> torch.Tensor:
    """A vector over a layer's output units (a bias), shaped to broadcast against a tensor of
    ``dims`` dims laid out as the layer's output: the last dim of a Linear's, dim 1 of a conv's."""
    return t if op.kind == "linear" else t.view(-1, *([1] * (dims - 2)))


def with_bias(op, z: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``z`` plus the layer's bias ``b`` (None: ``z`` itself)."""
    return z if b is None else z + unit_view(op, b, z.dim())


def lin_t(op, s: torch.Tensor, w: torch.Tensor, x_shape) -> torch.Tensor:
    """The transpose of ``lin`` applied to ``s`` (the gradient of ``lin`` at any input)."""
    if op.kind == "linear":
        return s @ w
    return _INPUT_GRADIENTS[op.fn](tuple(x_shape), w, s, **op.kwargs)


def sign_pair(op, w: torch.Tensor) -> torch.Tensor:
    """``W+`` and ``|W-|`` in one weight whose map gives both ``lin(x, W+)`` and
    ``lin(x, |W-|)``; groups keep their channels, so each group's ``W+`` rows are followed by its
    ``|W-|`` rows. Written straight into one buffer: derived at every call (a cache would go
    stale), so no temporaries the size of the weight. A transposed convolution's output
    channels are its weight's second dim: each row's W+ then |W-| there."""
    if op.fn in TRANSPOSED:
        return torch.cat([w.clamp(min=0), w.neg().clamp_(min=0)], 1)
    g = 1 if op.kind == "linear" else op.kwargs["groups"]
    rest = w.shape[1:]
    pair = w.new_empty((2 * w.shape[0], *rest))
    halves = pair.view(g, 2, w.shape[0] // g, *rest)
    grouped = w.view(g, w.shape[0] // g, *rest)
    torch.clamp(grouped, min=0, out=halves[:, 0])
    torch.neg(grouped, out=halves[:, 1]).clamp_(min=0)
    return pair


def split_pair(op, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Undo ``sign_pair`` on the output of the stacked map."""
    if _plain_halves(op):
        return z.chunk(2, dim=-1 if op.kind == "linear" else 1)
    g = op.kwargs["groups"]
    n, c2 = z.shape[:2]
    z = z.reshape(n, g, 2, c2 // (2 * g), *z.shape[2:])
    return (z[:, :, 0].reshape(n, c2 // 2, *z.shape[4:]),
            z[:, :, 1].reshape(n, c2 // 2, *z.shape[4:]))


def _plain_halves(op) -> bool:
    """Whether the stacked map's output is [first | second] along the channels."""
    return op.kind == "linear" or op.kwargs["groups"] == 1


def pair_views(op, buffer: torch.Tensor):
    """Two output-shaped tensors to fill for ``buffer`` (a stacked map's output): views into it
    where the halves are plain slices, new tensors for grouped convolutions."""
    if _plain_halves(op):
        return buffer.chunk(2, dim=-1 if op.kind == "linear" else 1)
    half = list(buffer.shape)
    half[1] //= 2
    return buffer.new_empty(half), buffer.new_empty(half)


def pair_join(op, buffer, a, b) -> torch.Tensor:
    """``buffer`` with ``a`` and ``b`` in it (they already are, unless the conv is grouped)."""
    if _plain_halves(op):
        return buffer
    g = op.kwargs["groups"]
    n, c = a.shape[:2]
    rest = a.shape[2:]
    return torch.stack([a.reshape(n, g, c // g, *rest), b.reshape(n, g, c // g, *rest)],
                       2).reshape(n, 2 * c, *rest)


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + epsilon * sign(z)`` with sign(0) = +1: the LRP denominator, as Zennit and Captum
    stabilise it, so that their maps and relprop's can be compared number for number."""
    return z + torch.where(z >= 0, epsilon, -epsilon).to(z.dtype)
