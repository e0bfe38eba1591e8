"""What each call in a model is, in relprop's vocabulary of ops.

Real models say the same thing many ways (``nn.Conv2d``, ``F.conv2d`` on an attribute, a
conv under a weight-norm parametrization; ``nn.ReLU(inplace=True)``, ``F.relu``, ``x.relu_()``;
``x + y``, ``torch.add``). A normaliser turns each into one op of the vocabulary below, with its
tensor inputs first in ``args`` and its static settings in ``kwargs``:

==============  =======================================================================
kind            meaning (``args``)
==============  =======================================================================
``linear``      ``F.linear(x, weight, bias)``
``conv``        ``F.conv1d/2d/3d(x, weight, bias, **kwargs)`` with numeric stride/padding/...,
                and the transposed convolutions ``F.conv_transpose1d/2d``
``batchnorm``   ``F.batch_norm(x, mean, var, weight, bias)`` in inference mode
``passthrough`` elementwise, relevance unchanged: ReLU, Dropout, ``x * c + t``, ...
``pool``        a positively homogeneous reduction of one input: max/avg pooling, mean
``resample``    ``F.interpolate``/``nn.Upsample`` (nearest, bilinear, area): a linear map with
                non-negative weights fixed by the sizes (rap-spec §9.2)
``add``         the sum of two tensors (a residual connection)
``movement``    a pure rearrangement: reshape, flatten, slicing, ``cat``, zero padding,
                ``chunk``/``split``/``unbind`` (one op per piece used), ``roll``, ``expand``
``product``     the elementwise product of two tensors (a gate, or GLU-like)
``matmul``      the matrix product of two tensors (``@``, ``bmm``, a two-operand ``einsum``):
                attention's ``q·kᵀ`` and ``A·v``
``softmax``     softmax along one dimension; a gate where it weights another tensor
``norm``        a normalisation layer (LayerNorm, GroupNorm, RMSNorm, ...)
==============  =======================================================================

``register_op`` adds a module class, function or tensor method to this table.
"""
from __future__ import annotations

import difflib
import operator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .ir import Attr, ModuleCall, Op, Ref



class Kind(str, Enum):
    """The kinds of op relprop's rules know (the table above). A kind of one's own is any other
    name with a rule registered for it (``register_rule``)."""

    LINEAR = "linear"
    CONV = "conv"
    BATCHNORM = "batchnorm"
    PASSTHROUGH = "passthrough"
    POOL = "pool"
    RESAMPLE = "resample"
    ADD = "add"
    MOVEMENT = "movement"
    PRODUCT = "product"
    MATMUL = "matmul"
    SOFTMAX = "softmax"
    NORM = "norm"


class Sign(str, Enum):
    """What is known of an op's output sign: non-negative (ReLU), the same as its inputs' (a
    pooling, a copy), or anything."""

    NONNEG = "nonneg"
    SAME = "same"
    ANY = "any"


LAYER_KINDS = (Kind.LINEAR.value, Kind.CONV.value)


def _checked(kind, sign) -> tuple[str, str]:
    """``kind`` and ``sign`` as register_op takes them, refused in words where they cannot be
    meant: a sign that is none of :class:`Sign`, a kind that looks like a misspelt one of
    :class:`Kind`."""
    kind = kind.value if isinstance(kind, Kind) else kind
    if not isinstance(kind, str) or not kind.strip():
        raise ValueError(f"kind must be one of {', '.join(k.value for k in Kind)} or the name of "
                         f"a kind with a rule of your own; got {kind!r}")
    known = [k.value for k in Kind]
    close = difflib.get_close_matches(kind, known, n=1, cutoff=0.8)
    if kind not in known and close:
        raise ValueError(f"unknown kind '{kind}'; did you mean '{close[0]}'? (a kind of your own "
                         "needs relprop.register_rule(kind, ...))")
    sign = sign.value if isinstance(sign, Sign) else sign
    if sign not in [s.value for s in Sign]:
        raise ValueError(f"sign must be one of {', '.join(s.value for s in Sign)}; got {sign!r}")
    return kind, sign


@dataclass
class Normalised:
    """What a normaliser returns for one node."""

    kind: str
    fn: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    sign: str = "any"
    gate: bool = False  # the output is a gate (rap-spec §8.2)


# --------------------------------------------------------------------------- registry

