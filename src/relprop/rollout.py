"""Attention rollout (Abnar & Zuidema, ACL 2020) and its gradient-weighted form (Chefer, Gur &
Wolf, ICCV 2021): the transformer baselines, read off the traced graph of an unmodified model.

The graph already knows where attention is (a product whose one factor is softmax weights,
rap-spec §8.5), so one forward pass keeps each layer's weights ``A`` (N, heads, T, T):
- ``attention-rollout``: ``Ā = ½·mean_h A + ½·I``, rows renormalised, multiplied from the first
  layer to the last;
- ``attention-rollout-grad``: ``Ā = mean_h (∇A ⊙ A)⁺`` with ``∇A`` the gradient of the explained
  score, rolled out as ``R ← R + Ā·R`` from ``R = I``.
The map is the row of the class token (the mean row where the model has no prefix token) over
the patch tokens, upsampled bilinearly to the image. Both need attention over one token sequence
in every layer (ViT, DeiT); windowed attention (Swin, MaxViT) mixes tokens through window
partitions that a rollout of token-by-token matrices does not follow, and is refused in words.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import engine
from .errors import ForwardError, NotApplicable
from .explainer import Call, Explainer
from .analysis import attention_products
from .graph import needs_example, traced
from .registry import register_method
from .rules.common import weight_and_signal
from .tokens import patch_grid


class AttentionRollout(Explainer):
    """``attention-rollout`` and ``attention-rollout-grad`` on a ViT-like model."""

    linear_targets = False  # the gradient variant differentiates a callable target as it is

    def __init__(self, model: nn.Module, method: str, **options):
        super().__init__(model, method, **options)
        if needs_example(self.model):
            return  # captured per input (relprop.capture): checked on the first one
        graph, weights = self._attention(self.model)
        shapes = _probe(self.model, graph, weights)
        if shapes is not None:
            self._check_global(shapes, 1)

    def _check_global(self, shapes, n: int) -> None:
        tokens = shapes[0][-1]
        if any(len(s) != 4 or s[0] != n or tuple(s[-2:]) != (tokens, tokens) for s in shapes):
            raise NotApplicable(
                f"{self.method} needs global attention over one token sequence in every layer "
                f"(ViT, DeiT); this model attends within windows (attention of shapes "
                f"{sorted({tuple(s) for s in shapes})}). Use rap-stable or lrp-attn.")

    def _attention(self, model: nn.Module, x: torch.Tensor | None = None) -> tuple:
        graph = traced(model, x)
        weights = [op.args[weight_and_signal(op)[0]].name for op in attention_products(graph)
                   if weight_and_signal(op)]
        if not weights:
            raise NotApplicable(f"{self.method} needs a transformer: the traced graph of "
                             f"{type(model).__name__} has no attention (softmax weights of a "
                             "product); use rap-stable, lrp-attn or grad-cam")
        return graph, weights

    def _forward(self, model: nn.Module, x: torch.Tensor, layer: str | None = None):
        graph, weights = self._attention(model, x)
        with torch.enable_grad():  # the gradient variant differentiates the score
            try:
                kept = engine.values(graph, x.detach().requires_grad_(), set(weights))
            except ForwardError as e:
                raise ValueError(f"the model could not run on inputs of shape "
                                 f"{tuple(x.shape)}: {e.op.source} at node '{e.op.name}' "
                                 f"failed with: {e.error}") from None
        return kept.env[graph.output], [kept.env[n] for n in weights]

    def _attribute(self, call: Call) -> torch.Tensor:
        attention = call.state
        n, _, height, width = call.inputs.shape
        tokens = attention[0].shape[-1]
        self._check_global([a.shape for a in attention], n)
        grid = patch_grid(tokens, height, width)
        if grid is None:
            raise ValueError(f"{self.method}: {tokens} tokens are no grid of patches of a "
                             f"{height}x{width} image (with up to 8 class or register tokens)")
        prefix, rows, cols = grid
        eye = torch.eye(tokens, dtype=attention[0].dtype, device=attention[0].device)
        rollout = eye.expand(n, tokens, tokens)
        if self.method == "attention-rollout-grad":
            with torch.enable_grad():
                grads = torch.autograd.grad(call.scores_of(call.logits).sum(), attention)
            for a, g in zip(attention, grads):
                rollout = rollout + (g * a).clamp(min=0).mean(1) @ rollout
        else:
            for a in attention:
                mixed = (a.mean(1) + eye) / 2
                rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
        rollout = rollout.detach()
        row = rollout[:, 0] if prefix else rollout.mean(1)
        patches = row[:, prefix:].reshape(n, 1, rows, cols)
        heat = F.interpolate(patches, size=(height, width), mode="bilinear", align_corners=False)
        return (heat / call.inputs.shape[1]).expand_as(call.inputs).to(call.inputs.dtype)


def _probe(model: nn.Module, graph, weights) -> list | None:
    """The attention weights' shapes for one image of the size the model says it takes (a
    torchvision ViT's ``image_size``, timm's configuration, else 224), computed on fake tensors
    (no memory, no arithmetic); None where no such size runs."""
    import logging

    from torch._subclasses.fake_tensor import FakeTensorMode
    sizes = [getattr(model, "image_size", None),
             (getattr(model, "pretrained_cfg", None) or {}).get("input_size", (0, 0, None))[-1],
             224, 256, 32, 64]
    channels = next((p.shape[1] for p in model.parameters() if p.dim() == 4), 3)
    log = logging.getLogger("torch._subclasses.fake_tensor")
    level = log.level
    log.setLevel(logging.CRITICAL)  # a size that fails is no error to show
    try:
        for size in dict.fromkeys(s for s in sizes if isinstance(s, int)):
            try:
                with FakeTensorMode(allow_non_fake_inputs=True):
                    kept = engine.values(graph, torch.empty(1, channels, size, size),
                                         set(weights))
                    return [tuple(kept.env[n].shape) for n in weights]
            except Exception:  # noqa: BLE001  (a size the model does not take: the next)
                continue
    finally:
        log.setLevel(level)
    return None


def _build(model: nn.Module, method: str, **options) -> AttentionRollout:
    return AttentionRollout(model, method, **options)


register_method(
    "attention-rollout", _build, family="attention",
    summary="attention rollout (Abnar & Zuidema 2020): each layer's head-averaged attention "
            "with the residual's identity, multiplied through the layers; the class token's "
            "row over the patches. Class-independent; ViT and DeiT (global attention).")
register_method(
    "attention-rollout-grad", _build, family="attention",
    summary="gradient-weighted attention rollout (Chefer et al. 2021): the positive part of "
            "gradient × attention, averaged over heads, rolled out with the identity; the "
            "transformer baseline of the gradient family. ViT and DeiT (global attention).")
