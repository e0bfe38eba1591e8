"""The propagation methods: relevance propagated backwards through the traced graph of an
unmodified model, rule by rule (RAP, rap-stable and the LRP composites), and their registration.

The explainer knows the steps every propagation method shares: the traced graph (one per model,
:func:`relprop.graph.traced`), the plan of what to keep (one per graph and method,
:func:`relprop.engine.plan`), one forward pass and one reverse sweep. What a method does at each
op is its rules' business (:mod:`relprop.rules`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import engine
from .errors import ForwardError, UntraceableModel
from .checks import check_batch
from .explainer import Call, Explainer
from .analysis import attention_products
from .graph import needs_example, traced
from .ir import Attr
from .registry import Option, register_method
from .ops import pad_spec
from .tokens import token_map
from .rules.lrp import COMPOSITES


class Propagation(Explainer):
    """An explainer that propagates relevance through the traced graph with the rules of one
    method. The model is traced when the explainer is made, so an op without a rule fails
    there, and again whenever its module tree changed (a replaced head, an inserted layer).
    Weights are read at every call, so in-place edits of them are always seen."""

    start_at_score = False  # the output relevance: the score itself, or 1 that the rules scale

    def __init__(self, model: nn.Module, method: str | None = None, **options):
        super().__init__(model, method, **options)
        try:
            self._plan_of(self.model)
        except UntraceableModel:
            pass  # torch.fx cannot trace it: captured on each input's shape (relprop.capture)

    def _plan_of(self, model: nn.Module, x: torch.Tensor | None = None,
                 factored: bool = True) -> engine.Plan:
        return engine.plan(traced(model, x), self.method, factored)

    @property
    def plan(self) -> engine.Plan:
        """What this method keeps and reads on the model's current graph (``plan.notes``: its
        analysis of the graph)."""
        return self._plan_of(self.model)

    @property
    def graph(self):
        return self.plan.graph

    def check(self, dtype: torch.dtype | None = None, layer: str | None = None) -> None:
        if needs_example(self.model):
            return  # checked on the first input, whose capture gives the graph
        super().check(dtype, layer)
        if dtype is not None:
            self.check_precision(dtype)

    def node(self, layer: str) -> str:
        """The graph node whose value is ``layer``'s output: a module path (its last op) or a
        node name."""
        return _node(self.graph, layer)

    def check_precision(self, dtype: torch.dtype, x: torch.Tensor | None = None) -> None:
        """Raise a ValueError if this model has ops whose rule is not tested in ``dtype``."""
        untested = self._plan_of(self.model, x).untested_in(dtype)
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

    def _check_layer(self, model: nn.Module, layer: str) -> None:
        if not needs_example(model):  # else checked once the input's capture gives the graph
            _node(self._plan_of(model).graph, layer)

    def _check_inputs(self, model: nn.Module, x) -> None:
        if needs_example(model):
            check_batch(model, x)  # what is wrong with any batch, before a capture runs on it
        graph = self._plan_of(model, x).graph
        first = graph.op(graph.input_layers[0]) if graph.input_layers else None
        rank = _INPUT_RANKS.get(first.fn) if first is not None else None
        check_batch(model, x, rank=rank,
                    channels=_expected_channels(graph, first))
        self.check_precision(x.dtype, x)

    def _forward(self, model: nn.Module, x: torch.Tensor, layer: str | None = None):
        plan = self._plan_of(model, x, factored=layer is None)  # a layer's relevance is R
        try:
            kept = engine.forward(plan, x)
        except ForwardError as e:
            raise ValueError(
                f"the model could not run on inputs of shape {tuple(x.shape)}: "
                f"{e.op.source} at node '{e.op.name}' failed with: {e.error}. Check that the "
                "inputs have the size and channel count the model expects."
            ) from None
        return kept.env[plan.graph.output], (plan, kept)

    def _attribute(self, call: Call) -> torch.Tensor:
        plan, kept = call.state
        stop = None if call.layer is None else _node(plan.graph, call.layer)
        weights = call.weights
        if self.start_at_score:  # the start relevance is w ⊙ y (rap-spec §9.1)
            start = weights * call.logits
        else:  # d = w, summing to 1 in magnitude (RAP's output rule normalises to the score)
            start = weights / weights.flatten(1).abs().sum(1).view(-1, *([1] * (weights.dim() - 1)))
        if call.reuse:  # the sweep frees what it has passed; another sweep follows
            kept = engine.Forward(dict(kept.env), kept.shapes)
        with torch.no_grad():  # rules that route relevance through autograd enable it
            relevance = engine.backward(plan, kept, start, call.score, call.options, stop)
        if stop is not None and attention_products(plan.graph):  # a block's tokens: patches
            relevance = token_map(relevance, *call.inputs.shape[2:])
        return relevance


class RAP(Propagation):
    """Relative Attributing Propagation (Nam et al., AAAI 2020), as ``rap-spec.md`` states it.

    >>> rap = RAP(torchvision.models.vgg16(weights="DEFAULT"))
    >>> relevance = rap.attribute(images, target=None)   # predicted class per image
    """

    method = "rap"

    def __init__(self, model: nn.Module):
        super().__init__(model)


class StableRAP(Propagation):
    """``rap-stable`` (rap-spec §7.5): RAP with a stabilised z-rule at additions of tensors, so
    that a residual sum near zero cannot hand out huge opposite shares; identical to RAP on
    networks without additions (VGG, Inception-V3). ``epsilon`` (0.01) bounds every share to
    ``R·(1 + ε)/ε``; ``epsilon=0`` is the paper's rule."""

    method = "rap-stable"

    def __init__(self, model: nn.Module, **options):
        super().__init__(model, **options)


