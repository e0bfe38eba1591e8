"""``relprop explain [IMAGE ...]``: heat maps and a table for a few pictures, one command."""
from __future__ import annotations

import argparse
import csv
import difflib
import json
import math
import os
import re
import sys
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from . import models, plot
from . import gradients
from .api import DEFAULT_METHOD, PROPAGATION, methods
from .errors import UnsupportedOperation, UntraceableModel
from .evaluate.report import strict_json
from .images import UnreadableImage, load_image

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # pictures scikit-image ships
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
DEVICE_TYPES = ("cpu", "cuda")
NAME_BYTES = 100  # output names stay well below file systems' 255-byte limit on a file name
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
class Input:
    file: str  # as given on the command line; a scikit-image sample's name
    name: str  # the stem of its output files, unique in this run
    read: Callable[[], Image.Image]


@dataclass
class Prepared:
    """One image as the model takes it and as the overlay shows it; the full-size picture is
    gone by then, so that a batch of large photos does not sit in memory."""
    source: Input
    tensor: torch.Tensor
    view: Image.Image


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="relprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain images (RAP or another method) and write heat "
                                        "maps")
    _image_options(ex)
    ex.add_argument("--method", default=DEFAULT_METHOD, choices=methods(), metavar="METHOD",
                    help=f"one of {', '.join(methods())} (default: {DEFAULT_METHOD}, the paper's "
                         "RAP on networks without residual additions, stable on those with; rap: "
                         "the paper's rule everywhere)")
    ex.add_argument("--out", default="relprop-out",
                    help="output folder (default: relprop-out): NAME_heatmap.png and "
                         "NAME_overlay.png per image (NAME-2_... where names repeat), "
                         "summary.csv and summary.json; a rerun replaces what the last run's "
                         "summary.json lists")
    ex.add_argument("--layer", default=None,
                    help="a module path (e.g. features.28): show the relevance of that layer's "
                         "output, summed over its channels, instead of the input's")
    ex.add_argument("--dtype", default="float32", choices=list(DTYPES),
                    help="precision of the model and the propagation (bfloat16: networks "
                         "without residual additions, such as VGG; default float32)")
    co = sub.add_parser("compare", help="explain images with several methods side by side")
    _image_options(co)
    co.add_argument("--methods", default=",".join(methods()),
                    help="comma-separated methods (default: all of them)")
    co.add_argument("--out", default="relprop-compare",
                    help="output folder (default: relprop-compare): compare.png (rows: images, "
                         "columns: methods), NAME_METHOD.png overlays and compare.json")
    _evaluate_options(sub.add_parser(
        "evaluate", help="measure the methods' maps: region perturbation (AOPC), localisation "
                         "against boxes and masks, stability under invisible noise"))
    sub.add_parser("models", help="list the registered models")
    sv = sub.add_parser("serve", help="a local web page (and JSON API) to explain images in the "
                                      "browser")
    _model_options(sv)
    sv.add_argument("--images", default=None,
                    help="a folder of images offered as samples besides scikit-image's")
    sv.add_argument("--host", default="127.0.0.1",
                    help="address to listen on (default: 127.0.0.1, this machine only)")
    sv.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    args = parser.parse_args(argv)
    if args.command == "models":
        for name in models.names():
            print(f"{name:20s} {models.spec(name).description}")
        return 0
    try:
        if args.command == "serve":
            from .serve import serve  # the web stack loads only for this command
            return serve(args)
        with warnings.catch_warnings():  # a warning about a method is said once per run,
            warnings.simplefilter("once")  # not once per batch
            return {"explain": explain, "compare": compare,
                    "evaluate": evaluate}[args.command](args)
    except _Failure as e:
        print(f"relprop: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relprop: interrupted", file=sys.stderr)
        return 130


def _model_options(p, device_help="") -> None:
    """The options of every command that loads a model."""
    p.add_argument("--model", default=None,
                   help=f"one of {', '.join(models.names())} (default: {models.DEFAULT}, or "
                        f"{models.FALLBACK} when its weights cannot be had)")
    p.add_argument("--weights", default=None, help="a checkpoint file for the model")
    p.add_argument("--device", default=None,
                   help=f"cpu, cuda, cuda:1 ... (default: cuda if available{device_help})")


