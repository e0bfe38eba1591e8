"""Capture what a model computes on a given input with ``torch.export`` (non-strict), for models
torch.fx cannot trace: forwards that branch on sizes (every Hugging Face model, timm's own VGG
head, ConViT, Twins, ...). The result is the same :class:`relprop.ir.Graph` as fx's, built by
the same normalisation (:mod:`relprop.graph`), from a small ATen vocabulary mapped
here onto the functions :mod:`relprop.ops` already knows.

Export runs the model's Python forward on fake tensors: the user's model is not changed and
nothing of torch is patched. The captured graph is specialised to the input's shape, dtype and
device, so it is kept per (model, shape, dtype, device) and captured again for another.
Parameters and buffers are read from the live model at every forward pass (weak references),
as on the fx path, so in-place edits are always seen.

Beyond the vocabulary: autocast and grad-mode regions are inlined; casts keep the user's
floating dtype (:func:`relprop.ops.keeps_precision`); a forward that writes into a view is made
functional first, its writes becoming copies and slice-scatters that the rules route.
"""
from __future__ import annotations

import contextlib
import io
import threading
import warnings

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .decompositions import additive_mask
from .errors import UntraceableModel
from .ops import (keeps_precision, normaliser_of, register_alias, register_meta,
                  register_normaliser, register_op)

aten = torch.ops.aten

# --------------------------------------------------------------------------- the ATen vocabulary
# An ATen overload whose arguments read as a function's that relprop knows: the same normaliser.
SAME_AS = {
    aten.conv2d.default: F.conv2d, aten.conv1d.default: F.conv1d, aten.conv3d.default: F.conv3d,
    aten.linear.default: F.linear, aten.conv_transpose2d.input: F.conv_transpose2d,
    aten.conv_transpose1d.default: F.conv_transpose1d,
    aten.relu.default: torch.relu, aten.relu_.default: torch.relu,
    aten.gelu.default: F.gelu, aten.silu.default: F.silu, aten.silu_.default: F.silu,
    aten.hardswish.default: F.hardswish, aten.hardswish_.default: F.hardswish,
    aten.hardsigmoid.default: F.hardsigmoid, aten.hardsigmoid_.default: F.hardsigmoid,
    aten.sigmoid.default: torch.sigmoid, aten.tanh.default: torch.tanh,
    aten.hardtanh.default: F.hardtanh, aten.hardtanh_.default: F.hardtanh,
    aten.leaky_relu.default: F.leaky_relu, aten.elu.default: F.elu, aten.mish.default: F.mish,
    aten.softplus.default: F.softplus, aten.relu6.default: F.relu6,
    aten.softmax.int: F.softmax, aten.matmul.default: torch.matmul, aten.bmm.default: torch.bmm,
    aten.einsum.default: torch.einsum,
    aten.add.Tensor: torch.add, aten.add_.Tensor: torch.add, aten.mul.Tensor: torch.mul,
    aten.mul_.Tensor: torch.mul, aten.sub.Tensor: torch.sub, aten.div.Tensor: torch.div,
    aten.sub_.Tensor: torch.sub, aten.div_.Tensor: torch.div, aten.sqrt.default: torch.sqrt,
    aten.rsqrt.default: torch.rsqrt, aten.exp.default: torch.exp, aten.abs.default: torch.abs,
    aten.reciprocal.default: torch.reciprocal, aten.square.default: torch.square,
    aten.clamp.default: torch.clamp, aten.clamp.Tensor: torch.clamp,
    aten.clamp_min.default: torch.clamp_min, aten.clamp_max.default: torch.clamp_max,
    aten.mean.dim: torch.mean, aten.amax.default: torch.amax,
    aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
    aten.avg_pool2d.default: F.avg_pool2d, aten.max_pool2d.default: F.max_pool2d,
    aten.dropout.default: F.dropout, aten.dropout_.default: F.dropout,
    aten.feature_dropout.default: F.dropout, aten.feature_dropout_.default: F.dropout,
    aten.pad.default: F.pad, aten.conv2d.padding: F.conv2d, aten.conv1d.padding: F.conv1d,
    aten.col2im.default: F.fold, aten.max.dim: torch.max,
    aten.cat.default: torch.cat, aten.flatten.using_ints: torch.flatten,
    aten.reshape.default: torch.reshape, aten._unsafe_view.default: torch.reshape,
    aten.transpose.int: torch.transpose,
    aten.permute.default: torch.permute, aten.unsqueeze.default: torch.unsqueeze,
    aten.squeeze.dim: torch.squeeze, aten.roll.default: torch.roll,
    aten.chunk.default: torch.chunk, aten.split.Tensor: torch.split,
    aten.split_with_sizes.default: torch.split,
    aten.linalg_vector_norm.default: torch.linalg.vector_norm,
    aten.unbind.int: torch.unbind,
    # a view as a reshape: the same values, also where relprop's forward hands it a
    # non-contiguous tensor that the model's own kernels had laid out contiguously
    # (Data2Vec-Vision's relative position bias)
    aten.view.default: torch.reshape, aten.expand.default: "expand",
    aten.contiguous.default: "contiguous", aten.clone.default: "clone",
    aten.expand_as.default: "expand_as", aten.reshape_as.default: "reshape_as",
    aten.neg.default: torch.neg, aten.pow.Tensor_Scalar: torch.pow,
    aten.sum.dim_IntList: torch.sum, aten.stack.default: torch.stack,
    aten.repeat.default: "repeat", aten.repeat_interleave.self_int: torch.repeat_interleave,
    aten.unfold.default: "unfold", aten.avg_pool1d.default: F.avg_pool1d,
    aten.max_pool1d.default: F.max_pool1d,
}
if hasattr(aten, "rms_norm"):
    SAME_AS[aten.rms_norm.default] = F.rms_norm

