"""Time relprop's RAP against a plain gradient and the forward pass, in one process and one run.

    python benchmarks/bench.py                      # CPU: batch 1 and 4; GPU: batch 1 and 32
    python benchmarks/bench.py --models vgg16 --batches 1 8 --repeats 5

Random weights, none left at 0 (timing depends on which units receive relevance, not on
the values). Where Captum is installed
(``pip install -e '.[bench]'``), its LRP is timed beside them, and so is Zennit's
(EpsilonPlusFlat with the model's canonizer) where Zennit is installed. Writes JSON and a markdown table to
benchmarks/results/ and prints the table. Times are medians in ms per image; memory is the peak
above what the model and the inputs already hold (CUDA: max allocated; CPU: peak RSS, and in the
JSON also the running sum of the allocations and frees torch's profiler records). The methods are
interleaved repeat by repeat, so that a machine whose speed drifts during the run affects them
alike. On a GPU every method runs in float32 without TF32, as RAP does.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import functools

import torch
import torchvision

import relprop

from relprop import RAP
from relprop.explainer import exact_float32

SIZES = {"vgg16": 224, "resnet50": 224, "inception_v3": 299}


def build(name):
    kwargs = {"init_weights": False, "aux_logits": True, "transform_input": True} \
        if name == "inception_v3" else {}
    return untrained(name, **kwargs)


def untrained(name, **kwargs):
    """torchvision's model ``name`` with random weights, none left at 0: torchvision starts
    ViT's head at 0, where every logit and relevance is 0, and relprop's Linear rules skip the
    units without relevance, so a sweep would be timed on nothing."""
    model = torchvision.models.get_model(name, weights=None, **kwargs).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2 and not p.any():
                p.normal_(0, 0.02)
    return model


def peak_rss(fn) -> int | None:
    """Peak resident memory of the process during one call of ``fn``, above what it held before
    (Linux; None elsewhere). Freed heap is handed back to the system first and the kernel's
    high-water mark reset, so the peak is this call's own."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        gc.collect()
        libc.malloc_trim(0)
        base = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    except OSError:
        return None
    fn()
    return (_status_kib("VmHWM") - base) * 1024


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise OSError(f"no {field} in /proc/self/status")


def peak_memory(fn, device) -> int:
    """Peak bytes of tensors that one call of ``fn`` holds at once, above what was held before.

    CUDA: the caching allocator's max allocated. CPU: the running sum of the allocations and
    frees that torch's profiler records (tensors only, without the allocator's overhead).
    """
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    held = peak = 0
    for _, delta in deltas:
        held += delta
        peak = max(peak, held)
    return peak


