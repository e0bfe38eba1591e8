"""Time relprop's RAP against a plain gradient and the forward pass, in one process and one run.

    python benchmarks/bench.py                      # CPU: batch 1 and 4; GPU: batch 1 and 32
    python benchmarks/bench.py --models vgg16 --batches 1 8 --repeats 5

Random weights (timing does not depend on them). Writes JSON and a markdown table to
benchmarks/results/ and prints the table. Times are medians in ms per image; memory is the peak
above what the model and the inputs already hold (CUDA: max allocated; not measured on the CPU).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchvision

from relprop import RAP

SIZES = {"vgg16": 224, "resnet50": 224, "inception_v3": 299}


def build(name):
    kwargs = {"init_weights": False, "aux_logits": True, "transform_input": True} \
        if name == "inception_v3" else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def peak_memory(fn, device):
    """Peak bytes of tensors one call of ``fn`` holds at once, above what was held before (CUDA:
    the caching allocator's max allocated). None on the CPU, where torch keeps no such count and
    the process RSS cannot say it (freed heap is reused)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def timed(fn, device, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), peak_memory(fn, device)


def bench(name, batch, device, warmup, repeats):
    model = build(name).to(device)
    for p in model.parameters():
        p.requires_grad_(False)  # a gradient w.r.t. the input only, as attribution needs
    size = SIZES[name]
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.arange(batch, device=device) % 1000
    rap = RAP(model)

    def forward():
        with torch.no_grad():
            model(x)

    def gradient():
        xi = x.clone().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, target.view(-1, 1)).sum(), xi)

    def explain():
        rap.attribute(x, target)

    row = {"model": name, "batch": batch, "input": size}
    for label, fn in (("forward", forward), ("gradient", gradient), ("rap", explain)):
        seconds, peak = timed(fn, device, warmup, repeats)
        row[f"{label}_ms"] = 1000 * seconds / batch
        row[f"{label}_peak_mib"] = None if peak is None else peak / 2 ** 20
    row["rap_over_gradient"] = row["rap_ms"] / row["gradient_ms"]
    row["rap_memory_over_gradient"] = (None if peak is None else
                                       row["rap_peak_mib"] / max(row["gradient_peak_mib"], 1e-9))
    return row


def machine(device):
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or "CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return f"{cpu}, {torch.get_num_threads()} threads"


def table(rows, title):
    lines = [title, "",
             "| model | batch | forward ms/img | gradient ms/img | RAP ms/img | RAP / gradient "
             "| gradient peak MiB | RAP peak MiB | RAP / gradient memory |",
             "|---|---|---|---|---|---|---|---|---|"]
    def mem(v, fmt):
        return "n/a" if v is None else format(v, fmt)
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['forward_ms']:.1f} | "
                     f"{r['gradient_ms']:.1f} | {r['rap_ms']:.1f} | {r['rap_over_gradient']:.2f}× "
                     f"| {mem(r['gradient_peak_mib'], '.0f')} | {mem(r['rap_peak_mib'], '.0f')} | "
                     f"{mem(r['rap_memory_over_gradient'], '.2f')} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    batches = a.batches or ([1, 32] if gpu else [1, 4])
    warmup = a.warmup if a.warmup is not None else (3 if gpu else 1)
    repeats = a.repeats if a.repeats is not None else (10 if gpu else 3)
    rows = []
    for name in a.models:
        for batch in batches:
            rows.append(bench(name, batch, device, warmup, repeats))
            print(json.dumps(rows[-1]), flush=True)
    title = (f"relprop {device.type} benchmark on {machine(device)}, torch {torch.__version__}, "
             f"median of {repeats} after {warmup} warm-up")
    md = table(rows, title)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{device.type}.json").write_text(json.dumps(
        {"machine": machine(device), "torch": torch.__version__, "rows": rows}, indent=2))
    (out / f"{device.type}.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
