"""What the commands that explain images share: their options, the set-up every option is
checked in before any image is read, reading the images batch by batch, and failures as one
line."""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
from PIL import Image
from tqdm import tqdm

from .. import models, plot, prepare
from ..api import explainer as make_explainer
from ..errors import NoDetection, NotApplicable, UnsupportedOperation, UntraceableModel
from ..images import UnreadableImage, load_image
from ..registry import methods

NAME_BYTES = 100  # output names stay well below file systems' 255-byte limit on a file name


class Failure(Exception):
    """A problem the user can fix; printed without a traceback, exit code 2."""


def one_line(text: str) -> str:
    return " ".join(text.split())


@contextmanager
def phrased():
    """The set-up's errors in the command line's words (``--target ...``)."""
    try:
        yield
    except prepare.SetupError as e:
        raise Failure(e.phrased("--")) from None


def model_options(p, device_help="") -> None:
    """The options of every command that loads a model."""
    p.add_argument("--model", default=None,
                   help="any torchvision classification or segmentation builder (relprop models "
                        "lists them), efficientnet_lite0, timm:NAME for a model of timm, or "
                        "hf:NAME_OR_PATH for a Hugging Face image classifier or segmenter "
                        f"(default: {models.DEFAULT}, or {models.FALLBACK} when its weights "
                        "cannot be had)")
    p.add_argument("--weights", default=None, help="a checkpoint file for the model (synthetic-cnn, synthetic-vit: "
                        "or the synthetic set it was trained on, shapes or shapes-distractor)")
    p.add_argument("--device", default=None,
                   help=f"cpu, cuda, cuda:1 ... (default: cuda if available{device_help})")


def image_options(p) -> None:
    """The options every command that reads images shares."""
    p.add_argument("images", nargs="*", metavar="IMAGE",
                   help=f"image files (default: scikit-image's {', '.join(prepare.SAMPLES)}), "
                        "read as an image viewer shows them: EXIF orientation applied, 16-bit "
                        "images scaled to 8 bits, transparent pixels on a white background")
    model_options(p)
    p.add_argument("--target", default=None,
                   help="class to explain: an index or an exact class name (default: predicted; "
                        "on a segmentation model the class predicted at the most pixels, "
                        "background left out)")
    p.add_argument("--region", default=None, metavar="X0,Y0,X1,Y1",
                   help="segmentation models: explain the class over this box of the model's "
                        "input (pixels; default: the pixels predicted as the class)")
    p.add_argument("--detections", type=int, default=3, metavar="K",
                   help="detectors: explain up to K detections per image, the highest scores "
                        "first (default 3); --target keeps those of one class, --region the one "
                        "matching a box X0,Y0,X1,Y1 of the picture")
    p.add_argument("--min-score", type=float, default=0.5, metavar="P",
                   help="detectors: explain only detections scored at least P (default 0.5)")
    p.add_argument("--masks", action="store_true",
                   help="Mask R-CNN: explain each detection's mask (the sum of its mask logits "
                        "over the pixels it assigns to the object) instead of its score")
    p.add_argument("--text", action="append", default=None, metavar="TEXT",
                   help="explain a Hugging Face language model (--model hf:NAME_OR_PATH) on "
                        "this text instead of images (repeat for several): coloured tokens, "
                        "HTML, JSON and PNG; --target is a token (string or id) or a class")
    p.add_argument("--batch-size", type=int, default=8,
                   help="images per batch (default 8; detectors take one image at a time)")


def choices(text, valid, option) -> list[str]:
    """A comma-separated choice from ``valid``, refused in one line where it names others."""
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in valid]
    if unknown or not chosen:
        raise Failure(f"{option}: unknown {', '.join(unknown) or 'nothing given'}; choose from "
                      f"{', '.join(valid)}")
    return chosen


def load_model(args) -> prepare.LoadedModel:
    """--model and --weights, with the fallback's notice on stderr."""
    with phrased():
        loaded = prepare.load_model(args.model, args.weights)
    if loaded.notice:
        print(f"relprop: {loaded.notice}", file=sys.stderr)
    return loaded