def timed(fns: dict, device, warmup, repeats) -> dict:
    """Median seconds of each function, the functions interleaved repeat by repeat so that a
    machine that slows down or speeds up during the run affects them alike."""
    def once(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {label: [] for label in fns}
    for _ in range(repeats):
        for label, fn in fns.items():
            times[label].append(once(fn))
    return {label: statistics.median(t) for label, t in times.items()}


def bench(name, batch, device, warmup, repeats, every_method=False):
    model = build(name).to(device)
    for p in model.parameters():
        p.requires_grad_(False)  # a gradient w.r.t. the input only, as attribution needs
    size = SIZES[name]
    x = torch.randn(batch, 3, size, size, device=device)
    target = torch.arange(batch, device=device) % 1000
    rap = RAP(model)
    forward, gradient = baselines(model, x, target)

    def explain():
        rap.attribute(x, target)

    row = {"model": name, "batch": batch, "input": size}
    fns = {"forward": forward, "gradient": gradient, "rap": explain}
    if every_method:  # each method of relprop.methods() through relprop.explain, as users call it
        for method in relprop.methods()[1:]:
            call = functools.partial(relprop.explain, model, x, target, method)
            try:
                call()
            except ValueError as e:  # a method that cannot run on this model says why
                print(f"{name}: {method} refused: {e}", flush=True)
                continue
            fns[f"explain:{method}"] = call
    peer_fns, close_peers = peers(name, model, x, target, device)
    fns.update(peer_fns)
    for label, seconds in timed(fns, device, warmup, repeats).items():
        row[f"{label}_ms"] = 1000 * seconds / batch
        row[f"{label}_alloc_peak_mib"] = peak_memory(fns[label], device) / 2 ** 20
        rss = peak_rss(fns[label]) if device.type == "cpu" else None
        row[f"{label}_peak_mib"] = row[f"{label}_alloc_peak_mib"] if rss is None else rss / 2 ** 20
    derive = _weight_derivation(rap, device)
    row["rap_weight_derivation_ms"] = 1000 * timed({"derive": derive}, device, warmup,
                                                   repeats)["derive"] / batch
    close_peers()
    row["rap_over_gradient"] = row["rap_ms"] / row["gradient_ms"]
    if "captum_lrp_ms" in row:
        row["rap_over_captum_lrp"] = row["rap_ms"] / row["captum_lrp_ms"]
    row["rap_memory_over_gradient"] = row["rap_peak_mib"] / max(row["gradient_peak_mib"], 1e-9)
    return row


def baselines(model, x, target):
    """The forward pass and the plain gradient of the target logits w.r.t. the input: what every
    method is measured against."""
    def forward():
        with torch.no_grad():
            model(x)

    def gradient():
        xi = x.clone().requires_grad_()
        torch.autograd.grad(model(xi).gather(1, target.view(-1, 1)).sum(), xi)
    return forward, gradient


def lxt_vit(model, x, target):
    """LXT's AttnLRP on a copy of torchvision's ViT ``model`` (``lxt.efficient.monkey_patch`` of
    its GELU, LayerNorm and MultiheadAttention, then ``x * grad``), or None where LXT is not
    installed. LXT patches those classes for the whole process; here its patch is on only during
    its own call, so that LXT is timed interleaved with everyone else, on the same machine state.
    LXT 2.1 imports under transformers 4.x only: from .lxt-env (.ci/run's second set) where that
    exists."""
    lxt_env = Path(__file__).resolve().parents[1] / ".lxt-env"
    if lxt_env.is_dir() and str(lxt_env) not in sys.path:
        sys.path.insert(0, str(lxt_env))
    try:
        from lxt.efficient import monkey_patch
        from lxt.efficient.models import get_default_map
    except ImportError as e:
        print(f"LXT left out: {e}", flush=True)
        return None
    import torchvision.models.vision_transformer as vision_transformer
    patch_map = get_default_map(vision_transformer)
    original = {cls: cls.forward for cls in patch_map}
    monkey_patch(vision_transformer, patch_map)
    patched = {cls: cls.forward for cls in patch_map}
    _set_forwards(original)
    own = copy.deepcopy(model)

    def lxt():
        _set_forwards(patched)
        try:
            xi = x.clone().requires_grad_()
            own(xi).gather(1, target.view(-1, 1)).sum().backward()
            return xi * xi.grad
        finally:
            _set_forwards(original)
    return lxt


def _set_forwards(forwards: dict) -> None:
    for cls, forward in forwards.items():
        cls.forward = forward


def peers(name, model, x, target, device):
    """``({label: call}, close)``: Captum's LRP on its own copy of the model (it sets rules on
    it) and Zennit's (EpsilonPlusFlat with the model's canonizer), each where installed;
    ``close()`` takes Zennit's rules off its copy again."""
    fns, zennit = {}, _zennit_lrp(name, model)
    lrp = _captum_lrp(model)
    if lrp is not None:
        def captum_lrp():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lrp.attribute(x.clone().requires_grad_(), target=target)
        fns["captum_lrp"] = captum_lrp
    if zennit is not None:
        attributor, onehot = zennit.__enter__(), torch.eye(1000, device=device)[target]
        fns["zennit_lrp"] = lambda: attributor(x, onehot)
    return fns, lambda: zennit is not None and zennit.__exit__(None, None, None)


def _captum_lrp(model):
    try:
        from captum.attr import LRP
    except ImportError:
        return None
    return LRP(copy.deepcopy(model))


def _zennit_lrp(name, model):
    try:
        from zennit.attribution import Gradient
        from zennit.canonizers import SequentialMergeBatchNorm
        from zennit.composites import EpsilonPlusFlat
        from zennit.torchvision import ResNetCanonizer, VGGCanonizer
    except ImportError:
        return None
    canonizer = {"vgg16": VGGCanonizer, "resnet50": ResNetCanonizer}.get(
        name, SequentialMergeBatchNorm)
    return Gradient(model=copy.deepcopy(model),
                    composite=EpsilonPlusFlat(canonizers=[canonizer()]))


def _weight_derivation(rap, device):
    """What RAP derives from the weights at every call (W+ and |W-| of each layer) and no longer
    caches, because a cache served stale weights after ``.data`` edits: timed alone, to say
    what deriving per call costs."""
    from relprop.rules.algebra import sign_pair
    layers = [(op, op.args[1]) for op in rap.graph.ops if op.kind in ("linear", "conv")]

    def derive():
        for op, weight in layers:
            sign_pair(op, weight.get())
    return derive


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
    peers = [(key, label) for key, label in (("captum_lrp", "Captum LRP"),
                                              ("zennit_lrp", "Zennit LRP"))
             if all(f"{key}_ms" in r for r in rows)]
    lines = [title, "",
             "| model | batch | forward ms/img | gradient ms/img | RAP ms/img | RAP / gradient "
             "| gradient peak MiB | RAP peak MiB | RAP / gradient memory |"
             + "".join(f" {label} ms/img | {label} peak MiB |" for _, label in peers),
             "|---|---|---|---|---|---|---|---|---|" + "---|---|" * len(peers)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['batch']} | {r['forward_ms']:.1f} | "
                     f"{r['gradient_ms']:.1f} | {r['rap_ms']:.1f} | {r['rap_over_gradient']:.2f}× "
                     f"| {r['gradient_peak_mib']:.0f} | {r['rap_peak_mib']:.0f} | "
                     f"{r['rap_memory_over_gradient']:.2f}× |"
                     + "".join(f" {r[key + '_ms']:.1f} | {r[key + '_peak_mib']:.0f} |"
                               for key, _ in peers))
    lines.append("")
    lines.append("RAP keeps nothing between calls; it derives W+/|W-| of every layer at each call "
                 "(in RAP's time and peaks above), which alone takes: " + ", ".join(
                     f"{r['model']} batch {r['batch']} {r['rap_weight_derivation_ms']:.1f} ms/img "
                     f"({100 * r['rap_weight_derivation_ms'] / r['rap_ms']:.0f} % of RAP)"
                     for r in rows))
    return "\n".join(lines)


