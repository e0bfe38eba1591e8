"""One full-size torchvision builder of each classifier family, 224x224 (299 for Inception-V3),
random weights, every method of ``relprop.methods()``: whether the map is finite and of the
input's size, how far it is from conserving (|Σ R − score| / |score|, float32), and its time per
image on this machine. The README's zoo tables.

    python benchmarks/zoo.py                  # CNNs: benchmarks/results/zoo.{json,md}
    python benchmarks/zoo.py --transformers   # ViT, Swin, MaxViT, timm's ViT/DeiT/Swin, and
                                              # rap/rap-stable conservation in float64 on every
                                              # full-size transformer builder:
                                              # benchmarks/results/zoo-transformers.{json,md}

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
TRANSFORMERS = {  # family -> the builder measured with every method
    "ViT": "vit_b_16", "Swin": "swin_t", "Swin v2": "swin_v2_t", "MaxViT": "maxvit_t",
    "timm ViT": "timm:vit_tiny_patch16_224", "timm DeiT": "timm:deit_tiny_patch16_224",
    "timm Swin": "timm:swin_tiny_patch4_window7_224",
}
CONSERVATION = ["vit_b_16", "vit_b_32", "vit_l_16", "vit_h_14", "swin_t", "swin_s", "swin_b",
                "swin_v2_t", "swin_v2_s", "swin_v2_b", "maxvit_t", "timm:vit_tiny_patch16_224",
                "timm:vit_small_patch16_224", "timm:deit_tiny_patch16_224",
                "timm:deit_small_patch16_224", "timm:swin_tiny_patch4_window7_224"]
QUICK = {"integrated-gradients": {"steps": 16}, "smoothgrad": {"samples": 8}}
CONSERVING = ("rap", "rap-stable")


def build(name: str) -> torch.nn.Module:
    """Random weights; a head initialised to zeros (torchvision's ViT) is drawn again, so that
    the score is not 0."""
    torch.manual_seed(0)
    if name.startswith("timm:"):
        import timm
        model = timm.create_model(name[5:], pretrained=False)
    else:
        model = torchvision.models.get_model(name, weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.Linear) and not m.weight.detach().any():
            torch.nn.init.normal_(m.weight, std=0.02)
    return model.eval()


def conservation(names) -> dict:
    """|Σ R − score| / max(1, |score|) of rap and rap-stable in float64 at 224x224."""
    found = {}
    for name in names:
        model = build(name).double()
        x = torch.randn(1, 3, 224, 224, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
        found[name] = {}
        for method in CONSERVING:
            start = time.perf_counter()
            e = relprop.explain(model, x, method=method)
            found[name][method] = float((e.delta.abs() / e.score.abs().clamp(min=1)).max())
            print(f"{name:34s} {method:10s} float64 Δ {found[name][method]:.1e} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
        del model
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transformers", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--families", default=None)
    args = parser.parse_args()
    builders = TRANSFORMERS if args.transformers else FULL_SIZE
    out = args.out or str(ROOT / "benchmarks" / "results" /
                          ("zoo-transformers" if args.transformers else "zoo"))
    families = [f for f in (args.families or ",".join(builders)).split(",") if f]
    record = {"threads": torch.get_num_threads(), "torch": torch.__version__,
              "torchvision": torchvision.__version__, "batch": 1, "families": {}}
    for family in families:
        name = builders[family]
        model = build(name)
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
    if args.transformers:
        record["float64_conservation"] = conservation(CONSERVATION)
    Path(out).with_suffix(".json").write_text(json.dumps(record, indent=2))
    Path(out).with_suffix(".md").write_text(table(record))
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
            if row is not None and "global attention" in row.get("error", ""):
                cells.append("n/a: windowed attention")
            elif row is None or "error" in row:
                cells.append("fails")
            elif not (row["finite"] and row["shape_ok"]):
                cells.append("not finite")
            elif method in CONSERVING:
                cells.append(f"{row['ms'] / 1000:.1f} s, Δ {row['relative_delta']:.0e}")
            else:
                cells.append(f"{row['ms'] / 1000:.1f} s")
        lines.append(f"| {family} (`{found['builder']}`) | " + " | ".join(cells) + " |")
    text = head + "\n".join(lines) + "\n"
    if "float64_conservation" in record:
        text += ("\n| builder (float64, 224x224) | " + " | ".join(
            f"{m} \\|Σ R − score\\| / max(1, \\|score\\|)" for m in CONSERVING) + " |\n")
        text += "|---" * (len(CONSERVING) + 1) + "|\n"
        text += "\n".join(f"| `{name}` | " + " | ".join(f"{d[m]:.0e}" for m in CONSERVING) + " |"
                          for name, d in record["float64_conservation"].items()) + "\n"
    return text


if __name__ == "__main__":
    main()
