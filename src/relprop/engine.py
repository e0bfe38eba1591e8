"""One forward pass that keeps what the rules will read, then one reverse sweep.

The engine knows graphs, not rules: it asks the rule registry what each op's rule reads, keeps
exactly those tensors, frees each one as soon as the sweep has passed its last reader, and sums
the relevance of a tensor used by several ops.
"""
from __future__ import annotations

import torch

from .errors import ForwardError
from .ir import Graph, Op, ref_names, resolve
from .rules import analyse, get_rule


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

    def untested_in(self, dtype: torch.dtype) -> list[Op]:
        """The ops whose rule is not tested in ``dtype``."""
        return [op for op in self.graph.ops
                if op.name in self.rules and dtype not in self.rules[op.name].dtypes]


class Run:
    """The values one forward pass kept, as the rules see them, and the explained score."""

    def __init__(self, env: dict, shapes: dict, notes: dict):
        self.env, self.shapes, self.notes = env, shapes, notes
        self.score: torch.Tensor | None = None  # (N,) set by the caller before the sweep
        self.options: dict = {}  # the method's keyword options, set by the caller

    def note(self, op: Op) -> dict:
        return self.notes.get(op.name, {})

    def args(self, op: Op) -> tuple:
        return resolve(op.args, self.env)

    def kwargs(self, op: Op) -> dict:
        return resolve(op.kwargs, self.env)

    def output(self, op: Op) -> torch.Tensor:
        return self.env[op.name]

    def shape(self, name: str) -> torch.Size:
        return self.shapes[name]


def forward(plan: Plan, x: torch.Tensor) -> Run:
    graph = plan.graph
    env = {graph.input: x}
    shapes = {graph.input: x.shape}
    for i, op in enumerate(graph.ops):
        try:
            value = op.fn(*resolve(op.args, env), **resolve(op.kwargs, env))
        except Exception as e:
            raise ForwardError(op, e) from e
        env[op.name] = value
        if op.kind not in ("meta", "constant"):
            shapes[op.name] = value.shape
        for name in plan.free_forward[i]:
            env.pop(name, None)
    return Run(env, shapes, plan.notes)


def backward(plan: Plan, run: Run, relevance: torch.Tensor, stop: str | None = None
             ) -> torch.Tensor:
    """Sweep from the output to the input; returns the relevance of the model input, or of the
    value ``stop`` (a graph node) where the sweep stops there."""
    graph = plan.graph
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
