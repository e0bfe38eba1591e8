"""The explainer every method is: one template for the steps all methods share, around one
abstract :meth:`Explainer._attribute` that each method family writes.

The template (Captum's ``Attribution`` and Zennit's ``Attributor`` are its models) checks the
inputs, warns where a model is in training mode, runs the model in eval mode and exact float32,
checks that its output is finite, resolves the targets and their scores, and hands all of it to
``_attribute`` as one :class:`Call`. Per-call values (options, scores, the forward pass) live in
that ``Call`` only, never on the explainer, so that two threads may explain with one explainer.
"""
from __future__ import annotations

import os
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from .checks import check_batch, check_finite
from .detection import is_torchvision_detector
from .explanation import Explanation
from .graph import eval_mode, unwrap
from .registry import get_method, specs
from .targets import Target, main_output, resolve


@dataclass
class Call:
    """One ``explain`` call as the method sees it."""

    model: nn.Module
    inputs: torch.Tensor  # the batch (a clone where the caller's was an inference tensor)
    logits: torch.Tensor  # the model's main output (rap-spec §9.1)
    target: torch.Tensor  # (N,) the explained class per image, -1 where it is not one class
    score: torch.Tensor  # (N,) the explained score per image
    options: dict  # the method's options, defaults filled in
    layer: str | None  # where the method was asked to stop, if anywhere
    state: Any = None  # what the method's own forward pass kept (propagation: the engine's)
    weights: torch.Tensor | None = None  # w: the score is Σ w ⊙ logits (rap-spec §9.1)
    function: Any = None  # a callable target the method differentiates as it is (gradients)
    reuse: bool = False  # the state serves another target after this one: keep it whole

    def scores_of(self, output: torch.Tensor) -> torch.Tensor:
        """(N,) the explained score on ``output`` (the main output of a forward pass that
        autograd recorded): the target callable, or ``Σ w ⊙ output``."""
        if self.function is not None:
            return self.function(output)
        return (self.weights * output).flatten(1).sum(1)


class Explainer:
    """Explains one model with one method (``relprop.methods()`` lists them).

    ``Explainer(model, method=..., **options)``; ``attribute(inputs, target)`` in Captum's shape,
    ``explain(...)`` for the whole :class:`Explanation`. Options given at construction are the
    defaults of every call; a call may override them. The model is held by the explainer and
    never changed: its parameters, hooks and every submodule's ``training`` flag stay as they
    were.
    """

    method = ""  # the registered name; a subclass for one method sets it
    linear_targets = True  # explains Σ w ⊙ y, so a callable target must be that (§9.1)

    def __init__(self, model: nn.Module, method: str | None = None, **options):
        if not isinstance(model, nn.Module):
            raise TypeError(f"{type(self).__name__} expects a torch.nn.Module, got "
                            f"{type(model).__name__}")
        if is_torchvision_detector(unwrap(model)):
            raise ValueError(f"{type(model).__name__} is a detector: relprop.explain(model, "
                             "images, target=...) and relprop.explainer(model, method) explain "
                             "its detections (see relprop.detection)")
        self.method = method or type(self).method
        self.spec = get_method(self.method)
        self.options = self.spec.resolve_options(options)
        self.model = unwrap(model)

    def attribute(self, inputs: torch.Tensor, target: Target = None, layer: str | None = None,
                  **options) -> torch.Tensor:
        """Relevance of every input entry, shaped like ``inputs`` (or like ``layer``'s output)."""
        return self.explain(inputs, target, layer, **options).relevance

    def explain(self, inputs: torch.Tensor, target: Target = None, layer: str | None = None,
                **options) -> Explanation:
        """The :class:`Explanation` of ``inputs`` (a batch) for ``target`` (None: the predicted
        class; see :mod:`relprop.targets` for weights, regions and callables); ``layer`` where
        the method supports it; ``options`` override the explainer's."""
        return self.explain_each(inputs, [target], layer, **options)[0]

    def explain_each(self, inputs: torch.Tensor, targets: list, layer: str | None = None,
                     **options) -> list[Explanation]:
        """One :class:`Explanation` of ``inputs`` per target in ``targets``, all from one
        forward pass of the model (a propagation method sweeps back once per target from
        what that pass kept): the k detections of an image, the top classes of an image."""
        opts = self.spec.resolve_options({**self.options, **options})
        model = self.model
        if layer is not None:
            self._check_layer(model, layer)
        self._check_inputs(model, inputs)
        warn_if_training(model)
        self._warn(model)
        results = []
        # inference_mode(False): the methods route relevance or gradients through autograd.
        with torch.inference_mode(False), eval_mode(model), exact_float32():
            x = inputs.clone() if inputs.is_inference() else inputs
            with torch.no_grad():
                output, state = self._forward(model, x, layer)
            logits = main_output(output)
            check_finite(logits)
            for i, target in enumerate(targets):
                explained = resolve(target, logits.detach(), linear=self.linear_targets)
                relevance = self._attribute(Call(model, x, logits, explained.classes,
                                                 explained.score, opts, layer, state,
                                                 explained.weights, explained.function,
                                                 reuse=i < len(targets) - 1))
                results.append(Explanation(relevance.detach(), explained.classes,
                                           explained.score, logits.detach(), self.method,
                                           inputs.detach()))
        return results

    def check(self, dtype: torch.dtype | None = None, layer: str | None = None) -> None:
        """Raise a ValueError now, before any image is read, where ``layer`` or ``dtype`` cannot
        be explained with this method on this model."""
        if layer is not None:
            self._check_layer(self.model, layer)

    def exclusive(self, layer: str | None = None) -> bool:
        """Whether a call changes the model's state while it runs (hooks on its modules), so
        that no other call may use the model meanwhile."""
        return False

    # What each family writes ------------------------------------------------------------

    def _attribute(self, call: Call) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must implement _attribute(call)")

    def _forward(self, model: nn.Module, x: torch.Tensor, layer: str | None = None):
        """The model output and whatever the method keeps of the forward pass (for an
        explanation that stops at ``layer``, where given)."""
        try:
            return model(x), None
        except Exception as e:  # the model's own error on these inputs
            raise ValueError(f"the model could not run on inputs of shape {tuple(x.shape)}: "
                             f"{type(e).__name__}: {e}") from None

    def _check_inputs(self, model: nn.Module, inputs) -> None:
        check_batch(model, inputs)

    def _check_layer(self, model: nn.Module, layer: str) -> None:
        if not self.spec.supports_layer:
            with_layer = [s.name for s in specs() if s.supports_layer]
            raise ValueError(f"there is no layer variant of '{self.method}'; layer= works with "
                             f"{', '.join(with_layer)}")

    def _warn(self, model: nn.Module) -> None:
        """Say where the method will not do on this model what its name promises."""


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def warn_at_caller(message: str) -> None:
    """A warning that points at the caller's line, outside relprop."""
    frame, level = sys._getframe(0), 1
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(message, stacklevel=level)


