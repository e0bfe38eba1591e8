"""One forward pass that keeps what the rules will read, then one reverse sweep.

The engine knows graphs, not rules: it asks the rule registry what each op's rule reads, keeps
exactly those tensors, frees each one as soon as the sweep has passed its last reader, and sums
the relevance of a tensor used by several ops. Where a rule computes its op's forward itself
(to keep a by-product its sweep reads), the engine calls that in place of the op. Where rules
have a factor form (LXT's gradient × input), the sweep carries ``g = R / value`` between them,
converting where it meets a rule without one, and keeps only what that form reads; values no
rule can reach (what only attention's softmax weights lead to, under CP-LRP) are not kept.
"""
from __future__ import annotations

import threading

import torch

from .errors import ForwardError
from .ir import Graph, Op, ref_names, resolve
from .rules import analyse, get_rule
from .rules.algebra import sdiv
from .rules import registry as rule_registry


class Plan:
    """What to keep and when to free it, worked out once per (graph, method); ``factored``: run
    the rules' factor forms where they meet (:class:`relprop.rules.Factored`)."""

    def __init__(self, graph: Graph, method: str, factored: bool = True):
        self.graph, self.method = graph, method
        self.notes = analyse(method, graph)
        ops = graph.ops
        self.rules = {op.name: get_rule(method, op) for op in ops
                      if op.kind not in ("meta", "constant")}
        arriving = _arriving(graph, self.rules, self.notes, factored)
        # the ops whose rule the sweep runs in factor form
        self.factored = {name for name, (form, _) in arriving.items() if form}
        keep_until: dict[str, int] = {}  # value -> index of the earliest op whose rule reads it
        own_forwards = {}  # op -> the rule's own forward, for the form the sweep runs

        def keep(name, i):
            keep_until[name] = min(i, keep_until.get(name, i))

        for i, op in enumerate(ops):
            rule = self.rules.get(op.name)
            if rule is None or op.name not in arriving:  # never reached by relevance
                continue
            form, came = arriving[op.name]
            if came - {form}:  # its relevance changes form here: read the value then
                keep(op.name, i)
            reads = rule.factor if form else rule
            refs = ref_names((op.args, op.kwargs))
            for name in refs:
                if reads.needs_inputs or name not in op.inputs:
                    keep(name, i)
            if reads.needs_output:
                keep(op.name, i)
            own = (rule.factor.forward if form else None) or rule.forward
            if own is not None:
                own_forwards[op.name] = _own_forward(own, self.notes.get(op.name, {}))
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
            if name != graph.input:  # the caller's tensor, which a factor may need at the end
                self.free_backward[i].append(name)
        self.forwards = own_forwards  # ops relevance never reaches run as they are

    def untested_in(self, dtype: torch.dtype) -> list[Op]:
        """The ops whose rule is not tested in ``dtype``."""
        return [op for op in self.graph.ops
                if op.name in self.rules and dtype not in self.rules[op.name].dtypes]


def _arriving(graph: Graph, rules: dict, notes: dict, factored: bool) -> dict:
    """For each value relevance can reach, worked out in the sweep's order from the output
    (whose relevance is R): ``(form, came)``, whether its producer's rule runs in factor form
    and the forms its shares arrive in (True: a factor); the graph input's form is R."""
    arriving: dict[str, tuple] = {graph.output: (False, {False})}
    for op in reversed(graph.ops):
        rule = rules.get(op.name)
        if rule is None or op.name not in arriving:
            continue
        came = arriving[op.name][1]
        f = rule.factor if factored else None
        form = (f is not None and (f.when is None or f.when(op, notes.get(op.name, {})))
                and (f.prefer or came == {True}))
        arriving[op.name] = (form, came)
        for name in (op.inputs if rule.reaches is None else rule.reaches(op)):
            arriving.setdefault(name, (False, set()))[1].add(form)
    return arriving


def by_product_key(name: str) -> str:
    """Where the forward pass keeps what a rule's own forward computed beside op ``name``'s
    output (no graph node has a '/' in its name)."""
    return name + "/by-product"


def _own_forward(fn, note: dict):
    return lambda op, args, kwargs: fn(op, args, kwargs, note)


_PLAN_LOCK = threading.Lock()


def plan(graph: Graph, method: str, factored: bool = True) -> Plan:
    """The plan of ``method`` on ``graph``, made once and shared by every explainer and thread
    (made again after a rule is registered); kept with the graph, so it goes with it. A sweep
    that stops at a layer needs that layer's relevance as R, so it runs on the plan without
    factor forms (``factored=False``), which keeps what that takes."""
    with _PLAN_LOCK:
        per_method = graph.derived.setdefault("plans", {})
        made = per_method.get((method, factored))
        if made is None or made[0] != rule_registry.version():
            made = (rule_registry.version(), Plan(graph, method, factored))
            per_method[(method, factored)] = made
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
    if stop is not None and plan.factored:
        raise ValueError("a sweep that stops at a layer runs on engine.plan(..., factored=False)")
    run = Run(kept, plan.notes, score, options)
    # value -> [its relevance R, its factor g] (R = value ⊙ g), each summed over the shares
    total: dict[str, list] = {graph.output: [relevance, None]}
    env = run.env
    for i in range(len(graph.ops) - 1, -1, -1):
        op = graph.ops[i]
        parts = total.pop(op.name, None)
        if op.name == stop:
            return parts[0] if parts is not None else torch.zeros(
                run.shape(stop), dtype=relevance.dtype, device=relevance.device)
        if parts is not None and op.name in plan.rules:
            factored = op.name in plan.factored
            rule = plan.rules[op.name]
            if factored:
                shares = rule.factor.fn(op, _as_factor(parts, env.get(op.name)), run)
            else:
                shares = rule.fn(op, _as_relevance(parts, env.get(op.name)), run)
            if len(shares) != len(op.inputs):
                raise RuntimeError(
                    f"the '{plan.method}' rule for ops of kind '{op.kind}' returned "
                    f"{len(shares)} relevance tensors for the {len(op.inputs)} inputs of "
                    f"'{op.name}' ({op.source}); a rule returns one per input, None for none")
            slot = 1 if factored else 0
            for name, share in zip(op.inputs, shares):
                if share is None:
                    continue
                parts_in = total.setdefault(name, [None, None])
                held = parts_in[slot]
                parts_in[slot] = share if held is None else held + share
        for name in plan.free_backward[i]:
            env.pop(name, None)
    parts = total.get(graph.input)
    if parts is None:
        return torch.zeros(run.shape(graph.input), dtype=relevance.dtype,
                           device=relevance.device)
    return _as_relevance(parts, env.get(graph.input))


def _as_relevance(parts: list, value) -> torch.Tensor:
    """A value's relevance from its parts: R, plus ``value ⊙ g`` (0 where g is 0, also where the
    value is infinite: a masked score of -inf)."""
    r, g = parts
    if g is None:
        return r
    found = torch.where(g == 0, torch.zeros((), dtype=g.dtype, device=g.device), value * g)
    return found if r is None else r + found


def _as_factor(parts: list, value) -> torch.Tensor:
    """A value's factor from its parts: g, plus ``R / value`` (0 where the value is 0, as the
    z-rule's safe division)."""
    r, g = parts
    if r is None:
        return g
    return sdiv(r, value) if g is None else g + sdiv(r, value)