_MODULES: dict[type, Callable[[nn.Module, tuple, dict], Normalised]] = {}
_FUNCTIONS: dict[Any, Callable[[tuple, dict], Normalised]] = {}
_METHODS: dict[str, Callable[[tuple, dict], Normalised]] = {}
_SIGN_BY_KIND = {"passthrough": "same", "pool": "same", "movement": "same"}
_VERSION = [0]  # counts registrations (see version())


def register_op(target, kind: str, *, sign: str | None = None) -> None:
    """Tell relprop what ``target`` is: a module class, a function, or a tensor-method name.

    A registered module class is kept whole in the trace (a leaf) and called as it is; its rule is
    the one registered for ``kind`` (one of :class:`Kind`, or a kind of one's own). ``sign``
    says what is known about the output's sign (:class:`Sign`): 'nonneg' (like ReLU), 'same' as
    the input, or 'any'. A sign that is none of these, or a kind that looks like a misspelt one
    of relprop's, is refused with a ValueError.
    """
    kind, sign = _checked(kind, sign or _SIGN_BY_KIND.get(kind, "any"))
    if isinstance(target, type) and issubclass(target, nn.Module):
        _MODULES[target] = lambda m, a, k: Normalised(kind, m, a, k, sign)
    elif isinstance(target, str):
        _METHODS[target] = lambda a, k: Normalised(kind, getattr(torch.Tensor, target), a, k, sign)
    elif callable(target):
        _FUNCTIONS[target] = lambda a, k: Normalised(kind, target, a, k, sign)
    else:
        raise TypeError(f"register_op expects a module class, a function or a method name, "
                        f"got {target!r}")
    _VERSION[0] += 1


def register_alias(target, same_as) -> None:
    """Normalise calls of ``target`` as calls of ``same_as``, a function, tensor-method name or
    arithmetic operator relprop knows, whose arguments ``target`` takes in the same order (an
    ATen overload and its functional form)."""
    if same_as in _ARITHMETIC:
        _ARITHMETIC[target] = _ARITHMETIC[same_as]
    elif same_as in _TUPLE_CALLS:
        _TUPLE_CALLS.add(target)
    else:
        _FUNCTIONS[target] = normaliser_of(same_as)
    _VERSION[0] += 1


def normaliser_of(target) -> Callable[[tuple, dict], Normalised]:
    """The normaliser of a function or tensor-method name relprop knows: ``fn(args, kwargs) ->
    Normalised``, to build the normaliser of a call whose arguments need rearranging."""
    found = _METHODS.get(target) if isinstance(target, str) else _FUNCTIONS.get(target)
    if found is None:
        raise KeyError(f"relprop has no normaliser for {target!r}")
    return found


def register_normaliser(target, fn: Callable[[tuple, dict], Normalised]) -> None:
    """Normalise calls of the function ``target`` with ``fn(args, kwargs) -> Normalised``."""
    _FUNCTIONS[target] = fn
    _VERSION[0] += 1


def register_meta(fn) -> None:
    """Calls of ``fn`` only read sizes, dtypes or devices of their tensor arguments: they carry
    no relevance (a helper that builds a mask of the right shape)."""
    _META_FUNCTIONS.add(fn)
    _VERSION[0] += 1


def _module(*types):
    def deco(f):
        for t in types:
            _MODULES[t] = f
        return f
    return deco


def _function(*targets):
    def deco(f):
        for t in targets:
            if isinstance(t, str):
                _METHODS[t] = f
            else:
                _FUNCTIONS[t] = f
        return f
    return deco


def _bind(args, kwargs, names, defaults):
    """Positional and keyword arguments of a call, as one dict in ``names`` order."""
    out = dict(defaults)
    out.update(zip(names, args))
    out.update({k: v for k, v in kwargs.items() if k in names})
    return out


def _pair(v, n=2):
    return tuple(v) if isinstance(v, (tuple, list)) else (v,) * n


def _conv_padding(padding, weight_shape, dilation):
    """Numeric symmetric padding, or None where the padding cannot be written that way."""
    if padding == "valid":
        return (0,) * len(dilation)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return _pair(padding, len(dilation))


CONVOLUTIONS = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}  # by the number of spatial dims


