"""Trace a model once with torch.fx and turn it into a :class:`relprop.ir.Graph` of ops.

This module knows graphs: which node is which op (through :mod:`relprop.ops`), which values are
constants or sizes, arithmetic folded into passthrough and add ops, and facts any method can
read off the graph (sign of each value, the first layers, the layer that produces the output).
It knows nothing of what a method does with them: a method's own roles live with its rules.

Nodes that do not depend on the model input (weights, buffers) are ``constant`` and nodes that
compute shapes or sizes are ``meta``: both run in the forward pass but carry no relevance.
"""
from __future__ import annotations

import functools
import inspect
import operator
import threading
import weakref
from contextlib import contextmanager

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import UnsupportedOperation, UntraceableModel
from .ir import Attr, Graph, ModuleCall, Op, Ref, ref_names
from . import capture as exporter, decompositions, ops as vocabulary
from .ops import (LAYER_KINDS, Normalised, UnsupportedCall, is_meta_call, is_tuple_call,
                  module_normaliser, mutates_receiver, normalise_call, piece)


class _Tracer(fx.Tracer):
    """torch.fx's tracer, entering what :mod:`relprop.decompositions` writes out."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if decompositions.of_module(m) is not None:
            return False
        if module_normaliser(m) is not None:
            return True
        if type(m).__module__.startswith("torch.nn") and not isinstance(m, nn.Sequential):
            return True  # unsupported torch.nn layers stay whole so the error can name them
        return False

    def call_module(self, m, forward, args, kwargs):
        decomposed = decompositions.of_module(m)
        if decomposed is not None:
            forward = functools.partial(decomposed, m)
        return super().call_module(m, forward, args, kwargs)

    def create_proxy(self, kind, target, args, kwargs, *rest, **options):
        if kind == "call_function":
            decomposed = decompositions.of_function(target)
            if decomposed is not None:
                return decomposed(*args, **kwargs)
        return super().create_proxy(kind, target, args, kwargs, *rest, **options)


def unwrap(model: nn.Module) -> nn.Module:
    """The module behind ``torch.compile(model)``: fx traces the Python model, not the
    compiled one, and both compute the same function."""
    inner = getattr(model, "_orig_mod", None)
    return inner if isinstance(inner, nn.Module) else model


@contextmanager
def eval_mode(model: nn.Module):
    """Run ``model`` in eval mode; give every submodule back its own mode afterwards (a frozen
    BatchNorm in a training model stays frozen, MC-dropout in an eval model stays on)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def trace(model: nn.Module) -> Graph:
    """Trace ``model`` in eval mode (restoring every submodule's mode) and normalise its graph."""
    model = unwrap(model)
    try:
        with eval_mode(model):
            fixed = _defaults_after_input(model)
            graph = _Tracer().trace(model, concrete_args=fixed)
    except (UnsupportedOperation, UntraceableModel):
        raise
    except Exception as e:  # torch.fx raises many types; all mean the same to the user
        raise UntraceableModel(
            f"torch.fx could not trace {type(model).__name__}: {type(e).__name__}: {e}. "
            "relprop needs a model whose forward has no data-dependent control flow; wrap the "
            "offending part in a module and register it with relprop.register_op(...), or mark "
            "it with torch.fx.wrap."
        ) from e
    return _normalise(graph, model, tuple(fixed or ()))


