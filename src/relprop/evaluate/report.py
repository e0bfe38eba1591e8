"""What ``relprop evaluate`` writes: metrics.json (every figure with every setting used),
per_image.csv (one value per image, method and metric), perturbation.png (the mean curves), and
the table it prints, also as metrics.md."""
from __future__ import annotations

import csv
from pathlib import Path

from ..outputs import write_json

ROW_FIELDS = ("index", "image", "file", "target", "method", "metric", "value")


def write_metrics(path: Path, record: dict) -> None:
    write_json(path, record)


def write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="", errors="surrogateescape") as f:
        w = csv.DictWriter(f, fieldnames=ROW_FIELDS)
        w.writeheader()
        w.writerows(sorted(rows, key=lambda r: (r["index"], r["method"], r["metric"])))


def plot_curves(path: Path, curves: dict, orders, steps: int, title: str) -> None:
    """One panel per order, one line per method (random dashed): the mean drop of the explained
    logit as regions are replaced."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(4.2 * len(orders) + 1.8, 3.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(orders), squeeze=False)[0]
    import matplotlib
    colours = matplotlib.colormaps["tab20"]  # up to 20 methods told apart; the default cycle has 10
    for ax, order in zip(axes, orders):
        for i, (method, by_order) in enumerate(curves.items()):
            if order in by_order:
                ax.plot(range(steps + 1), by_order[order]["logit"], label=method, lw=1.2,
                        color=colours(i % 20))
        if "random" in curves:
            ax.plot(range(steps + 1), curves["random"]["random"]["logit"], "k--", lw=1.2,
                    label="random")
        ax.set_title(order)
        ax.set_xlabel("regions replaced")
        ax.set_ylabel("mean drop of the explained logit")
        ax.axhline(0, color="grey", lw=0.5)
    axes[-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _cells(summary: dict, orders) -> tuple[list[str], list[list[str]]]:
    """The headline figure of each measured metric: a header and one row per method."""
    columns = []  # (header, path into a method's figures; None: random's AOPC)
    if any("perturbation" in f for f in summary.values()):
        columns += [(f"AOPC {o}", ("perturbation", o, "aopc")) for o in orders]
        columns.append(("AOPC random", None))
    for reference in ("boxes", "masks", "truth"):
        if any(reference in f.get("localisation", {}) for f in summary.values()):
            columns += [(f"{name} ({reference})", ("localisation", reference, key))
                        for name, key in (("out/in", "outside_inside"), ("mass in", "mass_inside"),
                                          ("pointing", "pointing"), ("mIoU", "iou"))]
    if any("distractor" in f.get("localisation", {}) for f in summary.values()):
        columns += [(label, ("localisation", kind, key)) for label, kind, key in (
            ("+ on object", "distractor", "positive_on_object"),
            ("+ on distractor", "distractor", "positive_on_distractor"),
            ("- on distractor", "distractor", "negative_on_distractor"),
            ("swapped: + on object", "distractor-class", "positive_on_object"))]
    stability = next((f["stability"] for f in summary.values() if "stability" in f), {})
    columns += [(f"corr σ={s}", ("stability", s, "median_correlation")) for s in stability]
    random = _get(summary.get("random", {}), ("perturbation", "random", "aopc"))
    rows = []
    for method, figures in summary.items():
        if method == "random":
            continue
        values = [random if path is None else _get(figures, path) for _, path in columns]
        rows.append([method] + ["-" if v is None else f"{v:.3f}" for v in values])
    return ["method"] + [h for h, _ in columns], rows


def table(summary: dict, orders) -> str:
    """The printed summary: one line per method."""
    header, rows = _cells(summary, orders)
    widths = [22] + [max(len(h), 8) + 2 for h in header[1:]]
    return "\n".join(r[0][:22].ljust(22) + "".join(c.rjust(w) for c, w in zip(r[1:], widths[1:]))
                     for r in [header, *rows])


def markdown(summary: dict, orders) -> str:
    """The same table in markdown (metrics.md), to paste into a report."""
    header, rows = _cells(summary, orders)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _get(figures: dict, path):
    for key in path:
        if not isinstance(figures, dict) or key not in figures:
            return None
        figures = figures[key]
    return figures