def _convolution(dims):
    """The normaliser of a ``dims``-D convolution: ``conv``, with ``F.conv{dims}d`` and its
    settings as tuples."""
    def normalise(args, kwargs) -> Normalised:
        b = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation",
                                 "groups"),
                  {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
        dilation, padding = _pair(b["dilation"], dims), b["padding"]
        if isinstance(padding, str):
            if isinstance(b["weight"], Ref):
                raise UnsupportedCall(f"padding='{padding}' with a computed weight")
            weight = b["weight"].get() if isinstance(b["weight"], Attr) else b["weight"]
            padding = _conv_padding(padding, weight.shape, dilation)
            if padding is None:
                raise UnsupportedCall("padding='same' that pads unevenly")
        return Normalised("conv", CONVOLUTIONS[dims], (b["input"], b["weight"], b["bias"]),
                          {"stride": _pair(b["stride"], dims), "padding": _pair(padding, dims),
                           "dilation": dilation, "groups": b["groups"]})
    return normalise


_conv = _convolution(2)


@_module(nn.Conv1d, nn.Conv2d, nn.Conv3d)
def _conv_module(m: nn.Conv2d, args, kwargs):
    if m.padding_mode != "zeros":
        raise UnsupportedCall(f"padding_mode='{m.padding_mode}' (only zero padding is supported)")
    return _convolution(m.weight.dim() - 2)(
        (args[0], Attr(m, "weight"), Attr(m, "bias"), m.stride, m.padding, m.dilation,
         m.groups), {})


_function(F.conv2d, torch.conv2d)(_conv)
_function(F.conv1d, torch.conv1d)(_convolution(1))
_function(F.conv3d, torch.conv3d)(_convolution(3))

TRANSPOSED_CONVOLUTIONS = {1: F.conv_transpose1d, 2: F.conv_transpose2d}


def _transposed_convolution(dims):
    """rap-spec §9.2: a transposed convolution is a linear map like a convolution (``conv``),
    with ``F.conv_transpose{dims}d`` and its settings."""
    def normalise(args, kwargs) -> Normalised:
        b = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding",
                                 "output_padding", "groups", "dilation"),
                  {"bias": None, "stride": 1, "padding": 0, "output_padding": 0, "groups": 1,
                   "dilation": 1})
        return Normalised("conv", TRANSPOSED_CONVOLUTIONS[dims],
                          (b["input"], b["weight"], b["bias"]),
                          {"stride": _pair(b["stride"], dims), "padding": _pair(b["padding"], dims),
                           "output_padding": _pair(b["output_padding"], dims),
                           "groups": b["groups"], "dilation": _pair(b["dilation"], dims)})
    return normalise


@_module(nn.ConvTranspose1d, nn.ConvTranspose2d)
def _transposed_module(m, args, kwargs):
    if len(args) > 1 or kwargs.get("output_size") is not None:
        raise UnsupportedCall("a transposed convolution called with output_size")
    if m.padding_mode != "zeros":
        raise UnsupportedCall(f"padding_mode='{m.padding_mode}' (only zero padding is supported)")
    return _transposed_convolution(m.weight.dim() - 2)(
        (args[0], Attr(m, "weight"), Attr(m, "bias"), m.stride, m.padding, m.output_padding,
         m.groups, m.dilation), {})


_function(F.conv_transpose1d, torch.conv_transpose1d)(_transposed_convolution(1))
_function(F.conv_transpose2d, torch.conv_transpose2d)(_transposed_convolution(2))


@_function(F.linear)
def _linear(args, kwargs):
    b = _bind(args, kwargs, ("input", "weight", "bias"), {"bias": None})
    return Normalised("linear", F.linear, (b["input"], b["weight"], b["bias"]))


@_module(nn.Linear)
def _linear_module(m, args, kwargs):
    return _linear((args[0], Attr(m, "weight"), Attr(m, "bias")), {})


