"""``relprop evaluate``: the paper's checks of every chosen method on a data set (region
perturbation, localisation against boxes and masks, stability), sharded under torchrun."""
from __future__ import annotations

import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from .. import models, prepare
from ..images import load_image
from ..evaluate import data as evaluation_data, journal, synthetic
from ..registry import methods
from .common import (Failure, check_out, choices, explainers_for, load_model, method_choice,
                     model_options, phrased, writing)


def add_parser(sub) -> None:
    p = sub.add_parser(
        "evaluate", help="measure the methods' maps: region perturbation (AOPC), localisation "
                         "against boxes and masks, stability under invisible noise")
    p.set_defaults(run=run)
    from ..evaluate.perturbation import FILLS
    from ..evaluate.run import PERTURBATION_ORDERS, Settings
    d = Settings()
    model_options(p, "; under torchrun with CUDA each process takes the GPU of its LOCAL_RANK")
    p.add_argument("--data", default=None,
                   help="a folder of images, or an ImageFolder tree (one sub-folder per class, "
                        "which is then explained), or synthetic:shapes / "
                        "synthetic:shapes-distractor (generated images whose evidence is known; "
                        "explains relprop's networks trained on them, --model synthetic-cnn or "
                        "synthetic-vit; 100 images unless --limit), or "
                        "synthetic:shapes-detection (relprop's Faster R-CNN on pictures of "
                        "several shapes, their masks known; 40 pictures unless --limit), or "
                        "synthetic:text-negation (sentences whose deciding words are known; "
                        "--model synthetic-classifier or synthetic-lm; 100 unless --limit); "
                        "default: scikit-image's "
                        f"{', '.join(prepare.SAMPLES)}, predicted classes")
    p.add_argument("--boxes", default=None,
                   help="object boxes: a folder of Pascal VOC XML files (IMAGE.xml, as "
                        "ImageNet's validation boxes), a CSV (image,xmin,ymin,xmax,ymax) or a "
                        "JSON file (image -> [[xmin, ymin, xmax, ymax], ...])")
    p.add_argument("--masks", default=None,
                   help="a folder of segmentation masks IMAGE.png (non-zero: the object)")
    p.add_argument("--methods", default=None,
                   help=f"comma-separated, of {', '.join(methods())} (default: every method "
                        "that applies to the model)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated, of perturbation, localisation, stability (default: "
                        "perturbation and stability, and localisation where --boxes or --masks "
                        "is given)")
    p.add_argument("--out", default="relprop-evaluate",
                   help="output folder (default: relprop-evaluate): metrics.json, "
                        "metrics.md, per_image.csv, perturbation.png, and on a synthetic set "
                        "examples.png (image, true evidence, every map)")
    p.add_argument("--region", type=int, default=None,
                   help=f"side of the square regions perturbed together (default: {d.region}; "
                        f"{SYNTHETIC_PERTURBATION[0]} on a synthetic set's 64x64 images)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"regions replaced, one more per step (default: {d.steps}; "
                        f"{SYNTHETIC_PERTURBATION[1]} on a synthetic set)")
    p.add_argument("--perturbation", default=d.fill, choices=FILLS,
                   help="what a replaced pixel becomes: uniform noise over the input's range, "
                        f"the image's channel mean, or black (default: {d.fill})")
    p.add_argument("--orders", default=",".join(d.orders),
                   help=f"comma-separated, of {', '.join(PERTURBATION_ORDERS)} (default: "
                        f"{','.join(d.orders)}; a "
                        "seeded random order is always measured once per image)")
    p.add_argument("--iou-quantile", type=float, default=d.iou_quantile,
                   help="the IoU's map is the pixels at or above this quantile of the relevance "
                        f"(default: {d.iou_quantile}: the top 20 %%)")
    p.add_argument("--sigmas", default=",".join(f"{s:g}" for s in d.sigmas),
                   help="comma-separated noise levels (std in the model's input units) for "
                        f"stability (default: {','.join(f'{s:g}' for s in d.sigmas)})")
    p.add_argument("--samples", type=int, default=d.samples,
                   help=f"noise draws per image and level (default: {d.samples})")
    p.add_argument("--detections", type=int, default=3, metavar="K",
                   help="synthetic:shapes-detection: explain up to K detections per picture "
                        "(default 3)")
    p.add_argument("--min-score", type=float, default=0.5, metavar="P",
                   help="synthetic:shapes-detection: explain detections scored at least P "
                        "(default 0.5)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--restart", action="store_true",
                   help="start over in --out; without it, a run into a folder that holds a "
                        "killed or finished run with the same settings continues it (--out's "
                        "progress.jsonl keeps every finished batch)")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images explained at once (default: {d.batch_size})")
    p.add_argument("--forward-batch-size", type=int, default=d.forward_batch_size,
                   help="perturbed images per forward call; bounds the memory of region "
                        f"perturbation (default: {d.forward_batch_size})")



def numbers(text, option, kind=float) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise Failure(f"{option} {text}: give comma-separated numbers, e.g. 1e-3,1e-2") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise Failure(f"{option} {text}: give one or more finite numbers >= 0")
    return values


SYNTHETIC_PERTURBATION = (4, 64)  # region side, steps: a quarter of a 64x64 image's regions


def synthetic_set(args) -> str | None:
    """The set named by ``--data synthetic:NAME``, checked; None for other data."""
    if not (args.data or "").startswith("synthetic:"):
        return None
    name = args.data.split(":", 1)[1]
    if name not in synthetic.SETS:
        raise Failure(f"--data {args.data}: no such synthetic set; available: "
                      f"{', '.join('synthetic:' + s for s in synthetic.SETS)}, "
                      "synthetic:shapes-detection, synthetic:text-negation")
    if args.weights:
        raise Failure("--data synthetic:NAME explains the networks relprop trains on the set; "
                      "leave out --weights")
    return name


def synthetic_source(name: str, args):
    """The network trained on set ``name`` (once, then from the cache) and the held-out images
    with their known evidence."""
    model_name = args.model or "synthetic-cnn"
    if model_name not in ("synthetic-cnn", "synthetic-vit"):
        raise Failure(f"--data synthetic:{name} explains the networks relprop trains on it: "
                      "--model synthetic-cnn (the default) or synthetic-vit")
    with phrased():
        model, preprocess, class_names = models.load(model_name, name)
    _, accuracy = synthetic.trained(name, model_name.removeprefix("synthetic-"))  # cached now
    print(f"relprop: {model_name} trained on {name}: test accuracy {accuracy:.3f} "
          f"(cached in {synthetic.cache_dir()})", file=sys.stderr)
    start = synthetic.EVALUATE_START  # images neither trained nor tested on
    count = args.limit if args.limit is not None else 100
    items = [evaluation_data.Item(i, f"synthetic:{name}/{i}", f"{name}-{i}",
                                  synthetic.sample(name, i).label)
             for i in range(start, start + count)]
    loaded = prepare.LoadedModel(model_name, model, preprocess, class_names, None)

    def read(item):
        return synthetic.sample(name, item.index).image

    def truth(item):
        s = synthetic.sample(name, item.index)
        return {"truth": s.mask, "distractor": s.distractor_mask,
                "distractor_label": s.distractor_label}
    return loaded, items, read, truth


def resume(out: Path, header: dict, items, restart: bool, rank: int, size: int):
    """(the measured part of an earlier run in ``out``, the indices it covered, the function
    that journals each finished batch of this one)."""
    import torch.distributed as dist

    from ..evaluate.run import Result

    def together():  # under torchrun: no process writes a journal while another reads one
        if size > 1:
            dist.barrier()
    if restart and rank == 0:
        for path in journal.existing(out):
            path.unlink()
    together()
    try:
        batches = [] if restart else journal.read(out, header, {i.index: str(i.path)
                                                                for i in items})
    except journal.SettingsDiffer as e:
        raise Failure(f"--out {out} holds a run with other settings ({e} differ); pass "
                      "--restart to start over there, or another --out") from None
    together()
    done = frozenset(i for b in batches for i in b["indices"])
    resumed = Result()
    for b in batches:
        resumed.merge(journal.result_of(b, Result))
    if done and rank == 0:
        print(f"relprop: continuing the run in {out}: {len(done)} images already measured "
              f"(--restart starts over)", file=sys.stderr)
    path = journal.path_for(out, rank, size)
    writer = journal.Journal(path, header, fresh=restart)

    def record(covered, part):
        with writing(path):
            writer.record(covered, part)
    return resumed, done, record


def resolved(path: str | None) -> str | None:
    """A path as the journal compares it: absolute where it names a file or folder."""
    return str(Path(path).resolve()) if path and Path(path).exists() else path


EXAMPLES = 4  # images in examples.png


def examples(explainers: dict, items, read, truth, loaded, device, path) -> None:
    """examples.png: the first images of a synthetic set, what the map should be (red: the
    explained object, blue: the distractor) and every method's map."""
    from .. import plot
    x = torch.stack([loaded.preprocess(read(item)) for item in items]).to(device)
    target = torch.tensor([item.label for item in items], device=device)
    heats = {m: e(x, target).heatmap.detach().cpu() for m, e in explainers.items()}
    rows = []
    for i, item in enumerate(items):
        known = truth(item)
        expected = known["truth"].astype(float)
        if known["distractor"] is not None:
            expected = expected - known["distractor"]
        rows.append((loaded.class_names[item.label], read(item),
                     {"truth": expected, **{m: h[i] for m, h in heats.items()}}))
    plot.grid(rows, ["truth", *explainers], path)


def run(args) -> int:
    """The paper's checks of every chosen method on a data set; sharded under torchrun."""
    from ..evaluate.run import METRICS, PERTURBATION_ORDERS, Settings, processes
    from ..evaluate.synthetic_detection import NAME as DETECTION_SET
    from ..evaluate.synthetic_text import NAME as TEXT_SET
    if args.data == f"synthetic:{DETECTION_SET}":
        from . import evaluate_detection
        return evaluate_detection.run(args)
    if args.data == f"synthetic:{TEXT_SET}":
        from . import evaluate_text
        return evaluate_text.run(args)
    chosen = method_choice(args.methods)
    known = synthetic_set(args)  # a set with known evidence, or None
    default_metrics = ["perturbation", "stability"] + (
        ["localisation"] if args.boxes or args.masks or known else [])
    metrics = choices(args.metrics, METRICS, "--metrics") if args.metrics else default_metrics
    if "localisation" in metrics and not (args.boxes or args.masks or known):
        raise Failure("--metrics localisation needs object boxes or masks: pass --boxes and/or "
                      "--masks")
    defaults = SYNTHETIC_PERTURBATION if known else (Settings.region, Settings.steps)
    args.region = defaults[0] if args.region is None else args.region
    args.steps = defaults[1] if args.steps is None else args.steps
    for option, value in (("--batch-size", args.batch_size), ("--samples", args.samples),
                          ("--forward-batch-size", args.forward_batch_size),
                          ("--steps", args.steps), ("--region", args.region),
                          ("--limit", 1 if args.limit is None else args.limit)):
        if value < 1:
            raise Failure(f"{option} must be at least 1")
    if not 0 <= args.iou_quantile < 1:
        raise Failure(f"--iou-quantile {args.iou_quantile}: give a number in [0, 1)")
    settings = Settings(metrics=tuple(metrics), region=args.region, steps=args.steps,
                        fill=args.perturbation,
                        orders=tuple(choices(args.orders, PERTURBATION_ORDERS, "--orders")),
                        iou_quantile=args.iou_quantile,
                        sigmas=numbers(args.sigmas, "--sigmas"), samples=args.samples,
                        seed=args.seed, batch_size=args.batch_size,
                        forward_batch_size=args.forward_batch_size)
    with phrased():
        device = prepare.device(args.device)
    with processes(device.type):
        return _run_in_processes(args, chosen, known, metrics, settings, device)


def _run_in_processes(args, chosen, known, metrics, settings, device) -> int:
    """``run`` from the point every process of the run has joined the group."""
    from ..evaluate import report
    from ..evaluate.run import Data, mean_curves, measure, summarise, world
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    rank, size = world()
    out = check_out(args.out)
    if known:
        loaded, items, read, truth = synthetic_source(known, args)
        resize = crop = synthetic.SIZE
    else:
        loaded, truth = load_model(args), None
        resize, crop = models.spec(loaded.name).resize, models.spec(loaded.name).input_size
    name, preprocess, class_names = loaded.name, loaded.preprocess, loaded.class_names
    try:
        if known:
            pass
        elif args.data is None:
            items = [evaluation_data.Item(i, f"skimage.data.{s}", s, None)
                     for i, s in enumerate(prepare.SAMPLES)]
            read = lambda item: prepare.read_sample(item.name)  # noqa: E731
        else:
            items = evaluation_data.list_images(args.data, class_names)
            read = lambda item: load_image(item.path)  # noqa: E731
        items = items[:args.limit] if args.limit is not None else items
        boxes = evaluation_data.read_boxes(args.boxes) if args.boxes else None
    except evaluation_data.DataError as e:
        raise Failure(str(e)) from None
    if args.masks and not Path(args.masks).is_dir():
        raise Failure(f"--masks {args.masks}: not a folder; pass a folder of IMAGE.png masks")
    if boxes is not None and not any(item.name in boxes for item in items):
        example = items[0].name if items else "IMAGE"
        raise Failure(f"--boxes {args.boxes}: no boxes for any of the {len(items)} images (found "
                      f"{len(boxes)} entries; boxes are matched by file name without extension, "
                       f"e.g. {example}.xml or an entry '{example}')")
    with phrased(), prepare.out_of_memory(f"moving {name} to {device}", "use --device cpu"):
        model = loaded.model.to(device)
    explainers = explainers_for(model, chosen)
    chosen = list(explainers)
    data = Data(items, preprocess, resize, crop, boxes, args.masks,
                evaluation_data.pixel_range(preprocess, resize), read, truth)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        header = {"model": name, "weights": resolved(args.weights),
                  "data": resolved(args.data), "boxes": resolved(args.boxes),
                  "masks": resolved(args.masks), "methods": chosen, "device": device.type,
                  **asdict(settings)}
        resumed, done, record = resume(out, header, items, args.restart, rank, size)
    with phrased(), prepare.out_of_memory(
            f"evaluating {args.batch_size} images at once on {device}",
            "pass a smaller --batch-size or --forward-batch-size"):
        try:
            result = measure(model, explainers, data, settings, device, resumed=resumed,
                             done=done, record=record)
        except ValueError as e:
            raise Failure(str(e)) from None
        except KeyboardInterrupt:
            print(f"relprop: the finished images are kept in {out}/ (progress*.jsonl); run "
                  "the same command again to continue", file=sys.stderr)
            raise
    if result is None:  # not rank 0: rank 0 writes
        return 0
    summary = summarise(result, chosen, settings)
    curves = mean_curves(result)
    measured = len({r["index"] for r in result.rows})
    record = {"model": name, "weights": args.weights, "data": args.data or "scikit-image samples",
              "boxes": args.boxes, "masks": args.masks, "methods": chosen, "images": measured,
              "processes": size, "settings": asdict(settings), "metrics": summary,
              "curves": curves, "skipped": result.skipped}
    with writing(out / "metrics.json"):
        report.write_metrics(out / "metrics.json", record)
    with writing(out / "per_image.csv"):
        report.write_rows(out / "per_image.csv", result.rows)
    with writing(out / "metrics.md"):
        (out / "metrics.md").write_text(report.markdown(summary, settings.orders))
    pictures = ["perturbation.png"] if "perturbation" in metrics and curves else []
    if known and items:
        with writing(out / "examples.png"):
            examples(explainers, items[:EXAMPLES], read, truth, loaded, device,
                     out / "examples.png")
        pictures.append("examples.png")
    if "perturbation" in metrics and curves:
        with writing(out / "perturbation.png"):
            report.plot_curves(out / "perturbation.png", curves, settings.orders, settings.steps,
                               f"{name}, {measured} images, {settings.region}x{settings.region} "
                               f"regions, {settings.fill}")
    print(f"model: {name}; {measured} images x {len(chosen)} methods on {size} process"
          f"{'es' if size > 1 else ''}")
    print(report.table(summary, settings.orders))
    skipped = f"; skipped {len(result.skipped)} images (listed in metrics.json)" \
        if result.skipped else ""
    print(f"wrote {', '.join(['metrics.json', 'metrics.md', 'per_image.csv', *pictures])} to "
          f"{out}/{skipped}")
    return 1 if result.skipped else 0


