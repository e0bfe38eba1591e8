"""The rule registry: (method, op kind) -> rule.

A rule is ``rule(op, relevance, run) -> tuple`` giving the relevance of each of ``op.inputs``
(``None`` for an input that gets none). ``run`` is the :class:`relprop.engine.Run` of the current
pass: ``run.args(op)`` gives the op's arguments as they were in the forward pass,
``run.output(op)`` its output, ``run.shape(name)`` a tensor's shape, ``run.score`` the explained
score per sample and ``run.note(op)`` what the method's own analysis of the graph said of the op.

A method may register an analysis, ``analysis(graph) -> {op name: {...}}``: the roles its rules
need (RAP's first and output layers), worked out once per traced graph and kept beside it, so
the graph itself stays free of any one method's ideas.

Weights are read when the rule runs and anything derived from them (``W+``, ``|W-|``) is derived
then: a cache would serve stale weights after in-place edits that PyTorch does not count
(``w.data.mul_(2)``, a hand-written SGD step).

Rules shared by every propagation method are registered under ``method='*'``; a method's own
rule for a kind takes precedence. A method can be a variant of another (``derive``): it then has
the other's rules and analysis, its own where it registers them, so that a rule a user registers
for ``rap`` serves ``rap-stable`` too.

Each rule names the floating-point types it is tested in. A type enters that list only where a
test shows the heat maps stay within a stated tolerance of float64/float32 (``tests/
test_precision.py``), so that a model run in a half type is explained only where that holds.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import UnsupportedOperation

FULL = frozenset({torch.float32, torch.float64})
WITH_BFLOAT16 = FULL | {torch.bfloat16}


@dataclass(frozen=True)
class Factored:
    """A rule in factor form (LXT's gradient × input): ``fn(op, g, run)`` takes the relevance of
    the op's output as the factor ``g`` with ``R = y ⊙ g`` and returns each input's factor
    ``g_i`` with ``R_i = x_i ⊙ g_i``. Where one such rule feeds another, the sweep neither divides
    by the value between them nor multiplies by it, and need not keep it: LRP-0 at a Linear
    layer is then ``Wᵀ g``, reading the weight alone.

    ``prefer``: run in factor form even where relevance arrives as ``R`` (the rule divides by its
    output anyway); otherwise only where all of it arrives as a factor (routing, which is the
    same map in both forms). ``when(op, note)``: the ops it applies to (None: all).
    ``forward``: the op's own forward where the factor form runs (as ``register_rule``'s), for a
    by-product only the factor form reads."""

    fn: Callable
    needs_inputs: bool = False
    needs_output: bool = False
    prefer: bool = True
    when: Callable | None = None
    forward: Callable | None = None


@dataclass(frozen=True)
class Rule:
    fn: Callable
    needs_inputs: bool  # the forward pass must keep the op's tensor inputs
    needs_output: bool  # ... and its output
    dtypes: frozenset = FULL  # the floating-point types the rule is tested in
    forward: Callable | None = None  # computes the op's forward itself, keeping a by-product
    factor: Factored | None = None  # the same rule in factor form
    reaches: Callable | None = None  # reaches(op): the inputs it can give relevance (None: all)


_RULES: dict[str, dict[str, Rule]] = {}
_ANALYSES: dict[str, Callable] = {}
_BASES: dict[str, str] = {}  # variant method -> the method it is a variant of
_VERSION = [0]  # counts registrations, so that plans made before one are made again


def version() -> int:
    """A number that changes with every registration of a rule, analysis or variant."""
    return _VERSION[0]


def derive(method: str, base: str) -> None:
    """Make ``method`` a variant of ``base``: ``base``'s rules and analysis unless it has its own."""
    _BASES[method] = base
    _RULES.setdefault(method, {})
    _VERSION[0] += 1


def _lineage(method: str) -> list[str]:
    """``method``, the methods it derives from, and '*'."""
    chain = [method]
    while chain[-1] in _BASES:
        chain.append(_BASES[chain[-1]])
    return chain + ["*"]


def register_rule(kind: str, fn: Callable | None = None, *, method: str = "rap",
                  needs_inputs: bool = True, needs_output: bool = False,
                  dtypes=FULL, forward: Callable | None = None, factor: Factored | None = None,
                  reaches: Callable | None = None):
    """Register ``fn`` as the rule for ops of ``kind`` under ``method`` (usable as decorator).

    Say what the rule reads, so that the forward pass keeps only that: ``needs_inputs`` for the
    op's input tensors, ``needs_output`` for its output; and in which floating-point ``dtypes``
    its results are tested (float32 and float64 unless a test shows more).

    ``forward(op, args, kwargs, note) -> (output, by_product)``, if given, computes the op's
    output in the forward pass in place of the op, where a rule would otherwise compute part of
    it again in the sweep (RAP's ``Lin(x, W+)`` and ``Lin(x, |W-|)``, whose difference is the
    layer's output); the rule reads ``by_product`` as ``run.by_product(op)`` (None where the
    forward kept none). ``note`` is the method's analysis of the op.

    ``factor``, if given, is the same rule in factor form (:class:`Factored`), which the sweep
    runs between rules that have one; the results agree to rounding (where a value between two
    such rules is exactly 0, the factor form passes what the z-rule's safe division drops, as
    LXT's gradient does).

    ``reaches(op)``, if given, names the op's inputs the rule can give relevance, where it never
    gives some any (attention's softmax weights under CP-LRP): what only those would have read
    is then not kept.
    """
    def deco(f):
        _RULES.setdefault(method, {})[kind] = Rule(f, needs_inputs, needs_output,
                                                   frozenset(dtypes), forward, factor, reaches)
        _VERSION[0] += 1
        return f
    return deco(fn) if fn is not None else deco


def get_rule(method: str, op) -> Rule:
    rule = next((_RULES[m][op.kind] for m in _lineage(method) if op.kind in _RULES.get(m, {})),
                None)
    if rule is None:
        raise UnsupportedOperation(op.source, op.name, op.module_path, method=method,
                                   reason=f"no rule for ops of kind '{op.kind}'")
    return rule


def register_analysis(method: str, fn: Callable | None = None):
    """Register ``fn(graph) -> {op name: dict}`` as ``method``'s analysis (usable as decorator)."""
    def deco(f):
        _ANALYSES[method] = f
        _VERSION[0] += 1
        return f
    return deco(fn) if fn is not None else deco


def analyse(method: str, graph) -> dict:
    """``method``'s notes on ``graph`` (empty where the method needs none)."""
    fn = next((_ANALYSES[m] for m in _lineage(method) if m in _ANALYSES), None)
    return fn(graph) if fn is not None else {}


def registered_methods() -> list[str]:
    """The methods that have rules of their own (``relprop.methods()`` lists all methods)."""
    return sorted(m for m in _RULES if m != "*")


