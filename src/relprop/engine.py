"""One forward pass that keeps what the rules will read, then one reverse sweep.

The engine knows graphs, not rules: it asks the rule registry what each op's rule reads, keeps
exactly those tensors, frees each one as soon as the sweep has passed its last reader, and sums
the relevance of a tensor used by several ops. Where a rule computes its op's forward itself
(to keep a by-product its sweep reads), the engine calls that in place of the op.
"""
from __future__ import annotations

import threading

import torch

from .errors import ForwardError
from .ir import Graph, Op, ref_names, resolve
from .rules import analyse, get_rule
from .rules import registry as rule_registry


class Plan:
    """What to keep and when to free it, worked out once per (graph, method)."""

    def __init__(self, graph: Graph, method: str):
        self.graph, self.method = graph, method
        self.notes = analyse(method, graph)
        ops = graph.ops
        self.rules = {op.name: get_rule(method, op) for op in ops
                      if op.kind not in ("meta", "constant")}
        keep_until: dict[str, int] = {}  # value -> index of the earliest op whose rule reads it

        def keep(name, i):
            keep_until[name] = min(i, keep_until.get(name, i))

        for i, op in enumerate(ops):
            rule = self.rules.get(op.name)
            if rule is None:
                continue
            refs = ref_names((op.args, op.kwargs))
            for name in refs:
                if rule.needs_inputs or name not in op.inputs:
                    keep(name, i)
            if rule.needs_output:
                keep(op.name, i)
            if rule.forward is not None:
                keep(by_product_key(op.name), i)
        keep(graph.output, len(ops))
        self.kept = set(keep_until)
        last_use: dict[str, int] = {}
        for i, op in enumerate(ops):
            for name in ref_names((op.args, op.kwargs)):
                last_use[name] = i
        self.free_forward: list[list[str]] = [[] for _ in ops]
        for name, i in last_use.items():
            if name not in self.kept and name != graph.input:
                self.free_forward[i].append(name)
        self.free_backward: list[list[str]] = [[] for _ in range(len(ops) + 1)]
        for name, i in keep_until.items():
            self.free_backward[i].append(name)
        self.forwards = {op.name: _own_forward(self.rules[op.name].forward,
                                               self.notes.get(op.name, {}))
                         for op in ops if op.name in self.rules and self.rules[op.name].forward}

    def untested_in(self, dtype: torch.dtype) -> list[Op]:
        """The ops whose rule is not tested in ``dtype``."""
        return [op for op in self.graph.ops
                if op.name in self.rules and dtype not in self.rules[op.name].dtypes]


def by_product_key(name: str) -> str:
    """Where the forward pass keeps what a rule's own forward computed beside op ``name``'s
    output (no graph node has a '/' in its name)."""
    return name + "/by-product"


def _own_forward(fn, note: dict):
    return lambda op, args, kwargs: fn(op, args, kwargs, note)


_PLAN_LOCK = threading.Lock()


def plan(graph: Graph, method: str) -> Plan:
    """The plan of ``method`` on ``graph``, made once and shared by every explainer and thread
    (made again after a rule is registered); kept with the graph, so it goes with it."""
    with _PLAN_LOCK:
        per_method = graph.derived.setdefault("plans", {})
        made = per_method.get(method)
        if made is None or made[0] != rule_registry.version():
            made = (rule_registry.version(), Plan(graph, method))
            per_method[method] = made
        return made[1]


class Forward:
    """What one forward pass kept: the values the rules will read, and every tensor's shape."""

    def __init__(self, env: dict, shapes: dict):
        self.env, self.shapes = env, shapes


