"""Relative Attributing Propagation (Nam et al., AAAI 2020), as ``shared/docs/rap-spec.md`` states
it: absolute-influence normalisation at the output layer (§2), relevant/irrelevant propagation
with uniform shifting through hidden layers (§3, generalised to signed inputs as in §7), and the
z^B rule at the input layer (§4). The graph says which layer plays which role.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import WITH_BFLOAT16, register_rule
from .algebra import (cached, lin, lin_t, pair_join, pair_views, sample_sum, sdiv,
                      split_pair, stack_pair)


def _signs(run, op, w):
    """``(W+, W-)`` of a weight, once per weight version."""
    return cached(run, op, "signs", w, lambda w: (w.clamp(min=0), w.clamp(max=0)))


def _pair(run, op, w):
    """``W+`` and ``|W-|`` stacked, so that one map gives Za and Zb and one transpose pushes back
    through both."""
    return cached(run, op, "pair", w, lambda w: stack_pair(op, w.clamp(min=0), (-w).clamp(min=0)))


def shift(c: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Uniform shifting: move every non-zero entry of ``c`` by the same amount so that each
    sample sums to ``total`` (zeros stay zero; nothing moves where all are zero). In place."""
    zero = c == 0
    count = (c[0].numel() - sample_sum(zero)).to(c.dtype)
    delta = sdiv(sample_sum(c) - total, count)
    return c.sub_(delta).masked_fill_(zero, 0)


@register_rule("linear", method="rap", needs_inputs=True, dtypes=WITH_BFLOAT16)
@register_rule("conv", method="rap", needs_inputs=True, dtypes=WITH_BFLOAT16)
def layer(op, relevance, run):
    x, w, b = run.args(op)
    if op.role == "output":
        return (output_layer(op, x, w, b, relevance, run),)
    if op.role == "input":
        return (input_layer(op, x, w, relevance, run),)
    return (hidden_layer(op, x, w, relevance, run),)


def output_layer(op, x, w, b, d, run):
    """§2: the signed contribution of each input to the target logit (the bias shared between
    the positive and the negative side), then ``R = |C| * sum(C) / sum(|C|)``."""
    wp, wn = _signs(run, op, w)
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
    if b is not None:
        bias = b.view(-1, *([1] * (d.dim() - 2)))
        bias_pos = bias * d * sdiv(pos, pos + neg)
        bias_neg = bias * d * sdiv(neg, pos + neg)
    numer = [d * zpp + bias_pos, d * zpn + bias_neg] + ([d * z[2], d * z[3]] if signed else [])
    c = sum(xi * lin_t(op, sdiv(n, zi), wi, x.shape)
            for (xi, wi), n, zi in zip(parts, numer, z))
    return c.abs() * sdiv(sample_sum(c), sample_sum(c.abs()))


def hidden_layer(op, x, w, relevance, run):
    """§3 for a non-negative input; §7.2 for a signed one: split R between the x+ and x- groups
    by contribution magnitude, propagate and shift each group to its own share."""
    pair = _pair(run, op, w)
    if op.input_nonneg:
        return _group(op, x, lin(op, x, pair), relevance, pair)
    up, un = x.clamp(min=0), (-x).clamp(min=0)  # |x-|: the x- group in its positive form
    zp, zn = lin(op, up, pair), lin(op, un, pair)
    mp, mn = sum(split_pair(op, zp)), sum(split_pair(op, zn))
    m = mp + mn
    rp = torch.where(m == 0, relevance, relevance * sdiv(mp, m))
    rn = relevance * sdiv(mn, m)
    return _group(op, up, zp, rp, pair) + _group(op, un, zn, rn, pair)


def _group(op, u, z, relevance, pair):
    """One input-sign group, ``u >= 0``: Za = Lin(u, W+), Zb = Lin(u, |W-|).

    Positive relevance flows along Za; all relevance along Zb in proportion Zb/(Za+Zb); negative
    relevance along Za for a Linear layer and along Zb for a Conv2d layer (as the reference
    does). The result is shifted so that the group conserves its relevance.
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
    c = lin_t(op, pair_join(op, s, sa, sb), pair, u.shape).mul_(u)
    return shift(c, sample_sum(relevance))


def input_layer(op, x, w, relevance, run):
    """§4, z^B: the input bounded per sample by its minimum L and maximum H. When the layer reads
    the image through zero padding, the bounds are taken over the image and are zero on the
    border, so the border gets no relevance."""
    wp, wn = _signs(run, op, w)
    support = _support(op, x)
    dims = tuple(range(1, x.dim()))
    if support is None:
        low = x.amin(dim=dims, keepdim=True)
        high = x.amax(dim=dims, keepdim=True)
        ones = torch.ones_like(x[:1])
    else:
        inside = support.bool()
        low = x.masked_fill(~inside, float("inf")).amin(dim=dims, keepdim=True)
        high = x.masked_fill(~inside, float("-inf")).amax(dim=dims, keepdim=True)
        ones = support
    # The bounds are constant per sample: one single-image map each, scaled per sample.
    z = lin(op, x, w) - low * lin(op, ones, wp) - high * lin(op, ones, wn)
    s = sdiv(relevance, z)
    return (x * lin_t(op, s, w, x.shape) - low * ones * lin_t(op, s, wp, x.shape)
            - high * ones * lin_t(op, s, wn, x.shape))


def _support(op, x):
    """1 on the image, 0 on an explicit zero-padding border, shaped (1, C, H, W); None if the
    layer reads the image directly."""
    pad = op.attrs.get("input_pad")
    if pad is None:
        return None
    inner = list(x.shape[1:])
    for i in range(len(pad) // 2):
        inner[-1 - i] -= pad[2 * i] + pad[2 * i + 1]
    return F.pad(torch.ones(1, *inner, dtype=x.dtype, device=x.device), list(pad))