# ATen calls that only check or describe: they carry no value a rule needs.
CHECKS = {aten._assert_tensor_metadata.default, aten.sym_size.int, aten.sym_numel.default,
          aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default,
          aten.full_like.default, aten.new_zeros.default, aten.new_ones.default,
          aten.new_empty.default, aten.new_full.default}
_ASSERT_SCALAR = getattr(aten, "_assert_scalar", None)


def _register_aten() -> None:
    """Give each ATen overload the normaliser of the function it reads as, and the movement
    and passthrough kinds to the ones with no such function."""
    for overload, same in SAME_AS.items():
        register_alias(overload, same)
    for overload in (aten.select.int, aten.slice.Tensor, aten.alias.default, aten.t.default,
                     aten.unflatten.int, aten.narrow.default,
                     aten.squeeze.default, aten.movedim.int, aten.index_select.default):
        register_op(overload, "movement")
    for overload in (aten.to.dtype, aten.to.device, aten.to.dtype_layout,
                     aten._to_copy.default):
        cast = keeps_precision(overload)
        register_op(cast, "passthrough", sign="same")
        register_alias(overload, cast)
    register_alias(aten.type_as.default, "type_as")
    for overload in (aten.lift_fresh_copy.default, aten.detach.default):
        register_op(overload, "passthrough", sign="same")
    register_op(aten.rsub.Scalar, "passthrough")  # c - x, the tensor first
    register_op(aten.im2col.default, "movement")
    # a functional write: the source routed into the tensor's positions it overwrites
    register_op(copy_into, "movement")
    register_alias(aten.copy.default, copy_into)
    for overload in (aten.slice_scatter.default, aten.select_scatter.default):
        register_op(overload, "movement")
    register_op(aten.adaptive_avg_pool1d.default, "pool")
    register_op(activation_call, "passthrough")
    # selections by indices computed from the data (a recorded detector's kept boxes, a RoI's
    # pyramid level): the indices are constants of the input's computation (rap-spec §9.4)
    for overload in (aten.index.Tensor, aten.index_put.default, aten.gather.default):
        register_op(overload, "movement")
    # RoIAlign at the recorded boxes: a linear map with non-negative weights (rap-spec §9.2)
    torchvision_ops = getattr(torch.ops, "torchvision", None)
    for name in ("roi_align", "roi_pool"):
        if torchvision_ops is not None and hasattr(torchvision_ops, name):
            register_op(getattr(torchvision_ops, name).default, "pool")
    # The norms' trailing cudnn_enable flag is no argument of their functional form.
    register_normaliser(aten.layer_norm.default, _first(5, normaliser_of(F.layer_norm)))
    register_normaliser(aten.group_norm.default, _first(5, normaliser_of(F.group_norm)))
    register_normaliser(aten.batch_norm.default, _batch_norm)
    register_normaliser(aten.constant_pad_nd.default, _constant_pad)
    for overload, mode in ((aten.upsample_bilinear2d.vec, "bilinear"),
                           (aten.upsample_bicubic2d.vec, "bicubic"),
                           (aten.upsample_nearest2d.vec, "nearest")):
        register_normaliser(overload, _upsample(mode))
    register_meta(_additive_on)