def methods_table(rows) -> str:
    """ms/image and peak memory of every method, relative to the gradient, from one run."""
    lines = ["| model | batch | method | ms/img | × gradient | peak MiB | × gradient |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        for m in relprop.methods():
            key = "rap" if m == "rap" else f"explain:{m}"
            if f"{key}_ms" not in r:
                lines.append(f"| {r['model']} | {r['batch']} | {m} | refused | | | |")
                continue
            lines.append(f"| {r['model']} | {r['batch']} | {m} | {r[key + '_ms']:.1f} | "
                         f"{r[key + '_ms'] / r['gradient_ms']:.2f} | {r[key + '_peak_mib']:.0f} | "
                         f"{r[key + '_peak_mib'] / max(r['gradient_peak_mib'], 1e-9):.2f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(SIZES), choices=list(SIZES))
    p.add_argument("--batches", nargs="+", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--every-method", action="store_true",
                   help="also time every method of relprop.methods() (a table of its own)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    batches = a.batches or ([1, 32] if gpu else [1, 4])
    warmup = a.warmup if a.warmup is not None else (3 if gpu else 1)
    repeats = a.repeats if a.repeats is not None else (10 if gpu else 5)
    rows = []
    with exact_float32():  # RAP turns TF32 off for itself; the others compute alike
        for name in a.models:
            for batch in batches:
                rows.append(bench(name, batch, device, warmup, repeats, a.every_method))
                print(json.dumps(rows[-1]), flush=True)
    memory = "max allocated" if gpu else "peak RSS"
    title = (f"relprop {device.type} benchmark on {machine(device)}, torch {torch.__version__}, "
             f"median of {repeats} after {warmup} warm-up; peak memory: {memory} above the "
             f"model and inputs" + ("; float32 without TF32" if gpu else ""))
    md = table(rows, title)
    if a.every_method:
        md += "\n\nEvery method through relprop.explain:\n\n" + methods_table(rows)
    print(md)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = device.type + ("-methods" if a.every_method else "")
    (out / f"{stem}.json").write_text(json.dumps(
        {"machine": machine(device), "torch": torch.__version__, "rows": rows}, indent=2))
    (out / f"{stem}.md").write_text(md + "\n")


if __name__ == "__main__":
    main()
