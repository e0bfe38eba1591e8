"""AttnLRP (Achtibat et al., ICML 2024) as LXT 2.1 computes it on torchvision's ViT
(``lxt.efficient.monkey_patch(torchvision.models.vision_transformer)``), rule by rule, so that
the two agree number for number (rap-spec §8.5).

LXT computes LRP as gradient × input with modified gradients. Written out layer by layer that is
the z-rule ``R_x = x ⊙ Jᵀ(R_y / y)`` through every op that is linear in its input (Linear and
Conv by LRP-0, a sum, a constant added to a tensor, which keeps its share), the identity rule at
GELU and the other elementwise activations, LayerNorm with its σ held constant (a linear map of
the centred input), and inside attention LXT's choice for the ViT, CP-LRP: the softmax weights
are a weight of V (Q and K get none). The relevance starts at the explained score. Ops outside
that set (BatchNorm, GroupNorm, pooling) take the rules every propagation method shares.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ir import ModuleCall, resolve
from .registry import Factored, derive, register_analysis, register_rule
from .algebra import lin, lin_t, live_units, sdiv, with_bias
from .common import fit, matmul, matmul_factor, matmul_reaches, operand_shares, per_input
from .common import uniform_factors, uniform_shares
from .lrp import batchnorm_folds, merged

METHOD = "lrp-attn"
IDENTITY_EPSILON = 1e-10  # LXT's identity rule divides the output by (input + 1e-10)


@register_analysis(METHOD)
def analyse(graph) -> dict:
    """A BatchNorm after a layer (CNN parts: MaxViT's MBConv) is folded into it, as the LRP
    composites do, so that LRP-0 divides by what the relevance is a share of."""
    return {name: {"batchnorm": bn} for name, bn in batchnorm_folds(graph).items()}


def _no_fold(op, note) -> bool:
    return "batchnorm" not in note


def layer_factor(op, g, run):
    """LRP-0 in factor form: ``Wᵀ g``, reading the weight alone (the layer's input and output
    enter only where the relevance changes form)."""
    w = resolve(op.args[1], run.env)
    live = live_units(op, g)
    if live is not None:
        g, w = g[..., live], w[live]
    return (lin_t(op, g, w, run.shape(op.inputs[0])),)


@register_rule("linear", method=METHOD, needs_output=True,
               factor=Factored(layer_factor, when=_no_fold))
@register_rule("conv", method=METHOD, needs_output=True,
               factor=Factored(layer_factor, when=_no_fold))
def layer(op, relevance, run):
    """LRP-0: ``x ⊙ Wᵀ(R / z)`` with ``z`` the layer's output, bias included (its share stays);
    with a folded BatchNorm, the weight and output are the folded layer's. Only the units that
    receive relevance are mapped back (:func:`live_units`)."""
    x, w, b = run.args(op)
    bn = run.note(op).get("batchnorm")
    if bn is None:
        z = run.output(op)
    else:
        w, b = merged(op, w, b, bn, run)
        z = with_bias(op, lin(op, x, w), b)
    live = live_units(op, relevance)
    if live is not None:
        relevance, z, w = relevance[..., live], z[..., live], w[live]
    return (x * lin_t(op, sdiv(relevance, z), w, x.shape),)


def add_factor(op, g, run):
    """The z-rule at a sum in factor form: each operand's factor is the sum's (summed back onto
    an operand that was broadcast, and twice for a tensor added to itself)."""
    return per_input(op, [fit(g, run.shape(ref.name)) for ref in op.args])


@register_rule("add", method=METHOD, needs_output=True, factor=Factored(add_factor))
def add(op, relevance, run):
    """The z-rule at a sum of two tensors: each operand its share of the sum."""
    s = sdiv(relevance, run.output(op))
    return operand_shares(op, run.args(op), lambda value: value * s)


def _elementwise(op) -> str:
    """How lrp-attn treats an elementwise op: a constant's ``sum`` keeps its share as a bias
    does, ``scaling`` (and dropout, copies) passes R, an ``activation`` takes the identity rule."""
    if op.fn in (torch.add, torch.sub):
        return "sum"
    if op.fn in (torch.mul, torch.div) or op.sign == "same":
        return "scaling"
    return "activation"


def passthrough_forward(op, args, kwargs, note):
    """An elementwise op's forward, keeping the ratio its factor form multiplies by (as LXT
    keeps ``y / (x + 1e-10)`` at an activation): ``y / x`` where ``R`` passes (scaling), ``y / (x +
    1e-10)`` at an activation, nothing where the factor passes as it is (a constant's sum, an
    op that returns its input)."""
    y = op.fn(*args, **kwargs)
    x = args[0]
    kind = _elementwise(op)
    if kind == "sum" or y is x:
        return y, None
    return y, sdiv(y, x if kind == "scaling" else x + IDENTITY_EPSILON)


def passthrough_factor(op, g, run):
    """:func:`passthrough` in factor form: ``g`` times the ratio its forward kept."""
    ratio = run.by_product(op)
    return (fit(g if ratio is None else g * ratio, run.shape(op.inputs[0])),)


@register_rule("passthrough", method=METHOD, needs_inputs=True, needs_output=True,
               factor=Factored(passthrough_factor, prefer=False, forward=passthrough_forward))
def passthrough(op, relevance, run):
    """A constant added to a tensor (ViT's position embedding) keeps its share, as a bias does:
    ``R_x = x ⊙ R / y``. Everything else elementwise (activations, scaling) passes ``R``."""
    x = run.args(op)[0]
    kind = _elementwise(op)
    if kind == "sum":
        share = x * sdiv(relevance, run.output(op))
    elif kind == "scaling":
        share = relevance
    else:  # LXT's identity rule, R·x/(x + 1e-10)
        share = relevance * sdiv(x, x + IDENTITY_EPSILON)
    return (fit(share, x.shape),)


register_rule("matmul", matmul, method=METHOD, needs_inputs=True, needs_output=True,
              factor=Factored(matmul_factor, needs_inputs=True), reaches=matmul_reaches)


def _layer_norm_module(op):
    """The op's ``nn.LayerNorm``, or None (another op, or a subclass with a forward of its own,
    such as a channels-first LayerNorm2d that permutes)."""
    module = op.fn.module if isinstance(op.fn, ModuleCall) else None
    if isinstance(module, nn.LayerNorm) and type(module).forward is nn.LayerNorm.forward:
        return module
    return None


def _layer_norm_settings(op, args, kwargs):
    """(input, normalised shape, weight, bias, eps) of a LayerNorm op, or None for another norm."""
    module = _layer_norm_module(op)
    if module is not None:
        return args[0], tuple(module.normalized_shape), module.weight, module.bias, module.eps
    if op.fn is F.layer_norm:
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        bound = {"weight": None, "bias": None, "eps": 1e-5, **dict(zip(names, args)), **kwargs}
        shape = bound["normalized_shape"]
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        return bound["input"], shape, bound["weight"], bound["bias"], bound["eps"]
    return None


def layer_norm_forward(op, args, kwargs, note):
    """A LayerNorm's forward as ``torch.native_layer_norm``, the kernel ``F.layer_norm`` runs,
    which hands back ``1/σ`` beside the same output: the rule holds σ constant and would
    otherwise compute it again from the input."""
    settings = _layer_norm_settings(op, args, kwargs)
    if settings is None:
        return op.fn(*args, **kwargs), None
    out, _, rstd = torch.native_layer_norm(*settings)
    return out, rstd


def _is_layer_norm(op, note=None) -> bool:
    return _layer_norm_module(op) is not None or op.fn is F.layer_norm


def norm_factor(op, g, run):
    """LayerNorm with σ held constant in factor form: ``(γ ⊙ g − mean)/σ``, reading γ and the
    ``1/σ`` its own forward kept."""
    _, shape, weight, _, _ = _layer_norm_settings(op, (None, *resolve(op.args[1:], run.env)),
                                                  run.kwargs(op))
    dims = tuple(range(-len(shape), 0))
    if weight is not None:
        g = g * weight
    return ((g - g.mean(dim=dims, keepdim=True)) * run.by_product(op).to(g.dtype),)


@register_rule("norm", method=METHOD, needs_output=True, forward=layer_norm_forward,
               factor=Factored(norm_factor, when=_is_layer_norm))
def norm(op, relevance, run):
    """LayerNorm with σ held constant: ``y = γ ⊙ (x − mean x)/σ + β`` is then linear in ``x``,
    and the z-rule through it gives ``R_x = x ⊙ (g − mean g)/σ`` with ``g = γ ⊙ R / y`` (β keeps
    its share). Other norms pass ``R``."""
    settings = _layer_norm_settings(op, run.args(op), run.kwargs(op))
    if settings is None:
        return (relevance,)
    x, shape, weight, _, eps = settings
    dims = tuple(range(-len(shape), 0))
    rstd = run.by_product(op)
    if rstd is None:
        rstd = (x.var(dim=dims, unbiased=False, keepdim=True) + eps).rsqrt()
    g = sdiv(relevance, run.output(op))
    if weight is not None:
        g = g * weight
    return (x * (g - g.mean(dim=dims, keepdim=True)) * rstd.to(x.dtype),)


# --------------------------------------------------------------------------- attnlrp
# AttnLRP with its own attention rules, as LXT 2.1's ``attnLRP`` patch maps compute it for
# language models (``lxt.efficient.models.{gpt2,llama,qwen2,bert}``, its default there): the
# softmax weights are no weight of V but a signal, and both products of attention take the
# uniform rule. Everything else is lrp-attn's.
FULL = "attnlrp"
derive(FULL, METHOD)


@register_rule("matmul", method=FULL, needs_inputs=True, needs_output=True,
               factor=Factored(uniform_factors, needs_inputs=True))
def uniform_matmul(op, relevance, run):
    """The uniform rule at every product of two tensors, attention's ``softmax(QKᵀ)·V``
    included (AttnLRP, Prop. 3.2): each factor half of its z-rule share."""
    return uniform_shares(op, run, sdiv(relevance, run.output(op)))


def softmax_factor(op, g, run):
    """AttnLRP's softmax rule in factor form (``R = s ⊙ g``): ``s ⊙ g − s Σ s ⊙ g``."""
    s = run.output(op)
    r = s * g
    found = r - s * r.sum(run.kwargs(op)["dim"], keepdim=True)
    return (torch.where(s > 0, found, torch.zeros((), dtype=found.dtype)),)


@register_rule("softmax", method=FULL, needs_inputs=True, needs_output=True,
               factor=Factored(softmax_factor, needs_output=True, prefer=False))
def softmax(op, relevance, run):
    """AttnLRP's softmax rule (Prop. 3.3), LXT's gradient × input through it:
    ``R_x = x ⊙ (R − s Σ R)`` along the softmax's dim; 0 where a masked score is -inf (its
    weight and relevance are 0)."""
    x, s = run.args(op)[0], run.output(op)
    dim = run.kwargs(op)["dim"]
    found = x * (relevance - s * relevance.sum(dim, keepdim=True))
    return (torch.where(s > 0, found, torch.zeros((), dtype=found.dtype)),)
