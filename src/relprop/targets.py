"""What is explained (rap-spec §9.1): a weighting ``w`` of the elements of the model's main
output ``y``, one per image. The explained score is ``s = Σ w ⊙ y``; a class is a one-hot ``w``,
a segmentation region is ``w = 1`` on one class's channel over a set of pixels.

``target=`` takes a class (an index, a list of indices, an integer tensor; None for the
predicted class), a tensor of weights shaped like the output (or like one image's output), a
callable ``f(y) -> (N,)`` as Captum and pytorch-grad-cam take it, a list of per-image callables
``f_i(y_i) -> scalar`` (pytorch-grad-cam's ``ClassifierOutputTarget`` and
``SemanticSegmentationTarget`` as they are), or a ready-made target of this module
(:class:`ClassRegion`).

A propagation method explains ``Σ w ⊙ y`` and conserves it, so it takes a callable only where
``f(y) = Σ (∂f/∂y) ⊙ y`` at this output: a linear target (a logit, a region's sum, a difference
of logits) or a piecewise linear one through 0 (the largest logit). Anything else (a
probability, a log-softmax) is refused in words; the gradient family takes it as it is.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence, Union

import torch

Target = Union[None, int, Sequence[int], torch.Tensor, Callable, Sequence[Callable]]


def main_output(output):
    """The model's main output: a tensor as it is, a Hugging Face ``ModelOutput``'s ``logits``,
    the ``out`` (or ``logits``) of a dict such as torchvision's segmentation models return, or
    the first element of a tuple or list."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        for key in ("out", "logits"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        raise ValueError(f"the model returns a dict with keys {sorted(map(str, output))}; relprop "
                         "explains its 'out' or 'logits' entry. Wrap the model so that it "
                         "returns the tensor to explain")
    if isinstance(output, (list, tuple)) and output:
        return main_output(output[0])
    raise ValueError(f"the model returns {type(output).__name__}; relprop explains a tensor, a "
                     "ModelOutput's logits, a dict's 'out' or the first element of a tuple")


def class_scores(output: torch.Tensor) -> torch.Tensor:
    """(N, K): one score per class; a spatial output's class map is summed over its positions
    (rap-spec §7.4)."""
    return output.flatten(2).sum(-1) if output.dim() > 2 else output


@dataclass
class Resolved:
    """A target made concrete on one output."""

    weights: torch.Tensor  # w, shaped like the output
    score: torch.Tensor  # (N,) Σ w ⊙ y, or f(y) for a callable the gradient family takes as is
    classes: torch.Tensor  # (N,) the explained class per image, -1 where it is not one class
    function: Callable | None = None  # a batch callable, for methods that differentiate it