def copy_into(base: torch.Tensor, source: torch.Tensor, non_blocking: bool = False):
    """``aten.copy(base, source)``, the functional form of ``base.copy_(source)``: ``source``
    in ``base``'s shape and dtype (ATen's own copy has no derivative, which routing needs)."""
    return source.to(dtype=base.dtype, device=base.device).expand(base.shape)


def _first(n, normaliser):
    return lambda args, kwargs: normaliser(tuple(args[:n]), kwargs)


def _batch_norm(args, kwargs):
    """``aten.batch_norm(input, weight, bias, running_mean, running_var, training, momentum,
    eps, cudnn_enabled)`` as ``F.batch_norm``."""
    x, weight, bias, mean, var, training, momentum, eps = (list(args) + [None] * 8)[:8]
    return normaliser_of(F.batch_norm)((x, mean, var, weight, bias),
                                       {"training": bool(training), "eps": eps})


def _constant_pad(args, kwargs):
    x, pad = args[0], args[1]
    value = args[2] if len(args) > 2 else kwargs.get("value", 0)
    return normaliser_of(F.pad)((x, list(pad)), {"value": value})


def _upsample(mode):
    """``upsample_{bilinear,bicubic}2d.vec(input, output_size, align_corners, scale_factors)``
    and ``upsample_nearest2d.vec(input, output_size, scale_factors)`` as ``F.interpolate``."""
    def normalise(args, kwargs):
        aligned = mode != "nearest"
        size = args[1]
        scale = args[3] if aligned else (args[2] if len(args) > 2 else None)
        return normaliser_of(F.interpolate)(
            (args[0],), {"size": list(size) if size is not None else None,
                         "scale_factor": None if size is not None else scale, "mode": mode,
                         "align_corners": args[2] if aligned else None})
    return normalise


# --------------------------------------------------------------------------- capture

_EXPORT_LOCK = threading.Lock()  # export's fake-tensor machinery is process-wide state


