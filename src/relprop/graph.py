"""Trace a model once and normalise every node into a small vocabulary of ops.

Real models say the same thing many ways (``nn.Conv2d``, ``F.conv2d`` on an attribute, a
subclass that pads in ``forward``; ``nn.ReLU(inplace=True)``, ``F.relu``, ``x.relu_()``;
``x + y``, ``torch.add``). After normalisation a rule sees only the vocabulary below, with
its tensor inputs first in ``args`` and its static settings in ``kwargs``:

==============  =======================================================================
kind            meaning (``args``)
==============  =======================================================================
``linear``      ``F.linear(x, weight, bias)``
``conv``        ``F.conv2d(x, weight, bias, **kwargs)`` with numeric stride/padding/...
``batchnorm``   ``F.batch_norm(x, mean, var, weight, bias)`` in inference mode
``passthrough`` elementwise, relevance unchanged: ReLU, Dropout, ``x * c + t``, ...
``pool``        a positively homogeneous reduction of one input: max/avg pooling, mean
``add``         the sum of two tensors (a residual connection)
``movement``    a pure rearrangement: reshape, flatten, slicing, ``cat``, zero padding
==============  =======================================================================

Nodes that do not depend on the model input (weights, buffers) are ``constant`` and nodes that
compute shapes or sizes are ``meta``: both run in the forward pass but carry no relevance.
"""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnsupportedOperation, UntraceableModel

LAYER_KINDS = ("linear", "conv")


@dataclass(frozen=True)
class Ref:
    """A placeholder in an op's arguments for the value of another node."""

    name: str


@dataclass(frozen=True, eq=False)
class Attr:
    """A module's parameter or buffer, read when the op runs: ``model.to(...)`` and
    ``model.double()`` replace buffers, so a tensor captured at trace time would go stale."""

    module: nn.Module
    name: str

    def get(self):
        return getattr(self.module, self.name)


@dataclass
class Op:
    name: str
    kind: str
    fn: Callable
    args: tuple
    kwargs: dict
    inputs: tuple[str, ...]  # the relevance-carrying tensor arguments, in order
    source: str  # what the model called, for messages
    module_path: str | None = None
    role: str | None = None  # 'input' | 'hidden' | 'output' for linear/conv layers
    sign: str = "any"  # output sign: 'nonneg', 'same' (as its inputs) or 'any'
    input_nonneg: bool = False  # every input is known to be >= 0
    attrs: dict = field(default_factory=dict)


def resolve(obj, env: dict):
    """Replace every Ref in ``obj`` (nested lists, tuples, dicts) by its value in ``env``."""
    if isinstance(obj, Ref):
        return env[obj.name]
    if isinstance(obj, Attr):
        return obj.get()
    if isinstance(obj, (list, tuple)):
        return type(obj)(resolve(x, env) for x in obj)
    if isinstance(obj, dict):
        return {k: resolve(v, env) for k, v in obj.items()}
    return obj


@dataclass
class Graph:
    ops: list[Op]
    input: str
    output: str
    input_layers: tuple[str, ...]
    output_layer: str

    def op(self, name: str) -> Op:
        return self._by_name[name]

    def __post_init__(self):
        self._by_name = {op.name: op for op in self.ops}


@dataclass
class Normalised:
    """What a normaliser returns for one node."""

    kind: str
    fn: Callable
    args: tuple
    kwargs: dict = field(default_factory=dict)
    sign: str = "any"


# --------------------------------------------------------------------------- registry

_MODULES: dict[type, Callable[[nn.Module, tuple, dict], Normalised]] = {}
_FUNCTIONS: dict[Any, Callable[[tuple, dict], Normalised]] = {}
_METHODS: dict[str, Callable[[tuple, dict], Normalised]] = {}
_SIGN_BY_KIND = {"passthrough": "same", "pool": "same", "movement": "same"}


