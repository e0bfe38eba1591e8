"""``relprop explain [IMAGE ...]``: heat maps and a table for a few pictures, one command."""
from __future__ import annotations

import argparse
import csv
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from . import models, plot
from .api import RAP
from .errors import UnsupportedOperation, UntraceableModel
from .rules import methods

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # pictures scikit-image ships
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


@dataclass
class Row:
    image: str
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="relprop", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("explain", help="explain images with RAP and write heat maps")
    ex.add_argument("images", nargs="*", metavar="IMAGE",
                    help=f"image files (default: scikit-image's {', '.join(SAMPLES)})")
    ex.add_argument("--model", default=None,
                    help=f"one of {', '.join(models.names())} (default: {models.DEFAULT}, or "
                         f"{models.FALLBACK} when its weights cannot be had)")
    ex.add_argument("--weights", default=None, help="a checkpoint file for the model")
    ex.add_argument("--target", default=None,
                    help="class to explain: an index or an exact class name (default: predicted)")
    ex.add_argument("--method", default="rap", choices=methods())
    ex.add_argument("--out", default="relprop-out", help="output folder (default: relprop-out)")
    ex.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if "
                                                   "available)")
    ex.add_argument("--batch-size", type=int, default=8)
    ex.add_argument("--dtype", default="float32", choices=list(DTYPES),
                    help="precision of the model and the propagation (bfloat16: networks "
                         "without residual additions, such as VGG; default float32)")
    sub.add_parser("models", help="list the registered models")
    args = parser.parse_args(argv)
    if args.command == "models":
        for name in models.names():
            print(f"{name:20s} {models.spec(name).description}")
        return 0
    try:
        return explain(args)
    except _Failure as e:
        print(f"relprop: error: {e}", file=sys.stderr)
        return 2


class _Failure(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


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
        return models.FALLBACK, models.load(models.FALLBACK)


def _images(paths):
    """(name, PIL image or the error) for each requested image, scikit-image's samples if none."""
    if not paths:
        import skimage.data
        for name in SAMPLES:
            yield name, Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
        return
    for path in paths:
        try:
            with Image.open(path) as img:
                yield Path(path).stem, img.convert("RGB")
        except (OSError, UnidentifiedImageError) as e:
            yield Path(path).name, e


def _target(text, class_names):
    if text is None:
        return None
    if text.lstrip("-").isdigit():
        return int(text)
    if text in class_names:
        return class_names.index(text)
    raise _Failure(f"--target '{text}' is neither a class index nor a class name of this model")


def _device(text):
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise _Failure(f"--device '{text}' is not a device (cpu, cuda, cuda:1, ...)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise _Failure(f"--device {text}: no CUDA device is available here; use --device cpu")
    return device


def explain(args) -> int:
    if args.batch_size < 1:
        raise _Failure("--batch-size must be at least 1")
    device = _device(args.device)
    name, (model, preprocess, class_names) = _load_model(args)
    dtype = DTYPES[args.dtype]
    model = model.to(device, dtype)
    spec = models.spec(name)
    target = _target(args.target, class_names)
    try:
        explainer = RAP(model)
        explainer.check_precision(dtype)
    except (UnsupportedOperation, UntraceableModel, ValueError) as e:
        raise _Failure(str(e)) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pending, rows, failed = [], [], 0
    images = list(_images(args.images))
    progress = tqdm(total=len(images), desc=f"RAP {name}", unit="img", file=sys.stderr,
                    disable=len(images) < 2)

    def flush():
        if not pending:
            return
        batch = torch.stack([preprocess(img) for _, img in pending]).to(device, dtype)
        try:
            e = explainer.explain(batch, target)
        except ValueError as err:
            raise _Failure(str(err)) from None
        for i, (stem, img) in enumerate(pending):
            rows.append(_write(out, stem, img, e, i, class_names, spec))
        progress.update(len(pending))
        pending.clear()

    for stem, img in images:
        if isinstance(img, Exception):
            print(f"relprop: skipping {stem}: not a readable image ({img})", file=sys.stderr)
            failed += 1
            progress.update(1)
            continue
        pending.append((stem, img))
        if len(pending) == args.batch_size:
            flush()
    flush()
    progress.close()
    _report(rows, out, name)
    return 1 if failed else 0


def _write(out, stem, img, e, i, class_names, spec) -> Row:
    heat = e.heatmap[i]
    view = plot.input_view(img, spec.resize, spec.input_size)
    heat_path, overlay_path = out / f"{stem}_heatmap.png", out / f"{stem}_overlay.png"
    plot.heatmap_image(heat).save(heat_path)
    plot.overlay_image(view, heat).save(overlay_path)
    probs = e.probabilities[i]
    pred = int(probs.argmax())
    r = e.relevance[i]
    return Row(stem, class_names[pred], float(probs[pred]), class_names[int(e.target[i])],
               int(e.target[i]), float(e.score[i]), float(r.sum()), float(r.clamp(min=0).sum()),
               float(r.clamp(max=0).sum()), str(heat_path), str(overlay_path))


def _report(rows, out, model_name):
    header = (f"{'image':14s} {'predicted':24s} {'prob':>5s} {'explained':24s} {'logit':>8s} "
              f"{'sum R':>8s} {'R+':>9s} {'R-':>9s}")
    print(f"model: {model_name}")
    print(header)
    for r in rows:
        print(f"{r.image[:14]:14s} {r.predicted[:24]:24s} {r.probability:5.2f} "
              f"{r.explained[:24]:24s} {r.logit:8.3f} {r.relevance_sum:8.3f} {r.positive:9.3f} "
              f"{r.negative:9.3f}")
    if rows:
        with open(out / "summary.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(asdict(rows[0])))
            w.writeheader()
            w.writerows(asdict(r) for r in rows)
        (out / "summary.json").write_text(json.dumps(
            {"model": model_name, "images": [asdict(r) for r in rows]}, indent=2))
        print(f"wrote {2 * len(rows)} PNGs, summary.csv and summary.json to {out}/")


if __name__ == "__main__":
    sys.exit(main())