def _image_options(p) -> None:
    """The options every command that reads images shares."""
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files (default: scikit-image's {', '.join(SAMPLES)}), read as an "
                        "image viewer shows them: EXIF orientation applied, 16-bit images scaled "
                        "to 8 bits, transparent pixels on a white background")
    _model_options(p)
    p.add_argument("--target", default=None,
                   help="class to explain: an index or an exact class name (default: predicted)")
    p.add_argument("--batch-size", type=int, default=8)


class _Failure(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _load_model(args):
    name = args.model or models.DEFAULT
    try:
        models.spec(name)
        return name, models.load(name, args.weights)
    except ValueError as e:
        raise _Failure(str(e)) from None
    except models.WeightsUnavailable as e:
        if args.model is not None or args.weights is not None:
            raise _Failure(str(e)) from None
        print(f"relprop: {models.DEFAULT}'s ImageNet weights are not available offline; using "
              f"{models.FALLBACK}, whose weights ship with relprop (pass --model {models.DEFAULT} "
              f"to see why)", file=sys.stderr)
        try:
            return models.FALLBACK, models.load(models.FALLBACK)
        except models.WeightsUnavailable as fallback_error:
            raise _Failure(f"{e}; and the embedded model could not be loaded either: "
                           f"{fallback_error}") from None


def _target(text, class_names) -> int | None:
    """The class index --target names; checked before any image is read."""
    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits: int() takes '٣' but not '²'
        index = int(text)
        if not 0 <= index < len(class_names):
            raise _Failure(f"--target {text} is out of range: the model has {len(class_names)} "
                           f"classes (0..{len(class_names) - 1})")
        return index
    if text in class_names:
        return class_names.index(text)
    close = difflib.get_close_matches(text, class_names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise _Failure(f"--target '{text}' is neither a class index (0..{len(class_names) - 1}) nor "
                   f"an exact class name of this model{hint}")


def _device(text) -> torch.device:
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        device = None
    if device is None or device.type not in DEVICE_TYPES:
        raise _Failure(f"--device '{text}' is not a device relprop runs on; use cpu, or cuda "
                       "(cuda:1, ... for another GPU)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Failure(f"--device {text}: no CUDA device is available here; use --device cpu")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise _Failure(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA "
                       f"devices (cuda:0 .. cuda:{torch.cuda.device_count() - 1})")
    return device


def _check_out(text) -> Path:
    """The --out folder, refused before any model work where it cannot be a folder we write in."""
    if not text.strip():
        raise _Failure("--out is empty; pass a folder (it is created if missing)")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise _Failure(f"--out {text} is a file, not a folder; pass a folder (it is created if "
                       "missing)")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise _Failure(f"--out {text} lies under {existing}, which is a file, not a folder; pass "
                       "a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise _Failure(f"--out {text}: {existing} is not writable; pass a folder you can write to")
    return out


@contextmanager
def _writing(what):
    """A failure to write an output becomes one line, exit code 2."""
    try:
        yield
    except OSError as e:
        raise _Failure(f"cannot write {what}: {e.strerror or e}; pass an --out folder you can "
                       "write to, with free space") from None


def _inputs(paths, min_size: int) -> list[Input]:
    """One Input per requested image (scikit-image's samples if none), nothing read yet."""
    if not paths:
        return [Input(f"skimage.data.{name}", name, partial(_sample, name)) for name in SAMPLES]
    names = _output_names([Path(p).stem for p in paths])
    return [Input(p, name, partial(load_image, p, min_size)) for p, name in zip(paths, names)]


def _sample(name) -> Image.Image:
    import skimage.data
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")


def _output_names(stems) -> list[str]:
    """A short, unique output name per input: 'pic', then 'pic-2', 'pic-3' ... for repeats
    (compared without case, for case-insensitive file systems); long names are cut."""
    taken, names = set(), []
    for stem in stems:
        base = stem.encode("utf-8", "replace")[:NAME_BYTES].decode("utf-8", "ignore") or "image"
        name, n = base, 1
        while name.casefold() in taken:
            n += 1
            name = f"{base}-{n}"
        taken.add(name.casefold())
        names.append(name)
    return names


def _prepared(inputs, preprocess, spec, skipped, progress):
    """Read the inputs one at a time, as the batches need them; an image that cannot be read or
    prepared is reported, added to ``skipped`` and left out."""
    for item in inputs:
        try:
            img = item.read()
            yield Prepared(item, preprocess(img), plot.input_view(img, spec.resize,
                                                                  spec.input_size))
        except Exception as e:  # whatever goes wrong with one image skips that image only
            reason = str(e) if isinstance(e, UnreadableImage) else f"{type(e).__name__}: {e}"
            reason = _one_line(reason)
            tqdm.write(f"relprop: skipping {item.file}: {reason}", file=sys.stderr)
            skipped.append({"file": item.file, "reason": reason})
            progress.update(1)


def _batches(items, size):
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


def _clear_previous_run(out: Path) -> None:
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


@dataclass
class _Job:
    """What a command that explains images has set up, every option checked, before it reads
    any image."""
    name: str  # the model's registry name
    spec: models.ModelSpec
    preprocess: Callable
    class_names: list
    target: int | None
    device: torch.device
    dtype: torch.dtype
    out: Path
    explainers: dict  # method -> function from a batch to its Explanation
    inputs: list

    def batches(self, batch_size, skipped, progress):
        """(prepared images, their batch on the device) as the run needs them."""
        for batch in _batches(_prepared(self.inputs, self.preprocess, self.spec, skipped,
                                        progress), batch_size):
            yield batch, torch.stack([item.tensor for item in batch]).to(self.device, self.dtype)


def _job(args, chosen, dtype=torch.float32, layer=None) -> _Job:
    if args.batch_size < 1:
        raise _Failure("--batch-size must be at least 1")
    device = _device(args.device)
    out = _check_out(args.out)
    name, (model, preprocess, class_names) = _load_model(args)
    target = _target(args.target, class_names)
    with _memory(f"moving {name} to {device}", "use --device cpu"):
        model = model.to(device, dtype)
    spec = models.spec(name)
    try:
        explainers = {m: _explainer(model, m, dtype, layer) for m in chosen}
    except (UnsupportedOperation, UntraceableModel, ValueError) as e:
        raise _Failure(str(e)) from None
    inputs = _inputs(args.images, spec.resize)
    with _writing(out):
        out.mkdir(parents=True, exist_ok=True)
    return _Job(name, spec, preprocess, class_names, target, device, dtype, out, explainers,
                inputs)


def explain(args) -> int:
    job = _job(args, [args.method], DTYPES[args.dtype], args.layer)
    name, out, class_names, target = job.name, job.out, job.class_names, job.target
    explainer, inputs = job.explainers[args.method], job.inputs
    with _writing(out):
        _clear_previous_run(out)

    rows, skipped = [], []
    progress = tqdm(total=len(inputs), desc=f"{args.method} {name}", unit="img", file=sys.stderr,
                    disable=len(inputs) < 2)
    try:
        for batch, x in job.batches(args.batch_size, skipped, progress):
            e = _explain_batch(explainer, x, target)
            rows.extend(_write(out, item, e, i, class_names) for i, item in enumerate(batch))
            progress.update(len(batch))
    finally:  # also after a failure: the summary lists what this run wrote, for the next one
        progress.close()
        _write_summary(out, name, args.method, rows, skipped)
    _report(rows, skipped, out, name, args.method)
    return 1 if skipped else 0


def compare(args) -> int:
    """Every requested method on every image: one grid, one overlay per image and method."""
    chosen = _choices(args.methods, methods(), "--methods")
    job = _job(args, chosen)
    name, out, class_names, target = job.name, job.out, job.class_names, job.target
    rows, records, skipped = [], [], []
    progress = tqdm(total=len(job.inputs), desc=f"compare {name}", unit="img", file=sys.stderr,
                    disable=len(job.inputs) < 2)
    for batch, x in job.batches(args.batch_size, skipped, progress):
        found = {m: _explain_batch(job.explainers[m], x, target) for m in chosen}
        for i, item in enumerate(batch):
            first = found[chosen[0]]
            explained = class_names[int(first.target[i])]
            heat = {m: e.heatmap[i] for m, e in found.items()}
            record = {"image": item.source.name, "file": item.source.file,
                      "explained": explained, "score": float(first.score[i]), "methods": {}}
            for m, e in found.items():
                path = out / f"{item.source.name}_{m}.png"
                with _writing(path):
                    plot.overlay_image(item.view, heat[m]).save(path)
                record["methods"][m] = {"relevance_sum": float(e.relevance[i].sum()),
                                        "overlay": str(path)}
            records.append(record)
            rows.append((f"{item.source.name}: {explained}", item.view, heat))
        progress.update(len(batch))
    progress.close()
    if rows:
        with _writing(out / "compare.png"):
            plot.grid(rows, chosen, out / "compare.png")
    with _writing(out / "compare.json"):
        (out / "compare.json").write_text(json.dumps(
            {"model": name, "methods": chosen, "images": records, "skipped": skipped}, indent=2,
            allow_nan=False))
    print(f"model: {name}; {len(rows)} images x {len(chosen)} methods: wrote compare.png, "
          f"{len(rows) * len(chosen)} overlays and compare.json to {out}/")
    return 1 if skipped else 0


def _evaluate_options(p) -> None:
    from .evaluate.perturbation import FILLS
    from .evaluate.run import PERTURBATION_ORDERS, Settings
    d = Settings()
    _model_options(p, "; under torchrun with CUDA each process takes the GPU of its LOCAL_RANK")
    p.add_argument("--data", default=None,
                   help="a folder of images, or an ImageFolder tree (one sub-folder per class, "
                        "which is then explained); default: scikit-image's "
                        f"{', '.join(SAMPLES)}, predicted classes")
    p.add_argument("--boxes", default=None,
                   help="object boxes: a folder of Pascal VOC XML files (IMAGE.xml, as "
                        "ImageNet's validation boxes), a CSV (image,xmin,ymin,xmax,ymax) or a "
                        "JSON file (image -> [[xmin, ymin, xmax, ymax], ...])")
    p.add_argument("--masks", default=None,
                   help="a folder of segmentation masks IMAGE.png (non-zero: the object)")
    p.add_argument("--methods", default=",".join(methods()),
                   help="comma-separated methods (default: all of them)")
    p.add_argument("--metrics", default=None,
                   help="comma-separated, of perturbation, localisation, stability (default: "
                        "perturbation and stability, and localisation where --boxes or --masks "
                        "is given)")
    p.add_argument("--out", default="relprop-evaluate",
                   help="output folder (default: relprop-evaluate): metrics.json, "
                        "metrics.md, per_image.csv, perturbation.png")
    p.add_argument("--region", type=int, default=d.region,
                   help=f"side of the square regions perturbed together (default: {d.region})")
    p.add_argument("--steps", type=int, default=d.steps,
                   help=f"regions replaced, one more per step (default: {d.steps})")
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
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=d.batch_size,
                   help=f"images explained at once (default: {d.batch_size})")
    p.add_argument("--forward-batch-size", type=int, default=d.forward_batch_size,
                   help="perturbed images per forward call; bounds the memory of region "
                        f"perturbation (default: {d.forward_batch_size})")


def _choices(text, valid, option) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in valid]
    if unknown or not chosen:
        raise _Failure(f"{option}: unknown {', '.join(unknown) or 'nothing given'}; choose from "
                       f"{', '.join(valid)}")
    return chosen


def _numbers(text, option, kind=float) -> tuple:
    try:
        values = tuple(kind(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise _Failure(f"{option} {text}: give comma-separated numbers, e.g. 1e-3,1e-2") from None
    if not values or any(not math.isfinite(v) or v < 0 for v in values):
        raise _Failure(f"{option} {text}: give one or more finite numbers >= 0")
    return values


def evaluate(args) -> int:
    """The paper's checks of every chosen method on a data set; sharded under torchrun."""
    from .evaluate import data as evaluation_data
    from .evaluate import report
    from .evaluate.run import (METRICS, PERTURBATION_ORDERS, Data, Settings, mean_curves,
                               measure, start_processes, summarise, world)
    chosen = _choices(args.methods, methods(), "--methods")
    default_metrics = ["perturbation", "stability"] + (
        ["localisation"] if args.boxes or args.masks else [])
    metrics = _choices(args.metrics, METRICS, "--metrics") if args.metrics else default_metrics
    if "localisation" in metrics and not (args.boxes or args.masks):
        raise _Failure("--metrics localisation needs object boxes or masks: pass --boxes and/or "
                       "--masks")
    for option, value in (("--batch-size", args.batch_size), ("--samples", args.samples),
                          ("--forward-batch-size", args.forward_batch_size),
                          ("--steps", args.steps), ("--region", args.region),
                          ("--limit", 1 if args.limit is None else args.limit)):
        if value < 1:
            raise _Failure(f"{option} must be at least 1")
    if not 0 <= args.iou_quantile < 1:
        raise _Failure(f"--iou-quantile {args.iou_quantile}: give a number in [0, 1)")
    settings = Settings(metrics=tuple(metrics), region=args.region, steps=args.steps,
                        fill=args.perturbation,
                        orders=tuple(_choices(args.orders, PERTURBATION_ORDERS, "--orders")),
                        iou_quantile=args.iou_quantile,
                        sigmas=_numbers(args.sigmas, "--sigmas"), samples=args.samples,
                        seed=args.seed, batch_size=args.batch_size,
                        forward_batch_size=args.forward_batch_size)
    device = _device(args.device)
    start_processes(device.type)
    if device.type == "cuda" and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    rank, size = world()
    out = _check_out(args.out)
    name, (model, preprocess, class_names) = _load_model(args)
    spec = models.spec(name)
    try:
        if args.data is None:
            items = [evaluation_data.Item(i, f"skimage.data.{s}", s, None)
                     for i, s in enumerate(SAMPLES)]
            read = lambda item: _sample(item.name)  # noqa: E731
        else:
            items = evaluation_data.list_images(args.data, class_names)
            read = lambda item: load_image(item.path)  # noqa: E731
        items = items[:args.limit] if args.limit is not None else items
        boxes = evaluation_data.read_boxes(args.boxes) if args.boxes else None
    except evaluation_data.DataError as e:
        raise _Failure(str(e)) from None
    if args.masks and not Path(args.masks).is_dir():
        raise _Failure(f"--masks {args.masks}: not a folder; pass a folder of IMAGE.png masks")
    if boxes is not None and not any(item.name in boxes for item in items):
        example = items[0].name if items else "IMAGE"
        raise _Failure(f"--boxes {args.boxes}: no boxes for any of the {len(items)} images (found "
                       f"{len(boxes)} entries; boxes are matched by file name without extension, "
                       f"e.g. {example}.xml or an entry '{example}')")
    with _memory(f"moving {name} to {device}", "use --device cpu"):
        model = model.to(device)
    try:
        explainers = {m: _explainer(model, m, torch.float32) for m in chosen}
    except (UnsupportedOperation, UntraceableModel, ValueError) as e:
        raise _Failure(str(e)) from None
    data = Data(items, preprocess, spec.resize, spec.input_size, boxes, args.masks,
                evaluation_data.pixel_range(preprocess, spec.resize), read)
    if rank == 0:
        with _writing(out):
            out.mkdir(parents=True, exist_ok=True)
    with _memory(f"evaluating {args.batch_size} images at once on {device}",
                 "pass a smaller --batch-size or --forward-batch-size"):
        try:
            result = measure(model, explainers, data, settings, device)
        except ValueError as e:
            raise _Failure(str(e)) from None
    if result is None:  # not rank 0: rank 0 writes
        return 0
    summary = summarise(result, chosen, settings)
    curves = mean_curves(result)
    measured = len({r["index"] for r in result.rows})
    record = {"model": name, "weights": args.weights, "data": args.data or "scikit-image samples",
              "boxes": args.boxes, "masks": args.masks, "methods": chosen, "images": measured,
              "processes": size, "settings": asdict(settings), "metrics": summary,
              "curves": curves, "skipped": result.skipped}
    with _writing(out / "metrics.json"):
        report.write_metrics(out / "metrics.json", record)
    with _writing(out / "per_image.csv"):
        report.write_rows(out / "per_image.csv", result.rows)
    with _writing(out / "metrics.md"):
        (out / "metrics.md").write_text(report.markdown(summary, settings.orders))
    if "perturbation" in metrics and curves:
        with _writing(out / "perturbation.png"):
            report.plot_curves(out / "perturbation.png", curves, settings.orders, settings.steps,
                               f"{name}, {measured} images, {settings.region}x{settings.region} "
                               f"regions, {settings.fill}")
    print(f"model: {name}; {measured} images x {len(chosen)} methods on {size} process"
          f"{'es' if size > 1 else ''}")
    print(report.table(summary, settings.orders))
    skipped = f"; skipped {len(result.skipped)} images (listed in metrics.json)" \
        if result.skipped else ""
    print(f"wrote metrics.json, metrics.md, per_image.csv"
          f"{', perturbation.png' if curves else ''} to "
          f"{out}/{skipped}")
    return 1 if result.skipped else 0


def _explainer(model, method, dtype, layer=None):
    """A function from a batch to its Explanation; a propagation method traces the model now, so
    that an op it cannot explain, or a precision it is not tested in, stops the run before any
    image is read."""
    if method in PROPAGATION:
        explainer = PROPAGATION[method](model)
        explainer.check_precision(dtype)
        if layer is not None:
            explainer.node(layer)  # a layer the model does not have fails before any image
        return lambda x, target: explainer.explain(x, target, layer)
    if layer is not None:
        gradients._layer_variant(model, method, layer)
    return lambda x, target: gradients.explain(model, x, target, method, layer=layer)


def _explain_batch(explainer, x, target):
    with _memory(f"explaining {len(x)} images at once on {x.device}", "pass a smaller --batch-size"):
        try:
            return explainer(x, target)
        except ValueError as err:
            raise _Failure(str(err)) from None


@contextmanager
def _memory(doing, remedy):
    """Running out of memory (CUDA's error, or the CPU allocator's RuntimeError) is one line."""
    try:
        yield
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError too
        text = str(e)
        if not (isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text
                or "can't allocate memory" in text or "not enough memory" in text):
            raise
        raise _Failure(f"out of memory {doing}; {remedy}") from None


def _write(out, item: Prepared, e, i, class_names) -> Row:
    heat = e.heatmap[i]
    if tuple(heat.shape) != item.view.size[::-1]:  # a layer's map, shown at the picture's size
        heat = torch.nn.functional.interpolate(heat[None, None].float(), size=item.view.size[::-1],
                                               mode="nearest")[0, 0]
    heat_path, overlay_path = (out / f"{item.source.name}{suffix}" for suffix in OUTPUT_SUFFIXES)
    with _writing(heat_path):
        plot.heatmap_image(heat).save(heat_path)
    with _writing(overlay_path):
        plot.overlay_image(item.view, heat).save(overlay_path)
    probs = e.probabilities[i]
    pred = int(probs.argmax())
    r = e.relevance[i]
    return Row(item.source.name, item.source.file, class_names[pred], float(probs[pred]),
               class_names[int(e.target[i])], int(e.target[i]), float(e.score[i]),
               float(r.sum()), float(r.clamp(min=0).sum()), float(r.clamp(max=0).sum()),
               str(heat_path), str(overlay_path))


def _write_summary(out, model_name, method, rows, skipped) -> None:
    """summary.csv and summary.json of this run, also where nothing was explained. The JSON is
    strict: non-finite numbers become null."""
    records = [strict_json(asdict(r)) for r in rows]
    with _writing(out / "summary.csv"):
        with open(out / "summary.csv", "w", newline="", errors="surrogateescape") as f:
            w = csv.DictWriter(f, fieldnames=[field.name for field in fields(Row)])
            w.writeheader()
            w.writerows(records)
    with _writing(out / "summary.json"):
        (out / "summary.json").write_text(json.dumps(
            {"model": model_name, "method": method, "images": records, "skipped": skipped},
            indent=2,
            allow_nan=False))


def _report(rows, skipped, out, model_name, method):
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


if __name__ == "__main__":
    sys.exit(main())
