"""Stability of every method under invisible noise on the ResNet-10 trained on scikit-learn's
digits (tests/digits.py; about 45 s of training on two cores), with relprop's own metric
(``relprop.evaluate.stability``, what ``relprop evaluate --metrics stability`` runs).

    python benchmarks/stability.py            # writes benchmarks/results/stability-digits.{json,md}

The images' own predicted classes; float32, as ``relprop evaluate`` explains; every method sees
the same noisy inputs.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relprop  # noqa: E402
from relprop.evaluate.stability import SIGMAS, STABLE, stability  # noqa: E402
from tests.digits import train_digits_resnet  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "stability-digits"))
    args = parser.parse_args()
    model, accuracy, x = train_digits_resnet(args.images)
    target = model(x).argmax(1).detach()
    figures = {}
    for method in relprop.methods():
        start = time.perf_counter()

        def heat_of(inputs, method=method):
            return relprop.explain(model, inputs, target, method).heatmap.detach()

        found = stability(heat_of, x, heat_of(x), range(len(x)), SIGMAS, args.samples)
        figures[method] = {f"{s:g}": {"median_correlation": float(v["correlation"].median()),
                                      f"share_below_{STABLE:g}":
                                          float((v["correlation"] < STABLE).double().mean()),
                                      "avg_sensitivity": float(v["avg_sensitivity"].mean()),
                                      "max_sensitivity": float(v["max_sensitivity"].mean())}
                           for s, v in found.items()}
        print(f"{method:22s} " + "  ".join(f"σ={s}: {f['median_correlation']:.3f}"
                                           for s, f in figures[method].items())
              + f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    record = {"model": "ResNet-10 on scikit-learn digits (tests/digits.py)",
              "test_accuracy": accuracy, "images": len(x), "samples": args.samples,
              "sigmas": list(SIGMAS), "dtype": "float32", "methods": figures}
    Path(args.out).with_suffix(".json").write_text(json.dumps(record, indent=2))
    Path(args.out).with_suffix(".md").write_text(table(record))
    print(table(record))


def table(record) -> str:
    sigmas = [f"{s:g}" for s in record["sigmas"]]
    head = ("| method | " + " | ".join(f"median corr. σ={s}" for s in sigmas)
            + f" | share < {STABLE:g} at σ={sigmas[1]} |\n")
    head += "|---" * (len(sigmas) + 2) + "|\n"
    rows = [f"| {m} | " + " | ".join(f"{f[s]['median_correlation']:.3f}" for s in sigmas)
            + f" | {f[sigmas[1]][f'share_below_{STABLE:g}']:.2f} |"
            for m, f in record["methods"].items()]
    return head + "\n".join(rows) + "\n"


if __name__ == "__main__":
    main()
