"""Time RAP, rap-stable and lrp-attn on torchvision's vit_b_16 against a plain gradient and against
LXT (AttnLRP's own library), in one process and one run.

    python benchmarks/vit_speed.py                    # CPU: batch 1 and 8
    python benchmarks/vit_speed.py --batches 1 32     # GPU

Random weights (timing does not depend on them). relprop's methods, the forward pass and the
gradient are interleaved repeat by repeat; LXT must patch torchvision's GELU, LayerNorm and
MultiheadAttention classes for the whole process (``lxt.efficient.monkey_patch``), so it is
timed after them, on a fresh model of the same weights, with the gradient timed again beside it
to show how much the machine drifted. Times are medians in ms per image; memory is the peak above
what the model and the inputs hold (CUDA: max allocated; CPU: peak RSS). Writes
benchmarks/results/vit-speed-{cpu,gpu}.{json,md}.
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import relprop  # noqa: E402
from bench import machine, peak_memory, peak_rss, timed  # noqa: E402
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
    model = torchvision.models.vit_b_16().eval().to(device)
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
    with exact_float32():
        times = timed(fns, device, warmup, repeats)
        peaks = {label: memory(fn, device) for label, fn in fns.items()}
    state = copy.deepcopy(model.state_dict())
    explainers = fns = model = None  # freed before LXT is timed
    return times, peaks, state, x, target


def bench_lxt(state, x, target, device, warmup, repeats):
    """LXT after its global patch, on a fresh vit_b_16 with the same weights. LXT 2.1 imports
    under transformers 4.x only: its packages come from .lxt-env (.ci/run's second set) where
    that exists, put first on the path."""
    import torchvision.models.vision_transformer as vision_transformer
    lxt_env = Path(__file__).resolve().parents[1] / ".lxt-env"
    if lxt_env.is_dir():
        sys.path.insert(0, str(lxt_env))
    from lxt.efficient import monkey_patch
    monkey_patch(vision_transformer)
    model = torchvision.models.vit_b_16().eval().to(device)
    model.load_state_dict(state)
    for p in model.parameters():
        p.requires_grad_(False)

    def lxt():
        xi = x.clone().requires_grad_()
        logits = model(xi)
        logits.gather(1, target.view(-1, 1)).sum().backward()
        return xi * xi.grad

    fns = {"lxt": lxt, "gradient (LXT-patched model)": gradient_of(model, x, target)}
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
    measured = []
    for batch in batches:
        measured.append((batch, *bench(batch, device, args.warmup, args.repeats)))
    rows = []
    for batch, times, peaks, state, x, target in measured:  # LXT last: it patches the process
        lxt_times, lxt_peaks = bench_lxt(state, x, target, device, args.warmup, args.repeats)
        times, peaks = {**times, **lxt_times}, {**peaks, **lxt_peaks}
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
