"""The graph relprop works on: ops of a small vocabulary (see :mod:`relprop.ops`) that name their
tensor arguments by reference, so one forward pass can fill them in and a reverse sweep can read
them back.

The graph holds the model's modules weakly: an explainer cached for a model must not keep the
model alive, and a module the user replaced must not be called again.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Callable

import torch.nn as nn


@dataclass(frozen=True)
class Ref:
    """A placeholder in an op's arguments for the value of another node."""

    name: str


def _deref(ref: weakref.ref, what: str):
    module = ref()
    if module is None:
        raise RuntimeError(f"the module that held {what} no longer exists; explain the model "
                           "again (relprop re-traces a model whose modules changed)")
    return module


class Attr:
    """A module's parameter or buffer, read when the op runs: ``model.to(...)``, ``model.double()``
    and parametrizations (weight norm) replace them, so a tensor captured at trace time would go
    stale."""

    __slots__ = ("_module", "name")

    def __init__(self, module: nn.Module, name: str):
        self._module, self.name = weakref.ref(module), name

    @property
    def module(self) -> nn.Module:
        return _deref(self._module, f"'{self.name}'")

    def get(self):
        return getattr(self.module, self.name)


class ModuleCall:
    """A module kept whole in the graph, called through a weak reference."""

    __slots__ = ("_module", "__weakref__")

    def __init__(self, module: nn.Module):
        self._module = weakref.ref(module)

    @property
    def module(self) -> nn.Module:
        return _deref(self._module, "this op")

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)


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
    sign: str = "any"  # output sign: 'nonneg', 'same' (as its inputs) or 'any'
    input_nonneg: bool = False  # every input is known to be >= 0
    gate: bool = False  # the output is a gate (a sigmoid's): a weight, not a signal (§8.2)
    gated: tuple[bool, ...] = ()  # for a product: which of ``inputs`` are gates


@dataclass(eq=False)  # compared and hashed by identity: plans are cached per graph
class Graph:
    ops: list[Op]
    input: str
    output: str
    input_layers: tuple[str, ...] = ()  # the first Linear/Conv layers reached from the input
    output_layer: str | None = None  # the layer whose value the output is, through 1-input ops
    output_layers: tuple[str, ...] = ()  # that layer, or the heads whose sum the output is
    derived: dict = field(default_factory=dict, repr=False)  # what methods derive from the
    # graph (the engine's plans), kept with it so that it goes when the graph goes

    def op(self, name: str) -> Op:
        return self._by_name[name]

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __post_init__(self):
        self._by_name = {op.name: op for op in self.ops}


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
    if isinstance(obj, slice):  # x[:, :h] with h a size of the input
        return slice(resolve(obj.start, env), resolve(obj.stop, env), resolve(obj.step, env))
    return obj


def ref_names(obj) -> list[str]:
    """The names of the Refs in ``obj`` (nested lists, tuples, dicts), in order."""
    if isinstance(obj, Ref):
        return [obj.name]
    if isinstance(obj, (list, tuple)):
        return [n for x in obj for n in ref_names(x)]
    if isinstance(obj, dict):
        return [n for x in obj.values() for n in ref_names(x)]
    if isinstance(obj, slice):
        return ref_names((obj.start, obj.stop, obj.step))
    return []
