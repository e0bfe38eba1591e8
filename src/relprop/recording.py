"""Record what a model computes on one input, eagerly, for models whose forward depends on the
data itself (detectors: score thresholds, top-k, NMS, a RoI's pyramid level), which neither
torch.fx nor torch.export can capture.

The model runs once under ``make_fx`` in real mode at the pre-dispatch ATen level (the
vocabulary :mod:`relprop.capture` already reads): every op is recorded with this input's
values, so each data-dependent choice is made as the model makes it. From the recording relprop
keeps only the path from the input to the tensors it explains; whatever that path reads that
was computed from the data but carries no relevance (indices, the boxes RoIAlign pools, a
mask) is a constant of this input's computation (rap-spec §9.4). The result is an ordinary
``fx.GraphModule`` from the input to those tensors, which every method explains as a model.
"""
from __future__ import annotations

import torch
import torch.fx as fx
import torch.nn as nn

from .capture import copy_into
from .errors import UntraceableModel
from .graph import eval_mode

aten = torch.ops.aten

# Arguments that are computed from the data but carry no relevance: RoIAlign's boxes are the
# positions it reads, as an index is (rap-spec §9.2: RoIAlign at fixed boxes is a linear map);
# a tensor made in another's shape and dtype (``new_full``, ``zeros_like``) reads no value.
_ALL = tuple(range(8))
NOT_SIGNALS: dict = {op: _ALL for op in (
    aten.new_full.default, aten.new_zeros.default, aten.new_ones.default, aten.new_empty.default,
    aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default,
    aten.full_like.default)}


def _register_torchvision() -> None:
    ops = getattr(torch.ops, "torchvision", None)
    if ops is None:
        return
    for name in ("roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool"):
        op = getattr(ops, name, None)
        if op is not None:
            NOT_SIGNALS[op.default] = (1,)


def record(model: nn.Module, x: torch.Tensor) -> fx.GraphModule:
    """The graph of ``model(x)`` as it ran on ``x`` (eval mode), made functional.
    ``meta["module_outputs"]`` maps each submodule whose output is one tensor to the node that
    holds it (its last call's), so that methods which hook a layer can find it again."""
    from torch.fx.experimental.proxy_tensor import make_fx
    outputs: dict[str, str] = {}
    hooks = [m.register_forward_hook(_note_output(name, outputs))
             for name, m in model.named_modules() if name]
    try:
        with eval_mode(model), torch.no_grad():
            # a value read out of a tensor (``int(n)``, Mask R-CNN's mask pasting) is this
            # input's value, as every other data-dependent choice is
            module = make_fx(lambda inputs: model(inputs), tracing_mode="real",
                             pre_dispatch=True, _error_on_data_dependent_ops=False)(x)
    except Exception as e:  # the model's own failure on this input
        raise ValueError(f"the model could not run on inputs of shape {tuple(x.shape)}: "
                         f"{type(e).__name__}: {e}") from None
    finally:
        for hook in hooks:
            hook.remove()
    functionalise(module.graph)
    module.recompile()
    module.meta["module_outputs"] = outputs
    return module


def _note_output(name: str, outputs: dict):
    """A forward hook that notes which recorded node holds the module's output."""
    from torch.fx.experimental import proxy_tensor

    def hook(module, args, out):
        mode = proxy_tensor.get_proxy_mode()
        if isinstance(out, torch.Tensor) and mode is not None:
            slot = proxy_tensor.get_proxy_slot(out, mode.tracer, None)
            if slot is not None:
                outputs[name] = slot.proxy.node.name
    return hook


_VIEW_WRITES = {aten.select.int: aten.select_scatter.default,
                aten.slice.Tensor: aten.slice_scatter.default}


