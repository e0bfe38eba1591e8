"""Capture a model as relprop's graph: traced once with torch.fx, or where fx cannot, captured
per input with torch.export (:mod:`relprop.capture`); normalised into ops by
:mod:`relprop.normalise`, with the facts of :mod:`relprop.analysis`. One graph per model (and
input signature), shared by every method and thread, held weakly.
"""
from __future__ import annotations

import functools
import inspect
import threading
import weakref
from contextlib import contextmanager

import torch
import torch.fx as fx
import torch.nn as nn

from .errors import UnsupportedOperation, UntraceableModel
from .ir import Graph
from . import capture as exporter, decompositions, ops as vocabulary
from .normalise import normalise
from .ops import module_normaliser


class _Tracer(fx.Tracer):
    """torch.fx's tracer, entering what :mod:`relprop.decompositions` writes out."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        if isinstance(m, nn.LSTM):  # its steps depend on the sequence length: see capture
            raise UntraceableModel(f"an LSTM ('{qualname}') is written out step by step for "
                                   "the input's sequence length, by torch.export")
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
    return normalise(graph, model, tuple(fixed or ()))


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
        table, key, owner = _trace_table(model)
        entry = table.get(key)
        versions = (vocabulary.version(), decompositions.version())
        if entry is None or entry[1] != versions or not entry[0].matches(owner):
            try:
                found = trace(model)
            except UntraceableModel as e:
                found = str(e)  # the message only: an exception's traceback would hold the
                # frames, and through them the model, that the weak table must not keep alive
            if table is not _TRACES and len(table) >= _CAPTURES_PER_MODEL and key not in table:
                table.pop(next(iter(table)))  # a wrapper's keys (masks) are many: a few kept
            entry = (ModuleTree(owner), versions, found, {})
            table[key] = entry
        found, captures = entry[2], entry[3]
        if isinstance(found, Graph):
            return found
        if example is None:
            raise UntraceableModel(found)
        key = (tuple(example.shape), example.dtype, example.device)
        graph = captures.get(key)
        if graph is None:
            graph = capture(model, example)
            if len(captures) >= _CAPTURES_PER_MODEL:
                captures.pop(next(iter(captures)))
            captures[key] = graph
        return graph


_SHARED_TRACES: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def _trace_table(model: nn.Module) -> tuple[dict, object, nn.Module]:
    """Where ``model``'s graphs are kept: under the model itself, or, for a wrapper made per
    call around a model (:class:`relprop.text.OnEmbeddings`, which names it and what else its
    graph depends on in ``trace_key()``), under the wrapped model, so that every wrapper of the
    same model and key shares one capture. Returns (table, key, the module whose tree the
    graph depends on)."""
    shared = getattr(model, "trace_key", None)
    if shared is None:
        return _TRACES, model, model
    owner, key = shared()
    table = _SHARED_TRACES.get(owner)
    if table is None:
        table = _SHARED_TRACES[owner] = {}
    return table, key, owner


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
    return normalise(fx_graph, model, constants=constants)


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
