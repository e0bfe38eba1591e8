"""``relprop compare [IMAGE ...]``: several methods side by side, one grid."""
from __future__ import annotations

import sys

from tqdm import tqdm

from .. import plot
from ..outputs import write_json
from ..registry import methods
from ..errors import NoDetection
from ..text import METHODS as TEXT_METHODS
from . import text
from .common import Failure, explain_batch, image_options, job, method_choice, skip, writing


def add_parser(sub) -> None:
    co = sub.add_parser("compare", help="explain images with several methods side by side")
    image_options(co)
    co.add_argument("--methods", default=None,
                    help=f"comma-separated, of {', '.join(methods())} (default: every method "
                         "that applies to the model)")
    co.add_argument("--out", default="relprop-compare",
                    help="output folder (default: relprop-compare): compare.png (rows: images, "
                         "or a detector's detections; columns: methods), NAME_METHOD.png "
                         "overlays and compare.json")
    co.set_defaults(run=run)


def write_outputs(out, name, chosen, rows, records, skipped, interrupted=False) -> None:
    """compare.png (where an image was explained) and compare.json; ``interrupted`` says in
    the JSON that the run was stopped before its last image."""
    if rows:
        with writing(out / "compare.png"):
            plot.grid(rows, chosen, out / "compare.png")
    record = {"model": name, "methods": chosen, "images": records, "skipped": skipped}
    if interrupted:
        record["interrupted"] = True
    with writing(out / "compare.json"):  # strict JSON: a non-finite sum becomes null
        write_json(out / "compare.json", record)


def explained_by_each(work, x, target, batch, skipped) -> dict:
    """method -> the batch's Explanation; {} for a detector's image where the target selects
    no detection (listed as skipped)."""
    try:
        return {m: explain_batch(work.explainers[m], x, target) for m in work.explainers}
    except NoDetection as err:
        skip(batch[0].source.file, str(err), skipped)
        return {}


def panels(batch, found, chosen):
    """(input, output name, picture) per row of the explanations: an image, or for a detector
    each explained detection, its box drawn on the picture."""
    if not found:
        return
    detections = getattr(found[chosen[0]], "detections", None)
    if detections is None:
        yield from ((item, item.source.name, item.view) for item in batch)
        return
    item = batch[0]
    for d in detections:
        yield item, f"{item.source.name}_det{d.index}", \
            plot.draw_boxes(item.view, [d.box], [f"{d.score:.2f}"])


def run(args) -> int:
    """Every requested method on every image: one grid, one overlay per image and method."""
    if args.text:
        return text.compare(args, method_choice(args.methods) or list(TEXT_METHODS))
    work = job(args, method_choice(args.methods))
    chosen = list(work.explainers)
    name, out, class_names, target = work.name, work.out, work.class_names, work.target
    rows, records, skipped = [], [], []
    progress = tqdm(total=len(work.inputs), desc=f"compare {name}", unit="img", file=sys.stderr,
                    disable=len(work.inputs) < 2)
    try:
        for batch, x in work.batches(args.batch_size, skipped, progress):
            found = explained_by_each(work, x, target, batch, skipped)
            for i, (item, stem, picture) in enumerate(panels(batch, found, chosen)):
                first = found[chosen[0]]
                explained = class_names[int(first.target[i])]
                heat = {m: e.heatmap[i] for m, e in found.items()}
                record = {"image": stem, "file": item.source.file,
                          "explained": explained, "score": float(first.score[i]), "methods": {}}
                for m, e in found.items():
                    path = out / f"{stem}_{m}.png"
                    with writing(path):
                        plot.overlay_image(picture, heat[m]).save(path)
                    record["methods"][m] = {"relevance_sum": float(e.relevance[i].sum()),
                                            "overlay": str(path)}
                records.append(record)
                rows.append((f"{stem}: {explained}", picture, heat))
            progress.update(len(batch))
    except KeyboardInterrupt:  # Ctrl+C: the grid and compare.json hold the finished images
        progress.close()
        try:
            write_outputs(out, name, chosen, rows, records, skipped, interrupted=True)
        except Failure:
            pass  # the interruption is what the user is told about
        raise
    progress.close()
    write_outputs(out, name, chosen, rows, records, skipped)
    print(f"model: {name}; {len(rows)} images x {len(chosen)} methods: wrote compare.png, "
          f"{len(rows) * len(chosen)} overlays and compare.json to {out}/")
    return 1 if skipped else 0
