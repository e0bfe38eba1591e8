"""k targets of one input (k classes here; detections and tokens go the same way): one forward
pass and k reverse sweeps (``Explainer.explain_each``) against k calls of ``explain``, per
propagation method, in one process and one run; and one forward with the k start relevances
swept as one batch, over the kept values tiled k times along the batch dim (what a batched
sweep would do; every value these CNNs keep has the batch in dim 0).

    python benchmarks/targets.py                  # resnet50: k = 1, 10, 50; rap, lrp-epsilon-plus
    python benchmarks/targets.py --models vgg16 --ks 1 10 --methods rap lrp-epsilon-plus

Random weights, one 224x224 image, float32, the k top classes. Checks on the way that each of
the k maps equals its own call's to 1e-5 of its largest value, and the batched sweep's maps the
separate sweeps' to 1e-5. Writes benchmarks/results/targets-{device}.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import relprop  # noqa: E402
from bench import machine, untrained  # noqa: E402
from relprop import engine  # noqa: E402
from relprop.explainer import exact_float32  # noqa: E402


def seconds(fn, repeats: int) -> float:
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return sorted(best)[len(best) // 2]


def batched_sweep(explainer, x, targets) -> torch.Tensor:
    """One forward pass, then the k targets' start relevances swept as one batch over the kept
    values tiled k times along dim 0 (the engine's own forward and sweep, as the explainer runs
    them for one target)."""
    plan = explainer.plan
    k = len(targets)
    with torch.no_grad(), exact_float32():
        kept = engine.forward(plan, x)
        logits = kept.env[plan.graph.output]
        weights = torch.zeros(k, logits.shape[1], dtype=logits.dtype)
        weights[torch.arange(k), torch.tensor(targets)] = 1
        start = weights * logits if explainer.start_at_score else weights
        env = {n: v.repeat(k, *([1] * (v.dim() - 1))) if torch.is_tensor(v) and v.dim() else v
               for n, v in kept.env.items()}
        shapes = {n: torch.Size((s[0] * k, *s[1:])) if len(s) else s
                  for n, s in kept.shapes.items()}
        return engine.backward(plan, engine.Forward(env, shapes), start,
                               logits[0, targets], explainer.options)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50"])
    p.add_argument("--methods", nargs="+", default=["rap", "lrp-epsilon-plus"])
    p.add_argument("--ks", nargs="+", type=int, default=[1, 10, 50])
    p.add_argument("--repeats", type=int, default=1)
    a = p.parse_args(argv)
    rows = []
    for name in a.models:
        torch.manual_seed(0)
        model = untrained(name)
        x = torch.randn(1, 3, 224, 224)
        with torch.no_grad():
            order = model(x)[0].argsort(descending=True)
        for method in a.methods:
            explainer = relprop.explainer(model, method)
            explainer.explain(x, int(order[0]))  # warm-up: the plan is made once per model
            for k in a.ks:
                targets = [int(c) for c in order[:k]]
                shared = seconds(lambda: explainer.explain_each(x, targets), a.repeats)
                apart = seconds(lambda: [explainer.explain(x, t) for t in targets], a.repeats)
                batched = seconds(lambda: batched_sweep(explainer, x, targets), a.repeats)
                each = explainer.explain_each(x, targets[:3])
                for e, t in zip(each, targets):  # the same maps either way
                    alone = explainer.explain(x, t).relevance
                    assert (e.relevance - alone).abs().max() <= 1e-5 * alone.abs().max(), t
                together = batched_sweep(explainer, x, targets[:3])
                for e, found in zip(each, together):
                    assert (e.relevance[0] - found).abs().max() \
                        <= 1e-5 * e.relevance.abs().max()
                rows.append({"model": name, "method": method, "k": k,
                             "one_forward_ms": 1000 * shared, "k_calls_ms": 1000 * apart,
                             "batched_ms": 1000 * batched, "speedup": apart / shared,
                             "batched_speedup": apart / batched})
                print(json.dumps(rows[-1]), flush=True)
    device = torch.device("cpu")
    lines = [f"### k targets of one image: one forward and k sweeps, or one batched sweep, "
             f"against k calls ({machine(device)}, float32)", "",
             "| model | method | k | k calls, ms | one forward + k sweeps, ms | speed-up | "
             "one forward + one batched sweep, ms | speed-up |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['k']} | {r['k_calls_ms']:.0f} | "
              f"{r['one_forward_ms']:.0f} | {r['speedup']:.2f}× | {r['batched_ms']:.0f} | "
              f"{r['batched_speedup']:.2f}× |" for r in rows]
    md = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / "targets-cpu"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(device), "rows": rows},
                                                   indent=2))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
