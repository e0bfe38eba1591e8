"""relprop's methods as Captum attributions: ``relprop.captum.RAP(model).attribute(inputs,
target=...)`` is a :class:`captum.attr.Attribution`, so Captum's visualisation, its metrics
and ``NoiseTunnel`` take it as they take Captum's own methods. The convergence delta is
``sum - score``, with the sign of Captum's gradient methods (Captum's ``LRP`` reports
``score - sum``).

Needs Captum (``pip install captum``; relprop's gradient family already uses it).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from captum.attr import Attribution
from captum.log import log_usage

from .api import DEFAULT_METHOD, explainer


class RelpropAttribution(Attribution):
    """Any relprop method (``method=``, one of ``relprop.methods()``) in Captum's shape.

    ``attribute(inputs, target=None, return_convergence_delta=False, **options)``: the
    relevance shaped like ``inputs`` (a tensor, or a tuple of one tensor as Captum allows), and
    with ``return_convergence_delta=True`` also Captum's delta: per example, the relevance's sum
    minus the explained score (0 up to rounding for a conservative method such as RAP).
    """

    method = DEFAULT_METHOD

    def __init__(self, model: nn.Module, method: str | None = None, **options) -> None:
        super().__init__(model)
        self.explainer = explainer(model, method or type(self).method, **options)

    @log_usage()  # as Captum's own methods: NoiseTunnel calls the undecorated ``__wrapped__``
    def attribute(self, inputs, target=None, return_convergence_delta: bool = False,
                  **options):
        single = isinstance(inputs, torch.Tensor)
        if not single and not (isinstance(inputs, tuple) and len(inputs) == 1):
            raise ValueError("relprop explains models of one input: pass a tensor or a tuple of "
                             "one tensor")
        found = self.explainer.explain(inputs if single else inputs[0], target, **options)
        relevance = found.relevance if single else (found.relevance,)
        return (relevance, found.delta) if return_convergence_delta else relevance

    def has_convergence_delta(self) -> bool:
        return True

    def compute_convergence_delta(self, attributions, inputs, target=None) -> torch.Tensor:
        """The relevance's sum minus the explained score, per example: the sign of Captum's
        gradient methods (``sum - (f(x) - f(baseline))``); Captum's ``LRP`` reports
        ``score - sum``."""
        from .graph import eval_mode
        from .targets import main_output, resolve
        relevance = attributions if isinstance(attributions, torch.Tensor) else attributions[0]
        x = inputs if isinstance(inputs, torch.Tensor) else inputs[0]
        model = self.explainer.model
        with torch.no_grad(), eval_mode(model):
            output = main_output(model(x))  # one forward pass, no explanation
        score = resolve(target, output, linear=self.explainer.linear_targets).score
        return relevance.flatten(1).sum(1) - score

    @property
    def multiplies_by_inputs(self) -> bool:
        return True  # relevance is a share of the score, like gradient x input


class RAP(RelpropAttribution):
    """The paper's RAP (``rap``)."""

    method = "rap"


class StableRAP(RelpropAttribution):
    """``rap-stable``: RAP with the stabilised rule at residual additions (relprop's default)."""

    method = "rap-stable"


class LRP(RelpropAttribution):
    """An LRP composite (default ``lrp-epsilon-plus``); ``LRP(model, "lrp-epsilon-gamma-box")``."""

    method = "lrp-epsilon-plus"


__all__ = ["RelpropAttribution", "RAP", "StableRAP", "LRP"]
