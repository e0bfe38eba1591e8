"""Where a propagation method's time goes, per op kind: the forward pass that keeps what the rules
read, and each rule of the reverse sweep, timed op by op (wall time; CUDA synchronised).

    python benchmarks/profile_ops.py vit_b_16 --method rap-stable --batch 1
    python benchmarks/profile_ops.py resnet50 --method rap --batch 4

Prints a table of op kinds by total sweep time, with the call count, and the forward and
gradient times of the same model for scale. Random weights.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relprop  # noqa: E402
from bench import untrained  # noqa: E402
from relprop import engine  # noqa: E402
from relprop.explainer import exact_float32  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


class Timed:
    """A rule with its calls, in either form, timed into ``totals[kind]``."""

    def __init__(self, rule, kind, totals, device):
        self.rule, self.kind, self.totals, self.device = rule, kind, totals, device
        self.fn = self._timed(rule.fn)
        self.factor = None if rule.factor is None else dataclasses.replace(
            rule.factor, fn=self._timed(rule.factor.fn))

    def __getattr__(self, name):
        return getattr(self.rule, name)

    def _timed(self, fn):
        def timed(op, relevance, run):
            _sync(self.device)
            start = time.perf_counter()
            out = fn(op, relevance, run)
            _sync(self.device)
            self.totals[self.kind][0] += time.perf_counter() - start
            self.totals[self.kind][1] += 1
            return out
        return timed


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model")
    p.add_argument("--method", default="rap-stable")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    torch.manual_seed(0)
    model = untrained(a.model).to(device)
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    size = 299 if a.model == "inception_v3" else 224
    x = torch.randn(a.batch, 3, size, size, device=device)
    target = torch.arange(a.batch, device=device)
    explainer = relprop.explainer(model, a.method)
    explainer.explain(x, target)  # captures, plans
    plan = engine.plan(explainer.graph, a.method)
    totals = defaultdict(lambda: [0.0, 0])
    ops = {op.name: op for op in plan.graph.ops}
    original = dict(plan.rules)
    plan.rules.update({name: Timed(rule, ops[name].kind, totals, device)
                       for name, rule in original.items()})

    def clock(fn):
        best = []
        for _ in range(a.repeats):
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best.append(time.perf_counter() - start)
        return sorted(best)[len(best) // 2]

    def gradient():
        xi = x.clone().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, target.view(-1, 1)).sum(), xi)

    with exact_float32():
        total = clock(lambda: explainer.explain(x, target))
        forward = clock(lambda: engine.forward(plan, x))
        grad = clock(gradient)
    plan.rules.update(original)
    sweep = sum(t for t, _ in totals.values()) / a.repeats
    print(f"{a.model} batch {a.batch}, {a.method}, {device}: explain {1000 * total:.0f} ms = "
          f"{total / grad:.2f}x the gradient ({1000 * grad:.0f} ms); its forward "
          f"{1000 * forward:.0f} ms, its sweep {1000 * sweep:.0f} ms, other "
          f"{1000 * (total - forward - sweep):.0f} ms")
    print("| op kind | calls | sweep ms | share of the sweep |\n|---|---|---|---|")
    for kind, (seconds, calls) in sorted(totals.items(), key=lambda kv: -kv[1][0]):
        print(f"| {kind} | {calls // a.repeats} | {1000 * seconds / a.repeats:.1f} | "
              f"{seconds / a.repeats / sweep:.0%} |")


if __name__ == "__main__":
    main()