def _defaults_after_input(model: nn.Module) -> dict | None:
    """The forward's optional arguments after the input, at their defaults (timm's ViT takes
    ``attn_mask=None, is_causal=False``): relprop explains the model called with one tensor.
    None where the forward takes none; a forward that needs more inputs is refused."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())[1:]
    except (TypeError, ValueError):
        return None
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in named if p.default is inspect.Parameter.empty]
    if required:
        raise UntraceableModel(f"relprop explains models with exactly one input tensor; this "
                               f"one also needs {', '.join(required)}")
    return {p.name: p.default for p in named} or None


_TRACES: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()
_TRACE_LOCK = threading.Lock()
_CAPTURES_PER_MODEL = 8  # input signatures whose captured graph is kept per model


def traced(model: nn.Module, example: torch.Tensor | None = None) -> Graph:
    """The graph of ``model``, one per model, shared by every method and thread: traced again
    only where the module tree changed (a replaced head) or an op was registered since. Held
    weakly: a model the caller drops is freed with its graph.

    torch.fx traces the model once for every input. Where it cannot (a forward that branches on
    sizes: every Hugging Face model), the model is captured with ``torch.export`` on
    ``example`` (:mod:`relprop.capture`), a graph per input shape, dtype and device; without an
    example fx's error is raised."""
    model = unwrap(model)
    with _TRACE_LOCK:
        entry = _TRACES.get(model)
        versions = (vocabulary.version(), decompositions.version())
        if entry is None or entry[1] != versions or not entry[0].matches(model):
            try:
                found = trace(model)
            except UntraceableModel as e:
                found = e
            entry = (ModuleTree(model), versions, found, {})
            _TRACES[model] = entry
        found, captures = entry[2], entry[3]
        if isinstance(found, Graph):
            return found
        if example is None:
            raise found
        key = (tuple(example.shape), example.dtype, example.device)
        graph = captures.get(key)
        if graph is None:
            graph = capture(model, example)
            if len(captures) >= _CAPTURES_PER_MODEL:
                captures.pop(next(iter(captures)))
            captures[key] = graph
        return graph


def needs_example(model: nn.Module) -> bool:
    """Whether relprop's graph of ``model`` is captured per input (torch.fx cannot trace it)."""
    try:
        traced(model)
    except UntraceableModel:
        return True
    return False


def capture(model: nn.Module, example: torch.Tensor) -> Graph:
    """The graph of ``model`` on ``example``, captured with torch.export (see
    :mod:`relprop.capture`)."""
    with eval_mode(model):
        fx_graph, constants = exporter.export(model, example)
    return _normalise(fx_graph, model, constants=constants)


class ModuleTree:
    """What a traced graph depends on in the module tree: every submodule, by path and identity,
    held weakly. A graph traced from another tree is stale (a replaced head, an inserted layer)."""

    def __init__(self, model: nn.Module):
        self._entries = [(name, weakref.ref(m)) for name, m in unwrap(model).named_modules()]

    def matches(self, model: nn.Module) -> bool:
        now = list(unwrap(model).named_modules())
        return len(now) == len(self._entries) and all(
            name == old_name and ref() is m
            for (name, m), (old_name, ref) in zip(now, self._entries))


def _module_path(node: fx.Node) -> str | None:
    if node.op == "call_module":
        return str(node.target)
    stack = node.meta.get("nn_module_stack")
    if stack:  # {key: (path, type)}: fx keys by path, export by an id of its own
        key, value = list(stack.items())[-1]
        path = value[0] if isinstance(value, tuple) else key
        return str(path) if path else None
    return None


def _describe(node: fx.Node, root: nn.Module) -> str:
    if node.op == "call_module":
        return f"module {type(root.get_submodule(node.target)).__name__}"
    if node.op == "call_method":
        return f"method Tensor.{node.target}"
    t = node.target
    if isinstance(t, torch._ops.OpOverload):
        return f"ATen op {t}"
    mod = getattr(t, "__module__", None) or "operator"
    name = getattr(t, "__name__", str(t))
    mod = {"torch._C._nn": "torch.nn.functional", "_operator": "operator",
           "torch._C._VariableFunctions": "torch"}.get(mod, mod)
    return f"function {mod}.{name}"