def export(model: nn.Module, x: torch.Tensor) -> tuple[fx.Graph, dict]:
    """``model`` (in eval mode) exported on ``x``: an fx graph whose parameters and buffers are ``get_attr``
    nodes naming the model's own (so that the normalisation reads the live tensors), and the
    lifted constants by node name."""
    try:
        with _EXPORT_LOCK, _quiet():
            program = torch.export.export(model, (x,), strict=False)
            if _writes_into_views(program.graph):
                program = program.run_decompositions({})  # functional: copies become scatters
    except Exception as e:  # export raises many types; all mean the same to the user
        raise UntraceableModel(
            f"neither torch.fx nor torch.export could capture {type(model).__name__} on inputs "
            f"of shape {tuple(x.shape)}: {type(e).__name__}: {_first_line(e)}. relprop needs a "
            "forward that runs without data-dependent Python control flow on these inputs"
        ) from e
    graph = program.graph_module.graph  # the program's own copy: ours to rewrite
    signature = program.graph_signature
    named = {**signature.inputs_to_parameters, **signature.inputs_to_buffers}
    lifted = dict(signature.inputs_to_lifted_tensor_constants)
    constants = {}
    for node in list(graph.nodes):
        if node.op != "placeholder":
            continue
        if node.name in named:
            with graph.inserting_before(node):
                attr = graph.create_node("get_attr", named[node.name])
            node.replace_all_uses_with(attr)
            graph.erase_node(node)
        elif node.name in lifted:
            constants[node.name] = program.constants[lifted[node.name]]
    _inline_regions(graph, program.graph_module)
    _unroll_lstms(graph)
    _decompose_attention(graph)
    _addmm_as_linear(graph)
    _fuse_rms_norms(graph)
    _fuse_activations(graph, model)
    _drop_checks(graph)
    return graph, constants


def _writes_into_views(graph: fx.Graph) -> bool:
    """Whether the forward writes into a tensor in place by an op relprop does not read as its
    out-of-place form (``attn[:, :, 1:] = ...``, a ``copy_`` into a view: MViTv2). Such a graph
    is made functional, where the write is a ``copy`` or ``slice_scatter`` that returns the new
    tensor, which the rules can route."""
    return any(node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
               and node.target._schema.is_mutable and node.target not in SAME_AS
               for node in graph.nodes)


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


class _quiet:
    """Export logs its own warnings and prints the partial graph to stderr where it fails;
    relprop's error says what failed in one line instead. (Logging handlers keep the stream
    they were made with, so a server's log is not swallowed meanwhile.)"""

    LOGGERS = ("torch._export", "torch.export", "torch.fx.experimental.symbolic_shapes",
               "torch._subclasses.fake_tensor")

    def __enter__(self):
        import logging
        self.saved = [(logging.getLogger(name), logging.getLogger(name).level)
                      for name in self.LOGGERS]
        for logger, _ in self.saved:
            logger.setLevel(logging.CRITICAL)
        # nn.LSTM refreshes its list of weights in its forward, which export reports as an
        # attribute assigned during export; the model's own weights are untouched
        self.warnings = warnings.catch_warnings()
        self.warnings.__enter__()
        warnings.filterwarnings("ignore", message=r"The tensor attributes .* were assigned")
        self.stderr = contextlib.redirect_stderr(io.StringIO())
        self.stderr.__enter__()

    def __exit__(self, *exc):
        self.warnings.__exit__(*exc)
        self.stderr.__exit__(*exc)
        for logger, level in self.saved:
            logger.setLevel(level)


def _region_operators() -> dict:
    """Export's wrappers of a region of the forward that runs under another mode, with the
    position of the region's graph in their arguments: ``torch.autocast`` (its dtype),
    ``torch.set_grad_enabled``."""
    found = {}
    for name, position in (("wrap_with_autocast", 4), ("wrap_with_set_grad_enabled", 1)):
        operator = getattr(torch.ops.higher_order, name, None)
        if operator is not None:
            found[operator] = position
    return found


def _inline_regions(graph: fx.Graph, owner: nn.Module) -> None:
    """Autocast and grad-mode regions as the ops they wrap. relprop explains in the dtype the
    user runs the model in, so a region that would run in bfloat16 under autocast (or that
    keeps a norm in float32 against it, as EfficientViT's attention does) computes the same
    function here; grad modes do not change values."""
    regions = _region_operators()
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in regions:
            continue
        position = regions[node.target]
        body = getattr(owner, node.args[position].target).graph
        inputs = [n for n in body.nodes if n.op == "placeholder"]
        with graph.inserting_before(node):
            outputs = graph.graph_copy(body, dict(zip(inputs, node.args[position + 1:])))
        _replace_by_pieces(graph, node, outputs if isinstance(outputs, (tuple, list))
                           else (outputs,))
    for node in list(graph.nodes):  # the regions' graphs, now unused
        if node.op == "get_attr" and not node.users and isinstance(
                getattr(owner, node.target, None), fx.GraphModule):
            graph.erase_node(node)