class Run:
    """One reverse sweep as the rules see it: the values the forward pass kept, the method's
    notes on the graph, the explained score per sample and the call's options."""

    def __init__(self, forward: Forward, notes: dict, score: torch.Tensor, options: dict):
        self.env, self.shapes, self.notes = forward.env, forward.shapes, notes
        self.score = score  # (N,)
        self.options = options

    def note(self, op: Op) -> dict:
        return self.notes.get(op.name, {})

    def args(self, op: Op) -> tuple:
        return resolve(op.args, self.env)

    def kwargs(self, op: Op) -> dict:
        return resolve(op.kwargs, self.env)

    def output(self, op: Op) -> torch.Tensor:
        return self.env[op.name]

    def by_product(self, op: Op):
        """What the rule's own forward kept beside the op's output (None if nothing)."""
        return self.env.get(by_product_key(op.name))

    def shape(self, name: str) -> torch.Size:
        return self.shapes[name]


def forward(plan: Plan, x: torch.Tensor) -> Forward:
    return _execute(plan.graph, x, plan.free_forward, plan.forwards)


def values(graph: Graph, x: torch.Tensor, keep) -> Forward:
    """One forward pass that keeps the output and the values named in ``keep``: for methods
    that read values off the graph instead of propagating (attention rollout)."""
    last_use: dict[str, int] = {}
    for i, op in enumerate(graph.ops):
        for name in ref_names((op.args, op.kwargs)):
            last_use[name] = i
    free: list[list[str]] = [[] for _ in graph.ops]
    for name, i in last_use.items():
        if name not in keep and name != graph.output:
            free[i].append(name)
    return _execute(graph, x, free)


def _execute(graph: Graph, x: torch.Tensor, free: list[list[str]],
             forwards: dict | None = None) -> Forward:
    """Run the graph on ``x``; an op in ``forwards`` is computed by its rule's own forward,
    which also hands back a by-product to keep."""
    env = {graph.input: x}
    shapes = {graph.input: x.shape}
    forwards = forwards or {}
    for i, op in enumerate(graph.ops):
        try:
            own = forwards.get(op.name)
            if own is None:
                value = op.fn(*resolve(op.args, env), **resolve(op.kwargs, env))
            else:
                value, extra = own(op, resolve(op.args, env), resolve(op.kwargs, env))
                if extra is not None:
                    env[by_product_key(op.name)] = extra
        except Exception as e:
            raise ForwardError(op, e) from e
        env[op.name] = value
        if op.kind not in ("meta", "constant"):
            shapes[op.name] = value.shape
        for name in free[i]:
            env.pop(name, None)
    return Forward(env, shapes)


def backward(plan: Plan, kept: Forward, relevance: torch.Tensor, score: torch.Tensor,
             options: dict, stop: str | None = None) -> torch.Tensor:
    """Sweep from the output to the input, starting from ``relevance`` at the output; returns
    the relevance of the model input, or of the value ``stop`` (a graph node) where the sweep
    stops there. ``score`` and ``options`` are what the rules read as ``run.score`` and
    ``run.options``."""
    graph = plan.graph
    run = Run(kept, plan.notes, score, options)
    total: dict[str, torch.Tensor] = {graph.output: relevance}
    env = run.env
    for i in range(len(graph.ops) - 1, -1, -1):
        op = graph.ops[i]
        r = total.pop(op.name, None)
        if op.name == stop:
            return r if r is not None else torch.zeros(run.shape(stop), dtype=relevance.dtype,
                                                       device=relevance.device)
        if r is not None and op.name in plan.rules:
            shares = plan.rules[op.name].fn(op, r, run)
            if len(shares) != len(op.inputs):
                raise RuntimeError(
                    f"the '{plan.method}' rule for ops of kind '{op.kind}' returned "
                    f"{len(shares)} relevance tensors for the {len(op.inputs)} inputs of "
                    f"'{op.name}' ({op.source}); a rule returns one per input, None for none")
            for name, share in zip(op.inputs, shares):
                if share is None:
                    continue
                if name in total:
                    total[name] = total[name] + share
                else:
                    total[name] = share
        for name in plan.free_backward[i]:
            env.pop(name, None)
    result = total.get(graph.input)
    if result is None:
        result = torch.zeros(run.shape(graph.input), dtype=relevance.dtype,
                             device=relevance.device)
    return result