def warn_if_training(model: nn.Module) -> None:
    """Say that a training model is explained in eval mode."""
    if any(m.training for m in model.modules()):
        warn_at_caller(f"{type(model).__name__} has modules in training mode; relprop explains "
                       "it in eval mode (running BatchNorm statistics, no dropout) and gives "
                       "every module its own mode back afterwards")


_PRECISION_LOCK = threading.Lock()
_PRECISION_USERS = {"count": 0, "saved": None}


def _setting(owner, name):
    """A precision setting's value; None for a legacy flag that the caller's mix of the old and
    new APIs leaves unreadable (its precisions are restored one by one)."""
    try:
        return getattr(owner, name)
    except RuntimeError:
        return None


@contextmanager
def exact_float32():
    """Full float32 arithmetic in convolutions and matrix products while explaining.

    cuDNN runs float32 convolutions in TF32 by default on recent GPUs; its 10-bit mantissa makes
    residual networks' maps another picture (ResNet-50 with TF32 rounding emulated on the CPU:
    correlation 0.35-0.49 with float32), as bfloat16 does. The settings are global, so
    concurrent explanations share one change: the first to enter sets exact float32, the last to
    leave gives the caller's settings back.
    """
    backends = torch.backends
    if hasattr(getattr(backends.cudnn, "conv", None), "fp32_precision"):  # torch >= 2.9
        # cuDNN's legacy flag first: model code still reads ``cudnn.allow_tf32`` (transformers
        # 4.x's attention), which raises unless it agrees with the conv and RNN settings
        settings = [(backends.cudnn, "allow_tf32", False)] + [
            (owner, "fp32_precision", "ieee") for owner in (
                backends.cudnn.conv, backends.cudnn.rnn, backends.cuda.matmul,
                backends.mkldnn.conv, backends.mkldnn.matmul)]
    else:
        settings = [(backends.cudnn, "allow_tf32", False),
                    (backends.cuda.matmul, "allow_tf32", False)]
    with _PRECISION_LOCK:
        if _PRECISION_USERS["count"] == 0:
            _PRECISION_USERS["saved"] = [_setting(owner, name) for owner, name, _ in settings]
            for owner, name, exact in settings:
                setattr(owner, name, exact)
        _PRECISION_USERS["count"] += 1
    try:
        yield
    finally:
        with _PRECISION_LOCK:
            _PRECISION_USERS["count"] -= 1
            if _PRECISION_USERS["count"] == 0:
                for (owner, name, _), value in zip(settings, _PRECISION_USERS["saved"]):
                    if value is not None:  # in order: the legacy flag, then the precisions
                        setattr(owner, name, value)
