"""``relprop evaluate --data synthetic:shapes-detection``: every chosen method on the
detections of relprop's synthetic detector, against the shapes' known masks
(:mod:`relprop.evaluate.detection`)."""
from __future__ import annotations

import csv
import sys

from tqdm import tqdm

from .. import plot
from ..detection import NEEDS_MODULES
from ..evaluate import detection as measures, synthetic_detection
from ..outputs import strict_json, write_json
from .common import Failure, check_out, choices, writing

DEFAULT_METHODS = ("rap", "rap-stable", "lrp-epsilon-plus", "lrp-epsilon-alpha2beta1",
                   "gradient", "integrated-gradients")
DEFAULT_PICTURES = 40


def run(args) -> int:
    from ..registry import methods
    if args.model not in (None, "synthetic-detector") or args.weights:
        raise Failure(f"--data synthetic:{synthetic_detection.NAME} explains the detector relprop "
                      "trains on it: leave out --model and --weights")
    chosen = choices(args.methods, methods(), "--methods") if args.methods else \
        list(DEFAULT_METHODS)
    unsupported = [m for m in chosen if m in NEEDS_MODULES]
    if unsupported:
        raise Failure(f"--methods: {', '.join(unsupported)} cannot explain this detector: "
                      f"{NEEDS_MODULES[unsupported[0]]}")
    count = DEFAULT_PICTURES if args.limit is None else args.limit
    if count < 1:
        raise Failure("--limit must be at least 1")
    out = check_out(args.out)
    if args.detections < 1 or not 0 <= args.min_score <= 1:
        raise Failure("--detections must be at least 1 and --min-score a probability in [0, 1]")
    settings = measures.Settings(detections=args.detections, min_score=args.min_score,
                                 region=args.region or measures.Settings.region,
                                 steps=args.steps or measures.Settings.steps,
                                 fill=args.perturbation, seed=args.seed)
    model, found_map = synthetic_detection.trained()
    print(f"relprop: the synthetic detector, mAP@0.5 {found_map:.3f} on its test pictures",
          file=sys.stderr)
    start = synthetic_detection.EVALUATE_START
    rows = []
    for i in tqdm(range(start, start + count), desc="evaluate shapes-detection", unit="picture",
                  file=sys.stderr, disable=count < 2):
        rows += measures.measure(model, i, chosen, settings)
    if not rows:
        raise Failure(f"the detector found no detection scored {settings.min_score} or more "
                      f"in {count} pictures")
    table = measures.summary(rows)
    text = measures.markdown(table, found_map, count)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.md").write_text(text)
        write_json(out / "metrics.json", {"data": args.data, "pictures": count,
                                          "map50": found_map, "settings": vars(settings),
                                          "methods": table})
        columns = list(dict.fromkeys(k for r in rows for k in r))
        with open(out / "per_detection.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=columns)
            w.writeheader()
            w.writerows(strict_json(r) for r in rows)
        examples(model, chosen, out / "examples.png", start, settings)
    print(text)
    print(f"wrote metrics.md, metrics.json, per_detection.csv and examples.png to {out}/")
    return 0


def examples(model, methods, path, start, settings, pictures: int = 3) -> None:
    """examples.png: for the first pictures, the top detection's box and every method's map."""
    from ..detection import DetectionExplainer, Detections, scene
    grid = []
    for index in range(start, start + pictures):
        picture = synthetic_detection.sample(index, settings.seed)
        x = synthetic_detection.to_tensor(picture.image)[None]
        found = scene(model, x)
        picked = Detections(1, settings.min_score).select(found.detections, 0)
        if not picked:
            continue
        d = picked[0]
        name = synthetic_detection.synthetic.CLASSES[d.label - 1]
        heats = {m: DetectionExplainer(model, m).explain_scene(found, x, picked).heatmap[0]
                 for m in methods}
        grid.append((f"{name} {d.score:.2f}",
                     plot.draw_boxes(picture.image, [d.box], [name]), heats))
    if grid:
        plot.grid(grid, methods, path)