def functionalise(graph: fx.Graph) -> None:
    """In-place ops as their out-of-place forms. make_fx already hands later readers of a tensor
    written in place the writing op's result; a write into a view (``batch[i, :h, :w].copy_(
    image)``, how torchvision pads a batch) also changes the view's base, which later readers
    still read from the old node: the base becomes the view written back into it
    (``select_scatter``/``slice_scatter``), and readers after the write read that."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    for node in list(graph.nodes):
        target = node.target
        if node.op != "call_function" or not isinstance(target, torch._ops.OpOverload) or \
                not target._schema.is_mutable:
            continue
        node.target = _out_of_place(target)
        written, value = node.args[0], node
        while _is_view(written):
            scatter = _VIEW_WRITES.get(written.target)
            if scatter is None:
                raise UntraceableModel(f"the model writes in place into a view made by "
                                       f"{written.target}, which relprop cannot write back yet")
            parent = written.args[0]
            with graph.inserting_after(value):
                value = graph.call_function(scatter, (parent, value, *written.args[1:]))
            value.meta.update(parent.meta)  # the base's value, written into
            order[value] = order[node] + 0.5
            written = parent
        if value is node:
            continue
        for user in list(written.users):
            if user is not value and order.get(user, -1) > order[node] and user.op != "output":
                user.replace_input_with(written, value)
        if any(u.op == "output" for u in written.users):
            graph.output_node().replace_input_with(written, value)


def _out_of_place(target):
    """``aten.copy_.default`` -> ``aten.copy.default`` and the like."""
    packet = getattr(aten, target._schema.name.split("::")[-1].rstrip("_"), None)
    overload = getattr(packet, target._overloadname, None) if packet is not None else None
    if overload is None:
        raise UntraceableModel(f"the model calls the in-place op {target} that has no "
                               "out-of-place form relprop can record")
    return overload


def _is_view(node) -> bool:
    if not isinstance(node, fx.Node) or node.op != "call_function" or \
            not isinstance(node.target, torch._ops.OpOverload):
        return False
    returns = node.target._schema.returns
    return bool(returns) and returns[0].alias_info is not None and \
        not node.target._schema.is_mutable


@torch.no_grad()
def run(module: fx.GraphModule, x: torch.Tensor, keep: set[str]) -> dict:
    """Run the recording on ``x``, keeping the values of the nodes named in ``keep`` (every
    other value is freed after its last reader)."""
    graph = module.graph
    last_use = {}
    for i, node in enumerate(graph.nodes):
        for arg in node.all_input_nodes:
            last_use[arg.name] = i
    env, kept = {}, {}
    for i, node in enumerate(graph.nodes):
        if node.op == "placeholder":
            env[node.name] = x
        elif node.op == "get_attr":
            env[node.name] = _attr(module, node.target)
        elif node.op == "call_function":
            args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: env[n.name])
            env[node.name] = node.target(*args, **kwargs)
        else:
            continue
        if node.name in keep:
            kept[node.name] = env[node.name]
        for arg in node.all_input_nodes:
            if last_use.get(arg.name) == i:
                env.pop(arg.name, None)
    return kept


def _as_padding(new: fx.Graph, node: fx.Node, values: dict, env: dict):
    """A signal written into a constant of one value (torchvision pads a batch by copying each
    image into zeros) as the padding it is: ``slice_scatter`` as ``constant_pad_nd``, the
    ``select_scatter`` of one image into a batch of one as ``unsqueeze``. The input layer's
    rule knows padding (it is no part of the image and takes no relevance); a write into a
    constant it would read as pixels."""
    if node.target not in (aten.slice_scatter.default, aten.select_scatter.default):
        return None
    base, source = node.args[0], node.args[1]
    fill = values.get(base.name) if isinstance(base, fx.Node) else None
    if not isinstance(fill, torch.Tensor) or source not in env or fill.numel() == 0 or \
            not bool((fill == fill.flatten()[0]).all()):
        return None
    dim = node.args[2] if len(node.args) > 2 else 0
    dim = dim % fill.dim()
    if node.target is aten.select_scatter.default:
        return new.call_function(aten.unsqueeze.default, (env[source], dim)) \
            if fill.shape[dim] == 1 else None
    start, end, step = (list(node.args[3:]) + [None, None, 1][len(node.args[3:]):])[:3]
    size = fill.shape[dim]
    start = 0 if start is None else start % (size + 1) if start < 0 else min(start, size)
    end = size if end is None else end % (size + 1) if end < 0 else min(end, size)
    if step != 1:
        return None
    widths = [0, 0] * (fill.dim() - dim)  # pairs from the last dim back to ``dim``
    widths[-2:] = [start, size - end]
    return new.call_function(aten.constant_pad_nd.default,
                             (env[source], widths, float(fill.flatten()[0])))


def _attr(module: nn.Module, target: str):
    for part in target.split("."):
        module = getattr(module, part)
    return module


def signals(graph: fx.Graph) -> set[fx.Node]:
    """The values that carry relevance: the input, and floating-point values computed from a
    signal in a position that is one (:func:`signal_args`). Everything else the path reads,
    data-dependent or not, is a constant of this input's computation."""
    found: set[fx.Node] = set()
    for node in graph.nodes:
        if node.op == "placeholder" or (node.op == "call_function" and is_float(node) and
                                        signal_args(node, found)):
            found.add(node)
    return found


def signal_args(node: fx.Node, signal: set[fx.Node]) -> list[fx.Node]:
    """The arguments of ``node`` that are signals, leaving out those an op only reads
    positions or a shape from (:data:`NOT_SIGNALS`)."""
    skip = NOT_SIGNALS.get(node.target, ())
    found = []
    for position, arg in enumerate(node.args):
        if position not in skip:
            found += [a for a in _nodes_in(arg) if a in signal]
    for arg in node.kwargs.values():
        found += [a for a in _nodes_in(arg) if a in signal]
    return found


def _nodes_in(arg) -> list[fx.Node]:
    found = []
    fx.node.map_arg(arg, lambda n: found.append(n))
    return found


def is_float(node: fx.Node) -> bool:
    """Whether the node's recorded value is (or holds) a floating-point tensor."""
    return _is_float_value(node.meta.get("val"))


