"""Rules shared by every propagation method: ops that only move, pass or pool relevance."""
from __future__ import annotations

import torch

from ..ir import resolve
from .registry import WITH_BFLOAT16, register_rule
from .algebra import sdiv


def _fit(r: torch.Tensor, shape) -> torch.Tensor:
    """Relevance of a broadcast result, summed back onto the operand's shape."""
    return r if r.shape == shape else r.sum_to_size(shape)


@register_rule("passthrough", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
def passthrough(op, relevance, run):
    """Elementwise ops (ReLU, dropout, ``x * c + t``): relevance passes unchanged."""
    return (_fit(relevance, run.shape(op.inputs[0])),)


@register_rule("batchnorm", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
def batchnorm(op, relevance, run):
    """rap-spec §7.1: BatchNorm passes relevance through everywhere."""
    return (relevance,)


@register_rule("movement", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
def movement(op, relevance, run):
    """Reshape, slicing, ``cat``, padding: relevance goes back to the positions it came from.

    These ops are linear with 0/1 coefficients, so their vector-Jacobian product is exactly
    that routing (padding is cropped away, ``cat`` is sliced); it does not depend on the values.
    """
    leaves = {n: torch.zeros(run.shape(n), dtype=relevance.dtype, device=relevance.device,
                             requires_grad=True) for n in op.inputs}
    args = resolve(op.args, {**run.env, **leaves})
    kwargs = run.kwargs(op)
    with torch.enable_grad():
        out = op.fn(*args, **kwargs)
        grads = torch.autograd.grad(out, list(leaves.values()), relevance, allow_unused=True)
    return tuple(grads)


@register_rule("pool", method="*", needs_output=True, dtypes=WITH_BFLOAT16)
def pool(op, relevance, run):
    """z-rule for pooling: ``x * d(Z * R/Z)/dx``; max pooling gives the relevance to the winner,
    average pooling shares it in proportion to the inputs (rap-spec §5)."""
    x, g = input_vjp(op, run, lambda z: sdiv(relevance, run.output(op)))
    return (x * g,)


def input_vjp(op, run, cotangent_of):
    """The op's first input ``x`` and the vector-Jacobian product at it, with the cotangent
    ``cotangent_of(z)`` of the op's output ``z``: how pooling ops route relevance."""
    args = run.args(op)
    x = args[0]
    with torch.enable_grad():
        leaf = x.detach().requires_grad_()
        z = op.fn(leaf, *args[1:], **run.kwargs(op))
        (g,) = torch.autograd.grad(z, leaf, cotangent_of(z.detach()))
    return x, g


@register_rule("add", method="*", needs_output=True)
def add(op, relevance, run):
    """z-rule for the sum of two tensors: each operand gets its share of the sum.

    Float32 and float64 only: where a residual sum is near zero its operands are large and
    opposite, and bfloat16's rounding of them decides the shares (ResNet-18's heat maps in
    bfloat16 correlate 0.08-0.83 with float32's)."""
    s = sdiv(relevance, run.output(op))
    return operand_shares(op, run.args(op), lambda value: value * s)


def operand_shares(op, operands, share_of):
    """The relevance of each of ``op.inputs`` for a sum of ``operands``: ``share_of(operand)``
    summed back onto the operand's shape, and summed over the operands that are the same tensor
    (``x + x``)."""
    shares = {}
    for ref, value in zip(op.args, operands):
        share = _fit(share_of(value), value.shape)
        shares[ref.name] = shares[ref.name] + share if ref.name in shares else share
    return tuple(shares[n] for n in op.inputs)
