"""Relative Attributing Propagation (Nam et al., AAAI 2020), as ``shared/docs/rap-spec.md`` states
it: absolute-influence normalisation at the output layer (§2, normalised to the explained score
as §7.4 says), relevant/irrelevant propagation with uniform shifting through hidden layers (§3,
generalised to signed inputs as in §7.2), and the z^B rule at the input layer (§4, with §7.3's
flat share where its denominator is 0). RAP's analysis of the graph says which layer plays which
role.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import UnsupportedOperation
from ..analysis import after_output_layers, output_layers as find_output_layers
from ..ir import Ref, ref_names, resolve
from ..ops import SIGNED_RESAMPLING, pad_spec, pads
from .registry import WITH_BFLOAT16, derive, register_analysis, register_rule
from .common import factor_vjps, input_vjp, is_linear_pool, is_max_pool, matmul as common_matmul
from .common import flat_where_zero, movement as route, pool as route_pool, weight_and_signal
from .algebra import lin, lin_t, live_units, lost_where_zero, pair_join, pair_views, sample_sum
from .algebra import sdiv, sign_pair, split_pair, unit_view, with_bias


derive("rap-stable", "rap")  # §7.5: RAP with its own rule at additions


@register_analysis("rap")
def analyse(graph) -> dict:
    """Roles: the layer that produces the output (§2), the layers that read the input (§4, with
    the zero padding they read it through), every other Linear/Conv layer hidden (§3)."""
    out = graph.output_layers
    if not out:
        _, blocker = find_output_layers(graph)
        op = blocker or (graph.op(graph.output) if graph.output in graph else None)
        raise UnsupportedOperation(
            op.source if op else "the model output", op.name if op else graph.output,
            op.module_path if op else None,
            reason="RAP starts at the layer that produces the logits; the model output must come "
                   "from a Linear or Conv2d layer (or the sum of several) through reshapes, "
                   "activations, BatchNorm, scaling or pooling only")
    notes = {}
    for op in graph.ops:
        if op.kind in ("linear", "conv"):
            notes[op.name] = {"role": "output" if op.name in out else
                              "input" if op.name in graph.input_layers else "hidden"}
    for op in graph.ops:
        if op.kind == "movement" and may_lose(op):
            notes[op.name] = {"may_lose": True}
    for op in after_output_layers(graph):
        if op.kind == "resample":
            notes[op.name] = {"carry": True}
    for name in out if len(out) > 1 else ():
        notes[name]["heads"] = len(out)
    for name in graph.input_layers:
        src = graph.op(name).inputs[0]
        while src in graph and _adds_leading_dim(graph.op(src)):  # a batch of one, padded
            src = graph.op(src).inputs[0]
        widths = pad_spec(graph.op(src)) if src in graph else None
        if widths is not None:
            notes[name]["input_pad"] = widths
    return notes


def _adds_leading_dim(op) -> bool:
    return op.fn is torch.unsqueeze and (op.args[1:2] == (0,) or op.kwargs.get("dim") == 0)


def may_lose(op) -> bool:
    """Whether a movement op has output entries that come from no tensor operand, along any
    dimension but the batch: a ``cat`` of constants to the tokens (ViT's class token), padding."""
    if op.fn in (torch.cat, torch.concat):
        operands = op.args[0] if isinstance(op.args[0], (list, tuple)) else ()
        dim = op.args[1] if len(op.args) > 1 else op.kwargs.get("dim", 0)
        return dim != 0 and any(not (isinstance(t, Ref) and t.name in op.inputs)
                                for t in operands)
    return pads(op)


def shift(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Uniform shifting: move every non-zero entry of ``c`` by the same amount so that each
    sample sums to ``total`` (zeros stay zero; nothing moves where all are zero). In place."""
    zero = c == 0
    count = (c[0].numel() - sample_sum(zero)).to(c.dtype)
    delta = sdiv(sample_sum(c) - total, count)
    return c.sub_(delta).masked_fill_(zero, 0)


def layer_forward(op, args, kwargs, note):
    """A hidden layer's forward computed as ``Lin(x, W+) - Lin(x, |W-|) + b`` for a non-negative
    input, keeping the two maps: the sweep needs exactly them (§3's Za and Zb), so it does not
    compute them again. The output equals the layer's up to rounding, a few times the layer's
    own: Za and Zb are each exact to rounding, but their difference cancels (float32, measured
    2-8x the plain convolution's error per layer, 1e-5 of the logits of a random ResNet-50
    against the model's own 1e-6). Elsewhere (a signed input, other roles, a half type, where
    that difference would lose the output, a Linear layer propagated in blocks) the op runs as
    it is."""
    x, w, b = args
    if (note.get("role", "hidden") != "hidden" or not op.input_nonneg or ref_names(op.kwargs)
            or x.dtype not in (torch.float32, torch.float64) or _blocked(op, w)):
        return op.fn(*args, **kwargs), None
    z = lin(op, x, sign_pair(op, w))
    za, zb = split_pair(op, z)
    return with_bias(op, za - zb, b), z


@register_rule("linear", method="rap", needs_inputs=True, dtypes=WITH_BFLOAT16,
               forward=layer_forward)
@register_rule("conv", method="rap", needs_inputs=True, dtypes=WITH_BFLOAT16,
               forward=layer_forward)
def layer(op, relevance, run):
    x, w, b = run.args(op)
    note = run.note(op)
    role = note.get("role", "hidden")
    if role == "output":
        return (output_layer(op, x, w, b, relevance, run.score, note.get("heads", 1) > 1),)
    if role == "input":
        return (input_layer(op, x, w, relevance, resolve(note.get("input_pad"), run.env)),)
    return (hidden_layer(op, x, w, relevance, run.by_product(op)),)


def output_layer(op, x, w, b, d, score, share_of_d=False):
    """§2: the signed contribution ``C`` of each input to the target (the bias shared between the
    positive and the negative side), then ``R = |C| * s / sum(|C|)`` with ``s`` the explained
    score (§7.4; equal to ``sum(C)`` wherever no bias share is dropped and no op follows).

    Where several heads are summed (a distilled DeiT), ``d`` starts summing to 1 per sample,
    the sum's rule hands each head its share of it, and each head's relevance is that share of
    the score (``share_of_d``), so that together they conserve it.

    Only the classes that ``d`` names take part: every other class's numerators are 0, so its
    contributions are exactly 0, and a language model's head (50257 tokens for GPT-2) costs what
    one token's does."""
    w, b, d = _named_classes(op, w, b, d)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    xp = x.clamp(min=0)
    parts = [(xp, wp), (xp, wn)]
    signed = not op.input_nonneg
    if signed:
        xn = x.clamp(max=0)
        parts += [(xn, wp), (xn, wn)]
    z = [lin(op, xi, wi) for xi, wi in parts]
    zpp, zpn = z[0], z[1]
    pos, neg = zpp, zpn
    if signed:
        pos, neg = zpp + z[3], zpn + z[2]
    pos, neg = sample_sum(d * pos), sample_sum(d * neg)
    bias_pos = bias_neg = 0
    if b is not None:  # classes: the last dim of a Linear's output, dim 1 of a conv's
        bias = unit_view(op, b, d.dim())
        bias_pos = bias * d * sdiv(pos, pos + neg)
        bias_neg = bias * d * sdiv(neg, pos + neg)
    numer = [d * zpp + bias_pos, d * zpn + bias_neg] + ([d * z[2], d * z[3]] if signed else [])
    c = sum(xi * lin_t(op, sdiv(n, zi), wi, x.shape)
            for (xi, wi), n, zi in zip(parts, numer, z))
    magnitude = c.abs()
    s = score.view(-1, *([1] * (c.dim() - 1))).to(c.dtype)
    if share_of_d:  # one of several heads: its share of the score
        s = s * sample_sum(d)
    return magnitude * sdiv(s, sample_sum(magnitude))


def _named_classes(op, w, b, d):
    """The weight rows, bias entries and ``d`` of the output units (classes: a Linear's last
    dim, a conv's channels) where ``d`` is non-zero for some sample or position."""
    if op.kind != "linear" and (op.fn not in (F.conv1d, F.conv2d, F.conv3d) or
                                op.kwargs.get("groups", 1) != 1):
        return w, b, d  # a grouped or transposed convolution's rows are not its classes
    dim = -1 if op.kind == "linear" else 1
    named = d.movedim(dim, 0).reshape(d.shape[dim], -1).ne(0).any(1)
    if bool(named.all()):
        return w, b, d
    if not bool(named.any()):  # a head that explains nothing here (a detector's other level):
        named[0] = True  # one class keeps the shapes; its d is 0, so its relevance is 0
    rows = named.nonzero().squeeze(1)
    return w[rows], None if b is None else b[rows], d.index_select(dim, rows)


# A Linear layer's W+/|W-| is derived a block of output units at a time, so that a large
# layer (VGG's first classifier layer: 392 MiB of weights) does not hold twice its weight at once.
BLOCK_BYTES = 32 * 2 ** 20


def hidden_layer(op, x, w, relevance, kept=None):
    """§3 for a non-negative input; §7.2 for a signed one: split R between the x+ and x- groups
    by contribution magnitude, propagate and shift each group to its own share. ``kept``: the
    stacked ``Lin(x, [W+; |W-|])`` of a non-negative input, where the forward pass kept it.

    Everything before the shift is separate per output unit, so a Linear layer is propagated in
    blocks of output units, each with its own slice of W+/|W-|."""
    signs = [x] if op.input_nonneg else [x.clamp(min=0), (-x).clamp(min=0)]  # |x-| for x-
    back, totals = [None] * len(signs), [0] * len(signs)
    live = None if kept is not None else live_units(op, relevance)
    if live is not None:  # a unit without relevance adds 0 to every sum below (Q and K)
        relevance, w = relevance[..., live], w[live]
    for units in _unit_blocks(op, w):
        pair = sign_pair(op, w[units])
        r = relevance[..., units]
        z = [kept] if kept is not None else [lin(op, u, pair) for u in signs]
        shares = [r] if len(signs) == 1 else split_by_sign(r, sum(split_pair(op, z[0])),
                                                            sum(split_pair(op, z[1])))
        for i, (u, zi, ri) in enumerate(zip(signs, z, shares)):
            c = lin_t(op, _quotients(op, zi, ri), pair, u.shape)
            back[i] = c if back[i] is None else back[i].add_(c)
            totals[i] = totals[i] + sample_sum(ri)
    return sum(shift(c.mul_(u), total) for c, u, total in zip(back, signs, totals))


def split_by_sign(r, magnitude_pos, magnitude_neg):
    """§7.2: each output unit's relevance split between the x+ and the x- group in proportion to
    the groups' contribution magnitudes (all to x+ where both are 0)."""
    m = magnitude_pos + magnitude_neg
    return [torch.where(m == 0, r, r * sdiv(magnitude_pos, m)), r * sdiv(magnitude_neg, m)]


def _blocked(op, w) -> bool:
    """Whether a layer's W+/|W-| is too large to derive at once (a Linear layer only)."""
    return op.kind == "linear" and 2 * w.numel() * w.element_size() > BLOCK_BYTES


def _unit_blocks(op, w):
    """Slices of output units: all of them at once, or blocks for a large Linear weight."""
    if not _blocked(op, w):
        yield slice(None)
        return
    step = max(1, BLOCK_BYTES // (2 * w[0].numel() * w.element_size()))
    for start in range(0, len(w), step):
        yield slice(start, start + step)


def _quotients(op, z, relevance):
    """For one input-sign group ``u >= 0`` with Za = Lin(u, W+), Zb = Lin(u, |W-|) stacked in
    ``z``: what to push back through the stacked weight.

    Positive relevance flows along Za; all relevance along Zb in proportion Zb/(Za+Zb); negative
    relevance along Za for a Linear layer and along Zb for a Conv2d layer (as the reference
    does).
    """
    za, zb = split_pair(op, z)
    s = torch.empty_like(z)  # Sa and Sb, laid out as the stacked map's output
    sa, sb = pair_views(op, s)
    if op.kind == "linear":  # R+ and R- both along Za
        sdiv(relevance, za, out=sa)
    else:  # R+ along Za, R- along Zb
        sdiv(relevance.clamp(min=0), za, out=sa)
    # Za, Zb >= 0, so Zb != 0 implies Za + Zb != 0.
    sdiv(relevance, za + zb, out=sb).masked_fill_(zb == 0, 0)
    if op.kind != "linear":
        sb.add_(sdiv(relevance.clamp(max=0), zb))
    return pair_join(op, s, sa, sb)


def input_layer(op, x, w, relevance, input_pad=None):
    """§4, z^B: the input bounded per sample by its minimum L and maximum H. When the layer reads
    the image through zero padding (``input_pad``), the bounds are taken over the image and are
    zero on the border, so the border gets no relevance. Where ``Z = 0`` but relevance arrives
    (a constant patch), §7.3 shares it equally over the receptive field on the image.

    ``Z = Lin(x, W) - Lin(L, W+) - Lin(H, W-)`` is computed as ``Lin(x - L, W+) + Lin(x - H, W-)``,
    a sum of two non-negative maps: equal in exact arithmetic, and exactly 0 on a constant patch
    where the first form leaves a rounding residue that the division would blow up. An output
    that reads nothing but padding (a detector's batch padded to a multiple of 32 under a
    7x7 convolution) can still be handed relevance by the layers above: that is shared evenly
    over the image, as §8.6 does for relevance that lands on no operand."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    support = _support(x, input_pad)
    dims = tuple(range(1, x.dim()))
    if support is None:
        low = x.amin(dim=dims, keepdim=True)
        high = x.amax(dim=dims, keepdim=True)
        above, below = x - low, x - high
        ones = torch.ones_like(x[:1])
    else:
        inside = support.bool()
        low = x.masked_fill(~inside, float("inf")).amin(dim=dims, keepdim=True)
        high = x.masked_fill(~inside, float("-inf")).amax(dim=dims, keepdim=True)
        above, below = (x - low) * support, (x - high) * support
        ones = support
    z, back = _two_maps(op, above, wp, below, wn)
    s = sdiv(relevance, z)
    ra, rb = back(s)
    r = above * ra + below * rb
    lost = lost_where_zero(relevance, z)
    if lost is not None:
        flat = torch.ones_like(w)
        field = lin(op, ones, flat)
        r += ones * lin_t(op, sdiv(lost, field), flat, x.shape)
        if support is not None:  # outputs that read the border only: over the whole image
            stranded = sample_sum(lost * (field == 0)).view(-1, *([1] * (x.dim() - 1)))
            r += support * stranded / support.sum()
    return r


def _two_maps(op, a, wa, b, wb):
    """``Lin(a, wa) + Lin(b, wb)`` and the function that takes ``s`` to the two transposes
    ``(Linᵀ(s, wa), Linᵀ(s, wb))``. Where the layer allows it, as one map of the inputs and
    weights joined along the input channels: one call on six channels costs about what one on
    three does (an image's first layer). Every product is still non-negative here, so the sum
    is exactly 0 where every product is."""
    if op.kind == "linear" or (op.fn in (F.conv1d, F.conv2d, F.conv3d)
                               and op.kwargs.get("groups", 1) == 1):
        dim = -1 if op.kind == "linear" else 1
        joined = torch.cat([wa, wb], 1)
        shape = list(a.shape)
        shape[dim] *= 2
        return (lin(op, torch.cat([a, b], dim), joined),
                lambda s: lin_t(op, s, joined, shape).chunk(2, dim))
    return (lin(op, a, wa) + lin(op, b, wb),
            lambda s: (lin_t(op, s, wa, a.shape), lin_t(op, s, wb, b.shape)))


def _support(x, pad):
    """1 on the image, 0 on an explicit zero-padding border, shaped (1, C, H, W); None if the
    layer reads the image directly."""
    if pad is None:
        return None
    inner = list(x.shape[1:])
    for i in range(len(pad) // 2):
        inner[-1 - i] -= pad[2 * i] + pad[2 * i + 1]
    return F.pad(torch.ones(1, *inner, dtype=x.dtype, device=x.device), list(pad))


@register_rule("add", method="rap-stable", needs_output=True)
def stable_add(op, relevance, run):
    """§7.5: ``R_i = R (x_i + ε s |x_i|) / (z + ε s Σ|x_j|)`` with ``s = sign(z)`` (+1 at 0). The
    numerators sum to the denominator, so it conserves; ``|denominator| >= ε Σ|x_j|`` bounds every
    share. Where both operands are 0, each gets half (the flat share of ``rap``'s sum)."""
    a, b = run.args(op)
    z = run.output(op)
    eps = run.options["epsilon"]
    s = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
    denominator = z + eps * s * (a.abs() + b.abs())
    scaled = sdiv(relevance, denominator)
    return flat_where_zero(op, (a, b), relevance, denominator,
                           lambda value: (value + eps * s * value.abs()) * scaled)


@register_rule("resample", method="rap", needs_output=True, dtypes=WITH_BFLOAT16)
def resample(op, relevance, run):
    """§9.2: resampling is a linear map with non-negative weights, the z-rule with the pool's
    flat share. Between the output layer and the output (a segmenter's upsampling of its class
    map, §9.1) what arrives is the target's weighting ``d``, not relevance: it is carried back
    by the map's transpose, ``d_in = Wᵀ d``, so that ``Σ d_in ⊙ x = Σ d ⊙ y`` (the z-rule would
    divide by logits near 0)."""
    if run.note(op).get("carry"):
        return (input_vjp(op, run, lambda _: relevance)[1],)
    return pool(op, relevance, run)


@register_rule("resample", method="rap-stable", needs_output=True, dtypes=WITH_BFLOAT16)
def stable_resample(op, relevance, run):
    """As ``rap``'s resampling, with §7.5's stabilised z-rule for a signed input. Bicubic
    weights can be negative, where §7.5's bound does not hold: it keeps the plain z-rule, which
    conserves with any weights (not §3's sign split that §9.2 asks for: relprop has no explicit
    W⁺/W⁻ of an interpolation kernel)."""
    if run.note(op).get("carry") or op.kwargs.get("mode") in SIGNED_RESAMPLING:
        return resample(op, relevance, run)
    return stable_pool(op, relevance, run)


@register_rule("pool", method="rap", needs_output=True, dtypes=WITH_BFLOAT16)
def pool(op, relevance, run):
    """§5 and §9.2: max pooling routes relevance to the winner; an average pool or a mean is a
    linear map with non-negative weights and takes the z-rule, with §7.3's flat share where a
    window sums to 0 but relevance arrives (a window of ReLU zeros, which a residual block's
    LayerNorm or shift behind the pool can still hand relevance: it was dropped there)."""
    if is_max_pool(op):
        return route_pool(op, relevance, run)
    return (positive_map(op, relevance, run, 0.0),)


@register_rule("pool", method="rap-stable", needs_inputs=True, needs_output=True,
               dtypes=WITH_BFLOAT16)
def stable_pool(op, relevance, run):
    """§9.2 in ``rap-stable``: an average of a signed input takes the stabilised z-rule of §7.5
    (an average of non-negative inputs is the same rule as ``rap``'s, computed as that; a max
    or a 2-norm, which are not linear, take ``rap``'s rule)."""
    if not is_linear_pool(op) or op.input_nonneg:
        return pool(op, relevance, run)
    return (positive_map(op, relevance, run, run.options["epsilon"]),)


def positive_map(op, relevance, run, epsilon):
    """The z-rule of ``z = W·x`` with ``W >= 0`` (pooling, means, resampling):
    ``R_j = Σ_i w_ij (x_j + ε s_i |x_j|) R_i / (z_i + ε s_i Σ_j w_ij |x_j|)`` with
    ``s = sign(z)`` (+1 at 0); ``ε = 0`` is the plain z-rule. Where the denominator is 0 (every
    input of the window is 0), the relevance is shared over the window in proportion to ``W``
    (§7.3's flat rule), so that the op conserves."""
    z = run.output(op)
    if epsilon:
        s = torch.where(z >= 0, 1.0, -1.0).to(z.dtype)
        args = run.args(op)
        magnitude = op.fn(args[0].abs(), *args[1:], **run.kwargs(op))
        denominator = z + epsilon * s * magnitude
    else:
        denominator = z
    x, g = input_vjp(op, run, lambda _: sdiv(relevance, denominator))
    r = x * g
    if epsilon:
        r += epsilon * x.abs() * input_vjp(op, run, lambda _: s * sdiv(relevance, denominator))[1]
    lost = lost_where_zero(relevance, denominator)
    if lost is not None:
        ones = torch.ones_like(x)
        args = run.args(op)
        reach = op.fn(ones, *args[1:], **run.kwargs(op))
        r += input_vjp(op, run, lambda _: sdiv(lost, reach))[1]
    return r


@register_rule("matmul", method="rap", needs_inputs=True, needs_output=True)
def attention(op, relevance, run):
    """§8.5: in ``A·V`` with ``A`` attention's softmax weights, ``A`` is a non-negative weight of
    the tokens of ``V``: the hidden-layer rule (§3, with §7.2 since ``V`` is signed) with
    ``W = A``, shift included; ``A`` (and so ``Q``, ``K``) gets none. ``W⁻ = 0``, so ``Zb = 0``
    and each sign group's share is ``u ⊙ Aᵀ(R_g / A·u)``, shifted to its own total. A product
    of two tensors without a weight among them gets the shared uniform rule."""
    roles = weight_and_signal(op)
    if roles is None:
        return common_matmul(op, relevance, run)
    weight, signal = roles
    values = list(run.args(op))
    v = values[signal]
    signs = [v.clamp(min=0), (-v).clamp(min=0)]  # |v-| for v-
    z = []
    for u in signs:
        values[signal] = u
        z.append(op.fn(*values, **run.kwargs(op)))
    out = torch.zeros_like(v)
    for u, zi, ri in zip(signs, z, split_by_sign(relevance, z[0], z[1])):
        back = factor_vjps(op, run, sdiv(ri, zi), (signal,))[signal]
        out += shift(back.mul_(u), sample_sum(ri))
    return tuple(out if name == op.args[signal].name else None for name in op.inputs)


@register_rule("movement", method="rap", needs_inputs=False, dtypes=WITH_BFLOAT16)
def movement(op, relevance, run):
    """§8.6: relevance that lands where no tensor operand was (a class token joined by ``cat``,
    a padded border whose tokens a norm made non-zero) goes back to the operands, spread
    uniformly over their non-zero entries, so that the pixels still sum to the score. Where
    nothing lands there (a convolution's zero padding gets no relevance), this is the routing
    of §5 exactly, up to rounding."""
    shares = route(op, relevance, run)
    routed = [s for s in shares if s is not None]
    if not run.note(op).get("may_lose") or not routed:
        return shares
    lost = sample_sum(relevance).flatten() - sum(sample_sum(s).flatten() for s in routed)
    count = sum(sample_sum((s != 0).to(s.dtype)).flatten() for s in routed)
    delta = sdiv(lost, count)
    return tuple(None if s is None else
                 s + (s != 0) * delta.view(-1, *([1] * (s.dim() - 1))) for s in shares)
