"""Time RAP, rap-stable and lrp-attn on torchvision's vit_b_16 against a plain gradient and against
LXT (AttnLRP's own library), in one process and one run.

    python benchmarks/vit_speed.py                    # CPU: batch 1 and 8
    python benchmarks/vit_speed.py --batches 1 32     # GPU

Random weights, none at 0. relprop's methods, LXT, the forward pass and the gradient are
interleaved repeat by repeat; LXT's patch of torchvision's GELU, LayerNorm and
MultiheadAttention classes (``lxt.efficient.monkey_patch``) is on only during LXT's own call
(``bench.lxt_vit``), on its own copy of the model. Times are medians in ms per image; memory
is the peak above what the model and the inputs hold (CUDA: max allocated; CPU: peak RSS). Writes
benchmarks/results/vit-speed-{cpu,gpu}.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import relprop  # noqa: E402
from bench import lxt_vit, machine, peak_memory, peak_rss, timed, untrained  # noqa: E402
from relprop.explainer import exact_float32  # noqa: E402


def gradient_of(model, x, target):
    def gradient():
        xi = x.clone().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, target.view(-1, 1)).sum(), xi)
    return gradient


def memory(fn, device):
    return peak_memory(fn, device) if device.type == "cuda" else peak_rss(fn)


def bench(batch, device, warmup, repeats):
    torch.manual_seed(0)
    model = untrained("vit_b_16").to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(batch, 3, 224, 224, device=device)
    target = torch.arange(batch, device=device) % 1000
    explainers = {m: relprop.explainer(model, m) for m in ("rap", "rap-stable", "lrp-attn")}

    def forward():
        with torch.no_grad():
            model(x)

    fns = {"forward": forward, "gradient": gradient_of(model, x, target)}
    fns.update({m: (lambda e=e: e.attribute(x, target)) for m, e in explainers.items()})
    lxt = lxt_vit(model, x, target)
    if lxt is not None:
        fns["lxt"] = lxt
    with exact_float32():
        times = timed(fns, device, warmup, repeats)
        peaks = {label: memory(fn, device) for label, fn in fns.items()}
    return times, peaks


def table(rows, title) -> str:
    labels = ["forward", "gradient", "rap", "rap-stable", "lrp-attn", "lxt"]
    lines = [f"### {title}", "",
             "| batch | " + " | ".join(f"{m} ms/img" for m in labels)
             + " | rap ÷ gradient | lrp-attn ÷ LXT | peak MiB: gradient / rap / lrp-attn / LXT |",
             "|---" * (len(labels) + 4) + "|"]
    for r in rows:
        t, p = r["ms_per_image"], r["peak_mib"]
        lines.append(f"| {r['batch']} | " + " | ".join(f"{t[m]:.1f}" for m in labels)
                     + f" | {t['rap'] / t['gradient']:.2f} | {t['lrp-attn'] / t['lxt']:.2f} | "
                     + " / ".join(f"{p[m]:.0f}" for m in ("gradient", "rap", "lrp-attn", "lxt"))
                     + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=None)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    batches = args.batches or ([1, 32] if device.type == "cuda" else [1, 8])
    rows = []
    for batch in batches:
        times, peaks = bench(batch, device, args.warmup, args.repeats)
        rows.append({"batch": batch,
                     "ms_per_image": {k: 1000 * v / batch for k, v in times.items()},
                     "peak_mib": {k: (v or 0) / 2 ** 20 for k, v in peaks.items()}})
        print(rows[-1], flush=True)
    title = f"vit_b_16, {machine(device)}, float32"
    kind = "gpu" if device.type == "cuda" else "cpu"
    out = ROOT / "benchmarks" / "results" / f"vit-speed-{kind}"
    out.with_suffix(".json").write_text(json.dumps({"machine": machine(device), "rows": rows},
                                                   indent=2))
    out.with_suffix(".md").write_text(table(rows, title))
    print(table(rows, title))


if __name__ == "__main__":
    main()