def _normalise(fx_graph: fx.Graph, root: nn.Module, fixed=(), constants=None) -> Graph:
    """relprop's graph of a traced or captured model; ``fixed``: the optional arguments traced
    at their defaults; ``constants``: tensors a captured graph takes as placeholders, by name."""
    constants = constants or {}
    ops: list[Op] = []
    status: dict[str, str] = {}  # node -> 'tensor' | 'meta' | 'constant' | 'pieces'
    pieces: dict[str, tuple] = {}  # a tuple call's node -> how to call it
    alias: dict[str, str] = {}  # receiver of an in-place op -> the op
    placeholders = [n for n in fx_graph.nodes if n.op == "placeholder"
                    and n.name not in constants]
    if fixed:  # the optional arguments (fx makes a placeholder per leaf of a default): constant
        placeholders = placeholders[:1]
    if len(placeholders) != 1:
        raise UntraceableModel(f"relprop explains models with exactly one input tensor; this one "
                               f"takes {len(placeholders)} ({[n.name for n in placeholders]})")
    output_name = None

    def sub(a):
        """Replace fx nodes by Refs (get_attr nodes by the tensors they name)."""
        if isinstance(a, fx.Node):
            if a.name in constants:
                return constants[a.name]
            if a.op == "get_attr":
                return _fetch_attr(root, a.target)
            return Ref(alias.get(a.name, a.name))
        if isinstance(a, (list, tuple)):
            return type(a)(sub(x) for x in a)
        if isinstance(a, dict):
            return {k: sub(v) for k, v in a.items()}
        if isinstance(a, slice):
            return slice(sub(a.start), sub(a.stop), sub(a.step))
        return a

    for node in fx_graph.nodes:
        if node.op == "placeholder":
            status[node.name] = "tensor" if node in placeholders else "constant"
            continue
        if node.op == "get_attr":
            continue
        if node.op == "output":
            out = _main_output_node(node.args[0])
            output_name = alias.get(out.name, out.name)
            continue
        args, kwargs = sub(node.args), sub(node.kwargs)
        refs = ref_names((args, kwargs))
        if any(status[r] == "pieces" for r in refs):
            norm = _piece_of(node, root, args, kwargs, pieces, status)
            status[node.name] = "tensor"
            ops.append(Op(node.name, norm.kind, norm.fn, norm.args, norm.kwargs,
                          (norm.args[0].name,), _describe(node, root), _module_path(node),
                          sign=norm.sign))
            continue
        deps = [status[r] for r in refs]
        tensor_refs = tuple(dict.fromkeys(r for r in refs if status[r] == "tensor"))
        path = _module_path(node)
        source = _describe(node, root)
        if not tensor_refs:
            # Depends on no tensor of the input: a constant or a size computation.
            status[node.name] = "meta" if "meta" in deps else "constant"
            norm = _generic_call(node, root, args, kwargs)
            kind = status[node.name]
        elif is_meta_call(node.op, node.target):
            status[node.name] = "meta"
            norm = _generic_call(node, root, args, kwargs)
            kind = "meta"
        elif is_tuple_call(node.op, node.target) and isinstance(args[0], Ref) \
                and status[args[0].name] == "tensor":
            # Pieces of a tensor (chunk, split): no op of its own; each piece used is one.
            status[node.name] = "pieces"
            pieces[node.name] = (node.op, node.target, args, kwargs, source)
            continue
        else:
            status[node.name] = "tensor"
            try:
                norm = _normalise_node(node, root, args, kwargs)
            except UnsupportedCall as e:
                raise UnsupportedOperation(source, node.name, path, reason=str(e)) from None
            if norm is None:
                raise UnsupportedOperation(source, node.name, path)
            kind = norm.kind
        inputs = ()
        if kind not in ("meta", "constant"):
            # Relevance goes to the input tensors among the op's positional arguments.
            inputs = tuple(dict.fromkeys(r for r in ref_names(norm.args) if status[r] == "tensor"))
        fn = ModuleCall(norm.fn) if isinstance(norm.fn, nn.Module) else norm.fn
        ops.append(Op(node.name, kind, fn, norm.args, norm.kwargs, inputs, source, path,
                      sign=norm.sign, gate=norm.gate))
        if mutates_receiver(node.op, node.target, node.kwargs) and isinstance(args[0], Ref):
            alias[args[0].name] = node.name

    ops = _prune(ops, output_name)
    graph = Graph(ops, placeholders[0].name, output_name)
    _analyse(graph)
    return graph