def check_out(text) -> Path:
    """The --out folder, refused before any model work where it cannot be a folder we write in."""
    if not text.strip():
        raise Failure("--out is empty; pass a folder (it is created if missing)")
    out = Path(text)
    if out.exists() and not out.is_dir():
        raise Failure(f"--out {text} is a file, not a folder; pass a folder (it is created if "
                      "missing)")
    existing = next(p for p in (out.absolute(), *out.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise Failure(f"--out {text} lies under {existing}, which is a file, not a folder; pass "
                      "a folder path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise Failure(f"--out {text}: {existing} is not writable; pass a folder you can write to")
    return out


@contextmanager
def writing(what):
    """A failure to write an output becomes one line, exit code 2."""
    try:
        yield
    except OSError as e:
        raise Failure(f"cannot write {what}: {e.strerror or e}; pass an --out folder you can "
                      "write to, with free space") from None


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


def inputs(paths, min_size: int) -> list[Input]:
    """One Input per requested image (scikit-image's samples if none), nothing read yet."""
    if not paths:
        return [Input(f"skimage.data.{name}", name, partial(prepare.read_sample, name))
                for name in prepare.SAMPLES]
    names = output_names([Path(p).stem for p in paths])
    return [Input(p, name, partial(load_image, p, min_size)) for p, name in zip(paths, names)]


def output_names(stems) -> list[str]:
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


def _prepared(items, preprocess, spec, skipped, progress):
    """Read the inputs one at a time, as the batches need them; an image that cannot be read or
    prepared is reported, added to ``skipped`` and left out."""
    for item in items:
        try:
            img = item.read()
            yield Prepared(item, preprocess(img), plot.model_view(spec, img))
        except Exception as e:  # whatever goes wrong with one image skips that image only
            reason = str(e) if isinstance(e, UnreadableImage) else f"{type(e).__name__}: {e}"
            skip(item.file, reason, skipped)
            progress.update(1)


def skip(file: str, reason: str, skipped: list) -> None:
    """Say that an input is left out, and why, and list it in ``skipped`` for the summary."""
    reason = one_line(reason)
    tqdm.write(f"relprop: skipping {file}: {reason}", file=sys.stderr)
    skipped.append({"file": file, "reason": reason})


def batches(items, size):
    items = iter(items)
    while batch := list(islice(items, size)):
        yield batch


@dataclass
class Job:
    """What a command that explains images has set up, every option checked, before it reads
    any image."""
    name: str  # the model's registry name
    spec: models.ModelSpec
    preprocess: Callable
    class_names: list
    target: object  # a class index, None (predicted) or a ClassRegion (segmentation)
    device: torch.device
    dtype: torch.dtype
    out: Path
    explainers: dict  # method -> function from a batch to its Explanation
    inputs: list

    def batches(self, batch_size, skipped, progress):
        """(prepared images, their batch on the device) as the run needs them; a detector's
        images one at a time (each keeps its own size)."""
        if self.spec.kind == "detection":
            batch_size = 1
        for batch in batches(_prepared(self.inputs, self.preprocess, self.spec, skipped,
                                       progress), batch_size):
            yield batch, torch.stack([item.tensor for item in batch]).to(self.device, self.dtype)


def job(args, chosen, dtype=torch.float32, layer=None) -> Job:
    if args.batch_size < 1:
        raise Failure("--batch-size must be at least 1")
    with phrased():
        device = prepare.device(args.device)
    out = check_out(args.out)
    loaded = load_model(args)
    with phrased():
        spec = models.spec(loaded.name)
        target = prepare.region(getattr(args, "region", None), spec.kind,
                                prepare.target(args.target, loaded.class_names),
                                loaded.class_names, spec.input_size,
                                getattr(args, "detections", 3), getattr(args, "min_score", 0.5),
                                getattr(args, "masks", False))
        with prepare.out_of_memory(f"moving {loaded.name} to {device}", "use --device cpu"):
            model = loaded.model.to(device, dtype)
    explainers = explainers_for(model, chosen, dtype, layer)
    found = inputs(args.images, models.spec(loaded.name).resize)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    return Job(loaded.name, models.spec(loaded.name), loaded.preprocess, loaded.class_names,
               target, device, dtype, out, explainers, found)


def explainer(model, method, dtype=torch.float32, layer=None, inapplicable_fails=True):
    """A function from a batch and its target to its Explanation. Made now, so that an op the
    method cannot explain, a precision it is not tested in or a layer the model does not have
    stops the run before any image is read. A method that does not apply to the model raises
    NotApplicable where ``inapplicable_fails`` is false."""
    try:
        made = make_explainer(model, method)
        made.check(dtype=dtype, layer=layer)
    except NotApplicable:
        if not inapplicable_fails:
            raise
        raise Failure(str(sys.exc_info()[1])) from None
    except (UnsupportedOperation, UntraceableModel, ValueError) as e:
        raise Failure(str(e)) from None
    return lambda x, target: made.explain(x, target, layer)


def explainers_for(model, chosen, dtype=torch.float32, layer=None) -> dict:
    """The explainers of the ``chosen`` methods; None: every method that applies to the model
    (attention rollout only to transformers with global attention), with a note on the ones
    left out."""
    if chosen is not None:
        return {m: explainer(model, m, dtype, layer) for m in chosen}
    made, left = {}, []
    for method in methods():
        try:
            made[method] = explainer(model, method, dtype, layer, inapplicable_fails=False)
        except NotApplicable as e:
            left.append((method, str(e)))
    if left:
        print(f"note: {', '.join(m for m, _ in left)} left out: {left[0][1]}", file=sys.stderr)
    return made


def method_choice(given: str | None) -> list[str] | None:
    """``--methods``: the methods named, or None (every method that applies to the model)."""
    return choices(given, methods(), "--methods") if given else None


def explain_batch(explain, x, target):
    with phrased(), prepare.out_of_memory(f"explaining {len(x)} images at once on {x.device}",
                                          "pass a smaller --batch-size"):
        try:
            return explain(x, target)
        except NoDetection:
            raise  # the caller skips the image
        except ValueError as err:
            raise Failure(str(err)) from None


__all__ = ["Failure", "one_line", "phrased", "model_options", "image_options", "choices",
           "load_model", "check_out", "writing", "Input", "Prepared", "inputs", "output_names",
           "skip", "batches", "Job", "job", "explainer", "explainers_for", "method_choice", "explain_batch",
           "NAME_BYTES"]