class LRP(Propagation):
    """Layer-wise Relevance Propagation as Zennit's composite of the same name (see
    :mod:`relprop.rules.lrp`): ``LRP(model, "lrp-epsilon-plus", epsilon=1e-6)``."""

    start_at_score = True

    def __init__(self, model: nn.Module, method: str = "lrp-epsilon-plus", **options):
        if method not in COMPOSITES:
            raise ValueError(f"unknown LRP method '{method}'; available: "
                             f"{', '.join(COMPOSITES)}")
        super().__init__(model, method, **options)


class AttnLRP(Propagation):
    """AttnLRP (Achtibat et al., ICML 2024) as LXT 2.1 computes it on torchvision's ViT (see
    :mod:`relprop.rules.attnlrp`), on unmodified models, in a batch."""

    method = "lrp-attn"
    start_at_score = True

    def __init__(self, model: nn.Module, method: str = "lrp-attn"):
        super().__init__(model, method)


def _node(graph, layer: str) -> str:
    if layer in graph and layer != graph.input:
        return layer
    ops = [op.name for op in graph.ops if op.module_path == layer]
    if not ops:  # a container (a stage, a block): its last op
        ops = [op.name for op in graph.ops if (op.module_path or "").startswith(layer + ".")]
    if not ops:
        paths = list(dict.fromkeys(op.module_path for op in graph.ops
                                   if op.module_path and op.kind in ("conv", "linear")))
        raise ValueError(f"layer '{layer}' is neither a module path nor a graph node of this "
                         f"model; its layers include {', '.join(paths[-5:])}")
    return ops[-1]


_INPUT_RANKS = {F.conv1d: 3, F.conv2d: 4, F.conv3d: 5, F.conv_transpose1d: 3,
                F.conv_transpose2d: 4}  # (N, C, ...) under a convolution


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
    if first.fn in (F.conv_transpose1d, F.conv_transpose2d):  # weights (in, out / groups, ...)
        return weight.shape[0]
    return weight.shape[1] * first.kwargs["groups"]


def _propagation(model: nn.Module, method: str, **options) -> Propagation:
    return Propagation(model, method, **options)


def _lrp(model: nn.Module, method: str, **options) -> LRP:
    return LRP(model, method, **options)


def _attn_lrp(model: nn.Module, method: str, **options) -> AttnLRP:
    return AttnLRP(model, method, **options)


register_method(
    "rap", _propagation, family="propagation", supports_layer=True,
    summary="RAP: relevant and irrelevant parts separated and shifted so that every layer "
            "conserves the score; object-shaped positive regions with counter-evidence in blue, "
            "the paper's method.")
register_method(
    "rap-stable", _propagation, family="propagation", supports_layer=True,
    options=(Option("epsilon", 0.01, "bounds every share of a residual addition to "
                                     "R·(1 + ε)/ε; 0 is the paper's rule"),),
    summary="RAP with a stabilised rule at residual additions (rap-spec §7.5): the same as "
            "`rap` on networks without additions (VGG, Inception-V3); on residual networks its "
            "maps change neither under rounding (ResNet-50 fixture: float32 maps correlate "
            "≥ 0.9999999 with float64, the paper's rule 0.28–0.36 on two images) nor under "
            "invisible noise (a ResNet-10 trained on digits, noise of 0.13 grey levels: median "
            "correlation 0.999, the paper's rule 0.23; `tests/test_stability.py`).")
_LRP_SUMMARIES = {
    "lrp-epsilon": "LRP with the ε-rule everywhere (Captum's default LRP): conserves in ReLU "
                   "networks, but noisy, gradient×input-like maps in deep ones.",
    "lrp-epsilon-plus": "ε at dense layers, z⁺ at convolutions (Zennit's EpsilonPlus): positive "
                        "evidence only, crisp edges; the usual LRP choice for CNNs.",
    "lrp-epsilon-plus-flat": "as above, with the flat rule at the first layer: smoother at pixel "
                             "level, independent of the pixel values there.",
    "lrp-epsilon-alpha2beta1": "α2β1 at convolutions: positive and negative evidence, the "
                               "negative weighted once against twice the positive.",
    "lrp-epsilon-alpha2beta1-flat": "the same with the flat rule at the first layer.",
    "lrp-epsilon-gamma-box": "γ at convolutions and z^B at the first layer: Montavon et al.'s "
                             "recommended composite.",
}
for _name, _composite in COMPOSITES.items():
    register_method(_name, _lrp, family="propagation", supports_layer=True,
                    options=_composite.options, summary=_LRP_SUMMARIES[_name])
register_method(
    "lrp-attn", _attn_lrp, family="propagation", supports_layer=True,
    summary="AttnLRP (Achtibat et al. 2024) as LXT computes it on torchvision's ViT: LRP-0 at "
            "layers, identity at activations, LayerNorm with σ held constant, attention's "
            "weights as a weight of V (CP-LRP); equal to LXT's relevance to 1e-6 of its maximum "
            "(`tests/test_transformers.py`). For transformers; runs on CNNs too.")
register_method(
    "attnlrp", _attn_lrp, family="propagation", supports_layer=True,
    summary="AttnLRP with its softmax rule, as LXT computes it for language models (its "
            "default map there): lrp-attn's rules, but the attention weights are a signal, the "
            "softmax takes AttnLRP's rule and both products of attention the uniform rule.")