def _is_float_value(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.is_floating_point()
    if isinstance(value, (list, tuple)):
        return any(_is_float_value(v) for v in value)
    return False


def path_to(graph: fx.Graph, ends: list[str]) -> tuple[set[fx.Node], set[str]]:
    """The nodes on the path from the input to the nodes ``ends`` along signals, and the names
    of the nodes that path reads which were computed from the data but are no signal (indices,
    boxes, masks): constants of this input's computation."""
    signal = signals(graph)
    by_name = {n.name: n for n in graph.nodes}
    path: set[fx.Node] = set()
    stack = [by_name[e] for e in ends]
    while stack:
        node = stack.pop()
        if node in path:
            continue
        path.add(node)
        stack += signal_args(node, signal)
    constants = {a.name for node in path if node.op == "call_function"
                 for a in node.all_input_nodes if a not in path and a.op != "get_attr"}
    return path, constants


def logit_module(recorded: fx.GraphModule, ends: list[str], values: dict,
                 modules: bool = False) -> fx.GraphModule:
    """A module ``x -> (1, L)``: the nodes ``ends`` of the recording, flattened and joined, with
    only the ops on the path from the input to them; ``values`` holds the recorded values of
    :func:`path_to`'s constants.

    With ``modules``, the module also has modules for the methods that hook them: an
    ``nn.Identity`` at the model's own path (``backbone.body.layer4``) on each node that was a
    submodule's output, where Grad-CAM can read the layer, and an activation module of its own
    for each activation call (:data:`ACTIVATION_MODULES`), where guided backpropagation acts."""
    marks: dict[str, list[str]] = {}
    if modules:
        for layer, name in recorded.meta.get("module_outputs", {}).items():
            marks.setdefault(name, []).append(layer)
    graph = recorded.graph
    by_name = {n.name: n for n in graph.nodes}
    path, _ = path_to(graph, ends)

    new = fx.Graph()
    env, attrs = {}, {}
    for node in graph.nodes:
        if node not in path:
            continue
        if node.op == "placeholder":
            env[node] = new.placeholder("x")
            continue

        def arg_of(a):
            if a in env:
                return env[a]
            if a.op == "get_attr":
                attrs[a.target] = _attr(recorded, a.target)
                env[a] = new.get_attr(a.target)
                return env[a]
            name = f"constant_{a.name}"
            attrs[name] = values[a.name]
            env[a] = new.get_attr(name)
            return env[a]
        env[node] = _as_padding(new, node, values, env) or new.node_copy(node, arg_of)
        if env[node].target is aten.copy.default:  # ATen's copy has no derivative
            env[node].target = copy_into
        if modules and node.target in ACTIVATION_MODULES:
            activation = ACTIVATION_MODULES[node.target](*node.args[1:], **node.kwargs)
            name = f"{node.name}_module"
            attrs[name] = activation
            with new.inserting_after(env[node]):
                call = new.call_module(name, (env[node].args[0],))
            env[node].replace_all_uses_with(call)
            new.erase_node(env[node])
            env[node] = call
        for layer in marks.get(node.name, ()):
            attrs[layer] = nn.Identity()
            env[node] = new.call_module(layer, (env[node],))
    joined = [new.call_function(aten.reshape.default, (env[by_name[e]], [-1])) for e in ends]
    out = joined[0] if len(joined) == 1 else new.call_function(aten.cat.default, (joined,))
    new.output(new.call_function(aten.unsqueeze.default, (out, 0)))
    root = nn.Module()
    modules_at = sorted((p for p, v in attrs.items() if isinstance(v, nn.Module)),
                        key=lambda p: p.count("."))  # a parent before its children
    for path in modules_at:  # at the model's own paths: nested, as in the model
        parent, _, name = path.rpartition(".")
        _submodule(root, parent).add_module(name, attrs[path])
    for name, value in attrs.items():
        if isinstance(value, nn.Module):
            continue
        if isinstance(value, nn.Parameter):
            root.register_parameter(name.replace(".", "_"), value)
        elif isinstance(value, torch.Tensor):
            root.register_buffer(name.replace(".", "_"), value)
        else:
            setattr(root, name.replace(".", "_"), value)
    for node in new.nodes:
        if node.op == "get_attr":
            node.target = node.target.replace(".", "_")
    return fx.GraphModule(root, new, class_name="Recorded").eval()


def _submodule(root: nn.Module, path: str) -> nn.Module:
    """The module at ``path`` under ``root``, made (an empty container) where missing."""
    for part in filter(None, path.split(".")):
        if not hasattr(root, part):
            root.add_module(part, nn.Module())
        root = getattr(root, part)
    return root


# Activation ops as the modules Captum's modified backward passes hook (guided
# backpropagation); the op's further arguments are the module's.
ACTIVATION_MODULES = {
    aten.relu.default: nn.ReLU, aten.hardtanh.default: nn.Hardtanh,
    aten.leaky_relu.default: nn.LeakyReLU,
    aten.hardswish.default: nn.Hardswish, aten.hardsigmoid.default: nn.Hardsigmoid,
    aten.silu.default: nn.SiLU, aten.gelu.default: nn.GELU, aten.sigmoid.default: nn.Sigmoid,
    aten.tanh.default: nn.Tanh}


_register_torchvision()