@_module(nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
def _batchnorm_module(m, args, kwargs):
    if m.running_mean is None:
        raise UnsupportedCall("BatchNorm without running statistics computes batch statistics")
    return _batchnorm((args[0], *(Attr(m, n) for n in ("running_mean", "running_var", "weight",
                                                        "bias"))), {"eps": m.eps})


@_function(F.batch_norm)
def _batchnorm(args, kwargs):
    b = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias",
                             "training", "momentum", "eps"),
              {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
    if b["training"] is True:
        raise UnsupportedCall("batch_norm(training=True) uses batch statistics")
    return Normalised("batchnorm", F.batch_norm,
                      (b["input"], b["running_mean"], b["running_var"], b["weight"], b["bias"]),
                      {"training": False, "momentum": 0.0, "eps": b["eps"]})


def _elementwise(fn, sign):
    """A unary elementwise op through which relevance passes unchanged."""
    return lambda args, kwargs: Normalised("passthrough", fn, (args[0],), {}, sign)


def _activation(fn, sign, gate=False):
    """An elementwise activation called with its settings (``negative_slope``,
    ``approximate``, ...), which the forward pass must keep; relevance passes unchanged."""
    return lambda args, kwargs: Normalised("passthrough", fn, tuple(args), dict(kwargs), sign,
                                           gate)


_relu = _elementwise(torch.relu, "nonneg")
_function(F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_")(_relu)
_function(F.relu6)(_elementwise(F.relu6, "nonneg"))
_function(F.dropout, F.dropout2d, torch.dropout, "detach")(_elementwise(lambda x: x, "same"))
# Copies keep their memory layout's effect (a view after a transpose needs the copy).
_function("contiguous")(_elementwise(torch.Tensor.contiguous, "same"))
_function("clone")(_elementwise(torch.Tensor.clone, "same"))


@_function(F.hardtanh, F.hardtanh_)
def _hardtanh(args, kwargs):
    b = _bind(args, kwargs, ("input", "min_val", "max_val"), {"min_val": -1.0, "max_val": 1.0})
    return Normalised("passthrough", F.hardtanh, (b["input"],),
                      {"min_val": b["min_val"], "max_val": b["max_val"]},
                      "nonneg" if b["min_val"] >= 0 else "any")


@_module(nn.ReLU)
def _relu_module(m, args, kwargs):
    return _relu(args, {})


@_module(nn.ReLU6, nn.Hardtanh)
def _hardtanh_module(m, args, kwargs):
    return _hardtanh((args[0], m.min_val, m.max_val), {})


@_module(nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
def _identity_module(m, args, kwargs):
    return Normalised("passthrough", lambda x: x, (args[0],), {}, "same")


# rap-spec §8.1: smooth and clipped activations pass relevance unchanged, as ReLU does (the
# identity rule of AttnLRP, Eq. 9, and Zennit's Pass). Sigmoid and Hardsigmoid are gates where
# they scale another tensor (§8.2).
_ACTIVATIONS = [  # (module, function, tensor method or None, output sign, gate)
    (nn.SiLU, F.silu, None, "any", False), (nn.GELU, F.gelu, None, "any", False),
    (nn.Hardswish, F.hardswish, None, "any", False), (nn.Mish, F.mish, None, "any", False),
    (nn.ELU, F.elu, None, "any", False), (nn.SELU, F.selu, None, "any", False),
    (nn.CELU, F.celu, None, "any", False), (nn.LeakyReLU, F.leaky_relu, None, "any", False),
    (nn.Softplus, F.softplus, None, "nonneg", False), (nn.Tanh, torch.tanh, "tanh", "any", False),
    (nn.Sigmoid, torch.sigmoid, "sigmoid", "nonneg", True),
    (nn.Hardsigmoid, F.hardsigmoid, None, "nonneg", True),
]
_SETTINGS = {nn.ELU: ("alpha",), nn.CELU: ("alpha",), nn.LeakyReLU: ("negative_slope",)}


def _activation_module(fn, sign, gate):
    """The module called as it is; one built with ``inplace=True`` as its function with its
    settings instead, since it would overwrite a tensor that a rule reads later (a residual
    sum that an in-place SiLU follows)."""
    def norm(m, args, kwargs):
        if getattr(m, "inplace", False):
            settings = {name: getattr(m, name) for name in _SETTINGS.get(type(m), ())}
            return Normalised("passthrough", fn, (args[0],), settings, sign, gate)
        return Normalised("passthrough", m, (args[0],), {}, sign, gate)
    return norm


for _cls, _fn, _method, _sign, _gate in _ACTIVATIONS:
    _MODULES[_cls] = _activation_module(_fn, _sign, _gate)
    _function(_fn)(_activation(_fn, _sign, _gate))
    if _method:
        _function(_method)(_activation(getattr(torch.Tensor, _method), _sign, _gate))
_function(F.sigmoid)(_activation(torch.sigmoid, "nonneg", True))
_function(F.tanh)(_activation(torch.tanh, "any"))
_MODULES[nn.PReLU] = lambda m, a, k: Normalised("passthrough", m, (a[0],), {}, "any")


# rap-spec §8.3: normalisation layers other than BatchNorm pass relevance unchanged, as
# BatchNorm does (§7.1); the layer below restores the total with its shift. LRP passes it too
# (AttnLRP holds LayerNorm's scale constant, which is the same on the relevance's way down
# through a per-position rescaling).
@_module(nn.LayerNorm, nn.GroupNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.LocalResponseNorm)
def _norm_module(m, args, kwargs):
    return Normalised("norm", m, (args[0],), {}, "any")


def _norm_function(fn):
    """A functional norm, called with its settings (shape, weight, eps)."""
    return lambda args, kwargs: Normalised("norm", fn, tuple(args), dict(kwargs), "any")


for _f in (F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm):
    _function(_f)(_norm_function(_f))
if hasattr(nn, "RMSNorm"):
    _module(nn.RMSNorm)(_norm_module)
    _function(F.rms_norm)(_norm_function(F.rms_norm))
# Unit-length rows (Swin v2's cosine attention normalises q and k): relevance passes, as at a
# norm layer.
_function(F.normalize)(_norm_function(F.normalize))


# rap-spec §8.5: attention's scores and weights. Softmax is a gate (§8.2) where it weights
# another tensor; the product of two tensors is its own kind, so that a rule can treat the
# softmax's factor as a weight.
def _softmax(fn):
    def norm(args, kwargs):
        b = _bind(args, kwargs, ("input", "dim"), {"dim": None})
        if b["dim"] is None or kwargs.get("dtype") is not None:
            raise UnsupportedCall("softmax without an explicit dim, or with a dtype")
        return Normalised("softmax", fn, (b["input"],), {"dim": b["dim"]}, "nonneg", gate=True)
    return norm


_function(F.softmax, torch.softmax)(_softmax(F.softmax))
_function("softmax")(_softmax(torch.Tensor.softmax))


@_module(nn.Softmax)
def _softmax_module(m, args, kwargs):
    return _softmax(F.softmax)((args[0], m.dim), {})


@_function(operator.matmul, torch.matmul, torch.bmm, "matmul", "bmm", "__matmul__")
def _matmul(args, kwargs):
    return Normalised("matmul", torch.matmul, (args[0], args[1]), {})


class Einsum:
    """A two-operand ``torch.einsum`` with its equation bound, callable as ``fn(a, b)``."""

    def __init__(self, equation: str):
        self.equation = equation

    def __call__(self, a, b):
        return torch.einsum(self.equation, a, b)

    def __repr__(self):
        return f"einsum('{self.equation}')"

    def __eq__(self, other):
        return isinstance(other, Einsum) and other.equation == self.equation

    def __hash__(self):
        return hash(self.equation)

    def swapped(self) -> Einsum:
        """The same product with its operands given the other way round."""
        inputs, output = self.equation.replace(" ", "").split("->")
        first, second = inputs.split(",")
        return Einsum(f"{second},{first}->{output}")


@_function(torch.einsum, torch.functional.einsum)
def _einsum(args, kwargs):
    equation, operands = args[0], args[1:]
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    if not isinstance(equation, str) or len(operands) != 2:
        raise UnsupportedCall("einsum of other than two operands")
    return Normalised("matmul", Einsum(equation), tuple(operands), {})

try:  # torchvision's stochastic depth, explained in eval mode: the identity, as dropout
    import torchvision.ops as _tv_ops
    _function(_tv_ops.stochastic_depth)(_elementwise(lambda x: x, "same"))
    _module(_tv_ops.StochasticDepth)(_identity_module)
except ImportError:  # torchvision is a dependency; this only keeps ops importable without it
    _tv_ops = None


@_module(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
         nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d, nn.AdaptiveMaxPool1d, nn.MaxPool3d,
         nn.AvgPool3d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool3d)
def _pool_module(m, args, kwargs):
    if getattr(m, "return_indices", False):
        raise UnsupportedCall("pooling with return_indices=True")
    return Normalised("pool", m, (args[0],), {}, "same")


def _pool(fn):
    def norm(args, kwargs):
        if kwargs.get("return_indices"):
            raise UnsupportedCall("pooling with return_indices=True")
        return Normalised("pool", fn, tuple(args), dict(kwargs), "same")
    return norm


for _f in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
           torch.max_pool2d, torch.mean, torch.amax, torch.sum, F.avg_pool1d, F.max_pool1d,
           F.adaptive_avg_pool1d):
    _function(_f)(_pool(_f))
for _name in ("mean", "amax", "sum"):  # a sum over dims: a linear map of weight 1 (rap-spec §9.3)
    _function(_name)(_pool(getattr(torch.Tensor, _name)))
# The 2-norm over dims is positively homogeneous of degree 1, so the pooling z-rule
# x ⊙ ∂z/∂x · R/z conserves there too (Euler): R_j = R · x_j² / Σ x_k².
for _f in (torch.norm, torch.linalg.vector_norm):
    _function(_f)(_pool(_f))
# fold (col2im) sums overlapping patches into the image: a sum of its inputs, the z-rule.
_function(F.fold)(_pool(F.fold))
_module(nn.Fold)(lambda m, a, k: Normalised("pool", m, (a[0],), {}, "same"))
_function("norm")(_pool(torch.Tensor.norm))


def keeps_precision(cast):
    """A cast that moves a signal to another device but keeps its floating dtype: relprop
    explains in the dtype the user runs the model in, so a region the model runs in float32
    (EfficientViT's attention under ``.float()``) computes the same function in float64, where
    rounding it would break Σ R = score and mix dtypes in the rules."""
    def cast_keeping_precision(x, *args, **kwargs):
        out = cast(x, *args, **kwargs)
        if isinstance(x, torch.Tensor) and x.is_floating_point() and out.is_floating_point():
            return x if out.device == x.device else x.to(out.device)
        return out
    return cast_keeping_precision


# Casts and copies to another dtype pass relevance unchanged.
for _name in ("float", "double", "half", "bfloat16", "to", "type"):
    _function(_name)(_activation(keeps_precision(getattr(torch.Tensor, _name)), "same"))


@_function("type_as")
def _type_as(args, kwargs):
    """``x.type_as(y)``: only ``x`` passes relevance; ``y`` gives a dtype (Gemma's norms)."""
    b = _bind(args, kwargs, ("input", "other"), {})
    return Normalised("passthrough", keeps_precision(torch.Tensor.type_as), (b["input"],),
                      {"other": b["other"]}, "same")


# rap-spec §9.2: resampling is a linear map with weights fixed by the sizes; nearest, (bi)linear
# and area resampling have non-negative weights, bicubic has negative ones (its rule says how).
_RESAMPLE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area",
                   "bicubic")
SIGNED_RESAMPLING = ("bicubic",)  # modes whose weights can be negative


@_function(F.interpolate, F.upsample, F.upsample_bilinear, F.upsample_nearest)
def _interpolate(args, kwargs):
    b = _bind(args, kwargs, ("input", "size", "scale_factor", "mode", "align_corners",
                             "recompute_scale_factor", "antialias"),
              {"size": None, "scale_factor": None, "mode": "nearest", "align_corners": None,
               "recompute_scale_factor": None, "antialias": False})
    if b["mode"] not in _RESAMPLE_MODES:
        raise UnsupportedCall(f"interpolate(mode='{b['mode']}') has negative weights; relprop "
                              f"resamples with {', '.join(_RESAMPLE_MODES)}")
    if b["antialias"]:
        raise UnsupportedCall("interpolate(antialias=True)")
    settings = {k: b[k] for k in ("size", "scale_factor", "mode", "align_corners",
                                  "recompute_scale_factor")}
    return Normalised("resample", F.interpolate, (b["input"],), settings, "same")


@_module(nn.Upsample, nn.UpsamplingBilinear2d, nn.UpsamplingNearest2d)
def _upsample_module(m, args, kwargs):
    return _interpolate((args[0],), {"size": m.size, "scale_factor": m.scale_factor,
                                     "mode": m.mode, "align_corners": m.align_corners})


@_module(nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d, nn.Unfold, nn.ZeroPad1d,
         nn.ConstantPad1d)
def _movement_module(m, args, kwargs):
    return Normalised("movement", m, (args[0],), {}, "same" if _zero_pad(m) else "any")


def _zero_pad(m) -> bool:
    return getattr(m, "value", 0) == 0


def _movement(fn):
    return lambda args, kwargs: Normalised("movement", fn, tuple(args), dict(kwargs), "same")


# Copies move relevance too: what reaches the copies of an entry is summed back on it
# (stack, repeat, repeat_interleave, unfold's patches; rap-spec §8.4, §9.2).
for _f in (torch.flatten, torch.reshape, torch.cat, torch.concat, torch.squeeze, torch.unsqueeze,
           torch.permute, torch.transpose, operator.getitem, torch.roll, torch.movedim,
           torch.unflatten, torch.channel_shuffle, torch.narrow, torch.swapaxes, torch.stack,
           torch.repeat_interleave, torch.tile, F.unfold, torch.select, torch.index_select):
    _function(_f)(_movement(_f))
for _name in ("view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
              "__getitem__", "expand_as", "expand", "roll", "movedim", "unflatten", "narrow",
              "swapaxes", "view_as", "reshape_as", "repeat", "repeat_interleave", "tile",
              "select", "index_select", "unfold"):
    _function(_name)(_movement(getattr(torch.Tensor, _name)))
_module(nn.ChannelShuffle)(lambda m, a, k: Normalised("movement", m, (a[0],), {}, "same"))
_PADDING_MOVES: set = set()  # movement functions that pad (see pads())
if _tv_ops is not None:  # Swin's patch merging: 2x2 neighbours side by side (pad, slice, cat)
    from torchvision.models import swin_transformer as _swin
    _function(_swin._patch_merging_pad)(_movement(_swin._patch_merging_pad))
    _PADDING_MOVES.add(_swin._patch_merging_pad)

# Calls that return a tuple of pieces of one tensor; each piece used (``pieces[i]``) becomes a
# movement op of its own that cuts that piece from the tensor (rap-spec §8.4).
_TUPLE_CALLS = {torch.chunk, torch.split, torch.unbind, torch.tensor_split, "chunk", "split",
                "unbind", "tensor_split", torch.max, "max", torch.min, "min"}  # max(x, dim):
# (values, indices); the values' piece routes relevance to the winner, as max pooling


def is_tuple_call(kind: str, target) -> bool:
    """Whether a call returns a tuple of pieces of its first argument."""
    return kind in ("call_function", "call_method") and target in _TUPLE_CALLS


def piece(kind: str, target, args, kwargs, index: int) -> Normalised:
    """The movement op of piece ``index`` of a tuple call (:func:`is_tuple_call`)."""
    fn = getattr(torch.Tensor, target) if kind == "call_method" else target
    return Normalised("movement", _Piece(fn, index), tuple(args), dict(kwargs), "same")


class _Piece:
    """``fn(*args)[index]`` as one callable, so that the op can be run and differentiated."""

    def __init__(self, fn, index: int):
        self.fn, self.index = fn, index

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)[self.index]


