"""The speed table on a GPU: relprop's propagation methods against the plain gradient and the
peers, per model, batch and precision, in one process and one run; JSON and Markdown.

    python benchmarks/gpu.py                                   # the first CUDA device
    python benchmarks/gpu.py --models vit_b_16 --batches 1 8 32 --precisions fp32 bf16
    python benchmarks/gpu.py --device cpu --models resnet18 --batches 1 --size 64   # CPU path

Models: torchvision's (default ResNet-50, VGG-16, Inception-V3, vit_b_16, swin_t), random weights,
none at 0. Per model and batch, interleaved repeat by repeat: the forward pass, the gradient,
``rap``, ``rap-stable``, ``lrp-epsilon-plus``, ``lrp-attn`` (on models with attention), Captum's
LRP and Zennit's EpsilonPlusFlat (on CNNs, where installed), and LXT on vit_b_16 (where
installed; its patch of torchvision's classes is on during its own call only, ``bench.lxt_vit``).

Precisions:
- ``fp32``: float32 without TF32 for every method (relprop's own setting while it explains);
- ``tf32``: TF32 allowed; relprop still explains in exact float32 (TF32's 10-bit mantissa makes
  residual networks' RAP maps another picture), so this row shows what the others gain by it;
- ``bf16``: model and inputs in bfloat16; a method whose rules are not tested in bfloat16 on that
  model is refused by relprop and shown as such.

Times are medians in ms per image; memory is the peak above what the model and the inputs hold
(CUDA: max allocated; CPU: tensors recorded by torch's profiler). Writes
``{out}/gpu-{device}.json`` and ``.md`` (default out: benchmarks/results).
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import relprop  # noqa: E402
from bench import baselines, lxt_vit, machine, peak_memory, peers, timed, untrained  # noqa: E402
from relprop.explainer import exact_float32  # noqa: E402

MODELS = ("resnet50", "vgg16", "inception_v3", "vit_b_16", "swin_t")
PRECISIONS = ("fp32", "tf32", "bf16")
METHODS = ("rap", "rap-stable", "lrp-epsilon-plus", "lrp-attn")
ATTENTION = ("vit", "swin", "maxvit", "deit")  # model names whose methods include lrp-attn


def build(name: str, size: int | None):
    kwargs = {"init_weights": False, "aux_logits": True} if name == "inception_v3" else {}
    if size is not None and name.startswith("vit"):
        kwargs["image_size"] = size
    torch.manual_seed(0)
    model = untrained(name, **kwargs)
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def row(name, batch, precision, device, size, warmup, repeats) -> dict:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    side = size or (299 if name == "inception_v3" else 224)
    model = build(name, size).to(device, dtype)
    x = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
    target = torch.arange(batch, device=device) % 1000
    forward, gradient = baselines(model, x, target)
    fns = {"forward": forward, "gradient": gradient}
    refused = {}
    attention = name.startswith(ATTENTION)
    for method in METHODS:
        if method == "lrp-attn" and not attention:
            continue
        call = functools.partial(relprop.explain, model, x, target, method)
        try:
            call()
        except ValueError as e:  # a method that cannot run here (bfloat16 untested) says why
            refused[method] = str(e).split(". ")[0]
            continue
        fns[method] = call
    close_peers = None
    if not attention and precision != "bf16":
        peer_fns, close_peers = peers(name, model, x, target, device)
        fns.update(peer_fns)
    if name == "vit_b_16" and precision != "bf16" and size is None:
        lxt = lxt_vit(model, x, target)
        if lxt is not None:
            fns["lxt"] = lxt
    times = timed(fns, device, warmup, repeats)
    peaks = {k: peak_memory(fn, device) / 2 ** 20 for k, fn in fns.items()}
    if close_peers is not None:
        close_peers()
    found = {"model": name, "batch": batch, "precision": precision, "input": side,
             "ms": {k: 1000 * v / batch for k, v in times.items()},
             "peak_mib": peaks,
             "refused": refused}
    return found


def precision_context(precision: str):
    """fp32: no TF32 anywhere; tf32: TF32 for whoever does not turn it off itself."""
    if precision == "tf32":
        class Allowed:
            def __enter__(self):
                self.saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
                torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True

            def __exit__(self, *exc):
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = \
                    self.saved
        return Allowed()
    return exact_float32()


def table(rows, title) -> str:
    columns = ["forward", "gradient", *METHODS, "captum_lrp", "zennit_lrp", "lxt"]
    shown = [c for c in columns if any(c in r["ms"] for r in rows)]
    lines = [f"### {title}", "",
             "| model | batch | precision | " + " | ".join(f"{c} ms/img" for c in shown)
             + " | rap ÷ gradient | rap-stable ÷ gradient | lrp-attn ÷ LXT | peak MiB: gradient "
               "/ rap |", "|---" * (len(shown) + 7) + "|"]

    def ratio(r, a, b):
        return f"{r['ms'][a] / r['ms'][b]:.2f}" if a in r["ms"] and b in r["ms"] else "–"
    for r in rows:
        cells = [f"{r['ms'][c]:.1f}" if c in r["ms"] else
                 ("refused" if c in r["refused"] else "–") for c in shown]
        peak = " / ".join(f"{r['peak_mib'][m]:.0f}" if m in r["peak_mib"] else "–"
                          for m in ("gradient", "rap"))
        lines.append(f"| {r['model']} | {r['batch']} | {r['precision']} | " + " | ".join(cells)
                     + f" | {ratio(r, 'rap', 'gradient')} | {ratio(r, 'rap-stable', 'gradient')}"
                     f" | {ratio(r, 'lrp-attn', 'lxt')} | {peak} |")
    refusals = sorted({f"{m} in {r['precision']} on {r['model']}: {why}"
                       for r in rows for m, why in r["refused"].items()})
    if refusals:
        lines += ["", "Refused: " + "; ".join(refusals) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--size", type=int, default=None,
                   help="input side in pixels (default: the model's own, 224 or 299)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    a = p.parse_args(argv)
    device = torch.device(a.device)
    rows = []
    for name in a.models:
        for batch in a.batches:
            for precision in a.precisions:
                with precision_context(precision):
                    rows.append(row(name, batch, precision, device, a.size, a.warmup,
                                    a.repeats))
                print(json.dumps({k: v for k, v in rows[-1].items()}), flush=True)
    title = (f"{machine(device)}, torch {torch.__version__}, median of {a.repeats} after "
             f"{a.warmup} warm-up")
    md = table(rows, title)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"gpu-{device.type}"
    (out / f"{stem}.json").write_text(json.dumps({"machine": machine(device),
                                                  "torch": torch.__version__, "rows": rows},
                                                 indent=2))
    (out / f"{stem}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
