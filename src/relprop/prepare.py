"""What the command line and the server both prepare before they explain: the device, the model
(with the offline fallback), the class a user names, samples to try, and a guard that turns
running out of memory into words.

Problems are raised as :class:`SetupError`, which names the choice that was wrong (``option``)
apart from what was wrong with it (``detail``), so that each front end phrases it in its own
words: ``--target 2000 is out of range ...`` on the command line, ``target 2000 is out of range
...`` from the server.
"""
from __future__ import annotations

import difflib
import re
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
from PIL import Image

from . import models

SAMPLES = ("chelsea", "coffee", "astronaut", "rocket")  # pictures scikit-image ships
DEVICE_TYPES = ("cpu", "cuda")


class SetupError(ValueError):
    """A choice of the user's that relprop cannot run with. ``option`` names the choice
    ('target', 'device', ...) or is None; ``detail`` says what is wrong with it."""

    def __init__(self, detail: str, option: str | None = None):
        self.detail, self.option = detail, option
        super().__init__(self.phrased())

    def phrased(self, prefix: str = "--") -> str:
        """The message with the option written as the front end writes it."""
        return f"{prefix}{self.option} {self.detail}" if self.option else self.detail


class OutOfMemory(SetupError):
    """Explaining needed more memory than the device has."""


def device(text: str | None) -> torch.device:
    """The device a user names (default: cuda where there is one)."""
    if text is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        found = torch.device(text)
    except RuntimeError:
        found = None
    if found is None or found.type not in DEVICE_TYPES:
        raise SetupError(f"'{text}' is not a device relprop runs on; use cpu, or cuda (cuda:1, "
                         "... for another GPU)", "device")
    if found.type == "cuda" and not torch.cuda.is_available():
        raise SetupError(f"{text}: no CUDA device is available here; use cpu", "device")
    if found.type == "cuda" and (found.index or 0) >= torch.cuda.device_count():
        raise SetupError(f"{text}: this machine has {torch.cuda.device_count()} CUDA devices "
                         f"(cuda:0 .. cuda:{torch.cuda.device_count() - 1})", "device")
    return found


@dataclass
class LoadedModel:
    name: str  # the registry name of the model loaded
    model: torch.nn.Module
    preprocess: Callable
    class_names: list
    notice: str | None = None  # what a front end should tell the user (the fallback)


def load_model(name: str | None, weights: str | None = None) -> LoadedModel:
    """The model a user names (default :data:`relprop.models.DEFAULT`). Where the default's
    weights cannot be had and the user named neither a model nor weights, the embedded
    :data:`relprop.models.FALLBACK`, with a notice that says so."""
    chosen = name or models.DEFAULT
    try:
        models.spec(chosen)
        return LoadedModel(chosen, *models.load(chosen, weights))
    except ValueError as e:
        raise SetupError(str(e)) from None
    except models.WeightsUnavailable as e:
        if name is not None or weights is not None:
            raise SetupError(str(e)) from None
        notice = (f"{models.DEFAULT}'s ImageNet weights are not available offline; using "
                  f"{models.FALLBACK}, whose weights ship with relprop (pass --model "
                  f"{models.DEFAULT} to see why)")
        try:
            return LoadedModel(models.FALLBACK, *models.load(models.FALLBACK), notice=notice)
        except models.WeightsUnavailable as fallback_error:
            raise SetupError(f"{e}; and the embedded model could not be loaded either: "
                             f"{fallback_error}") from None


def target(text: str | None, class_names) -> int | None:
    """The class index a user names by index or exact class name (None: the predicted one)."""
    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):  # ASCII digits: int() takes '٣' but not '²'
        index = int(text)
        if not 0 <= index < len(class_names):
            raise SetupError(f"{text} is out of range: the model has {len(class_names)} classes "
                             f"(0..{len(class_names) - 1})", "target")
        return index
    if text in class_names:
        return class_names.index(text)
    close = difflib.get_close_matches(text, class_names, n=3)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise SetupError(f"'{text}' is neither a class index (0..{len(class_names) - 1}) nor an "
                     f"exact class name of this model{hint}", "target")


def region(text: str | None, kind: str, class_index: int | None, class_names, size: int,
           detections: int = 3, min_score: float = 0.5, masks: bool = False):
    """The target of a segmentation model: ``class_index`` (None: the class predicted at the
    most pixels, leaving out a background class) over its predicted pixels, or over the box
    ``text`` ('x0,y0,x1,y1' in pixels of the model's ``size`` x ``size`` input). A class index
    as it is for a classifier, which takes no region. For a detector: the detection that
    matches the box ``text`` (of class ``class_index`` where given), else up to
    ``detections`` of at least ``min_score`` (of that class where given); with ``masks``,
    their masks (Mask R-CNN)."""
    from .targets import ClassRegion
    if kind == "detection":
        from .detection import Mask
        chosen = _detection_target(text, class_index, detections, min_score)
        return Mask(chosen) if masks else chosen
    if masks:
        raise SetupError("explains a detector's masks (Mask R-CNN); this model is a "
                         f"{kind}: leave it out", "masks")
    if kind != "segmentation":
        if text is not None:
            raise SetupError("a region needs a segmentation model (this one is a "
                             "classifier); leave it out", "region")
        return class_index
    box = None
    if text is not None:
        try:
            box = tuple(float(v) for v in text.split(","))
        except ValueError:
            box = ()
        if len(box) != 4 or not (0 <= box[0] < box[2] <= size and 0 <= box[1] < box[3] <= size):
            raise SetupError(f"'{text}' is not a box x0,y0,x1,y1 inside the model's {size}x{size} "
                             "input (right and bottom exclusive)", "region")
    background = tuple(i for i, name in enumerate(class_names)
                       if name.strip("_").lower() in ("background", "bg"))
    return ClassRegion(class_index, box, size=(size, size), ignore=background)


def _detection_target(text, class_index, detections, min_score):
    from .detection import BoxTarget, Detections
    if detections < 1:
        raise SetupError(f"{detections} detections: explain at least 1", "detections")
    if not 0 <= min_score <= 1:
        raise SetupError(f"{min_score} is no score: give a probability in [0, 1]", "min-score")
    if text is None:
        return Detections(detections, min_score, class_index)
    try:
        return BoxTarget(tuple(float(v) for v in text.split(",")), class_index)
    except ValueError:
        raise SetupError(f"'{text}' is not a box x0,y0,x1,y1 (pixels of the image, x0 < x1, "
                         "y0 < y1)", "region") from None


@contextmanager
def out_of_memory(doing: str, remedy: str):
    """Running out of memory (CUDA's error, or the CPU allocator's RuntimeError) becomes
    :class:`OutOfMemory`, saying what was being done and what to do instead."""
    try:
        yield
    except RuntimeError as e:  # torch.cuda.OutOfMemoryError is a RuntimeError too
        text = str(e)
        if not (isinstance(e, torch.cuda.OutOfMemoryError) or "out of memory" in text
                or "can't allocate memory" in text or "not enough memory" in text):
            raise
        raise OutOfMemory(f"out of memory {doing}; {remedy}") from None


def read_sample(name: str) -> Image.Image:
    """One of scikit-image's sample photos (:data:`SAMPLES`), as RGB."""
    import skimage.data
    return Image.fromarray(getattr(skimage.data, name)()).convert("RGB")