def _replace_by_pieces(graph: fx.Graph, node: fx.Node, pieces) -> None:
    """Remove ``node``, a call that returns a tuple, giving each ``getitem(node, i)`` of it the
    value ``pieces[i]``."""
    for user in list(node.users):
        user.replace_all_uses_with(pieces[user.args[1]])
        graph.erase_node(user)
    graph.erase_node(node)


def _drop_checks(graph: fx.Graph) -> None:
    for node in list(graph.nodes):
        if node.op == "call_function" and (node.target in CHECKS or
                                           node.target is _ASSERT_SCALAR) and not node.users:
            graph.erase_node(node)


def _maker(graph: fx.Graph, replaced: fx.Node):
    """``add(target, *args)``: a new call node that carries ``replaced``'s module path and
    source line, so that errors and ``layer=`` name the module it came from."""
    meta = {key: replaced.meta[key] for key in ("nn_module_stack", "stack_trace")
            if key in replaced.meta}

    def add(target, *args):
        new = graph.call_function(target, args)
        new.meta.update(meta)
        return new
    return add


def _decompose_attention(graph: fx.Graph) -> None:
    """``scaled_dot_product_attention`` as its arithmetic (rap-spec §8.5): scores, an additive
    mask, softmax, and the product with V, so that the rules see the softmax weights."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.scaled_dot_product_attention.default:
            continue
        names = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                 "enable_gqa")
        given = {**dict(zip(names, node.args)), **node.kwargs}
        q, k, v = given["query"], given["key"], given["value"]
        if given.get("dropout_p", 0.0) not in (0, 0.0) or given.get("enable_gqa"):
            raise UntraceableModel("scaled_dot_product_attention with dropout or enable_gqa "
                                   "is not supported yet")
        q_shape, k_shape = q.meta["val"].shape, k.meta["val"].shape
        scale = given.get("scale") or q_shape[-1] ** -0.5
        mask = given.get("attn_mask")
        add = _maker(graph, node)

        with graph.inserting_before(node):
            scores = add(aten.matmul.default, add(aten.mul.Tensor, q, scale),
                         add(aten.transpose.int, k, -2, -1))
            if given.get("is_causal"):
                causal = torch.ones(q_shape[-2], k_shape[-2], dtype=torch.bool).tril()
                scores = add(aten.add.Tensor, scores, add(_additive_on, causal, scores))
            if mask is not None and mask.meta["val"].dtype == torch.bool:
                scores = add(aten.add.Tensor, scores, add(additive_mask, mask, q.meta["val"].dtype))
            elif mask is not None:  # a float bias (SAM's relative positions, from q): added
                scores = add(aten.add.Tensor, scores, mask)
            weights = add(aten.softmax.int, scores, -1)
            out = add(aten.matmul.default, weights, v)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


def _addmm_as_linear(graph: fx.Graph) -> None:
    """``addmm(bias, x, W)`` (GPT-2's ``Conv1D``: a linear layer with its weight stored
    transposed) as ``linear(x, Wᵀ, bias)``, so that the linear rules read the weight, and as
    ``x @ y + bias`` where the matrix is no parameter."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.addmm.default:
            continue
        bias, x, matrix = node.args[:3]
        if node.kwargs.get("beta", 1) != 1 or node.kwargs.get("alpha", 1) != 1:
            raise UntraceableModel("addmm with beta or alpha other than 1 is not supported yet")
        add = _maker(graph, node)
        with graph.inserting_before(node):
            if matrix.op == "get_attr":
                out = add(aten.linear.default, x, add(aten.t.default, matrix), bias)
            else:
                out = add(aten.add.Tensor, add(aten.matmul.default, x, matrix), bias)
        node.replace_all_uses_with(out)
        graph.erase_node(node)


