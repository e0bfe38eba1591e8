"""The public entry points: ``RAP(model).attribute(...)`` in Captum's shape, and ``explain(...)``
returning an :class:`Explanation` with everything a plot or a table needs."""
from __future__ import annotations

import functools
import os
import sys
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Sequence, Union

import torch
import torch.nn as nn

from . import engine
from .errors import ForwardError
from .graph import ModuleTree, eval_mode, trace, unwrap
from .ir import Attr
from .ops import pad_spec
from .rules import lrp as lrp_rules

Target = Union[None, int, Sequence[int], torch.Tensor]


@dataclass
class Explanation:
    """The relevance of each input entry for one class per image.

    ``relevance`` has the shape of the inputs and sums, per image, to ``score`` (the explained
    score: the target's logit, or the sum of its map for a model with a spatial output);
    ``delta`` says how far from that it is, as Captum's convergence delta. Positive values
    support the class, negative values speak against it.
    """

    relevance: torch.Tensor
    target: torch.Tensor  # (N,) the explained class per image
    score: torch.Tensor  # (N,) the explained score per image
    logits: torch.Tensor  # (N, K) or (N, K, ...) the model output
    method: str

    @property
    def heatmap(self) -> torch.Tensor:
        """(N, H, W): an image's relevance summed over its colour channels (for inputs that are
        not images, the relevance as it is)."""
        return self.relevance.sum(1) if self.relevance.dim() == 4 else self.relevance

    @property
    def positive(self) -> torch.Tensor:
        return self.relevance.clamp(min=0)

    @property
    def negative(self) -> torch.Tensor:
        return self.relevance.clamp(max=0)

    @property
    def delta(self) -> torch.Tensor:
        """(N,) sum of the relevance minus the explained score: 0 up to rounding for a method
        that conserves."""
        return self.relevance.flatten(1).sum(1) - self.score

    @property
    def probabilities(self) -> torch.Tensor:
        """(N, K) softmax over the classes' scores."""
        return class_scores(self.logits).softmax(1)