def copying_pad(x, pad, mode):
    """``F.pad`` with a mode that copies pixels (reflect, replicate, circular): a movement whose
    copies sum their relevance back onto the pixel copied (no entry comes from nowhere)."""
    return F.pad(x, pad, mode=mode)


@_function(F.pad)
def _pad(args, kwargs):
    b = _bind(args, kwargs, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
    if b["mode"] != "constant":
        return Normalised("movement", copying_pad, (b["input"], b["pad"]), {"mode": b["mode"]},
                          "same")
    return Normalised("movement", F.pad, (b["input"], b["pad"]), {"value": b["value"] or 0.0},
                      "same" if not b["value"] else "any")


# Arithmetic: with one tensor operand and a constant it is an elementwise transform through which
# relevance passes (Inception-V3's transform_input); with two tensors only '+' is supported.
_ARITHMETIC = {operator.add: torch.add, torch.add: torch.add, "add": torch.add,
               operator.mul: torch.mul, torch.mul: torch.mul, "mul": torch.mul,
               operator.sub: torch.sub, torch.sub: torch.sub, "sub": torch.sub,
               operator.truediv: torch.div, torch.div: torch.div, "div": torch.div}
for _k in list(_ARITHMETIC):
    if isinstance(_k, str):
        _ARITHMETIC[_k + "_"] = _ARITHMETIC[_k]
_ARITHMETIC[operator.iadd] = torch.add
_ARITHMETIC[operator.imul] = torch.mul
_ARITHMETIC[operator.isub] = torch.sub
_ARITHMETIC[operator.itruediv] = torch.div
for _k in (operator.pow, torch.pow, "pow", "pow_"):
    _ARITHMETIC[_k] = torch.pow

# rap-spec §9.3: -x passes relevance unchanged; so does a constant minus, over or to the power of
# a tensor (an elementwise transform), written with the tensor first.
_function(operator.neg, torch.neg, "neg", "__neg__")(_elementwise(torch.neg, "any"))
# Elementwise functions of one tensor (a norm written out: sqrt, rsqrt; exp, abs): relevance
# passes unchanged, as at an activation (§8.1).
for _f, _name, _sign in ((torch.sqrt, "sqrt", "nonneg"), (torch.rsqrt, "rsqrt", "nonneg"),
                         (torch.exp, "exp", "nonneg"), (torch.abs, "abs", "nonneg"),
                         (torch.reciprocal, "reciprocal", "any"), (torch.square, "square",
                                                                   "nonneg"),
                         (torch.clamp, "clamp", "any"), (torch.clip, "clip", "any"),
                         (torch.clamp_min, "clamp_min", "any"),
                         (torch.clamp_max, "clamp_max", "any")):
    _function(_f, _name)(_activation(_f, _sign))


def reversed_operands(fn):
    """``fn(x, c)`` computed as ``fn(c, x)``, for ``c - x``, ``c / x``, ``c ** x`` and ``c @ x``
    with the tensor first (where relprop's one-input ops keep it)."""
    return _REVERSED[fn]


def _rsub(x, c):
    return c - x


def _rdiv(x, c):
    return c / x


def _rpow(x, c):
    return c ** x


def _rmatmul(x, c):
    return c @ x


_REVERSED = {torch.sub: _rsub, torch.div: _rdiv, torch.pow: _rpow, torch.matmul: _rmatmul}

# Functions and methods that only look at shapes or sizes.
_META_FUNCTIONS = {getattr, len, torch.Tensor.size, torch.Tensor.dim}
_META_METHODS = {"size", "dim", "numel"}

# Methods that change their receiver: later users of the receiver must read the op's result.
_INPLACE = {operator.iadd, operator.imul, operator.isub, operator.itruediv, torch.relu_, F.relu_, F.hardtanh_}


class UnsupportedCall(Exception):
    """Raised by a normaliser for a call whose settings relprop cannot explain; the tracer
    turns it into UnsupportedOperation with the node's context."""


def version() -> int:
    """A number that changes with every registration, so that graphs traced before one are
    traced again."""
    return _VERSION[0]


def normalise_call(kind: str, target, module: nn.Module | None, args, kwargs
                   ) -> Normalised | None:
    """The op of a traced call (``kind`` as torch.fx says: call_module, call_method,
    call_function; ``module`` the called module for call_module), or None where relprop has no
    op for it. Raises :data:`UnsupportedCall` for a known call with settings relprop cannot
    explain."""
    if kind == "call_module":
        f = module_normaliser(module)
        return f(module, args, kwargs) if f else None
    if kind == "call_function":
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    if target in _ARITHMETIC:
        return _arithmetic(_ARITHMETIC[target], args, kwargs)
    f = _METHODS.get(target) if kind == "call_method" else _FUNCTIONS.get(target)
    return f(args, kwargs) if f else None


def _arithmetic(fn, args, kwargs) -> Normalised:
    if kwargs.get("alpha", 1) != 1:
        raise UnsupportedCall("add/sub with alpha != 1")
    # Which operands are tensors of the input is settled once every node is known.
    return Normalised("arith", fn, (args[0], args[1]), {})


def is_meta_call(kind: str, target) -> bool:
    """Whether a call only looks at shapes or sizes."""
    if kind == "call_method":
        return target in _META_METHODS
    if kind == "call_function":
        return target is getattr or target in _META_FUNCTIONS
    return False


def mutates_receiver(kind: str, target, kwargs) -> bool:
    """Whether a call changes its first argument in place (``x.relu_()``, ``x += y``)."""
    if kind == "call_method":
        return str(target).endswith("_") and not str(target).endswith("__")
    if kind == "call_function":
        if isinstance(target, torch._ops.OpOverload):  # ATen: add_, relu_, div_ ...
            name = target.overloadpacket.__name__
            return name.endswith("_") and not name.endswith("__")
        return target in _INPLACE or kwargs.get("inplace") is True
    return False  # module results are assigned; torch.nn modules' in-place flags are dropped


def module_normaliser(m: nn.Module):
    """The normaliser of a module's class; a parametrized module (weight norm, spectral norm)
    is the layer it parametrizes, its weight computed when the op reads it."""
    cls = type(m)
    if parametrize.is_parametrized(m) and cls.__bases__:
        cls = cls.__bases__[0]
    return _MODULES.get(cls)


def pad_spec(op: Op):
    """The (left, right, top, bottom, ...) widths of an op that pads with zeros, else None.

    Widths computed from the input's size (dynamic "same" padding) are Refs to resolve against
    the forward pass's values."""
    if op.fn is F.pad:
        return op.args[1] if not op.kwargs.get("value") else None
    module = op.fn.module if isinstance(op.fn, ModuleCall) else op.fn
    if isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)) and _zero_pad(module):
        return tuple(module.padding)
    return None


def pads(op: Op) -> bool:
    """Whether a movement op pads its input (entries of its output come from no input)."""
    module = op.fn.module if isinstance(op.fn, ModuleCall) else op.fn
    return op.fn is F.pad or isinstance(module, (nn.ZeroPad2d, nn.ConstantPad2d)) \
        or op.fn in _PADDING_MOVES