_CASTS = (aten._to_copy.default, aten.to.dtype, aten.to.dtype_layout, aten.type_as.default)


def _uncast(node):
    while isinstance(node, fx.Node) and node.op == "call_function" and node.target in _CASTS:
        node = node.args[0]
    return node


def _rms_of(node, x) -> tuple | None:
    """``(dims, eps)`` where ``node`` is ``rsqrt(mean(x², dims, keepdim) + eps)`` over the
    last dims of ``x`` (up to casts), else None."""
    if not (isinstance(node, fx.Node) and node.target is aten.rsqrt.default):
        return None
    total = node.args[0]
    if total.target is not aten.add.Tensor or not isinstance(total.args[1], (int, float)):
        return None
    mean = total.args[0]
    if mean.target is not aten.mean.dim or not (len(mean.args) > 2 and mean.args[2] or
                                                mean.kwargs.get("keepdim")):
        return None
    square = mean.args[0]
    if square.target is not aten.pow.Tensor_Scalar or square.args[1] != 2 or \
            _uncast(square.args[0]) is not _uncast(x):
        return None
    rank = len(x.meta["val"].shape)
    dims = sorted(d % rank for d in mean.args[1])
    if dims != list(range(rank - len(dims), rank)):
        return None
    return dims, float(total.args[1])


def _fuse_rms_norms(graph: fx.Graph) -> None:
    """RMSNorm written out (Hugging Face's Llama, Qwen2, Gemma, Mistral, Phi-3:
    ``x * rsqrt(mean(x²) + eps)``) as the norm it is (rap-spec §8.3: relevance passes through
    it, as LXT holds the rms constant). Read as it is written, it would be a product of two
    signals whose rms factor takes half the relevance (§8.2) and hands it on through x² to
    every position of the norm: a map that conserves but is not the spec's."""
    if not hasattr(aten, "rms_norm"):  # torch < 2.4: the product is read as it is written
        return
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.mul.Tensor or \
                not all(isinstance(a, fx.Node) for a in node.args[:2]):
            continue
        for x, rms in (node.args[:2], node.args[1::-1]):
            found = _rms_of(rms, x)
            if found is None:
                continue
            dims, eps = found
            shape = list(x.meta["val"].shape[dims[0]:])
            add = _maker(graph, node)
            with graph.inserting_before(node):
                fused = add(aten.rms_norm.default, x, shape, None, eps)
            node.replace_all_uses_with(fused)
            graph.erase_node(node)
            break


# Modules whose forward is an elementwise activation, whatever arithmetic it is written in
# (transformers' NewGELUActivation: 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³)))).
ACTIVATION_MODULES_FROM = ("transformers.activations.",)


def _fuse_activations(graph: fx.Graph, model: nn.Module) -> None:
    """An activation module written out in arithmetic as the one activation it is (rap-spec
    §8.1: relevance passes it, LXT's identity rule), called as the module: read op by op, its
    products of the input with functions of itself would take the uniform rule (§8.2) and
    its constants shares, a map that is not the spec's."""
    groups: dict[str, list[fx.Node]] = {}
    for node in graph.nodes:
        stack = node.meta.get("nn_module_stack") if node.op == "call_function" else None
        if stack:
            key = list(stack)[-1]
            path, kind = stack[key]
            if str(kind).startswith(ACTIVATION_MODULES_FROM):
                groups.setdefault(key, []).append(node)
    for nodes in groups.values():
        path = nodes[0].meta["nn_module_stack"][list(nodes[0].meta["nn_module_stack"])[-1]][0]
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes
                  if a not in inside and a.op != "get_attr"}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        try:
            module = model.get_submodule(path)
        except AttributeError:
            continue
        if len(inputs) != 1 or len(outputs) != 1 or any(p.requires_grad for p in
                                                       module.parameters()):
            continue
        (x,), out = inputs, outputs[0]
        if getattr(x.meta.get("val"), "shape", None) != getattr(out.meta.get("val"), "shape", 0):
            continue
        with graph.inserting_before(out):
            call = graph.call_function(activation_call, (x, module))
        call.meta.update(out.meta)
        out.replace_all_uses_with(call)
        for node in reversed(nodes):
            if not node.users:
                graph.erase_node(node)


