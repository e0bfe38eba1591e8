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
from ..errors import NoDetection
from . import text
from .common import explain_batch, image_options, job, skip, writing

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


@dataclass
class DetectionRow:
    image: str  # the stem of this detection's output files
    file: str  # the input file as given
    detection: int  # the detection's index in the model's output for the image
    explained: str  # its label
    target: int
    probability: float  # the model's score
    box: str  # x0,y0,x1,y1 in the picture's pixels
    logit: float  # the logit behind the score: what the map explains
    relevance_sum: float
    positive: float
    negative: float
    heatmap: str
    overlay: str
    boxes: str  # the picture with the image's explained detections


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
    if args.text:
        return text.explain(args)
    work = job(args, [args.method], DTYPES[args.dtype], args.layer)
    name, out, class_names, target = work.name, work.out, work.class_names, work.target
    explain, items = work.explainers[args.method], work.inputs
    with writing(out):
        clear_previous_run(out)

    rows, skipped = [], []
    progress = tqdm(total=len(items), desc=f"{args.method} {name}", unit="img", file=sys.stderr,
                    disable=len(items) < 2)
    detector = work.spec.kind == "detection"
    try:
        for batch, x in work.batches(args.batch_size, skipped, progress):
            if detector:
                rows.extend(explain_detections(out, batch[0], x, explain, target, class_names,
                                               skipped))
                progress.update(1)
                continue
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
        listed = [str(row[key]) for row in previous["images"]
                  for key in ("heatmap", "overlay", "boxes") if key in row]
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


def explain_detections(out, item, x, explain, target, class_names, skipped) -> list:
    """One image of a detector: its explained detections drawn on the picture
    (NAME_detections.png), and per detection a heat map and an overlay with its box
    (NAME_detK_heatmap.png, NAME_detK_overlay.png); an image without a detection the target
    selects is listed as skipped."""
    try:
        e = explain_batch(explain, x, target)
    except NoDetection as err:
        skip(item.source.file, str(err), skipped)
        return []
    names = [class_names[d.label] if 0 <= d.label < len(class_names) else str(d.label)
             for d in e.detections]
    boxes_path = out / f"{item.source.name}_detections.png"
    with writing(boxes_path):
        plot.draw_boxes(item.view, [d.box for d in e.detections],
                        [f"{n} {d.score:.2f}" for n, d in zip(names, e.detections)]
                        ).save(boxes_path)
    rows = []
    for r, (d, label) in enumerate(zip(e.detections, names)):
        stem = f"{item.source.name}_det{d.index}"
        heat = e.heatmap[r]
        heat_path, overlay_path = (out / f"{stem}{suffix}" for suffix in OUTPUT_SUFFIXES)
        with writing(heat_path):
            plot.heatmap_image(heat).save(heat_path)
        with writing(overlay_path):
            plot.draw_boxes(plot.overlay_image(item.view, heat), [d.box],
                            [f"{label} {d.score:.2f}"]).save(overlay_path)
        rel = e.relevance[r]
        rows.append(DetectionRow(stem, item.source.file, d.index, label, d.label, d.score,
                                 ",".join(f"{v:.1f}" for v in d.box), float(e.score[r]),
                                 float(rel.sum()), float(rel.clamp(min=0).sum()),
                                 float(rel.clamp(max=0).sum()), str(heat_path),
                                 str(overlay_path), str(boxes_path)))
    return rows


def write_summary(out, model_name, method, rows, skipped) -> None:
    """summary.csv and summary.json of this run, also where nothing was explained. The JSON is
    strict: non-finite numbers become null."""
    records = [strict_json(asdict(r)) for r in rows]
    with writing(out / "summary.csv"):
        with open(out / "summary.csv", "w", newline="", errors="surrogateescape") as f:
            kind = type(rows[0]) if rows else Row
            w = csv.DictWriter(f, fieldnames=[field.name for field in fields(kind)])
            w.writeheader()
            w.writerows(records)
    with writing(out / "summary.json"):
        write_json(out / "summary.json", {"model": model_name, "method": method,
                                          "images": records, "skipped": skipped})


def report(rows, skipped, out, model_name, method):
    if rows and isinstance(rows[0], DetectionRow):
        return report_detections(rows, skipped, out, model_name, method)
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


def report_detections(rows, skipped, out, model_name, method):
    print(f"model: {model_name}  method: {method}")
    print(f"{'detection':20s} {'label':16s} {'score':>5s} {'box':>24s} {'logit':>8s} "
          f"{'sum R':>8s} {'R+':>9s} {'R-':>9s}")
    for r in rows:
        print(f"{r.image[:20]:20s} {r.explained[:16]:16s} {r.probability:5.2f} {r.box[:24]:>24s} "
              f"{r.logit:8.3f} {r.relevance_sum:8.3f} {r.positive:9.3f} {r.negative:9.3f}")
    pictures = 2 * len(rows) + len({r.boxes for r in rows})
    unread = f"; skipped {len(skipped)} images (listed in summary.json)" if skipped else ""
    print(f"wrote {pictures} PNGs, summary.csv and summary.json to {out}/{unread}")
