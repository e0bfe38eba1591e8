"""Turn a captured fx graph (torch.fx's trace or torch.export's program) into a
:class:`relprop.ir.Graph` of ops: which node is which op (through :mod:`relprop.ops`), which
values are constants or sizes, arithmetic folded into passthrough and add ops, dead code
dropped. The facts every method reads off the result are :mod:`relprop.analysis`'s.

Nodes that do not depend on the model input (weights, buffers) are ``constant`` and nodes that
compute shapes or sizes are ``meta``: both run in the forward pass but carry no relevance.
"""
from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn as nn

from . import ops as vocabulary
from .analysis import analyse
from .errors import UnsupportedOperation, UntraceableModel
from .ir import Attr, Graph, ModuleCall, Op, Ref, ref_names
from .ops import (Normalised, UnsupportedCall, is_meta_call, is_tuple_call, mutates_receiver,
                  normalise_call, piece)


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


def normalise(fx_graph: fx.Graph, root: nn.Module, fixed=(), constants=None) -> Graph:
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
    analyse(graph)
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


_NAMED_PIECES = {"values": 0, "indices": 1}  # torch.return_types of max, min, sort, topk ...


def _piece_of(node: fx.Node, root: nn.Module, args, kwargs, pieces: dict, status: dict
              ) -> Normalised:
    """``pieces[i]`` of a tuple call (``x.chunk(2)[1]``) as a movement op on the tensor; a
    named piece (``x.max(dim).values``) by its place."""
    source = args[0] if args and isinstance(args[0], Ref) else None
    index = args[1] if len(args) > 1 else None
    if node.target is getattr and isinstance(index, str):
        index = _NAMED_PIECES.get(index)
    if node.op != "call_function" or node.target not in (operator.getitem, getattr) \
            or source is None or source.name not in pieces or not isinstance(index, int):
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


def _through_second_operand(op: Op, status: dict, fn, suffix: str, what: str, kind: str,
                            combine, gate: bool = False) -> Op:
    """Rewrite ``op`` (``a - b``, ``a / b`` of two signals) as ``combine(a, fn(b))`` of
    ``kind``, with ``fn(b)`` an elementwise op of its own (a gate where ``gate``); returns that
    new op, which goes before ``op`` in the graph."""
    second = op.args[1]
    made = Op(f"{op.name}_{suffix}", "passthrough", fn, (second,), {}, (second.name,),
              f"the {what} of {op.source}'s second operand", op.module_path, sign="any",
              gate=gate)
    status[made.name] = made.kind
    op.kind, op.sign, op.fn = kind, "any", combine
    op.args = (op.args[0], Ref(made.name))
    op.inputs = tuple(dict.fromkeys((op.args[0].name, made.name)))
    return made


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
                resolved.append(_through_second_operand(op, status, torch.neg, "negated",
                                                        "negation", "add", torch.add))
            elif op.fn is torch.div and len(tensors) == 2:
                # a / b: a rescaled by the weight 1/b (a normalisation, x / ||x||; ConViT's
                # attn / attn.sum()): the denominator is a gate (rap-spec §8.2, §8.3: the scale
                # is held constant), all relevance to the numerator.
                resolved.append(_through_second_operand(op, status, torch.reciprocal,
                                                        "reciprocal", "reciprocal", "product",
                                                        torch.mul, gate=True))
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
                    reason="relprop has rules for the sum, the difference, the product and the "
                           "quotient of two tensors, not for a power of one by the other")
        elif op.kind == "matmul":
            tensors = [a for a in op.args if isinstance(a, Ref) and status.get(a.name) not in
                       ("meta", "constant")]
            einsum = isinstance(op.fn, vocabulary.Einsum) and "->" in op.fn.equation
            if len(tensors) == 1 and (op.fn is torch.matmul or einsum):
                # x @ C with a constant C (relative-position tables on attention's query side):
                # a linear map of fixed weights, given the pooling z-rule (rap-spec §9.2's
                # z-rule, which conserves with weights of either sign); the tensor first.
                op.kind, op.sign = "pool", "any"
                if op.args[0] != tensors[0]:
                    op.fn = op.fn.swapped() if einsum else \
                        vocabulary.reversed_operands(torch.matmul)
                    op.args = op.args[::-1]
                op.inputs = (tensors[0].name,)
            elif len(tensors) != 2:
                raise UnsupportedOperation(
                    f"a matrix product with a constant ({op.source})", op.name, op.module_path,
                    reason="relprop has a rule for the product of two tensors of the input "
                           "(attention) and for a tensor times a constant matrix")
        resolved.append(op)
    # Dead code elimination: keep what the output needs.
    needed = {output}
    keep = []
    for op in reversed(resolved):
        if op.name in needed:
            keep.append(op)
            needed.update(ref_names((op.args, op.kwargs)))
    return keep[::-1]