def activation_call(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """An elementwise activation module called on ``x`` (the op :func:`_fuse_activations`
    makes; the module holds no parameters, so the graph keeps no part of the model alive)."""
    return module(x)


def _unroll_lstms(graph: fx.Graph) -> None:
    """``nn.LSTM`` as its steps, in the ops the rules know (the LSTM rule of Arras et al., 2017,
    "signal-take-all"): the gates are sigmoids of linear maps, so each product ``f ⊙ c``,
    ``i ⊙ g``, ``o ⊙ tanh(c)`` gives all of its relevance to the signal it gates (rap-spec §8.2),
    and the sums of the cell state and of the gates' two linear maps take the sum's rule.
    The capture knows the sequence length, so the loop is written out step by step."""
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not aten.lstm.input:
            continue
        x, hx, params, has_biases, layers, _, _, bidirectional, batch_first = node.args[:9]
        directions = 2 if bidirectional else 1
        per = 4 if has_biases else 2
        if len(params) != layers * directions * per:
            raise UntraceableModel("an LSTM with projections (proj_size > 0) is not supported "
                                   "yet")
        shape = x.meta["val"].shape
        steps, time_dim = (shape[1], 1) if batch_first else (shape[0], 0)
        width = hx[0].meta["val"].shape[-1]
        add = _maker(graph, node)

        finals_h, finals_c = [], []
        with graph.inserting_before(node):
            sequence = x
            for layer in range(layers):
                outputs = []
                for direction in range(directions):
                    k = (layer * directions + direction) * per
                    w_ih, w_hh = params[k], params[k + 1]
                    b_ih, b_hh = (params[k + 2], params[k + 3]) if has_biases else (None, None)
                    h = add(aten.select.int, hx[0], 0, layer * directions + direction)
                    c = add(aten.select.int, hx[1], 0, layer * directions + direction)
                    order = range(steps) if direction == 0 else range(steps - 1, -1, -1)
                    states = {}
                    for t in order:
                        x_t = add(aten.select.int, sequence, time_dim, t)
                        gates = add(aten.add.Tensor, add(aten.linear.default, x_t, w_ih, b_ih),
                                    add(aten.linear.default, h, w_hh, b_hh))
                        i, f, g, o = (add(aten.slice.Tensor, gates, -1, j * width,
                                          (j + 1) * width) for j in range(4))
                        i, f, o = (add(aten.sigmoid.default, v) for v in (i, f, o))
                        g = add(aten.tanh.default, g)
                        c = add(aten.add.Tensor, add(aten.mul.Tensor, f, c),
                                add(aten.mul.Tensor, i, g))
                        h = add(aten.mul.Tensor, o, add(aten.tanh.default, c))
                        states[t] = h
                    outputs.append(add(aten.stack.default, [states[t] for t in range(steps)],
                                       time_dim))
                    finals_h.append(h)
                    finals_c.append(c)
                sequence = outputs[0] if directions == 1 else \
                    add(aten.cat.default, outputs, -1)
            results = (sequence, add(aten.stack.default, finals_h, 0),
                       add(aten.stack.default, finals_c, 0))
        _replace_by_pieces(graph, node, results)


def _additive_on(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A boolean mask as an additive one in ``like``'s dtype and device (a size computation)."""
    return additive_mask(mask.to(like.device), like.dtype)


_register_aten()
