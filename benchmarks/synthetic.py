"""Every method against known evidence (issue 18): ``relprop evaluate --data synthetic:SET
--model synthetic-ARCH`` for both sets and both networks, each on a fresh cache (so that the
wall time includes training), then one table of the headline figures and the four full tables.

    python benchmarks/synthetic.py            # about 30 min on two cores
    python benchmarks/synthetic.py --again shapes-distractor:cnn   # one run again

Writes benchmarks/results/synthetic.md and synthetic.json, and the four runs' metrics.json,
metrics.md and perturbation.png under benchmarks/results/synthetic/. Run it with nothing else on the machine: it measures wall time.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
RUNS = [("shapes", "cnn"), ("shapes", "vit"), ("shapes-distractor", "cnn"),
        ("shapes-distractor", "vit")]
# the headline: (column, set, path into a method's figures)
HEADLINE = [("mass in object", "shapes", ("localisation", "truth", "mass_inside")),
            ("pointing", "shapes", ("localisation", "truth", "pointing")),
            ("+ on object", "shapes-distractor",
             ("localisation", "distractor", "positive_on_object")),
            ("+ on distractor", "shapes-distractor",
             ("localisation", "distractor", "positive_on_distractor")),
            ("− on distractor", "shapes-distractor",
             ("localisation", "distractor", "negative_on_distractor"))]


def command(name: str, arch: str, out: Path) -> list[str]:
    return ["relprop", "evaluate", "--data", f"synthetic:{name}", "--model",
            f"synthetic-{arch}", "--out", str(out)]


def run(name: str, arch: str) -> dict:
    out = RESULTS / "synthetic" / f"{name}-{arch}"
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "relprop", *command(name, arch, out)[1:]],
                              capture_output=True, text=True,
                              env={**os.environ, "RELPROP_CACHE": cache})
        wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(done.stderr[-3000:])
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", done.stderr).group(1))
    record = json.loads((out / "metrics.json").read_text())
    for bulky in ("progress.jsonl", "per_image.csv", "examples.png"):  # 2-5 MB a run; the
        (out / bulky).unlink()  # figures are in metrics.json, the pictures in docs/
    print(f"{name} {arch}: {wall:.0f} s, accuracy {accuracy:.3f}", flush=True)
    return {"set": name, "arch": arch, "wall_s": wall, "accuracy": accuracy,
            "command": " ".join(command(name, arch, Path(f"eval-{name}-{arch}"))),
            "metrics": record["metrics"], "images": record["images"]}


def get(figures: dict, path):
    for key in path:
        figures = figures.get(key, {}) if isinstance(figures, dict) else {}
    return figures if isinstance(figures, float) else None


def headline(runs: list[dict]) -> str:
    by = {(r["set"], r["arch"]): r["metrics"] for r in runs}
    methods = list(by[("shapes", "vit")])  # the ViT's: every method, rollouts included
    methods = [m for m in methods if m != "random"]
    header = ["method"] + [f"{c} ({ {'cnn': 'CNN', 'vit': 'ViT'}[a]})" for c, _, _ in HEADLINE
                           for a in ("cnn", "vit")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for m in methods:
        cells = [m]
        for _, name, path in HEADLINE:
            for arch in ("cnn", "vit"):
                value = get(by[(name, arch)].get(m, {}), path)
                cells.append("—" if value is None else f"{value:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    """All four runs; ``--again SET:ARCH`` repeats one (e.g. to time it alone) and keeps the
    others from synthetic.json."""
    import argparse
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--again", action="append", default=[], metavar="SET:ARCH")
    parser.add_argument("--report", action="store_true",
                        help="only write synthetic.md again from synthetic.json")
    options = parser.parse_args()
    again = {tuple(a.split(":")) for a in options.again}
    kept = {(r["set"], r["arch"]): r for r in json.loads((RESULTS / "synthetic.json").read_text())
            } if again or options.report else {}
    runs = [run(name, arch) if not (again or options.report) or (name, arch) in again
            else kept[(name, arch)] for name, arch in RUNS]
    parts = ["# Every method against known evidence (synthetic shapes)", "",
             "`python benchmarks/synthetic.py`; 100 held-out images per set, 2 CPU threads, each "
             "run on a fresh cache (wall time includes training).", "",
             "| set | network | test accuracy | wall time (incl. training) | command |",
             "|---|---|---|---|---|"]
    for r in runs:
        parts.append(f"| {r['set']} | {r['arch']} | {r['accuracy']:.3f} | "
                     f"{r['wall_s'] / 60:.1f} min | `{r['command']}` |")
    parts += ["", "## Headline", "", headline(runs), ""]
    for r in runs:
        out = RESULTS / "synthetic" / f"{r['set']}-{r['arch']}"
        parts += [f"## {r['set']}, {r['arch']}", "", (out / "metrics.md").read_text(), ""]
    (RESULTS / "synthetic.md").write_text("\n".join(parts))
    (RESULTS / "synthetic.json").write_text(json.dumps(runs, indent=1))
    print(f"wrote {RESULTS / 'synthetic.md'}")


if __name__ == "__main__":
    main()
