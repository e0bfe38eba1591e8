"""The public entry points: ``relprop.explain(model, inputs, ...)`` for any registered method,
and the explainer classes in Captum's shape (``RAP(model).attribute(inputs, target=...)``)."""
from __future__ import annotations

import torch
import torch.nn as nn

from . import propagation  # noqa: F401  (registers rap, rap-stable, the LRP composites first)
from . import gradients  # noqa: F401,I001  (then the gradient family)
from . import rollout  # noqa: F401,I001  (then the attention baselines)
from .detection import DetectionExplainer, is_detector
from .explainer import Explainer, Target
from .explanation import Explanation, class_scores
from .graph import unwrap
from .registry import get_method, methods
from .propagation import LRP, RAP, Propagation, StableRAP
from .text import TextExplainer, is_text_model

DEFAULT_METHOD = "rap-stable"  # the paper's RAP where a network has no additions, and stable
# where it has (README, "Which RAP": every figure of relprop evaluate favoured it on residual nets)


def explainer(model: nn.Module, method: str = DEFAULT_METHOD, **options) -> Explainer:
    """The explainer of ``method`` (one of :func:`methods`) for ``model``, with ``options`` as
    its defaults. Cheap to make: the traced graph and the propagation plans are kept per model
    (weakly) and shared by every explainer."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"explain expects a torch.nn.Module, got {type(model).__name__}")
    get_method(method)  # an unknown method is refused before anything else
    if is_detector(unwrap(model)):  # detections, each by the logit behind its score
        return DetectionExplainer(unwrap(model), method, **options)
    if is_text_model(unwrap(model)):  # token ids, explained at their embeddings
        return TextExplainer(unwrap(model), method, **options)
    return method_explainer(unwrap(model), method, **options)


def method_explainer(model: nn.Module, method: str, **options) -> Explainer:
    """``method``'s own explainer of ``model``, which explains the model's output tensor."""
    return get_method(method).build(model, method=method, **options)


def explain(model: nn.Module, inputs: torch.Tensor, target: Target = None,
            method: str = DEFAULT_METHOD, layer: str | None = None, **options) -> Explanation:
    """Explain ``model``'s decision on ``inputs`` (a batch) for ``target`` (None: predicted) with
    ``method`` (one of :func:`methods`; ``"rap"`` for the paper's rule exactly, which
    ``"rap-stable"``, the default, equals on networks without residual additions); ``options``
    are the method's keyword options. ``layer`` (a module path) gives the relevance of that
    layer's output instead of the input's (for Grad-CAM: the layer the CAM is computed at).

    For a detector (torchvision's, a Hugging Face DETR) the target is a detection
    (:mod:`relprop.detection`: an index, ``Detections(top, min_score)``, ``BoxTarget(box,
    label)`` or pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``) and the result has one row
    per detection.

    For a Hugging Face causal LM or sequence classifier, ``inputs`` are ``input_ids`` (N, T)
    and ``options`` may hold ``attention_mask`` and ``tokenizer`` (for token-string targets
    and the tokens' names); the target is a token id or string (default: the predicted next
    token) or a class, and the relevance is at the input embeddings (:mod:`relprop.text`).

    Calling this in a loop traces the model once; the trace is held weakly (a model the caller
    drops is freed) and made again for a model whose modules changed.
    """
    return explainer(model, method).explain(inputs, target, layer, **options)


__all__ = ["RAP", "StableRAP", "LRP", "Propagation", "Explainer", "Explanation", "explain",
           "explainer", "methods", "class_scores", "DEFAULT_METHOD"]