class Propagation:
    """An explainer that propagates relevance backwards through the traced graph of an unmodified
    model, with the rules of one method (``relprop.methods()`` lists them).

    The model is traced once, and again whenever its module tree changed (a replaced head, an
    inserted layer); ``attribute`` can then be called on any number of batches. Weights are read
    at every call, so in-place edits of them are always seen. The model itself is never changed:
    its parameters, hooks and every submodule's ``training`` flag stay as they were.
    """

    method = "rap"
    defaults: dict = {}  # the method's keyword options and their defaults
    start_at_score = False  # the output relevance: the score itself, or 1 that the rules scale

    def __init__(self, model: nn.Module, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} expects a torch.nn.Module, got "
                            f"{type(model).__name__}")
        self.options = _options(self.method, self.defaults, options)
        model = unwrap(model)
        self._model = weakref.ref(model)
        self._owner: nn.Module | None = model  # None where a cache must not keep the model alive
        self._trace(model)

    @property
    def model(self) -> nn.Module:
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this explainer no longer exists")
        return model

    def _trace(self, model: nn.Module) -> None:
        self.graph = trace(model)
        self._plan = engine.Plan(self.graph, self.method)
        self._tree = ModuleTree(model)

    def attribute(self, inputs: torch.Tensor, target: Target = None,
                  layer: str | None = None) -> torch.Tensor:
        """Relevance of every input entry, shaped like ``inputs`` (or like ``layer``'s output)."""
        return self.explain(inputs, target, layer).relevance

    def explain(self, inputs: torch.Tensor, target: Target = None,
                layer: str | None = None) -> Explanation:
        """``layer`` (a module path such as ``'features.28'``, or a graph node) returns the
        relevance of that layer's output instead of the input's."""
        model = self.model
        if not self._tree.matches(model):
            self._trace(model)
        stop = None if layer is None else self.node(layer)
        self._check_inputs(inputs)
        _warn_if_training(model)
        # inference_mode(False): pooling and reshapes route relevance through autograd.
        with torch.inference_mode(False), torch.no_grad(), eval_mode(model), exact_float32():
            if inputs.is_inference():
                inputs = inputs.clone()
            try:
                run = engine.forward(self._plan, inputs)
            except ForwardError as e:
                raise ValueError(
                    f"the model could not run on inputs of shape {tuple(inputs.shape)}: "
                    f"{e.op.source} at node '{e.op.name}' failed with: {e.error}. Check that the "
                    "inputs have the size and channel count the model expects."
                ) from None
            logits = run.output(self.graph.op(self.graph.output))
            _check_finite(logits)
            scores = class_scores(logits)
            tgt = _targets(target, scores)
            run.score = scores.gather(1, tgt.view(-1, 1)).squeeze(1)
            run.options = self.options
            start = torch.zeros_like(logits)
            start.scatter_(1, tgt.view(-1, *([1] * (logits.dim() - 1))).expand(
                -1, 1, *logits.shape[2:]), 1.0)
            if self.start_at_score:
                start = start * logits
            relevance = engine.backward(self._plan, run, start, stop)
        return Explanation(relevance, tgt, run.score, logits.detach(), self.method)

    def node(self, layer: str) -> str:
        """The graph node whose value is ``layer``'s output: a module path (its last op) or a
        node name."""
        if layer in self.graph and layer != self.graph.input:
            return layer
        ops = [op.name for op in self.graph.ops if op.module_path == layer]
        if not ops:
            paths = list(dict.fromkeys(op.module_path for op in self.graph.ops
                                       if op.module_path and op.kind in ("conv", "linear")))
            raise ValueError(f"layer '{layer}' is neither a module path nor a graph node of this "
                             f"model; its layers include {', '.join(paths[-5:])}")
        return ops[-1]

    def _check_inputs(self, x) -> None:
        first = self.graph.op(self.graph.input_layers[0]) if self.graph.input_layers else None
        check_batch(self.model, x, rank=4 if first is not None and first.kind == "conv" else None,
                    channels=_expected_channels(self.graph, first))
        self.check_precision(x.dtype)

    def check_precision(self, dtype: torch.dtype) -> None:
        """Raise a ValueError if this model has ops whose rule is not tested in ``dtype``."""
        untested = self._plan.untested_in(dtype)
        if not untested:
            return
        kinds = sorted({op.kind for op in untested})
        where = ", ".join(f"'{op.name}' ({op.source})" for op in untested[:3])
        more = f" and {len(untested) - 3} more" if len(untested) > 3 else ""
        raise ValueError(
            f"{self.method.upper()} is not tested in {dtype} for ops of kind {', '.join(kinds)}: "
            f"{where}{more}. Half-precision heat maps stay close to float32's only where a test "
            "shows it (bfloat16 for networks without residual additions, such as VGG and "
            "Inception-V3; float16 nowhere: relevance quotients leave its range). Explain in "
            "float32: model.float() and inputs.float(), or --dtype float32.")


class RAP(Propagation):
    """Relative Attributing Propagation (Nam et al., AAAI 2020), as ``rap-spec.md`` states it.

    >>> rap = RAP(torchvision.models.vgg16(weights="DEFAULT"))
    >>> relevance = rap.attribute(images, target=None)   # predicted class per image
    """

    def __init__(self, model: nn.Module):
        super().__init__(model)


class StableRAP(Propagation):
    """``rap-stable`` (rap-spec §7.5): RAP with a stabilised z-rule at additions of tensors, so
    that a residual sum near zero cannot hand out huge opposite shares; identical to RAP on
    networks without additions (VGG, Inception-V3). ``epsilon`` (0.01) bounds every share to
    ``R·(1 + ε)/ε``; ``epsilon=0`` is the paper's rule."""

    method = "rap-stable"
    defaults = {"epsilon": 0.01}