def _main_output_node(out):
    """The node of the model's main output (rap-spec §9.1): the output itself, the 'out' or
    'logits' entry of a dict (torchvision's segmentation models), the first of a tuple (fx
    flattens a default it traced at into one)."""
    if isinstance(out, dict):
        key = next((k for k in ("out", "logits") if k in out), None)
        if key is None:
            raise UntraceableModel(f"the model returns a dict with keys {sorted(map(str, out))}; "
                                   "relprop explains its 'out' or 'logits' entry")
        out = out[key]
    while isinstance(out, (list, tuple)) and out:
        out = out[0]
    if not isinstance(out, fx.Node):
        raise UntraceableModel("relprop explains models that return a tensor, a dict's 'out' or "
                               f"a tuple's first element; this one returns {type(out).__name__}")
    return out


def _piece_of(node: fx.Node, root: nn.Module, args, kwargs, pieces: dict, status: dict
              ) -> Normalised:
    """``pieces[i]`` of a tuple call (``x.chunk(2)[1]``) as a movement op on the tensor."""
    source = args[0] if args and isinstance(args[0], Ref) else None
    index = args[1] if len(args) > 1 else None
    if node.op != "call_function" or node.target is not operator.getitem or source is None \
            or source.name not in pieces or not isinstance(index, int):
        used = next(r for r in ref_names((args, kwargs)) if status[r] == "pieces")
        raise UnsupportedOperation(
            _describe(node, root), node.name, _module_path(node), reason=f"it takes the tuple that '{pieces[used][4]}' returned "
            "as a whole; relprop follows the pieces of a tuple taken one at a time (pieces[i])")
    kind, target, call_args, call_kwargs, _ = pieces[source.name]
    return piece(kind, target, call_args, call_kwargs, index)


def _fetch_attr(root: nn.Module, target: str) -> Attr:
    owner, _, name = target.rpartition(".")
    return Attr(root.get_submodule(owner) if owner else root, name)


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
    module = root.get_submodule(node.target) if node.op == "call_module" else None
    return normalise_call(node.op, node.target, module, args, kwargs)


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
            elif op.fn is torch.sub and len(tensors) == 2:
                # rap-spec §9.3: a - b is the sum a + (-b); -b passes relevance unchanged.
                negated = Op(f"{op.name}_negated", "passthrough", torch.neg, (op.args[1],), {},
                             (op.args[1].name,), f"the negation of {op.source}'s second operand",
                             op.module_path, sign="any")
                resolved.append(negated)
                status[negated.name] = negated.kind
                op.kind, op.sign, op.fn = "add", "any", torch.add
                op.args = (op.args[0], Ref(negated.name))
                op.inputs = tuple(dict.fromkeys((op.args[0].name, negated.name)))
            elif op.fn is torch.mul and len(tensors) == 2:
                op.kind, op.sign = "product", "any"
                op.inputs = tuple(dict.fromkeys(t.name for t in tensors))
            elif len(tensors) == 1:
                # Tensor (+-*/**) constant: an elementwise transform; move the tensor first.
                op.kind, op.sign = "passthrough", "any"
                if op.args[0] != tensors[0]:
                    if op.fn in (torch.sub, torch.div, torch.pow):
                        op.fn = vocabulary.reversed_operands(op.fn)
                    op.args = (op.args[1], op.args[0])
                op.inputs = (tensors[0].name,)
            else:
                raise UnsupportedOperation(
                    f"function torch.{op.fn.__name__} of two tensors", op.name, op.module_path,
                    reason="relprop has rules for the sum, the difference and the product of two "
                           "tensors, not for quotients or powers of them")
        elif op.kind == "matmul":
            tensors = [a for a in op.args if isinstance(a, Ref) and status.get(a.name) not in
                       ("meta", "constant")]
            if len(tensors) != 2:
                raise UnsupportedOperation(
                    f"a matrix product with a constant ({op.source})", op.name, op.module_path,
                    reason="relprop has a rule for the product of two tensors of the input "
                           "(attention); a layer's weight belongs in F.linear or nn.Linear")
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
    """Facts read off the graph for every method: which values are non-negative, the first
    layers reached from the input and the layer that produces the output."""
    nonneg: set[str] = set()
    gates: set[str] = set()  # values that are a gate, or a gate moved around (expand, view)
    for op in graph.ops:
        if op.kind in ("meta", "constant"):
            continue
        op.input_nonneg = all(i in nonneg for i in op.inputs)
        if op.sign == "nonneg" or (op.sign == "same" and op.input_nonneg):
            nonneg.add(op.name)
        if op.gate or (_moves_or_copies(op) and op.inputs[0] in gates):
            gates.add(op.name)
        if op.kind in ("product", "matmul"):
            op.gated = tuple(i in gates for i in op.inputs)

    users: dict[str, list[Op]] = {}
    for op in graph.ops:
        for i in op.inputs:
            users.setdefault(i, []).append(op)
    input_layers, frontier, seen = [], [graph.input], set()
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
    graph.input_layers = tuple(input_layers)
    layers, _ = output_layers(graph)
    graph.output_layers = layers
    graph.output_layer = layers[0] if len(layers) == 1 else None


