"""``relprop explain [IMAGE ...]``: a heat map and an overlay per image, and a table."""
from __future__ import annotations

import csv
import json
import sys
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tqdm import tqdm

from .. import plot
from ..api import DEFAULT_METHOD
from ..registry import methods
from ..outputs import strict_json, write_json
from .common import explain_batch, image_options, job, writing

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
OUTPUT_SUFFIXES = ("_heatmap.png", "_overlay.png")


@dataclass
class Row:
    image: str  # the stem of this image's output files
    file: str  # the input file as given
    predicted: str
    probability: float
    explained: str
    target: int
    logit: float
    relevance_sum: float
    positive: float
    negative: float
    heatmap: str
    overlay: str


def add_parser(sub) -> None:
    ex = sub.add_parser("explain", help="explain images (RAP or another method) and write heat "
                                        "maps")
    image_options(ex)
    ex.add_argument("--method", default=DEFAULT_METHOD, choices=methods(), metavar="METHOD",
                    help=f"one of {', '.join(methods())} (default: {DEFAULT_METHOD}, the paper's "
                         "RAP on networks without residual additions, stable on those with; rap: "
                         "the paper's rule everywhere; relprop methods describes them)")
    ex.add_argument("--out", default="relprop-out",
                    help="output folder (default: relprop-out): NAME_heatmap.png and "
                         "NAME_overlay.png per image (NAME-2_... where names repeat), "
                         "summary.csv and summary.json; a rerun replaces what the last run's "
                         "summary.json lists")
    ex.add_argument("--layer", default=None,
                    help="a module path (e.g. features.28): show the relevance of that layer's "
                         "output, summed over its channels, instead of the input's (grad-cam: "
                         "the layer the CAM is computed at)")
    ex.add_argument("--dtype", default="float32", choices=list(DTYPES),
                    help="precision of the model and the propagation (bfloat16: networks "
                         "without residual additions, such as VGG; default float32)")
    ex.set_defaults(run=run)


def run(args) -> int:
    work = job(args, [args.method], DTYPES[args.dtype], args.layer)
    name, out, class_names, target = work.name, work.out, work.class_names, work.target
    explain, items = work.explainers[args.method], work.inputs
    with writing(out):
        clear_previous_run(out)

    rows, skipped = [], []
    progress = tqdm(total=len(items), desc=f"{args.method} {name}", unit="img", file=sys.stderr,
                    disable=len(items) < 2)
    try:
        for batch, x in work.batches(args.batch_size, skipped, progress):
            e = explain_batch(explain, x, target)
            regions = target.mask(e.logits, e.target) if hasattr(target, "mask") else None
            rows.extend(write_images(out, item, e, i, class_names,
                                     None if regions is None else regions[i])
                        for i, item in enumerate(batch))
            progress.update(len(batch))
    finally:  # also after a failure: the summary lists what this run wrote, for the next one
        progress.close()
        write_summary(out, name, args.method, rows, skipped)
    report(rows, skipped, out, name, args.method)
    return 1 if skipped else 0


def clear_previous_run(out: Path) -> None:
    """Remove the last run's summaries and the PNGs its summary.json lists (by file name, in
    ``out`` only), so that nothing there is mistaken for this run's output."""
    try:
        previous = json.loads((out / "summary.json").read_text())
        listed = [str(row[key]) for row in previous["images"] for key in ("heatmap", "overlay")]
    except (OSError, ValueError, KeyError, TypeError):
        listed = []
    for name in {Path(p).name for p in listed if p.lower().endswith(".png")}:
        if (out / name).is_file():
            (out / name).unlink()
    for name in ("summary.csv", "summary.json"):
        (out / name).unlink(missing_ok=True)


def write_images(out, item, e, i, class_names, region=None) -> Row:
    """The heat map and overlay PNGs of image ``i`` of the explanation ``e``, and its row; on a
    segmentation model the overlay outlines the explained ``region`` (the class's predicted
    pixels or the box) in green."""
    heat = e.heatmap[i]
    if tuple(heat.shape) != item.view.size[::-1]:  # a layer's map, shown at the picture's size
        heat = torch.nn.functional.interpolate(heat[None, None].float(), size=item.view.size[::-1],
                                               mode="nearest")[0, 0]
    heat_path, overlay_path = (out / f"{item.source.name}{suffix}" for suffix in OUTPUT_SUFFIXES)
    with writing(heat_path):
        plot.heatmap_image(heat).save(heat_path)
    overlay = plot.overlay_image(item.view, heat)
    if region is not None:
        overlay = plot.outline(overlay, region.cpu().numpy())
    with writing(overlay_path):
        overlay.save(overlay_path)
    probs = e.probabilities[i]
    pred = int(probs.argmax()) if region is None else int(e.logits[i].argmax(0).flatten().mode()[0])
    r = e.relevance[i]
    return Row(item.source.name, item.source.file, class_names[pred], float(probs[pred]),
               class_names[int(e.target[i])], int(e.target[i]), float(e.score[i]),
               float(r.sum()), float(r.clamp(min=0).sum()), float(r.clamp(max=0).sum()),
               str(heat_path), str(overlay_path))


def write_summary(out, model_name, method, rows, skipped) -> None:
    """summary.csv and summary.json of this run, also where nothing was explained. The JSON is
    strict: non-finite numbers become null."""
    records = [strict_json(asdict(r)) for r in rows]
    with writing(out / "summary.csv"):
        with open(out / "summary.csv", "w", newline="", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
            w.writeheader()
            w.writerows(records)
    with writing(out / "summary.json"):
        write_json(out / "summary.json", {"model": model_name, "method": method,
                                          "images": records, "skipped": skipped})


def report(rows, skipped, out, model_name, method):
    header = (f"{'image':14s} {'predicted':24s} {'prob':>5s} {'explained':24s} {'logit':>8s} "
              f"{'sum R':>8s} {'R+':>9s} {'R-':>9s}")
    print(f"model: {model_name}  method: {method}")
    if rows:
        print(header)
    for r in rows:
        print(f"{r.image[:14]:14s} {r.predicted[:24]:24s} {r.probability:5.2f} "
              f"{r.explained[:24]:24s} {r.logit:8.3f} {r.relevance_sum:8.3f} {r.positive:9.3f} "
              f"{r.negative:9.3f}")
    unread = f"; skipped {len(skipped)} images (listed in summary.json)" if skipped else ""
    print(f"wrote {2 * len(rows)} PNGs, summary.csv and summary.json to {out}/{unread}")