class LRP(Propagation):
    """Layer-wise Relevance Propagation as Zennit's composite of the same name (see
    :mod:`relprop.rules.lrp`): ``LRP(model, "lrp-epsilon-plus", epsilon=1e-6)``."""

    start_at_score = True
    defaults = lrp_rules.DEFAULTS

    def __init__(self, model: nn.Module, method: str = "lrp-epsilon-plus", **options):
        if method not in lrp_rules.COMPOSITES:
            raise ValueError(f"unknown LRP method '{method}'; available: "
                             f"{', '.join(lrp_rules.COMPOSITES)}")
        self.method = method
        super().__init__(model, **options)


def _options(method: str, defaults: dict, given: dict) -> dict:
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        known = ", ".join(f"{k}={v!r}" for k, v in defaults.items()) or "none"
        raise ValueError(f"'{method}' takes no option {', '.join(unknown)}; its options: {known}")
    return {**defaults, **given}


def check_batch(model: nn.Module, x, rank: int | None = None,
                channels: int | None = None) -> None:
    """Raise a ValueError that says what is wrong with ``x`` as a batch for ``model``: its type,
    dtype, rank (``rank`` where known) and size, channel count (``channels`` where known), finite
    values and device."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"inputs must be floating point, got {x.dtype}; convert with "
                         "inputs.float() and normalise as the model expects")
    if rank and x.dim() != rank:
        hint = " (add the batch dimension: inputs.unsqueeze(0))" if x.dim() == rank - 1 else ""
        raise ValueError(f"inputs must be a batch of shape (N, C, H, W); got shape "
                         f"{tuple(x.shape)}{hint}")
    if x.dim() < 2:
        raise ValueError(f"inputs must be a batch (N, ...) of at least two dimensions; got "
                         f"shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("inputs is an empty batch (N = 0); pass at least one image")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"the model expects {channels} input channels, but inputs have "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise ValueError(f"inputs contain {int(bad.sum())} NaN or Inf values; relevance "
                         "needs finite inputs")
    param = next(model.parameters(), None)
    if param is not None and (param.device != x.device or param.dtype != x.dtype):
        raise ValueError(f"inputs are {x.dtype} on {x.device} but the model is {param.dtype} "
                         f"on {param.device}; move one to the other, e.g. "
                         f"model.to(inputs.device, inputs.dtype)")


def _expected_channels(graph, first) -> int | None:
    """The input channel count, where the input layer reads the input channel for channel
    (through ReLU, BatchNorm, padding and the like); None where the model rearranges channels."""
    if first is None or first.kind != "conv" or not isinstance(first.args[1], Attr):
        return None
    weight = first.args[1].get()
    if not isinstance(weight, torch.Tensor):
        return None
    name = first.inputs[0]
    while name != graph.input:
        op = graph.op(name)
        widths = pad_spec(op)
        spatial_pad = widths is not None and isinstance(widths, (list, tuple)) and len(widths) <= 4
        channelwise = op.kind in ("passthrough", "batchnorm") or spatial_pad
        if not channelwise or len(op.inputs) != 1:
            return None
        name = op.inputs[0]
    return weight.shape[1] * first.kwargs["groups"]


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """(N, K): one score per class; a spatial output's class map is summed over its positions
    (rap-spec §7.4)."""
    return logits.flatten(2).sum(-1) if logits.dim() > 2 else logits


def _check_finite(logits: torch.Tensor) -> None:
    bad = ~torch.isfinite(logits.flatten(1)).all(1)
    if bad.any():
        images = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"the model's output is not finite (NaN or Inf) for image(s) {images[:10]} of the "
            "batch: no score to explain. Check the model's weights and buffers for NaN/Inf "
            "(e.g. torch.isfinite(p).all() for p in model.parameters()) and the inputs' scale.")


def _targets(target: Target, scores: torch.Tensor) -> torch.Tensor:
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
        raise ValueError(f"target must be None, an int, a list of ints or an integer tensor; "
                         f"got {target!r} ({e})") from None
    if t.numel() == 0:
        raise ValueError("target is empty; give one class, one class per image, or None for the "
                         "predicted class")
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.dtype.is_complex:
        raise ValueError(f"target must be class indices (int), got {t.dtype}")
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target has {t.numel()} entries for a batch of {n}; give one class, "
                         "one class per image, or None for the predicted class")
    if (t < 0).any() or (t >= k).any():
        raise ValueError(f"target {t.tolist()} is out of range: the model has {k} classes "
                         f"(0..{k - 1})")
    return t.long()


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _warn(message: str) -> None:
    """A warning that points at the caller's line, outside relprop."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def _warn_if_training(model: nn.Module) -> None:
    """Say that a training model is explained in eval mode."""
    if any(m.training for m in model.modules()):
        _warn(f"{type(model).__name__} has modules in training mode; relprop explains it in "
              "eval mode (running BatchNorm statistics, no dropout) and gives every module "
              "its own mode back afterwards")


