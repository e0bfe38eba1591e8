"""Facts any method can read off relprop's graph: the sign of each value, which products are
gated (attention's softmax weights), the first layers reached from the input, the layers that
produce the output and the ops after them. What a method does with them lives with its rules.
"""
from __future__ import annotations

from .ir import Graph, Op
from .ops import LAYER_KINDS


def analyse(graph: Graph) -> None:
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
            if op.kind == "movement" and len(op.inputs) > 1:  # heads stacked, then averaged
                sums.append(op)
                return next((b for b in map(reach, op.inputs) if b is not None), None)
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


def attention_products(graph: Graph) -> list[Op]:
    """The products whose one factor is attention's softmax weights (rap-spec §8.5), in graph
    order: where a graph has attention, for every method that looks for it."""
    return [op for op in graph.ops if op.kind == "matmul" and any(op.gated)]