def register_op(target, kind: str, *, sign: str | None = None) -> None:
    """Tell relprop what ``target`` is: a module class, a function, or a tensor-method name.

    A registered module class is kept whole in the trace (a leaf) and called as it is; its rule is
    the one registered for ``kind``. ``sign`` says what is known about the output's sign:
    'nonneg' (like ReLU), 'same' as the input, or 'any'.
    """
    sign = sign or _SIGN_BY_KIND.get(kind, "any")
    if isinstance(target, type) and issubclass(target, nn.Module):
        _MODULES[target] = lambda m, a, k: Normalised(kind, m, a, k, sign)
    elif isinstance(target, str):
        _METHODS[target] = lambda a, k: Normalised(kind, getattr(torch.Tensor, target), a, k, sign)
    elif callable(target):
        _FUNCTIONS[target] = lambda a, k: Normalised(kind, target, a, k, sign)
    else:
        raise TypeError(f"register_op expects a module class, a function or a method name, "
                        f"got {target!r}")


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


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_padding(padding, weight_shape, dilation):
    """Numeric symmetric padding, or None where the padding cannot be written that way."""
    if padding == "valid":
        return (0, 0)
    if padding == "same":
        total = [d * (k - 1) for d, k in zip(dilation, weight_shape[2:])]
        if any(t % 2 for t in total):
            return None
        return tuple(t // 2 for t in total)
    return _pair(padding)


def _conv(args, kwargs) -> Normalised:
    b = _bind(args, kwargs, ("input", "weight", "bias", "stride", "padding", "dilation", "groups"),
              {"bias": None, "stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    dilation, padding = _pair(b["dilation"]), b["padding"]
    if isinstance(padding, str):
        if isinstance(b["weight"], Ref):
            raise _Unsupported(f"padding='{padding}' with a computed weight")
        weight = b["weight"].get() if isinstance(b["weight"], Attr) else b["weight"]
        padding = _conv_padding(padding, weight.shape, dilation)
        if padding is None:
            raise _Unsupported("padding='same' that pads unevenly")
    return Normalised("conv", F.conv2d, (b["input"], b["weight"], b["bias"]),
                      {"stride": _pair(b["stride"]), "padding": _pair(padding),
                       "dilation": dilation, "groups": b["groups"]})


@_module(nn.Conv2d)
def _conv_module(m: nn.Conv2d, args, kwargs):
    if m.padding_mode != "zeros":
        raise _Unsupported(f"padding_mode='{m.padding_mode}' (only zero padding is supported)")
    return _conv((args[0], Attr(m, "weight"), Attr(m, "bias"), m.stride, m.padding, m.dilation,
                  m.groups), {})


_function(F.conv2d, torch.conv2d)(_conv)


@_function(F.linear)
def _linear(args, kwargs):
    b = _bind(args, kwargs, ("input", "weight", "bias"), {"bias": None})
    return Normalised("linear", F.linear, (b["input"], b["weight"], b["bias"]))


@_module(nn.Linear)
def _linear_module(m, args, kwargs):
    return _linear((args[0], Attr(m, "weight"), Attr(m, "bias")), {})


@_module(nn.BatchNorm1d, nn.BatchNorm2d)
def _batchnorm_module(m, args, kwargs):
    if m.running_mean is None:
        raise _Unsupported("BatchNorm without running statistics computes batch statistics")
    return _batchnorm((args[0], *(Attr(m, n) for n in ("running_mean", "running_var", "weight",
                                                        "bias"))), {"eps": m.eps})


@_function(F.batch_norm)
def _batchnorm(args, kwargs):
    b = _bind(args, kwargs, ("input", "running_mean", "running_var", "weight", "bias",
                             "training", "momentum", "eps"),
              {"weight": None, "bias": None, "training": False, "momentum": 0.1, "eps": 1e-5})
    if b["training"] is True:
        raise _Unsupported("batch_norm(training=True) uses batch statistics")
    return Normalised("batchnorm", F.batch_norm,
                      (b["input"], b["running_mean"], b["running_var"], b["weight"], b["bias"]),
                      {"training": False, "momentum": 0.0, "eps": b["eps"]})


def _elementwise(fn, sign):
    """A unary elementwise op through which relevance passes unchanged."""
    return lambda args, kwargs: Normalised("passthrough", fn, (args[0],), {}, sign)


_relu = _elementwise(torch.relu, "nonneg")
_function(F.relu, torch.relu, torch.relu_, F.relu_, "relu", "relu_")(_relu)
_function(F.relu6)(_elementwise(F.relu6, "nonneg"))
_function(F.dropout, F.dropout2d, torch.dropout, "contiguous", "clone", "detach")(
    _elementwise(lambda x: x, "same"))


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


@_module(nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
         nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
def _pool_module(m, args, kwargs):
    if getattr(m, "return_indices", False):
        raise _Unsupported("pooling with return_indices=True")
    return Normalised("pool", m, (args[0],), {}, "same")


def _pool(fn):
    def norm(args, kwargs):
        if kwargs.get("return_indices"):
            raise _Unsupported("pooling with return_indices=True")
        return Normalised("pool", fn, tuple(args), dict(kwargs), "same")
    return norm


for _f in (F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d,
           torch.max_pool2d, torch.mean, torch.amax):
    _function(_f)(_pool(_f))
for _name in ("mean", "amax"):
    _function(_name)(_pool(getattr(torch.Tensor, _name)))


@_module(nn.Flatten, nn.Unflatten, nn.ZeroPad2d, nn.ConstantPad2d)
def _movement_module(m, args, kwargs):
    return Normalised("movement", m, (args[0],), {}, "same" if _zero_pad(m) else "any")


def _zero_pad(m) -> bool:
    return getattr(m, "value", 0) == 0


def _movement(fn):
    return lambda args, kwargs: Normalised("movement", fn, tuple(args), dict(kwargs), "same")


for _f in (torch.flatten, torch.reshape, torch.cat, torch.concat, torch.squeeze, torch.unsqueeze,
           torch.permute, torch.transpose, operator.getitem):
    _function(_f)(_movement(_f))
for _name in ("view", "reshape", "flatten", "squeeze", "unsqueeze", "permute", "transpose",
              "__getitem__", "expand_as"):
    _function(_name)(_movement(getattr(torch.Tensor, _name)))


@_function(F.pad)
def _pad(args, kwargs):
    b = _bind(args, kwargs, ("input", "pad", "mode", "value"), {"mode": "constant", "value": None})
    if b["mode"] != "constant":
        raise _Unsupported(f"F.pad(mode='{b['mode']}') copies pixels; only constant padding "
                           "is supported")
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

# Functions and methods that only look at shapes or sizes.
_META_FUNCTIONS = {getattr, len, torch.Tensor.size, torch.Tensor.dim}
_META_METHODS = {"size", "dim", "numel"}

# Methods that change their receiver: later users of the receiver must read the op's result.
_INPLACE = {operator.iadd, operator.imul, torch.relu_, F.relu_, F.hardtanh_}


class _Unsupported(Exception):
    """Raised inside a normaliser; turned into UnsupportedOperation with the node's context."""


# --------------------------------------------------------------------------- tracing

class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if type(m) in _MODULES:
            return True
        if type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential):
            return True  # unsupported torch.nn layers stay whole so the error can name them
        return False


def trace(model: nn.Module) -> Graph:
    """Trace ``model`` in eval mode (restoring its mode) and normalise its graph."""
    was_training = model.training
    model.eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # torch.fx raises many types; all mean the same to the user
        raise UntraceableModel(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
            "relprop needs a model whose forward has no data-dependent control flow; wrap the "
            "offending part in a module and register it with relprop.register_op(...), or mark "
            "it with torch.fx.wrap."
        ) from e
    finally:
        model.train(was_training)
    return _normalise(graph, model)


def _module_path(node: fx.Node) -> str | None:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack)[-1]
        return str(path) if path else None
    return None


def _describe(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {type(root.get_submodule(node.target)).__name__}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    t = node.target
    mod = getattr(t, "__module__", None) or "operator"
    name = getattr(t, "__name__", str(t))
    mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator",
           "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    return f"function {mod}.{name}"


def _normalise(fx_graph: fx.Graph, root: nn.Module) -> Graph:
    ops: list[Op] = []
    status: dict[str, str] = {}  # node -> 'tensor' | 'meta' | 'constant'
    alias: dict[str, str] = {}  # receiver of an in-place op -> the op
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise UntraceableModel(f"relprop explains models with exactly one input tensor; this one "
                               f"takes {len(placeholders)} ({[n.name for n in placeholders]})")
    output_name = None

    def sub(a):
        """Replace fx nodes by Refs (get_attr nodes by the tensors they name)."""
        if isinstance(a, fx.Node):
            if a.op == "get_attr":
                return _fetch_attr(root, a.target)
            return Ref(alias.get(a.name, a.name))
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        if isinstance(a, dict):
            return {k: sub(v) for k, v in a.items()}
        return a

    for node in fx_graph.nodes:
        if node.op == "placeholder":
            status[node.name] = "tensor"
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            out = node.args[0]
            if not isinstance(out, fx.Node):
                raise UntraceableModel("relprop explains models that return one tensor; this "
                                       f"one returns {type(out).__name__}")
            output_name = alias.get(out.name, out.name)
            continue
        args, kwargs = sub(node.args), sub(node.kwargs)
        refs = ref_names((args, kwargs))
        deps = [status[r] for r in refs]
        tensor_refs = tuple(dict.fromkeys(r for r in refs if status[r] == "tensor"))
        path = _module_path(node)
        source = _describe(node, root)
        if not tensor_refs:
            # Depends on no tensor of the input: a constant or a size computation.
            status[node.name] = "meta" if "meta" in deps else "constant"
            norm = _generic_call(node, root, args, kwargs)
            kind = status[node.name]
        elif _is_meta(node):
            status[node.name] = "meta"
            norm = _generic_call(node, root, args, kwargs)
            kind = "meta"
        else:
            status[node.name] = "tensor"
            try:
                norm = _normalise_node(node, root, args, kwargs)
            except _Unsupported as e:
                raise UnsupportedOperation(source, node.name, path, reason=str(e)) from None
            if norm is None:
                raise UnsupportedOperation(source, node.name, path)
            kind = norm.kind
        inputs = ()
        if kind not in ("meta", "constant"):
            # Relevance goes to the input tensors among the op's positional arguments.
            inputs = tuple(dict.fromkeys(r for r in ref_names(norm.args) if status[r] == "tensor"))
        ops.append(Op(node.name, kind, norm.fn, norm.args, norm.kwargs, inputs, source, path,
                      sign=norm.sign))
        if _mutates_receiver(node) and isinstance(args[0], Ref):
            alias[args[0].name] = node.name

    ops = _prune(ops, output_name)
    graph = Graph(ops, placeholders[0].name, output_name, (), "")
    _analyse(graph)
    return graph


def _fetch_attr(root: nn.Module, target: str) -> Attr:
    owner, _, name = target.rpartition(".")
    return Attr(root.get_submodule(owner) if owner else root, name)


def ref_names(obj) -> list[str]:
    """The names of the Refs in ``obj`` (nested lists, tuples, dicts), in order."""
    if isinstance(obj, Ref):
        return [obj.name]
    if isinstance(obj, (list, tuple)):
        return [n for x in obj for n in ref_names(x)]
    if isinstance(obj, dict):
        return [n for x in obj.values() for n in ref_names(x)]
    return []


def _is_meta(node: fx.Node) -> bool:
    if node.op == "call_method":
        return node.target in _META_METHODS
    if node.op == "call_function":
        if node.target is getattr:
            return True
        return node.target in _META_FUNCTIONS
    return False


def _mutates_receiver(node: fx.Node) -> bool:
    if node.op == "call_method":
        return str(node.target).endswith("_") and not str(node.target).endswith("__")
    if node.op == "call_function":
        return node.target in _INPLACE or node.kwargs.get("inplace") is True
    if node.op == "call_module":
        return False  # module results are assigned; torch.nn modules' in-place flags are dropped
    return False


def _generic_call(node, root, args, kwargs) -> Normalised:
    """Run the node as the model would (for constants and size computations)."""
    if node.op == "call_module":
        fn = root.get_submodule(node.target)
    elif node.op == "call_method":
        name = node.target
        fn = lambda self, *a, **k: getattr(self, name)(*a, **k)  # noqa: E731
    else:
        fn = node.target
    return Normalised("constant", fn, args, kwargs)


def _normalise_node(node, root, args, kwargs) -> Normalised | None:
    if node.op == "call_module":
        m = root.get_submodule(node.target)
        f = _MODULES.get(type(m))
        return f(m, args, kwargs) if f else None
    key = node.target
    if node.op == "call_function":
        kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}
    if key in _ARITHMETIC:
        return _arithmetic(_ARITHMETIC[key], args, kwargs)
    f = _METHODS.get(key) if node.op == "call_method" else _FUNCTIONS.get(key)
    return f(args, kwargs) if f else None


def _arithmetic(fn, args, kwargs) -> Normalised:
    if kwargs.get("alpha", 1) != 1:
        raise _Unsupported("add/sub with alpha != 1")
    # Which operands are tensors of the input is settled in _prune, once every node is known.
    return Normalised("arith", fn, (args[0], args[1]), {})


def _prune(ops: list[Op], output: str) -> list[Op]:
    """Resolve arithmetic now that the status of every operand is known; drop dead ops."""
    status = {}
    for op in ops:
        status[op.name] = op.kind
    resolved = []
    for op in ops:
        if op.kind == "arith":
            tensors = [a for a in op.args if isinstance(a, Ref) and status.get(a.name) not in
                       ("meta", "constant")]
            if op.fn is torch.add and len(tensors) == 2:
                op.kind, op.sign = "add", "same"
            elif len(tensors) == 1:
                # Tensor (+-*/) constant: an elementwise transform; move the tensor first.
                op.kind, op.sign = "passthrough", "any"
                if op.args[0] != tensors[0]:
                    if op.fn in (torch.sub, torch.div):
                        raise UnsupportedOperation(
                            f"function {op.fn.__name__} (constant first)", op.name,
                            op.module_path, reason="a constant minus or over a tensor")
                    op.args = (op.args[1], op.args[0])
                op.inputs = (tensors[0].name,)
            else:
                raise UnsupportedOperation(
                    f"function torch.{op.fn.__name__} of two tensors", op.name, op.module_path,
                    reason="relprop has rules for the sum of two tensors, not for products, "
                           "differences or quotients of them")
        resolved.append(op)
    # Dead code elimination: keep what the output needs.
    needed = {output}
    keep = []
    for op in reversed(resolved):
        if op.name in needed:
            keep.append(op)
            needed.update(ref_names((op.args, op.kwargs)))
    return keep[::-1]


def _analyse(graph: Graph) -> None:
    """Sign facts, the input layers and the output layer, all read off the graph."""
    nonneg: set[str] = set()
    by_name = {op.name: op for op in graph.ops}
    for op in graph.ops:
        if op.kind in ("meta", "constant"):
            continue
        op.input_nonneg = all(i in nonneg for i in op.inputs)
        if op.sign == "nonneg" or (op.sign == "same" and op.input_nonneg):
            nonneg.add(op.name)

    # Input layers: the first linear/conv layers reached from the input.
    input_layers = []
    frontier, seen = [graph.input], set()
    users: dict[str, list[Op]] = {}
    for op in graph.ops:
        for i in op.inputs:
            users.setdefault(i, []).append(op)
    while frontier:
        name = frontier.pop()
        for user in users.get(name, []):
            if user.name in seen:
                continue
            seen.add(user.name)
            if user.kind in LAYER_KINDS:
                input_layers.append(user.name)
            else:
                frontier.append(user.name)

    # Output layer: walk back from the output through shape-only and elementwise ops.
    name = graph.output
    while name in by_name and by_name[name].kind not in LAYER_KINDS:
        op = by_name[name]
        if op.kind not in ("passthrough", "movement", "batchnorm") or len(op.inputs) != 1:
            raise UnsupportedOperation(
                op.source, op.name, op.module_path,
                reason="RAP starts at the layer that produces the logits; the model output must "
                       "come from a Linear or Conv2d layer through reshapes, dropout or "
                       "elementwise ops only")
        name = op.inputs[0]
    if name not in by_name:
        raise UnsupportedOperation("the model output", graph.output, None,
                                   reason="no Linear or Conv2d layer produces the output")
    graph.output_layer = name
    graph.input_layers = tuple(input_layers)
    for op in graph.ops:
        if op.kind in LAYER_KINDS:
            op.role = ("output" if op.name == name else
                       "input" if op.name in input_layers else "hidden")
    _mark_input_padding(graph, by_name)


def _mark_input_padding(graph: Graph, by_name: dict[str, Op]) -> None:
    """An input layer that reads the image through zero padding keeps that padding's spec, so the
    z^B bounds can be zero on the border (rap-spec §4)."""
    for name in graph.input_layers:
        op = by_name[name]
        src = by_name.get(op.inputs[0])
        if src is not None and src.kind == "movement" and pad_spec(src) is not None:
            op.attrs["input_pad"] = pad_spec(src)


def pad_spec(op: Op):
    if op.fn is F.pad:
        return tuple(op.args[1])
    if isinstance(op.fn, (nn.ZeroPad2d, nn.ConstantPad2d)):
        return tuple(op.fn.padding)
    return None