@contextmanager
def exact_float32():
    """Full float32 arithmetic in convolutions and matrix products while explaining.

    cuDNN runs float32 convolutions in TF32 by default on recent GPUs; its 10-bit mantissa makes
    residual networks' maps another picture (ResNet-50 with TF32 rounding emulated on the CPU:
    correlation 0.35-0.49 with float32), as bfloat16 does. The caller's settings come back.
    """
    backends = torch.backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        owners = (backends.cudnn.conv, backends.cuda.matmul, backends.mkldnn.conv,
                  backends.mkldnn.matmul)
        settings = [(owner, "fp32_precision") for owner in owners]
        exact = "ieee"
    else:
        settings = [(backends.cudnn, "allow_tf32"), (backends.cuda.matmul, "allow_tf32")]
        exact = False
    saved = [getattr(owner, name) for owner, name in settings]
    for owner, name in settings:
        setattr(owner, name, exact)
    try:
        yield
    finally:
        for (owner, name), value in zip(settings, saved):
            setattr(owner, name, value)


_EXPLAINERS: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()
# method -> a function from the model to its explainer
PROPAGATION = {"rap": RAP, "rap-stable": StableRAP,
               **{m: functools.partial(LRP, method=m) for m in lrp_rules.COMPOSITES}}


def methods() -> list[str]:
    """Every method ``explain(..., method=...)`` and ``relprop explain --method`` accept."""
    from . import gradients
    return list(PROPAGATION) + list(gradients.METHODS)


DEFAULT_METHOD = "rap-stable"  # the paper's RAP where a network has no additions, and stable
# where it has (README, "Which RAP": every figure of relprop evaluate favoured it on residual nets)


def explain(model: nn.Module, inputs: torch.Tensor, target: Target = None,
            method: str = DEFAULT_METHOD, layer: str | None = None, **options) -> Explanation:
    """Explain ``model``'s decision on ``inputs`` (a batch) for ``target`` (None: predicted) with
    ``method`` (one of :func:`methods`; ``"rap"`` for the paper's rule exactly, which
    ``"rap-stable"``, the default, equals on networks without residual additions); ``options``
    are the method's keyword options. ``layer``
    (a module path) gives the relevance of that layer's output instead of the input's.

    The traced graph is kept per model, so calling this in a loop traces once; it holds the
    model weakly (a model the caller drops is freed) and re-traces a model whose modules changed.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"explain expects a torch.nn.Module, got {type(model).__name__}")
    model = unwrap(model)
    if method not in PROPAGATION:
        from . import gradients
        if method not in gradients.METHODS:
            raise ValueError(f"unknown method '{method}'; available: {', '.join(methods())}")
        return gradients.explain(model, inputs, target, method, layer=layer, **options)
    per_model = _EXPLAINERS.setdefault(model, {})
    explainer = per_model.get(method)
    if explainer is None:
        explainer = PROPAGATION[method](model)
        explainer._owner = None
        per_model[method] = explainer
    explainer.options = _options(method, explainer.defaults, options)
    return explainer.explain(inputs, target, layer)


__all__ = ["RAP", "StableRAP", "LRP", "Propagation", "Explanation", "explain", "methods"]
