"""Rules shared by every propagation method: ops that only move, pass or pool relevance."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ir import ModuleCall, ref_names, resolve
from .registry import WITH_BFLOAT16, Factored, register_rule
from .algebra import lost_where_zero, sdiv


def fit(r: torch.Tensor, shape) -> torch.Tensor:
    """Relevance of a broadcast result, summed back onto the operand's shape."""
    return r if r.shape == shape else r.sum_to_size(shape)


@register_rule("passthrough", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
@register_rule("norm", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
@register_rule("softmax", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
def passthrough(op, relevance, run):
    """Elementwise ops (ReLU, dropout, ``x * c + t``), normalisation layers (rap-spec §8.3) and
    a softmax that is not a gate: relevance passes unchanged."""
    return (fit(relevance, run.shape(op.inputs[0])),)


@register_rule("batchnorm", method="*", needs_inputs=False, dtypes=WITH_BFLOAT16)
def batchnorm(op, relevance, run):
    """rap-spec §7.1: BatchNorm passes relevance through everywhere."""
    return (relevance,)


def movement(op, relevance, run):
    """Reshape, slicing, ``cat``, padding: relevance goes back to the positions it came from.

    These ops are linear with 0/1 coefficients, so their vector-Jacobian product is exactly
    that routing (padding is cropped away, ``cat`` is sliced); it does not depend on the values.
    Every output entry is a copy of one input entry (or of none), so a factor ``g`` of the
    output routes the same way: the factor form is this rule itself. A reshape, permutation or
    transpose is undone directly (the vector-Jacobian product itself, without autograd's
    bookkeeping, which is the cost of the many small moves of a transformer's heads).
    """
    undone = _undo_view(op, relevance, run)
    if undone is not None:
        return (undone,)
    leaves = {n: torch.zeros(run.shape(n), dtype=relevance.dtype, device=relevance.device,
                             requires_grad=True) for n in op.inputs}
    args = resolve(op.args, {**run.env, **leaves})
    kwargs = run.kwargs(op)
    with torch.enable_grad():
        out = op.fn(*args, **kwargs)
        grads = torch.autograd.grad(out, list(leaves.values()), relevance, allow_unused=True)
    return tuple(grads)


_RESHAPES = {torch.flatten, torch.reshape, torch.unflatten, torch.squeeze, torch.unsqueeze,
             torch.Tensor.view, torch.Tensor.reshape, torch.Tensor.flatten,
             torch.Tensor.unflatten, torch.Tensor.squeeze, torch.Tensor.unsqueeze,
             torch.Tensor.view_as, torch.Tensor.reshape_as}


def _undo_view(op, relevance, run):
    """The relevance of a reshape's, permutation's or transpose's input, or None for another
    movement: a reshape keeps the entries' order, so its input's relevance is the output's
    reshaped; a permutation's is the output's permuted back."""
    if len(op.inputs) != 1 or not op.args or getattr(op.args[0], "name", None) != op.inputs[0]:
        return None
    fn = op.fn.module if isinstance(op.fn, ModuleCall) else op.fn
    if fn in _RESHAPES or isinstance(fn, (nn.Flatten, nn.Unflatten)):
        return relevance.reshape(run.shape(op.inputs[0]))
    rest, kwargs = op.args[1:], op.kwargs
    if ref_names((rest, kwargs)):  # a size or dim computed in the graph: autograd's way
        return None
    if fn in (torch.permute, torch.Tensor.permute):
        dims = rest[0] if len(rest) == 1 and isinstance(rest[0], (list, tuple)) else rest
        dims = kwargs.get("dims", dims)
        if len(dims) != relevance.dim():
            return None
        order = [d % relevance.dim() for d in dims]
        return relevance.permute(sorted(range(len(order)), key=order.__getitem__))
    if fn in (torch.transpose, torch.Tensor.transpose) and len(rest) == 2 and not kwargs:
        return relevance.transpose(*rest)
    return None


register_rule("movement", movement, method="*", needs_inputs=False, dtypes=WITH_BFLOAT16,
              factor=Factored(movement, prefer=False))


_MAX_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
              nn.AdaptiveMaxPool3d)
_MAX_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, torch.max_pool2d, torch.amax,
                  F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d,
                  torch.Tensor.amax}


_NORMS = {torch.norm, torch.linalg.vector_norm, torch.Tensor.norm}


def is_linear_pool(op) -> bool:
    """Whether a pooling op is linear in its input (average pooling, means, sums, resampling),
    where §7.5's stabilised z-rule conserves; max pooling and the 2-norm are positively
    homogeneous only, where the plain z-rule does (by Euler's theorem)."""
    fn = op.fn.module if isinstance(op.fn, ModuleCall) else op.fn
    return not is_max_pool(op) and fn not in _NORMS


def is_max_pool(op) -> bool:
    fn = op.fn.module if isinstance(op.fn, ModuleCall) else op.fn
    return isinstance(fn, _MAX_POOLS) or fn in _MAX_FUNCTIONS


@register_rule("resample", method="*", needs_output=True, dtypes=WITH_BFLOAT16)
@register_rule("pool", method="*", needs_output=True, dtypes=WITH_BFLOAT16)
def pool(op, relevance, run):
    """z-rule for pooling and resampling: ``x * d(Z * R/Z)/dx`` (rap-spec §5, §9.2). Average
    pooling and resampling share the
    relevance in proportion to the inputs. Max pooling gives it to the winner, as the z-rule
    does wherever the maximum is not 0; where it is 0 (a window of zeros, which DenseNet's
    BatchNorm after the pooling can still hand relevance), the z-rule would drop it and the
    winner keeps it instead, so that the layer conserves."""
    if is_max_pool(op):
        return (input_vjp(op, run, lambda z: relevance)[1],)
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
    z = run.output(op)
    s = sdiv(relevance, z)
    return flat_where_zero(op, run.args(op), relevance, z, lambda value: value * s)


def flat_where_zero(op, operands, relevance, denominator, share_of):
    """The z-rule's shares ``share_of(x_i)`` of a sum, and where its ``denominator`` is 0 but
    relevance arrives (both operands 0: two ReLU zeros, which a LayerNorm behind the sum can
    still hand relevance), an equal share to each operand (§7.3's flat rule), so that the sum
    conserves: the z-rule would drop it there."""
    lost = lost_where_zero(relevance, denominator)
    if lost is None:
        return operand_shares(op, operands, share_of)
    flat = lost / len(operands)
    return operand_shares(op, operands, lambda value: share_of(value) + flat)


def operand_shares(op, operands, share_of):
    """The relevance of each of ``op.inputs`` for a sum of ``operands``: ``share_of(operand)``
    summed back onto the operand's shape, and summed over the operands that are the same tensor
    (``x + x``)."""
    return per_input(op, [fit(share_of(value), value.shape) for value in operands])


def per_input(op, shares) -> tuple:
    """``shares``, one per entry of ``op.args``, summed per input of ``op``: a tensor that is
    several of the arguments (``x + x``, ``x @ x``) gets each one's share; None for none."""
    summed = {}
    for ref, share in zip(op.args, shares):
        summed[ref.name] = summed[ref.name] + share if ref.name in summed else share
    return tuple(summed.get(name) for name in op.inputs)


@register_rule("product", method="*", needs_inputs=False)
def product(op, relevance, run):
    """rap-spec §8.2, the product of two tensors: where one factor is a gate (a sigmoid's output,
    as in squeeze-and-excitation), it is a weight and all of ``R`` goes to the other factor
    (signal-take-all, Arras et al. 2017); otherwise each factor gets half (AttnLRP, Prop. 3.2).
    Conserves either way; a factor that is the same tensor twice gets both shares."""
    gated = op.gated or (False,) * len(op.inputs)
    if any(gated) and not all(gated):
        return tuple(None if gate else fit(relevance, run.shape(name))
                     for name, gate in zip(op.inputs, gated))
    share = relevance / len(op.inputs)
    return tuple(fit(share, run.shape(name)) for name in op.inputs)


def factor_vjps(op, run, cotangent, which):
    """The vector-Jacobian products of a product of two tensors ``fn(a, b)`` at the factors
    in ``which`` (indices into ``op.args``), with ``cotangent`` at its output. The product is
    linear in each factor, so this is the transposed map applied to ``cotangent``; a factor's
    own value never enters its product's transpose."""
    a, b = run.args(op)
    if op.fn is torch.matmul and a.dim() >= 2 and b.dim() >= 2 and a.shape[:-2] == b.shape[:-2]:
        found = {0: lambda: cotangent @ b.transpose(-2, -1),
                 1: lambda: a.transpose(-2, -1) @ cotangent}
        return {i: found[i]() for i in which}  # the transposes directly, no autograd graph
    with torch.enable_grad():
        leaves = [t.detach().requires_grad_(i in which) for i, t in enumerate((a, b))]
        out = op.fn(*leaves, **run.kwargs(op))
        grads = torch.autograd.grad(out, [leaves[i] for i in which], cotangent)
    return dict(zip(which, grads))


def weight_and_signal(op) -> tuple[int, int] | None:
    """For a product of two tensors whose one factor is a gate (attention's softmax weights),
    the positions in ``op.args`` of the weight and the other factor; None otherwise."""
    gated = dict(zip(op.inputs, op.gated or (False,) * len(op.inputs)))
    flags = [gated.get(a.name, False) for a in op.args]
    if len(op.inputs) != 2 or flags.count(True) != 1:
        return None
    return flags.index(True), flags.index(False)


def matmul_reaches(op):
    """The factors of a product that :func:`matmul` gives relevance: the signal alone where the
    other is attention's softmax weights, both otherwise."""
    roles = weight_and_signal(op)
    return op.inputs if roles is None else (op.args[roles[1]].name,)


@register_rule("matmul", method="*", needs_inputs=True, needs_output=True,
               reaches=matmul_reaches)
def matmul(op, relevance, run):
    """rap-spec §8.5 for the product of two tensors ``y = a·b``. Where one factor is attention's
    softmax weights, they are a weight of the other (as CP-LRP, Ali et al. 2022): all of ``R``
    goes to the other factor by the z-rule ``b ⊙ ∂(a·b)/∂b (R/y)``. Otherwise each factor gets
    half of its z-rule share (the uniform rule, AttnLRP Prop. 3.2)."""
    s = sdiv(relevance, run.output(op))
    roles = weight_and_signal(op)
    if roles is None:
        return uniform_shares(op, run, s)
    _, signal = roles
    grads = factor_vjps(op, run, s, (signal,))
    shares = {op.args[signal].name: run.args(op)[signal] * grads[signal]}
    return tuple(shares.get(name) for name in op.inputs)


def matmul_factor(op, g, run):
    """:func:`matmul` in factor form (``g = R / y``): the signal's factor is the transposed
    product with the weight, ``∂(a·b)/∂b (g)``; each factor of a product of two signals half of
    its own (:func:`uniform_factors`)."""
    roles = weight_and_signal(op)
    if roles is None:
        return uniform_factors(op, g, run)
    signal = op.args[roles[1]].name
    found = factor_vjps(op, run, g, (roles[1],))[roles[1]]
    return tuple(found if name == signal else None for name in op.inputs)


def uniform_factors(op, g, run):
    """The uniform rule in factor form: each factor half of its transposed product with ``g``;
    a factor that is the same tensor twice gets both."""
    grads = factor_vjps(op, run, g, (0, 1))
    return per_input(op, [grads[0] / 2, grads[1] / 2])


def uniform_shares(op, run, s):
    """The uniform rule at a product of two tensors (AttnLRP, Prop. 3.2): each factor half of
    its z-rule share, with ``s = R / y``; a factor that is the same tensor twice gets both."""
    a, b = run.args(op)
    grads = factor_vjps(op, run, s, (0, 1))
    return per_input(op, [a * grads[0] / 2, b * grads[1] / 2])