def _moves_or_copies(op: Op) -> bool:
    """One input moved around or copied (dropout in eval, ``contiguous``): a gate stays one."""
    return len(op.inputs) == 1 and (op.kind == "movement" or
                                    (op.kind == "passthrough" and op.sign == "same"))


# Ops through which the output can still be read as one layer's value, elementwise or per class.
_AFTER_OUTPUT_LAYER = ("passthrough", "movement", "batchnorm", "pool", "resample")


def output_layers(graph: Graph) -> tuple[tuple[str, ...], Op | None]:
    """The layers whose values make the output: :func:`output_layer`'s, or several heads summed
    (a distilled DeiT averages its class head and its distillation head); else () and the op
    that stands in the way."""
    found: list[str] = []
    sums: list[Op] = []

    def reach(name: str) -> Op | None:
        while name in graph and graph.op(name).kind not in LAYER_KINDS:
            op = graph.op(name)
            if op.kind == "add" and len(op.inputs) == 2:
                sums.append(op)
                return reach(op.inputs[0]) or reach(op.inputs[1])
            if op.kind not in _AFTER_OUTPUT_LAYER or len(op.inputs) != 1:
                return op
            name = op.inputs[0]
        if name not in graph:  # a branch of a sum that reaches the input through no layer
            return sums[-1] if sums else None
        found.append(name)
        return None

    blocker = reach(graph.output)
    if blocker is not None or not found:
        return (), blocker
    layers = tuple(dict.fromkeys(found))
    if len(layers) > 1 and any(a in _ancestors(graph, b) for a in layers for b in layers):
        return (), sums[0]  # a residual sum of layers (fc2(h) + h): not several heads
    return layers, None


def _ancestors(graph: Graph, name: str) -> set[str]:
    """Every op whose value ``name`` is computed from."""
    seen, frontier = set(), [name]
    while frontier:
        for parent in graph.op(frontier.pop()).inputs:
            if parent in graph and parent not in seen:
                seen.add(parent)
                frontier.append(parent)
    return seen


def after_output_layers(graph: Graph) -> list[Op]:
    """The ops between the output layers and the output (upsampling, reshapes, the sum of
    heads): through them a method carries the target's weighting, not relevance."""
    stop = set(graph.output_layers)
    found, frontier, seen = [], [graph.output], set()
    while frontier:
        name = frontier.pop()
        if name in seen or name in stop or name not in graph:
            continue
        seen.add(name)
        op = graph.op(name)
        found.append(op)
        frontier.extend(op.inputs)
    return found


def output_layer(graph: Graph) -> tuple[str | None, Op | None]:
    """The layer that produces the model output through one-input ops (reshapes, activations,
    BatchNorm of the logits, global pooling of a class map), and else the op that stands in the
    way."""
    name = graph.output
    while name in graph and graph.op(name).kind not in LAYER_KINDS:
        op = graph.op(name)
        if op.kind not in _AFTER_OUTPUT_LAYER or len(op.inputs) != 1:
            return None, op
        name = op.inputs[0]
    return (name, None) if name in graph else (None, None)
