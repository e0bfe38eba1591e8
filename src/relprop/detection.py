"""Detectors (rap-spec §9.1, §9.4): which detection to explain, and the logit behind its score.

A detection's score is a probability: a softmax entry (Faster R-CNN, Mask R-CNN, SSD, DETR), a
sigmoid (RetinaNet) or the square root of a product of sigmoids (FCOS). relprop explains the
class logit behind it (``Explanation.score`` is that logit), so that Σ R = the logit.

torchvision's detectors decide with the data what they compute (score thresholds, top-k, NMS,
each RoI's pyramid level), so relprop records each image's run (:mod:`relprop.recording`) and
finds each detection's logit by differentiating its score back to the squashing it came
through: the ops in between only select, so one position receives the gradient. What is
explained is then an ordinary model, ``image -> the logits behind the detections``, in which
the boxes and indices of this image are constants; every method explains it. A Hugging Face
DETR returns its query logits as a tensor and is explained as it is.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn

from . import recording
from .capture import copy_into
from .checks import check_batch
from .errors import NoDetection
from .explanation import Explanation

aten = torch.ops.aten
_SQUASHINGS = {aten.softmax.int, aten._softmax.default, aten.sigmoid.default}


@dataclass
class Detected:
    """One detection of one image, as the model reported it, and the logit relprop explains."""

    image: int  # the image's index in the batch
    index: int  # the detection's index in the model's output for that image
    box: tuple  # (x0, y0, x1, y1) in the pixels of the image as given
    label: int
    score: float  # the model's probability
    logit: float  # the class logit behind the score: the explained score
    position: int = field(default=-1, repr=False)  # the logit's position in the logit vector
    row: tuple | None = field(default=None, repr=False)  # the logits a softmax took the score
    # from (its class's among them), None for a sigmoid
    # Mask R-CNN: the positions, in the logit vector, of the mask logits of the pixels its mask
    # assigns to the object (probability > 0.5, at the mask head's resolution); None where the
    # scene was recorded without masks
    mask: tuple | None = field(default=None, repr=False)
    explained: str = "score"  # "score": its class logit; "mask": the sum of its mask logits


class Detections:
    """Explain several detections of each image, each on its own: those with a score of at
    least ``min_score`` (of class ``label`` only, where given), at most ``top`` of them, the
    highest scores first."""

    def __init__(self, top: int | None = None, min_score: float = 0.0, label: int | None = None):
        if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 1):
            raise ValueError(f"Detections(top=...) takes a positive number, got {top!r}")
        if not 0 <= float(min_score) <= 1:
            raise ValueError(f"Detections(min_score=...) is a probability in [0, 1], got "
                             f"{min_score!r}")
        self.top, self.min_score, self.label = top, float(min_score), label

    def select(self, found: list[Detected], image: int) -> list[Detected]:
        chosen = sorted((d for d in found if d.score >= self.min_score and
                         self.label in (None, d.label)), key=lambda d: -d.score)
        return chosen[:self.top] if self.top is not None else chosen

    def __repr__(self):
        return f"Detections(top={self.top}, min_score={self.min_score}, label={self.label})"


class BoxTarget:
    """The detection that best matches ``box`` (x0, y0, x1, y1, in the image's pixels) among
    those of class ``label`` (any class where None), by intersection over union of at least
    ``iou``: pytorch-grad-cam's ``FasterRCNNBoxScoreTarget`` for one box."""

    def __init__(self, box, label: int | None = None, iou: float = 0.5):
        box = tuple(float(v) for v in torch.as_tensor(box, dtype=torch.float64).flatten())
        if len(box) != 4 or not (box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"a box is (x0, y0, x1, y1) with x0 < x1 and y0 < y1; got {box}")
        self.box, self.label, self.iou = box, label, float(iou)

    def select(self, found: list[Detected], image: int) -> list[Detected]:
        candidates = [d for d in found if self.label is None or d.label == self.label]
        best = max(candidates, key=lambda d: iou(d.box, self.box), default=None)
        if best is None or iou(best.box, self.box) < self.iou:
            near = max(found, key=lambda d: iou(d.box, self.box), default=None)
            hint = (f"; the nearest detection is label {near.label} at "
                    f"{tuple(round(v, 1) for v in near.box)} (IoU {iou(near.box, self.box):.2f})"
                    if near is not None else "; the model detected nothing")
            raise NoDetection(f"no detection of image {image} matches the box {self.box} "
                             f"(label {self.label}) with IoU >= {self.iou}{hint}")
        return [best]

    def __repr__(self):
        return f"BoxTarget({self.box}, label={self.label}, iou={self.iou})"


class Mask:
    """Explain the masks of the detections ``target`` selects (Mask R-CNN), each on its own:
    the sum of the mask logits of the pixels its mask assigns to the object (probability
    above 0.5 at the mask head's 28 × 28), a region target as for a segmenter; Σ R = that
    sum. ``Mask()`` is the top detection's mask; ``Mask(Detections(top=3))`` three."""

    needs_masks = True

    def __init__(self, target=None):
        self.target = _one_selector(target)

    def select(self, found: list[Detected], image: int) -> list[Detected]:
        picked = self.target.select(found, image)
        for d in picked:
            if d.mask is None:
                raise ValueError("Mask(...) explains a detection's mask: this scene has none "
                                 "(Mask R-CNN returns masks; record with scene(..., masks=True))")
        empty = [d.index for d in picked if not d.mask]
        if empty:
            raise NoDetection(f"the mask of detection {empty[0]} of image {image} has no pixel "
                              "above probability 0.5: there is no mask to explain")
        return [replace(d, explained="mask") for d in picked]

    def __repr__(self):
        return f"Mask({self.target!r})"


class _Index:
    def __init__(self, index: int):
        self.index = index

    def select(self, found: list[Detected], image: int) -> list[Detected]:
        if not 0 <= self.index < len(found):
            raise ValueError(f"image {image} has {len(found)} detection(s), so there is no "
                             f"detection {self.index}; pass an index below {len(found)}, or "
                             "lower the model's score threshold (box_score_thresh / "
                             "score_thresh) to keep more")
        return [found[self.index]]


def _from_grad_cam(target) -> list:
    """pytorch-grad-cam's ``FasterRCNNBoxScoreTarget(labels, bounding_boxes, iou_threshold)``:
    each (label, box) pair as a :class:`BoxTarget` (grad-cam sums their scores; relprop
    explains each matched detection on its own)."""
    boxes = torch.as_tensor(target.bounding_boxes).reshape(-1, 4)
    labels = list(torch.as_tensor(target.labels).reshape(-1).tolist())
    return [BoxTarget(b, int(label), target.iou_threshold) for b, label in zip(boxes, labels)]


def selector(target, n: int):
    """``target`` as one selector per image."""
    if isinstance(target, (list, tuple)) and len(target) and \
            not isinstance(target[0], (int, float)):
        if len(target) != n:
            raise ValueError(f"target has {len(target)} entries for a batch of {n} images; give "
                             "one per image, or one for all")
        return [_one_selector(t) for t in target]
    return [_one_selector(target)] * n


def _one_selector(target):
    if target is None:
        return _Index(0)
    if isinstance(target, bool):
        raise ValueError(f"a detection target is an index, Detections(...), BoxTarget(...) or "
                         f"pytorch-grad-cam's FasterRCNNBoxScoreTarget; got {target!r}")
    if isinstance(target, int):
        return _Index(target)
    if hasattr(target, "select"):
        return target
    if hasattr(target, "bounding_boxes") and hasattr(target, "labels"):
        return _Many(_from_grad_cam(target))
    raise ValueError(f"a detection target is None (the top detection), an index into the "
                     f"detections, relprop.detection.Detections(top, min_score), "
                     f"relprop.detection.BoxTarget(box, label) or pytorch-grad-cam's "
                     f"FasterRCNNBoxScoreTarget; got {target!r}")


class _Many:
    def __init__(self, targets):
        self.targets = targets

    @property
    def needs_masks(self) -> bool:
        return any(getattr(t, "needs_masks", False) for t in self.targets)

    def select(self, found, image):
        return [d for t in self.targets for d in t.select(found, image)]


def iou(a, b) -> float:
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# --------------------------------------------------------------------------- readers

@dataclass
class Scene:
    """One image's detections and the model that maps the image to the logits behind them."""

    detections: list[Detected]
    logit_model: nn.Module  # x (1, C, H, W) -> y; a detection's logit is y.flatten()[position]
    shape: tuple  # y's shape
    # the logit model with the model's layers and activations as modules (Grad-CAM, guided
    # backpropagation hook them), made on first use; None: logit_model is the model itself
    with_modules: Callable[[], nn.Module] | None = None
    layers: tuple[str, ...] = ()  # the model's layers whose output is on the explained path
    feature_layer: str | None = None  # Grad-CAM's default: the backbone's last feature map

    def hookable(self) -> nn.Module:
        """The logit model with modules to hook (built once)."""
        if self.with_modules is None:
            return self.logit_model
        if not isinstance(self.with_modules, nn.Module):
            self.with_modules = self.with_modules()
        return self.with_modules


def is_torchvision_detector(model: nn.Module) -> bool:
    try:
        from torchvision.models.detection import fcos, generalized_rcnn, retinanet, ssd
    except ImportError:
        return False
    return isinstance(model, (generalized_rcnn.GeneralizedRCNN, retinanet.RetinaNet, fcos.FCOS,
                              ssd.SSD))


def is_detr(model: nn.Module) -> bool:
    return type(model).__name__.endswith("ForObjectDetection")


def is_detector(model: nn.Module) -> bool:
    return is_torchvision_detector(model) or is_detr(model)


def scene(model: nn.Module, x: torch.Tensor, image: int = 0, masks: bool = False) -> Scene:
    """The detections of ``model`` on ``x`` (one image, (1, C, H, W)) and their logits; with
    ``masks``, their mask logits too (Mask R-CNN), for :class:`Mask` targets."""
    if is_detr(model):
        if masks:
            raise ValueError("Mask(...) explains Mask R-CNN's masks; this DETR returns none")
        return _detr_scene(model, x, image)
    return _recorded_scene(model, x, image, masks)


def _recorded_scene(model, x, image, masks: bool = False) -> Scene:
    recorded = recording.record(model, x)
    graph = recorded.graph
    out = graph.output_node().args[0]
    result = out[0] if isinstance(out, (list, tuple)) else out
    if not isinstance(result, dict) or not {"boxes", "labels", "scores"} <= set(result):
        raise ValueError("relprop explains detectors that return, per image, a dict with "
                         "'boxes', 'labels' and 'scores' (torchvision's)")
    scores = result["scores"]
    squashings = _squashings_behind(scores)
    chain = _between(squashings, scores)
    ends = list(dict.fromkeys(s.args[0].name for s in squashings))
    mask_squashings, mask_chain = [], []
    if masks:
        if "masks" not in result:
            raise ValueError("a mask target (--masks, Mask(...)) explains a detection's mask, "
                             "and this detector returns no masks (Mask R-CNN does)")
        mask_squashings = _squashings_behind(result["masks"])
        mask_chain = _between(mask_squashings, result["masks"])
        ends += [s.args[0].name for s in mask_squashings if s.args[0].name not in ends]
    path, constants = recording.path_to(graph, ends)
    keep = constants | set(ends) | {s.name for s in squashings + mask_squashings} | \
        {a.name for n in chain + mask_chain for a in n.all_input_nodes} | \
        {result[k].name for k in ("boxes", "labels", "scores")}
    values = recording.run(recorded, x, keep)
    positions = _positions(squashings, chain, scores, values)

    offsets, total = {}, 0
    for end in ends:
        offsets[end] = total
        total += values[end].numel()
    logits = torch.cat([values[e].reshape(-1) for e in ends])
    boxes, labels, probabilities = (values[result[k].name] for k in ("boxes", "labels", "scores"))
    regions = _mask_regions(mask_squashings, mask_chain, result["masks"], values, offsets) \
        if masks else [None] * len(positions)
    found = []
    for j, (squash, flat) in enumerate(positions):
        position = offsets[squash.args[0].name] + flat
        found.append(Detected(image, j, tuple(boxes[j].tolist()), int(labels[j]),
                              float(probabilities[j]), float(logits[position]), position,
                              _softmax_row(squash, values[squash.args[0].name], flat),
                              regions[j]))
    module = recording.logit_module(recorded, ends, values)
    on_path = {n.name for n in path}
    layers = {p: n for p, n in recorded.meta["module_outputs"].items() if n in on_path}
    shapes = {n.name: getattr(n.meta.get("val"), "shape", ()) for n in path}
    return Scene(found, module, (1, total),
                 lambda: recording.logit_module(recorded, ends, values, modules=True),
                 tuple(layers), _feature_layer(layers, shapes))


def _feature_layer(layers: dict[str, str], shapes: dict) -> str | None:
    """The backbone's last feature map, Grad-CAM's usual layer for a detector: the last
    stage of ``backbone.body`` (torchvision's R-CNNs, RetinaNet, FCOS) or of
    ``backbone.features`` (SSD, SSDlite) whose output is a 4-D map on the explained path."""
    maps = [p for p, n in layers.items() if len(shapes.get(n, ())) == 4]
    for prefix in ("backbone.body.", "backbone.features.", "backbone."):
        stages = [p for p in maps if p.startswith(prefix) and "." not in p[len(prefix):]]
        if stages:
            return stages[-1]
    return maps[-1] if maps else None


def _softmax_row(squash: fx.Node, logits: torch.Tensor, flat: int) -> tuple | None:
    if squash.target is aten.sigmoid.default:
        return None
    index = list(torch.unravel_index(torch.tensor(flat), logits.shape))
    index[squash.args[1] % logits.dim()] = slice(None)
    return tuple(logits[tuple(index)].tolist())


def _squashings_behind(scores: fx.Node) -> list[fx.Node]:
    """The softmaxes and sigmoids whose outputs the scores select from."""
    found, seen, stack = [], set(), [scores]
    while stack:
        node = stack.pop()
        if node in seen or node.op != "call_function":
            continue
        seen.add(node)
        if node.target in _SQUASHINGS:
            found.append(node)
            continue
        stack += [a for a in node.all_input_nodes if recording.is_float(a)]
    if not found:
        raise ValueError("the detections' scores come from no softmax or sigmoid of logits: "
                         "relprop cannot find the logit to explain")
    return sorted(found, key=lambda n: list(n.graph.nodes).index(n))


def _between(sources: list[fx.Node], end: fx.Node) -> list[fx.Node]:
    """The nodes after ``sources`` on which ``end`` depends, in graph order."""
    below = set()
    stack = [end]
    while stack:
        node = stack.pop()
        if node in below or node in sources:
            continue
        below.add(node)
        stack += node.all_input_nodes
    after = set(sources)
    chain = []
    for node in end.graph.nodes:
        if node in below and any(a in after for a in node.all_input_nodes):
            after.add(node)
            chain.append(node)
    return chain


def _recompute(chain: list[fx.Node], leaves: dict, values: dict) -> dict:
    """The recorded ops ``chain`` run again from the squashings' outputs ``leaves`` (every
    other argument its recorded value), with gradients: what a detection's score or mask
    reads of them."""
    env = {s.name: leaf for s, leaf in leaves.items()}
    for node in chain:
        args, kwargs = fx.node.map_arg((node.args, node.kwargs),
                                       lambda n: env[n.name] if n.name in env
                                       else values[n.name])
        target = copy_into if node.target is aten.copy.default else node.target
        env[node.name] = target(*args, **kwargs)
    return env


def _positions(squashings, chain, scores, values) -> list[tuple[fx.Node, int]]:
    """For each detection, the squashing and the flat position its score was read from: the
    one entry of the squashings' outputs where its score has a gradient. Where it has one in
    several (FCOS: the square root of class probability times centre-ness), the class's: the
    widest of them (the centre-ness is broadcast over the classes)."""
    leaves = {s: values[s.name].detach().clone().requires_grad_() for s in squashings}
    with torch.enable_grad():
        recomputed = _recompute(chain, leaves, values)[scores.name]
        if not torch.allclose(recomputed.detach(), values[scores.name]):
            raise ValueError("the detections' scores could not be traced back to their logits")
        found = []
        for j in range(recomputed.numel()):
            grads = torch.autograd.grad(recomputed[j], list(leaves.values()), retain_graph=True,
                                        allow_unused=True)
            hits = [(s, g) for s, g in zip(leaves, grads) if g is not None and g.any()]
            if not hits:
                raise ValueError(f"the score of detection {j} does not come from a logit")
            squash, grad = max(hits, key=lambda h: h[1].numel())
            nonzero = grad.flatten().nonzero().flatten()
            if nonzero.numel() != 1:
                raise ValueError(f"the score of detection {j} is not one probability of one "
                                 f"logit ({nonzero.numel()} entries)")
            found.append((squash, int(nonzero[0])))
    return found


def _mask_regions(squashings, chain, masks: fx.Node, values, offsets) -> list[tuple]:
    """Per detection, the positions in the logit vector of the mask logits of its mask's
    pixels: its mask is differentiated back to the mask head's probabilities, which must
    give it one tile (one RoI, one class); of that tile, the entries above 0.5."""
    leaves = {s: values[s.name].detach().clone().requires_grad_() for s in squashings}
    with torch.enable_grad():
        pasted = _recompute(chain, leaves, values)[masks.name]
        regions = []
        for j in range(pasted.shape[0]):
            grads = torch.autograd.grad(pasted[j].sum(), list(leaves.values()),
                                        retain_graph=True, allow_unused=True)
            hits = [(s, g) for s, g in zip(leaves, grads) if g is not None and g.any()]
            if len(hits) != 1 or hits[0][1].dim() != 4:
                raise ValueError(f"the mask of detection {j} does not come from one mask head")
            squash, grad = hits[0]
            rows, classes = (grad != 0).flatten(2).any(2).nonzero().unbind(1)
            if rows.unique().numel() != 1 or classes.unique().numel() != 1:
                raise ValueError(f"the mask of detection {j} is not one RoI's mask of one class")
            tile = torch.zeros_like(grad, dtype=torch.bool)
            tile[rows[0], classes[0]] = values[squash.name][rows[0], classes[0]] > 0.5
            start = offsets[squash.args[0].name]
            regions.append(tuple((tile.flatten().nonzero().flatten() + start).tolist()))
    return regions


def _detr_scene(model, x, image) -> Scene:
    """DETR and its kin: per query a softmax over the classes and "no object" (the last);
    a query's detection is its most probable class (as the image processor's
    ``post_process_object_detection`` reads it), with its predicted box."""
    with torch.no_grad():
        out = model(x)
    logits = out.logits[0]
    probabilities = logits.softmax(-1)[:, :-1]
    scores, labels = probabilities.max(-1)
    h, w = x.shape[-2:]
    cx, cy, bw, bh = out.pred_boxes[0].unbind(-1)
    boxes = torch.stack([(cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w,
                         (cy + bh / 2) * h], -1)
    k = logits.shape[-1]
    order = scores.argsort(descending=True)
    found = [Detected(image, j, tuple(boxes[q].tolist()), int(labels[q]), float(scores[q]),
                      float(logits[q, labels[q]]), int(q) * k + int(labels[q]),
                      tuple(logits[q].tolist()))
             for j, q in enumerate(order.tolist())]
    return Scene(found, model, tuple(out.logits.shape))


class PerImage(nn.Module):
    """A recorded logit model, which holds one image's constants, called on a batch of that
    image's variants (Captum's integration steps and noise samples) one at a time."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module
        self.train(module.training)

    def forward(self, x):
        return torch.cat([self.module(x[i:i + 1]) for i in range(x.shape[0])])


# --------------------------------------------------------------------------- explaining

# Methods that hook the model's modules: on a recording they would see none and compute
# something else without a word (guided backpropagation would be the plain gradient).
# Methods that hook the model's modules: their logit model is the one with modules
# (:meth:`Scene.hookable`).
HOOKS_MODULES = ("grad-cam", "guided-backprop")
# Methods a recording cannot serve, and why: they would compute something else without a word.
NEEDS_MODULES = {
    "deeplift": "Captum's DeepLift runs the image and its baseline as one batch of two and "
                "hooks each activation module once per forward pass, while the recording of a "
                "detector holds one image's proposals and runs one image at a time",
    "attention-rollout": "it reads attention modules, which torchvision's detectors have none of",
    "attention-rollout-grad": "it reads attention modules, which torchvision's detectors have "
                              "none of"}


@dataclass
class DetectionExplanation(Explanation):
    """One row per explained detection: ``relevance[r]`` is over the image of
    ``detections[r]`` and sums to its logit, ``score[r]``."""

    detections: list = field(default_factory=list)


class DetectionExplainer:
    """Explains a detector's detections with one method: ``explain(images, target)``.

    ``target``: None (each image's top detection), an index into each image's detections,
    :class:`Detections` (several per image), :class:`BoxTarget` (the best match of a box and a
    label), pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``, or a list of these, one per image.
    The detections of an image share one recorded forward pass: propagation methods sweep back
    once per detection from it."""

    def __init__(self, model: nn.Module, method: str, **options):
        from .errors import NotApplicable
        from .registry import get_method
        self.model, self.method, self.options = model, method, options
        self.spec = get_method(method)
        if method in NEEDS_MODULES and is_torchvision_detector(model):
            raise NotApplicable(f"{method} is not available for torchvision's detectors: "
                                f"{NEEDS_MODULES[method]}")

    def check(self, dtype: torch.dtype | None = None, layer: str | None = None) -> None:
        """Raise a ValueError now, before any image is read, for what cannot be explained."""
        if layer is not None:
            raise ValueError("layer= is not supported for detectors yet: relprop explains a "
                             "detection at the input image")
        if dtype not in (None, torch.float32, torch.float64):
            raise ValueError(f"detectors are explained in float32 or float64, not {dtype}: "
                             "model.float() and images.float(), or --dtype float32")

    def exclusive(self, layer: str | None = None) -> bool:
        return False

    def explain(self, images: torch.Tensor, target=None, layer=None,
                **options) -> DetectionExplanation:
        self.check(images.dtype if isinstance(images, torch.Tensor) else None, layer)
        check_batch(self.model, images, rank=4)
        selectors = selector(target, images.shape[0])
        parts = []
        for i, select in enumerate(selectors):
            x = images[i:i + 1]
            found = scene(self.model, x, i, masks=getattr(select, "needs_masks", False))
            picked = select.select(found.detections, i)
            if picked:
                parts.append(self.explain_scene(found, x, picked, **options))
        if not parts:
            raise NoDetection(f"no detection to explain: the model found none that the target "
                             f"{target!r} selects in any image (the model itself keeps only "
                             "detections above its own score threshold)")
        return DetectionExplanation(*(torch.cat([getattr(p, f) for p in parts])
                                      for f in ("relevance", "target", "score", "logits")),
                                    self.method, torch.cat([p.inputs for p in parts]),
                                    detections=[d for p in parts for d in p.detections])

    def explain_scene(self, found: Scene, x: torch.Tensor, picked: list[Detected],
                      **options) -> DetectionExplanation:
        """The detections ``picked`` of one image ``x`` (1, C, H, W) whose :func:`scene` is
        ``found``: one forward pass of its logit model, a reverse sweep per detection."""
        module, built = found.logit_model, dict(self.options)
        if self.method in HOOKS_MODULES:
            module = found.hookable()
        if self.spec.family != "propagation" and module is not self.model:
            module = PerImage(module)
            if self.method == "grad-cam":  # a layer of the recording, inside PerImage
                given = options.pop("target_layer", built.get("target_layer"))
                built["target_layer"] = "module." + _cam_layer(found, given)
        inner = self.spec.build(module, method=self.method, **built)
        targets = []
        for d in picked:
            w = torch.zeros(found.shape, dtype=x.dtype, device=x.device)
            w.view(-1)[list(d.mask) if d.explained == "mask" else d.position] = 1
            targets.append(w)
        rows = inner.explain_each(x, targets, **options)
        score = torch.cat([r.score for r in rows])
        return DetectionExplanation(torch.cat([r.relevance for r in rows]),
                                    torch.tensor([d.label for d in picked]), score,
                                    score.view(-1, 1), self.method,
                                    x.detach().expand(len(picked), *x.shape[1:]),
                                    detections=list(picked))


def _cam_layer(found: Scene, given: str | None) -> str:
    """The recorded layer Grad-CAM reads: the one given, or the backbone's last feature map."""
    if given is None:
        if found.feature_layer is None:
            raise ValueError("grad-cam: this detector has no backbone feature map relprop "
                             "recognises; pass target_layer= one of its layers: "
                             f"{', '.join(found.layers[-5:])}")
        return found.feature_layer
    if given not in found.layers:
        raise ValueError(f"grad-cam: '{given}' is no layer on the path from this image to the "
                         "explained logits (a module that returns one tensor); for example "
                         f"{', '.join(found.layers[-5:])}")
    return given


__all__ = ["Detected", "Detections", "BoxTarget", "Mask", "DetectionExplainer",
           "DetectionExplanation", "is_detector", "scene"]
