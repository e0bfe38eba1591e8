"""One full-size torchvision builder of each classifier family outside attention, 224x224 (299
for Inception-V3), random weights, every method of ``relprop.methods()``: whether the map is
finite and of the input's size, how far it is from conserving (|Σ R − score| / |score|, float32),
and its time per image on this machine. The README's zoo table.

    python benchmarks/zoo.py        # writes benchmarks/results/zoo.{json,md}

Integrated gradients run 16 steps and SmoothGrad 8 samples here (50 and 25 by default): the
same code, fewer passes, so that the table is made in minutes on two cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torchvision

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relprop  # noqa: E402

FULL_SIZE = {  # family -> the builder measured (the smallest full-size one of the family)
    "AlexNet": "alexnet", "ConvNeXt": "convnext_tiny", "DenseNet": "densenet121",
    "EfficientNet": "efficientnet_b0", "EfficientNetV2": "efficientnet_v2_s",
    "GoogLeNet": "googlenet", "Inception-V3": "inception_v3", "MNASNet": "mnasnet1_0",
    "MobileNetV2": "mobilenet_v2", "MobileNetV3": "mobilenet_v3_large",
    "RegNet-X": "regnet_x_400mf", "RegNet-Y": "regnet_y_400mf", "ResNet": "resnet50",
    "ResNeXt": "resnext50_32x4d", "ShuffleNetV2": "shufflenet_v2_x1_0",
    "SqueezeNet": "squeezenet1_1", "VGG": "vgg16", "Wide ResNet": "wide_resnet50_2",
}
QUICK = {"integrated-gradients": {"steps": 16}, "smoothgrad": {"samples": 8}}
CONSERVING = ("rap", "rap-stable")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo"))
    parser.add_argument("--families", default=",".join(FULL_SIZE))
    args = parser.parse_args()
    families = [f for f in args.families.split(",") if f]
    record = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "batch": 1, "families": {}}
    for family in families:
        name = FULL_SIZE[family]
        torch.manual_seed(0)
        model = torchvision.models.get_model(name, weights=None).eval()
        size = 299 if name == "inception_v3" else 224
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
        rows = {}
        for method in relprop.methods():
            start = time.perf_counter()
            try:
                e = relprop.explain(model, x, method=method, **QUICK.get(method, {}))
            except Exception as error:  # reported in the table, in words
                rows[method] = {"error": f"{type(error).__name__}: {error}"[:300]}
                print(f"{name:20s} {method:30s} FAILED {rows[method]['error']}", flush=True)
                continue
            ms = 1000 * (time.perf_counter() - start)
            rel = float((e.delta.abs() / e.score.abs().clamp(min=1e-12)).max())
            rows[method] = {"finite": bool(torch.isfinite(e.relevance).all()),
                            "shape_ok": e.relevance.shape == x.shape, "relative_delta": rel,
                            "ms": ms}
            print(f"{name:20s} {method:30s} {ms:8.0f} ms  Δ/score {rel:.1e}", flush=True)
        record["families"][family] = {"builder": name, "size": size, "methods": rows}
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=2))
    Path(args.out).with_suffix(".md").write_text(table(record))
    print(table(record))


def table(record) -> str:
    methods = relprop.methods()
    head = "| family (builder) | " + " | ".join(methods) + " |\n"
    head += "|---" * (len(methods) + 1) + "|\n"
    lines = []
    for family, found in record["families"].items():
        cells = []
        for method in methods:
            row = found["methods"].get(method)
            if row is None or "error" in row:
                cells.append("fails")
            elif not (row["finite"] and row["shape_ok"]):
                cells.append("not finite")
            elif method in CONSERVING:
                cells.append(f"{row['ms'] / 1000:.1f} s, Δ {row['relative_delta']:.0e}")
            else:
                cells.append(f"{row['ms'] / 1000:.1f} s")
        lines.append(f"| {family} (`{found['builder']}`) | " + " | ".join(cells) + " |")
    return head + "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
