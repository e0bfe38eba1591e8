"""k targets of one input (k classes here; detections and tokens go the same way): one forward
pass and k reverse sweeps (``Explainer.explain_each``) against k calls of ``explain``, per
propagation method, in one process and one run.

    python benchmarks/targets.py                  # resnet50: k = 1, 10, 50; rap, lrp-epsilon-plus
    python benchmarks/targets.py --models vit_b_16 --ks 1 10 --methods rap lrp-attn

Random weights, one 224x224 image, float32, the k top classes. Checks on the way that each of
the k maps equals its own call's to 1e-5 of its largest value. Writes
benchmarks/results/targets-{device}.{json,md}.
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


def seconds(fn, repeats: int) -> float:
    best = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best.append(time.perf_counter() - start)
    return sorted(best)[len(best) // 2]


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
                each = explainer.explain_each(x, targets[:3])
                for e, t in zip(each, targets):  # the same maps either way
                    alone = explainer.explain(x, t).relevance
                    assert (e.relevance - alone).abs().max() <= 1e-5 * alone.abs().max(), t
                rows.append({"model": name, "method": method, "k": k,
                             "one_forward_ms": 1000 * shared, "k_calls_ms": 1000 * apart,
                             "speedup": apart / shared})
                print(json.dumps(rows[-1]), flush=True)
    device = torch.device("cpu")
    lines = [f"### k targets of one image: one forward and k sweeps against k calls "
             f"({machine(device)}, float32)", "",
             "| model | method | k | one forward + k sweeps, ms | k calls, ms | speed-up |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['k']} | {r['one_forward_ms']:.0f} | "
              f"{r['k_calls_ms']:.0f} | {r['speedup']:.2f}× |" for r in rows]
    md = "\n".join(lines) + "\n"
    out = ROOT / "benchmarks" / "results" / "targets-cpu"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(device), "rows": rows},
                                                   indent=2))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