class ClassRegion:
    """A class over a region of a spatial output (N, K, H, W): ``w = 1`` on the class's channel
    inside the region.

    ``class_index``: the class; None for the class predicted at the most pixels of each image
    (leaving out the classes in ``ignore``, such as a background class). ``region``: None for
    the pixels predicted as that class (where the class is nowhere predicted in an image, its
    whole map), a box ``(x0, y0, x1, y1)`` (right and bottom exclusive) in output pixels, or in
    the pixels of an image of ``size`` (H, W) where given (the model's input: a box drawn on the
    picture, for a model whose output is smaller), or a boolean mask (H, W) or (N, H, W).

    Also a callable ``f(y) -> (N,)`` (or a number, on one image's (K, H, W) output), so that
    Captum, pytorch-grad-cam and the gradient family take it too."""

    def __init__(self, class_index: int | None, region=None, *, size=None, ignore=()):
        if class_index is not None and (isinstance(class_index, bool) or
                                        not isinstance(class_index, int)):
            raise ValueError(f"ClassRegion takes a class index (int) or None, got "
                             f"{class_index!r}")
        self.class_index, self.region, self.size = class_index, region, size
        self.ignore = tuple(ignore)

    def classes(self, output: torch.Tensor) -> torch.Tensor:
        """(N,) the explained class of each image."""
        self._check(output)
        n, k = output.shape[:2]
        if self.class_index is not None:
            if not 0 <= self.class_index < k:
                raise ValueError(f"class {self.class_index} is out of range: the model has {k} "
                                 f"classes (0..{k - 1})")
            return torch.full((n,), self.class_index, dtype=torch.long, device=output.device)
        predicted = output.argmax(1).flatten(1)
        counts = torch.stack([(predicted == c).sum(1) for c in range(k)], 1)
        if self.ignore and len(self.ignore) < k:
            counts[:, list(self.ignore)] = -1
        return counts.argmax(1)

    def weights(self, output: torch.Tensor) -> torch.Tensor:
        single = output.dim() == 3
        output = output.unsqueeze(0) if single else output
        classes = self.classes(output)
        mask = self.mask(output, classes)
        weights = torch.zeros_like(output)
        weights.scatter_(1, classes.view(-1, 1, 1, 1).expand(-1, 1, *output.shape[2:]),
                         mask.unsqueeze(1).to(output.dtype))
        return weights[0] if single else weights

    def _check(self, output):
        if output.dim() != 4:
            raise ValueError(f"ClassRegion explains a class over a region of a spatial output "
                             f"(N, K, H, W); this model's output has shape "
                             f"{tuple(output.shape)}. Pass a class index instead")

    def mask(self, output: torch.Tensor, classes: torch.Tensor | None = None) -> torch.Tensor:
        """(N, H, W) boolean: the region in each image."""
        self._check(output)
        n, _, h, w = output.shape
        region = self.region
        if region is None:
            classes = self.classes(output) if classes is None else classes
            mask = output.argmax(1) == classes.view(-1, 1, 1)
            empty = ~mask.flatten(1).any(1)
            mask[empty] = True  # nowhere predicted: the class's whole map
            return mask
        if isinstance(region, (tuple, list)) and len(region) == 4 and \
                all(isinstance(v, (int, float)) for v in region):
            x0, y0, x1, y1 = region
            if self.size is not None:  # a box on the input picture, scaled to the output
                x0, x1 = x0 * w / self.size[1], x1 * w / self.size[1]
                y0, y1 = y0 * h / self.size[0], y1 * h / self.size[0]
            x0, y0 = int(x0), int(y0)
            x1, y1 = max(x0 + 1, int(-(-x1 // 1))), max(y0 + 1, int(-(-y1 // 1)))
            width, height = (self.size[1], self.size[0]) if self.size is not None else (w, h)
            if not (0 <= region[0] < region[2] <= width and 0 <= region[1] < region[3] <= height):
                raise ValueError(f"the region {tuple(region)} is not a box (x0, y0, x1, y1) inside "
                                 f"the {width}x{height} pixels it is given in")
            mask = torch.zeros(n, h, w, dtype=torch.bool, device=output.device)
            mask[:, y0:y1, x0:x1] = True
            return mask
        mask = torch.as_tensor(region, device=output.device).bool()
        if mask.shape not in ((h, w), (n, h, w)):
            raise ValueError(f"the region mask has shape {tuple(mask.shape)}; give (H, W) or "
                             f"(N, H, W) with the output's H, W = {h}, {w}")
        if not mask.any():
            raise ValueError("the region mask is empty: no pixel to explain")
        return mask.expand(n, h, w)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        weighted = self.weights(output) * output
        return weighted.sum() if output.dim() == 3 else weighted.flatten(1).sum(1)

    def __repr__(self):
        return f"ClassRegion({self.class_index}, region={self.region!r})"


def resolve(target: Target, output: torch.Tensor, *, linear: bool = True) -> Resolved:
    """``target`` as a weighting of ``output`` (the main output, (N, ...)). ``linear``: the
    method explains ``Σ w ⊙ y`` and needs a callable target to be that (propagation); else a
    batch callable is kept for the method to differentiate (the gradient family)."""
    n = output.shape[0]
    unknown = torch.full((n,), -1, dtype=torch.long, device=output.device)
    if hasattr(target, "weights") and callable(target.weights):
        weights = target.weights(output).to(output.dtype)
        classes = target.classes(output) if hasattr(target, "classes") else unknown
        return _weighted(weights, output, classes)
    if _callables(target):
        return _per_image(list(target), output, unknown)
    if callable(target) and not isinstance(target, torch.Tensor):
        return _batch_callable(target, output, unknown, linear)
    if isinstance(target, torch.Tensor) and target.is_floating_point():
        return _weight_tensor(target, output, unknown)
    classes = class_indices(target, class_scores(output))
    weights = torch.zeros_like(output)
    index = classes.view(-1, *([1] * (output.dim() - 1))).expand(-1, 1, *output.shape[2:])
    weights.scatter_(1, index, 1.0)
    return _weighted(weights, output, classes)


def _weighted(weights, output, classes) -> Resolved:
    score = (weights * output).flatten(1).sum(1)
    if not (weights.flatten(1).abs().sum(1) > 0).all():
        raise ValueError("the target weighs nothing in some image (all its weights are 0): "
                         "nothing to explain")
    return Resolved(weights, score, classes)


def _weight_tensor(target, output, unknown) -> Resolved:
    w = target.to(device=output.device, dtype=output.dtype)
    if w.shape == output.shape[1:]:
        w = w.expand_as(output)
    if w.shape != output.shape:
        raise ValueError(f"a target tensor of weights must have the output's shape "
                         f"{tuple(output.shape)} (or one image's, {tuple(output.shape[1:])}); "
                         f"got {tuple(target.shape)}. Class indices are an integer tensor")
    if not torch.isfinite(w).all():
        raise ValueError("the target weights contain NaN or Inf")
    return _weighted(w.clone(), output, unknown)


def _callables(target) -> bool:
    return isinstance(target, (list, tuple)) and len(target) > 0 and \
        all(callable(t) and not isinstance(t, (int, torch.Tensor)) for t in target)


def _gradient_of(f, y: torch.Tensor, what: str):
    with torch.enable_grad():
        leaf = y.detach().requires_grad_()
        try:
            value = f(leaf)
        except Exception as e:
            raise ValueError(f"the target {what} failed on the model output of shape "
                             f"{tuple(y.shape)}: {type(e).__name__}: {e}") from None
        value = torch.as_tensor(value)
        if not value.requires_grad:
            raise ValueError(f"the target {what} does not depend on the model output (it returned "
                             "a constant); it must compute from the output it is given")
        (grad,) = torch.autograd.grad(value.sum(), leaf)
    return value.detach(), grad


def _per_image(fns, output, unknown) -> Resolved:
    """pytorch-grad-cam's convention: one callable per image, called on that image's output."""
    n = output.shape[0]
    if len(fns) != n:
        raise ValueError(f"target has {len(fns)} callables for a batch of {n}; give one per "
                         "image (as pytorch-grad-cam does) or one callable for the batch")
    weights, values = [], []
    for i, f in enumerate(fns):
        value, grad = _gradient_of(f, output[i], f"callable for image {i}")
        if value.numel() != 1:
            raise ValueError(f"the target callable for image {i} returned shape "
                             f"{tuple(value.shape)}; a per-image target returns one number")
        values.append(value.reshape(()))
        weights.append(grad)
    resolved = _weighted(torch.stack(weights), output,
                         torch.tensor([_class_of(f, output[i]) for i, f in enumerate(fns)],
                                      device=output.device))
    _check_linear(torch.stack(values).to(output.dtype), resolved.score, "per-image callables")
    return resolved


def _class_of(f, output) -> int:
    """The class a per-image target names: grad-cam's ``category``, a ClassRegion's class."""
    if hasattr(f, "classes"):
        return int(f.classes(output.unsqueeze(0))[0])
    category = getattr(f, "category", -1)
    return category if isinstance(category, int) else -1


def _batch_callable(f, output, unknown, linear) -> Resolved:
    value, grad = _gradient_of(f, output, "callable")
    if value.shape != (output.shape[0],):
        raise ValueError(f"a target callable returns one number per image, shape "
                         f"({output.shape[0]},); got {tuple(value.shape)}")
    if not linear:
        return Resolved(grad, value.to(output.dtype), unknown, f)
    resolved = _weighted(grad, output, unknown)
    _check_linear(value.to(output.dtype), resolved.score, "callable")
    return resolved


def _check_linear(value, weighted, what):
    """A propagation method explains ``Σ w ⊙ y``: refuse a target that is not that."""
    tol = 1e-4 * value.abs().clamp(min=1) if value.dtype != torch.float64 else \
        1e-9 * value.abs().clamp(min=1)
    if not ((value - weighted).abs() <= tol).all():
        raise ValueError(
            f"the target {what} is not linear in the model output: it gives "
            f"{value.tolist()[:4]}, but its gradient times the output gives "
            f"{weighted.tolist()[:4]}. Propagation methods explain a weighting of the output "
            "(a logit, a region's sum, a difference of logits), not a probability or another "
            "non-linear function of it: pass the logit (e.g. lambda y: y[:, k]) or use a "
            "gradient method")


def class_indices(target, scores: torch.Tensor) -> torch.Tensor:
    """(N,) class indices from ``target`` (None: the predicted class) for (N, K) ``scores``."""
    n, k = scores.shape
    if target is None:
        return scores.argmax(1)
    if isinstance(target, str) or (isinstance(target, (list, tuple)) and
                                   any(isinstance(t, str) for t in target)):
        raise ValueError(f"target must be class indices (int), got the name {target!r}; look "
                         "the index up in the class names, e.g. "
                         "relprop.models.load(name)[2].index('tabby')")
    try:
        t = torch.as_tensor(target, device=scores.device).reshape(-1)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"target must be None, an int, a list of ints, an integer tensor, a "
                         f"tensor of weights or a callable; got {target!r} ({e})") from None
    if t.numel() == 0:
        raise ValueError("target is empty; give one class, one class per image, or None for the "
                         "predicted class")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"target must be class indices (int), got {t.dtype}; weights over "
                         "the output are a floating-point tensor of the output's shape")
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for a batch of {n}; give one class, "
                         "one class per image, or None for the predicted class")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"target {t.tolist()} is out of range: the model has {k} classes "
                         f"(0..{k - 1})")
    return t.long()


__all__ = ["ClassRegion", "main_output", "resolve", "class_scores", "class_indices"]
