"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019) in relprop's engine,
as the composites of Zennit 0.5.1 define it, so that the two can be checked number for number.

A method is a composite: a rule for convolutions, one for dense (Linear) layers and, for some,
one for the first layer. BatchNorm is merged into the layer before it (a fold read off the
graph, as Zennit's canonizers do; the user's modules are never edited); ReLU and other
elementwise ops pass relevance; residual additions and average pooling share it in proportion
to their inputs; max pooling hands it to the winner. The relevance starts at the explained score.

Options (keyword arguments of ``relprop.explain``): ``epsilon`` of the ε-rule (1e-6),
``stabilizer`` added to every other denominator (1e-6), ``gamma`` (0.25), and for the z^B first
layer ``low``/``high`` (default: each image's own minimum and maximum).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir import resolve
from ..registry import Option
from .registry import register_analysis, register_rule
from .common import input_vjp, is_max_pool, operand_shares
from .algebra import lin, lin_t, stabilize, with_bias

EPSILON = Option("epsilon", 1e-6, "ε of the ε-rule")
STABILIZER = Option("stabilizer", 1e-6, "added to every other denominator")
GAMMA = Option("gamma", 0.25, "how much the γ-rule boosts the contributions of the output's sign")
LOW = Option("low", None, "z^B's lower bound of the input (None: each image's minimum)")
HIGH = Option("high", None, "z^B's upper bound of the input (None: each image's maximum)")
BASIC = (EPSILON, STABILIZER)


@dataclass(frozen=True)
class Composite:
    """A rule for convolutions, one for Linear layers, one for the first layer (or None), and
    the options those rules read: a composite takes no option that none of its rules reads."""

    conv: str
    linear: str
    first: str | None
    options: tuple[Option, ...] = BASIC


COMPOSITES = {
    "lrp-epsilon": Composite("epsilon", "epsilon", None),
    "lrp-epsilon-plus": Composite("zplus", "epsilon", None),
    "lrp-epsilon-plus-flat": Composite("zplus", "epsilon", "flat"),
    "lrp-epsilon-alpha2beta1": Composite("alpha2beta1", "epsilon", None),
    "lrp-epsilon-alpha2beta1-flat": Composite("alpha2beta1", "epsilon", "flat"),
    "lrp-epsilon-gamma-box": Composite("gamma", "epsilon", "zbox", BASIC + (GAMMA, LOW, HIGH)),
}


def analyse(method: str, graph) -> dict:
    """Which rule each layer gets, and the BatchNorm folded into it."""
    composite = COMPOSITES[method]
    conv_rule, linear_rule, first_rule = composite.conv, composite.linear, composite.first
    notes = {}
    for op in graph.ops:
        if op.kind not in ("linear", "conv"):
            continue
        rule = conv_rule if op.kind == "conv" else linear_rule
        if first_rule and op.name in graph.input_layers and (first_rule == "flat"
                                                              or op.kind == "conv"):
            rule = first_rule
        notes[op.name] = {"rule": rule}
    for name, bn_op in batchnorm_folds(graph).items():
        notes[name]["batchnorm"] = bn_op
    return notes


def batchnorm_folds(graph) -> dict:
    """{layer: the BatchNorm op folded into it}: a BatchNorm that is its layer's only user."""
    users: dict[str, int] = {}
    for op in graph.ops:
        for name in op.inputs:
            users[name] = users.get(name, 0) + 1
    return {op.inputs[0]: op for op in graph.ops
            if op.kind == "batchnorm" and users[op.inputs[0]] == 1 and op.inputs[0] in graph
            and graph.op(op.inputs[0]).kind in ("linear", "conv")}


def merged(op, w, b, bn_op, run):
    """The layer's weight and bias with the BatchNorm after it folded in."""
    mean, var, gamma, beta = resolve(bn_op.args[1:], run.env)
    scale = (var + bn_op.kwargs["eps"]).rsqrt()
    if gamma is not None:
        scale = scale * gamma
    shape = (-1,) + (1,) * (w.dim() - 1)
    bias = -mean if b is None else b - mean
    bias = bias * scale + (beta if beta is not None else 0)
    return w * scale.view(shape), bias


def layer(op, relevance, run):
    x, w, b = run.args(op)
    note = run.note(op)
    if "batchnorm" in note:
        w, b = merged(op, w, b, note["batchnorm"], run)
    options = run.options
    return (LAYER_RULES[note["rule"]](op, x, w, b, relevance, options),)


def epsilon_rule(op, x, w, b, r, options):
    """ε-rule: ``x * W^T (R / (z + ε sign z))``."""
    z = stabilize(with_bias(op, lin(op, x, w), b), options["epsilon"])
    return x * lin_t(op, r / z, w, x.shape)


def _signed_parts(op, x, w, b, r, options, pairs):
    """Each ``(weight, bias)`` pair sums ``Lin(x+, wa) + ba + Lin(x-, wb)`` into one denominator;
    returns ``x+ * W_a^T s + x- * W_b^T s`` per pair."""
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    out = []
    for (wa, ba), wb in pairs:
        z = stabilize(with_bias(op, lin(op, xp, wa), ba) + lin(op, xn, wb), options["stabilizer"])
        s = r / z
        out.append(xp * lin_t(op, s, wa, x.shape) + xn * lin_t(op, s, wb, x.shape))
    return out


def _clamped(t, **bound):
    return None if t is None else t.clamp(**bound)


def zplus_rule(op, x, w, b, r, options):
    """z+: positive contributions only (α1β0), negative inputs through negative weights."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    (c,) = _signed_parts(op, x, w, b, r, options, [((wp, _clamped(b, min=0)), wn)])
    return c


def alpha2beta1_rule(op, x, w, b, r, options):
    """α2β1: twice the positive contributions' share minus the negative contributions' share."""
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    pos, neg = _signed_parts(op, x, w, b, r, options, [((wp, _clamped(b, min=0)), wn),
                                                       ((wn, _clamped(b, max=0)), wp)])
    return 2 * pos - neg


def gamma_rule(op, x, w, b, r, options):
    """γ-rule (Zennit's generalised form): positive contributions boosted by γ where the output
    is positive, negative ones where it is negative."""
    g = options["gamma"]
    up, down = w + g * w.clamp(min=0), w + g * w.clamp(max=0)
    bias_up = None if b is None else b + g * b.clamp(min=0)
    bias_down = None if b is None else b + g * b.clamp(max=0)
    z = with_bias(op, lin(op, x, w), b)
    (pos,) = _signed_parts(op, x, w, b, r * (z > 0), options, [((up, bias_up), down)])
    (neg,) = _signed_parts(op, x, w, b, r * (z < 0), options, [((down, bias_down), up)])
    return pos + neg


def flat_rule(op, x, w, b, r, options):
    """Flat: the relevance spread evenly over each output's receptive field."""
    ones_w, ones_x = torch.ones_like(w), torch.ones_like(x)
    z = stabilize(lin(op, ones_x, ones_w), options["stabilizer"])
    return lin_t(op, r / z, ones_w, x.shape)


def zbox_rule(op, x, w, b, r, options):
    """z^B with the input bounded by ``low``/``high`` (default: each image's own range)."""
    dims = tuple(range(1, x.dim()))
    low = options["low"] if options["low"] is not None else x.amin(dim=dims, keepdim=True)
    high = options["high"] if options["high"] is not None else x.amax(dim=dims, keepdim=True)
    low = torch.as_tensor(low, dtype=x.dtype, device=x.device).expand_as(x)
    high = torch.as_tensor(high, dtype=x.dtype, device=x.device).expand_as(x)
    wp, wn = w.clamp(min=0), w.clamp(max=0)
    z = stabilize(lin(op, x, w) - lin(op, low, wp) - lin(op, high, wn), options["stabilizer"])
    s = r / z
    return x * lin_t(op, s, w, x.shape) - low * lin_t(op, s, wp, x.shape) \
        - high * lin_t(op, s, wn, x.shape)


LAYER_RULES = {"epsilon": epsilon_rule, "zplus": zplus_rule, "alpha2beta1": alpha2beta1_rule,
               "gamma": gamma_rule, "flat": flat_rule, "zbox": zbox_rule}

def pool(op, relevance, run):
    """Max pooling: the relevance to the winner (the gradient); average pooling, means and
    resampling: in proportion to the inputs, the denominator stabilised (Zennit has no rule of
    its own for resampling; its gradient through it is this z-rule, unstabilised)."""
    if is_max_pool(op):
        return (input_vjp(op, run, lambda z: relevance)[1],)
    x, g = input_vjp(op, run, lambda z: relevance / stabilize(z, run.options["stabilizer"]))
    return (x * g,)


def add(op, relevance, run):
    """The sum of two tensors: each operand's share in proportion to it, stabilised."""
    s = relevance / stabilize(run.output(op), run.options["stabilizer"])
    return operand_shares(op, run.args(op), lambda value: value * s)


for _method in COMPOSITES:
    register_analysis(_method, lambda graph, _m=_method: analyse(_m, graph))
    register_rule("linear", layer, method=_method)
    register_rule("conv", layer, method=_method)
    register_rule("pool", pool, method=_method, needs_output=False)
    register_rule("resample", pool, method=_method, needs_output=False)
    register_rule("add", add, method=_method, needs_output=True)
