"""Stability of every method under invisible noise on a network trained on scikit-learn's digits
(tests/digits.py), with relprop's own metric (``relprop.evaluate.stability``, what
``relprop evaluate --metrics stability`` runs), and each method's region-perturbation AOPC
(MoRF, 4x4 regions, 32 steps, uniform noise) beside a random order's.

    python benchmarks/stability.py                    # the ResNet-10 (residual additions)
    python benchmarks/stability.py --network mbconv   # the EfficientNet in miniature (SiLU, SE)
    python benchmarks/stability.py --network vit      # a vision transformer (attention)

They write benchmarks/results/stability-digits{,-mbconv,-vit}.{json,md}. The images' own predicted
classes; float32, as ``relprop evaluate`` explains; every method sees the same noisy inputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relprop  # noqa: E402
from relprop.evaluate import perturbation as pert  # noqa: E402
from relprop.evaluate.stability import SIGMAS, STABLE, stability  # noqa: E402
from tests.digits import train_digits_mbconv, train_digits_resnet, train_digits_vit  # noqa: E402

NETWORKS = {"resnet": (train_digits_resnet, "ResNet-10 on scikit-learn digits", ""),
            "mbconv": (train_digits_mbconv, "EfficientNet in miniature (MBConv: SiLU, SE gates) "
                                            "on scikit-learn digits", "-mbconv"),
            "vit": (train_digits_vit, "ViT (torchvision's VisionTransformer: 4 layers, 4 heads, "
                                      "4x4 patches) on scikit-learn digits", "-vit")}
PERTURBATION = pert.Settings(region=4, steps=32, fill="uniform", batch_size=33)


def perturbation_aopc(model, x, target, heat) -> float:
    """Mean AOPC of the logit when the regions ``heat`` ranks first are replaced (MoRF)."""
    low, high = x.amin((2, 3)), x.amax((2, 3))
    generators = [pert.image_generator(PERTURBATION.seed, i) for i in range(len(x))]
    fill = pert.fill_values(x, PERTURBATION.fill, low, high, generators)
    rankings = pert.rank_regions(heat, PERTURBATION.region, "morf")[None]
    found = pert.curves(pert.scorer(model, target), x, rankings, fill, PERTURBATION)
    return float(pert.aopc(found[0, :, :, 0]).mean())


def random_aopc(model, x, target) -> float:
    low, high = x.amin((2, 3)), x.amax((2, 3))
    regions = pert.region_count(x.shape[2], x.shape[3], PERTURBATION.region)
    generators = [pert.image_generator(PERTURBATION.seed, i) for i in range(len(x))]
    fill = pert.fill_values(x, PERTURBATION.fill, low, high, generators)
    rankings = torch.stack([pert.random_ranking(regions, g) for g in generators])[None]
    found = pert.curves(pert.scorer(model, target), x, rankings, fill, PERTURBATION)
    return float(pert.aopc(found[0, :, :, 0]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--network", default="resnet", choices=list(NETWORKS))
    parser.add_argument("--out", default=None,
                        help="default: benchmarks/results/stability-digits[-mbconv]")
    args = parser.parse_args()
    train, description, suffix = NETWORKS[args.network]
    out = args.out or str(ROOT / "benchmarks" / "results" / f"stability-digits{suffix}")
    model, accuracy, x = train(args.images)
    target = model(x).argmax(1).detach()
    figures, aopc = {}, {"random": random_aopc(model, x, target)}
    for method in relprop.methods():
        start = time.perf_counter()

        def heat_of(inputs, method=method):
            return relprop.explain(model, inputs, target, method).heatmap.detach()

        heat = heat_of(x)
        aopc[method] = perturbation_aopc(model, x, target, heat)
        found = stability(heat_of, x, heat, range(len(x)), SIGMAS, args.samples)
        figures[method] = {f"{s:g}": {"median_correlation": float(v["correlation"].median()),
                                      f"share_below_{STABLE:g}":
                                          float((v["correlation"] < STABLE).double().mean()),
                                      "avg_sensitivity": float(v["avg_sensitivity"].mean()),
                                      "max_sensitivity": float(v["max_sensitivity"].mean())}
                           for s, v in found.items()}
        print(f"{method:22s} " + "  ".join(f"σ={s}: {f['median_correlation']:.3f}"
                                           for s, f in figures[method].items())
              + f"  AOPC {aopc[method]:.3f}  ({time.perf_counter() - start:.0f} s)", flush=True)
    record = {"model": f"{description} (tests/digits.py)", "network": args.network,
              "test_accuracy": accuracy, "images": len(x), "samples": args.samples,
              "sigmas": list(SIGMAS), "dtype": "float32", "methods": figures,
              "perturbation": {"settings": asdict(PERTURBATION), "order": "morf", "aopc": aopc}}
    Path(out).with_suffix(".json").write_text(json.dumps(record, indent=2))
    Path(out).with_suffix(".md").write_text(table(record))
    print(table(record))


def table(record) -> str:
    sigmas = [f"{s:g}" for s in record["sigmas"]]
    aopc = record["perturbation"]["aopc"]
    head = ("| method | " + " | ".join(f"median corr. σ={s}" for s in sigmas)
            + f" | share < {STABLE:g} at σ={sigmas[1]} | AOPC MoRF (random {aopc['random']:.3f})"
            " |\n")
    head += "|---" * (len(sigmas) + 3) + "|\n"
    rows = [f"| {m} | " + " | ".join(f"{f[s]['median_correlation']:.3f}" for s in sigmas)
            + f" | {f[sigmas[1]][f'share_below_{STABLE:g}']:.2f} | {aopc[m]:.3f} |"
            for m, f in record["methods"].items()]
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
