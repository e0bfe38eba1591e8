"""The gradient family, computed by Captum (Meta's attribution library), behind relprop's API:
the same ``explain(model, inputs, target, method=...)`` and the same :class:`Explanation`, so
that RAP and LRP can be put beside them on one model, one image, one colour scale.

Captum does these well; relprop only chooses the layer for Grad-CAM from the traced graph, wraps
models with a spatial output so that a class's score is its map's sum (as for RAP), and turns
what Captum cannot do on a model into an error that says why. Each method is one function that
serves both the input and, where Captum has one, its layer variant, so the two cannot drift
apart in their options.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn

from .errors import UnsupportedOperation, UntraceableModel
from .explainer import Call, Explainer, warn_at_caller
from .targets import main_output
from .analysis import attention_products
from .graph import traced
from .registry import register_method

# Activations Captum's modified backward passes act on; any other activation module is passed
# through with its plain gradient, as if the method were not there.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh,
               nn.Softplus, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.PReLU,
               nn.SELU, nn.CELU)


@dataclass(frozen=True)
class Recipe:
    """How Captum computes one method. ``attribute(f, x, extra, options, layer)`` with ``f``
    the model with the explained score as its one output (:class:`Scored`), ``extra`` the
    forward arguments Captum passes on to it and ``layer`` a module of ``f`` or None.
    ``exclusive``: a call changes state another call would see (Captum hooks the model's
    modules, or the method draws from the global random generator), even at the input.
    ``handles``/``falls_back_to``: the activations its rule acts on, and what the map is where
    the model has none of them."""

    attribute: Callable
    exclusive: bool = False
    handles: tuple = ()
    falls_back_to: str | None = None
    wrap: Callable[[nn.Module, str | None], nn.Module] = lambda model, layer: model
    hint: tuple[str, str] | None = None  # (words of Captum's error, what they mean here)


class CaptumExplainer(Explainer):
    """A gradient-family method computed by Captum on the user's model (never modified: Captum
    works on a wrapper that gives the explained score, and on a fresh input tensor)."""

    linear_targets = False  # a callable target is differentiated as it is

    def __init__(self, model: nn.Module, method: str, recipe: Recipe, **options):
        super().__init__(model, method, **options)
        self.recipe = recipe

    def exclusive(self, layer: str | None = None) -> bool:
        return self.recipe.exclusive or layer is not None  # Captum's layer variants hook it

    def _check_layer(self, model: nn.Module, layer: str) -> None:
        super()._check_layer(model, layer)
        try:
            model.get_submodule(layer)
        except AttributeError:
            raise ValueError(f"layer '{layer}' is not a module path of {type(model).__name__} "
                             f"(e.g. '{last_convolution(model)}')") from None

    def _warn(self, model: nn.Module) -> None:
        """Say where Captum's method would silently become another one: its rule at an
        activation it does not know is the plain gradient (EfficientNet-Lite0's ReLU6: guided
        backprop's map is then the gradient's, DeepLift's with a zero baseline gradient x
        input's, up to rounding)."""
        handles = self.recipe.handles
        if not handles:
            return
        unhandled = sorted({type(m).__name__ for m in model.modules()
                            if isinstance(m, ACTIVATIONS) and type(m) not in handles})
        if unhandled:
            warn_at_caller(
                f"{self.method}: Captum applies its rule at "
                f"{', '.join(t.__name__ for t in handles)} only; this model's "
                f"{', '.join(unhandled)} pass the plain gradient, so where they are the only "
                f"activations the map is {self.recipe.falls_back_to}'s")

    def _attribute(self, call: Call) -> torch.Tensor:
        f = Scored(self.recipe.wrap(call.model, call.layer), call.function)
        extra = None if call.function is not None else (call.weights,)
        # the layer in the module Captum runs (DeepLift's copy calls it whole)
        layer = None if call.layer is None else f.model.get_submodule(call.layer)
        with torch.enable_grad(), warnings.catch_warnings():
            # Captum announces the hooks it sets and removes; relprop says what it computes.
            warnings.filterwarnings("ignore", message=".*(hooks|require gradients)",
                                    category=UserWarning)
            try:
                leaf = call.inputs.detach().requires_grad_()  # the caller's is not touched
                found = self.recipe.attribute(f, leaf, extra, call.options, layer)
            except (RuntimeError, AssertionError, TypeError) as e:
                hint = ""
                if self.recipe.hint and self.recipe.hint[0] in str(e):
                    hint = f" ({self.recipe.hint[1]})"
                raise ValueError(f"Captum cannot compute '{self.method}' on "
                                 f"{type(call.model).__name__}{hint}: {type(e).__name__}: "
                                 f"{e}") from None
        return found[0] if isinstance(found, tuple) else found


class Scored(nn.Module):
    """The model with the explained score as its one output, (N, 1): ``Σ w ⊙ y`` of its main
    output with the weights ``w`` given to ``forward`` (so that Captum expands them with the
    inputs, for integrated gradients' steps and SmoothGrad's copies), or the target callable.
    A new module around the user's; theirs is not changed."""

    def __init__(self, model: nn.Module, function=None):
        super().__init__()
        self.model, self.function = model, function

    def forward(self, x, weights=None):
        y = main_output(self.model(x))
        score = self.function(y) if weights is None else (weights * y).flatten(1).sum(1)
        return score.reshape(-1, 1)


def _gradient(f, x, extra, opts, layer):
    from captum import attr
    if layer is None:
        return attr.Saliency(f).attribute(x, target=0, abs=False, additional_forward_args=extra)
    return attr.LayerGradientXActivation(f, layer, multiply_by_inputs=False).attribute(
        x, target=0, additional_forward_args=extra)


def _gradient_x_input(f, x, extra, opts, layer):
    from captum import attr
    if layer is None:
        return attr.InputXGradient(f).attribute(x, target=0, additional_forward_args=extra)
    return attr.LayerGradientXActivation(f, layer).attribute(x, target=0,
                                                             additional_forward_args=extra)


def _integrated_gradients(f, x, extra, opts, layer):
    from captum import attr
    method = attr.IntegratedGradients(f) if layer is None else \
        attr.LayerIntegratedGradients(f, layer)
    # One batch of the caller's size per step: memory like a gradient's, not steps times it.
    return method.attribute(x, baselines=opts["baseline"], target=0, n_steps=opts["steps"],
                            internal_batch_size=len(x), additional_forward_args=extra)


def _smoothgrad(f, x, extra, opts, layer):
    """SmoothGrad: the gradient averaged over noisy copies of the input; the noise's standard
    deviation is ``noise`` times each image's value range, seeded without touching the
    caller's random state."""
    from captum.attr import NoiseTunnel, Saliency
    dims = tuple(range(1, x.dim()))
    spread = (x.amax(dims) - x.amin(dims)).mean().item()
    devices = [x.device.index] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(opts["seed"])
        return NoiseTunnel(Saliency(f)).attribute(
            x, nt_type="smoothgrad", nt_samples=opts["samples"], stdevs=opts["noise"] * spread,
            target=0, abs=False, nt_samples_batch_size=1,  # one noisy batch at a time
            additional_forward_args=extra)


def _guided_backprop(f, x, extra, opts, layer):
    from captum.attr import GuidedBackprop
    return GuidedBackprop(f).attribute(x, target=0, additional_forward_args=extra)


def _deeplift(f, x, extra, opts, layer):
    from captum import attr
    method = attr.DeepLift(f) if layer is None else attr.LayerDeepLift(f, layer)
    return method.attribute(x, baselines=opts["baseline"], target=0,
                            additional_forward_args=extra)


def one_relu_per_call(model: nn.Module, layer: str | None = None) -> nn.Module:
    """The model as a torch.fx GraphModule in which every call of a ReLU module has a ReLU module
    of its own: Captum's DeepLift keeps state per module, so a ReLU module called several times
    (torchvision's ResNet blocks) breaks it. The GraphModule shares the model's submodules and
    weights; nothing is copied and the model is not changed. ``layer`` (a module path, a
    container such as ``layer2`` too) is called whole in the copy, as a copy of its own with one
    ReLU per call, so that Captum's hook on it fires. A model fx cannot trace is returned as it
    is."""
    class KeepLayer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return qualname == layer or super().is_leaf_module(m, qualname)

    try:
        gm = torch.fx.GraphModule(model, KeepLayer().trace(model))
    except Exception:  # torch.fx raises many types; Captum will say what fails
        return model
    seen = set()
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), nn.ReLU):
            continue
        if node.target in seen:
            name = f"{node.target.replace('.', '_')}_call{len(seen)}"
            gm.add_submodule(name, nn.ReLU())
            node.target = name
        seen.add(node.target)
    gm.recompile()
    kept = model.get_submodule(layer) if layer else None
    if kept is not None and any(True for _ in kept.children()):  # a container: its own copy
        parent, _, name = layer.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, one_relu_per_call(kept))
    return gm


def _grad_cam(f, x, extra, opts, layer):
    """Grad-CAM at ``target_layer`` (default: the last convolution of the traced graph), ReLU'd
    and upsampled to the input, spread evenly over the colour channels so that the heat map is
    the CAM; with ``layer=``, the CAM at that layer, at its own resolution."""
    from captum.attr import LayerAttribution, LayerGradCam
    if layer is not None:
        if opts["target_layer"] is not None:
            raise ValueError("grad-cam takes layer= (the CAM at that layer's resolution) or "
                             "target_layer= (the CAM there, upsampled to the input), not both")
        return LayerGradCam(f, layer).attribute(x, target=0, relu_attributions=True,
                                                additional_forward_args=extra)
    path = opts["target_layer"]
    tokens = last_token_layer(f.model, x)  # None: no attention, a CNN's (N, C, H, W) maps
    if path is None and tokens is not None:  # the token map, where it is one (not MaxViT's)
        found = _token_cam(f, x, extra, f.model.get_submodule(tokens), path or tokens)
        if found is not None:
            return found
    path = path or last_convolution(f.model, x)
    try:
        at = f.model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"grad-cam: the model has no module '{path}'; pass target_layer= a "
                         f"module path such as '{last_convolution(f.model)}'") from None
    found = _token_cam(f, x, extra, at, path) if tokens is not None else None
    if found is not None:
        return found
    cam = LayerGradCam(f, at).attribute(x, target=0, relu_attributions=True,
                                        additional_forward_args=extra)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    return cam.expand_as(x) / x.shape[1]


def last_token_layer(model: nn.Module, x: torch.Tensor | None = None) -> str | None:
    """On a transformer, the module whose output the last attention reads (the last block's
    first norm, as is usual for Grad-CAM on ViTs: later, only the class token's row still
    reaches the output); None on a model without attention or where relprop cannot trace it."""
    try:
        graph = traced(model, x)
    except (UnsupportedOperation, UntraceableModel):
        return None
    found = attention_products(graph)
    if not found:
        return None
    last = found[-1]
    paths = [op.module_path for op in graph.ops[:graph.ops.index(last)]
             if op.kind == "norm" and op.module_path]
    return paths[-1] if paths else None


def _token_cam(f, x, extra, module: nn.Module, path: str):
    """Grad-CAM on a token map: the channels of ``module``'s output (N, T, C) after its prefix
    tokens, or (N, H, W, C) channels last, weighted by their gradient averaged over the
    tokens, summed, ReLU'd and upsampled. None where the output is no token map (a CNN's
    (N, C, H, W): Captum's LayerGradCam)."""
    import torch.nn.functional as F

    from .tokens import patch_grid
    kept = []
    hook = module.register_forward_hook(lambda m, i, out: kept.append(out))
    try:
        score = f(x, *(extra or ())).sum()
    finally:
        hook.remove()
    if not kept:
        raise ValueError(f"grad-cam: module '{path}' does not run in the model's forward pass; "
                         "pass target_layer= a module that does")
    a = kept[-1]
    height, width = x.shape[2:]
    if a.dim() == 3 and patch_grid(a.shape[1], height, width) is not None:
        prefix, rows, cols = patch_grid(a.shape[1], height, width)
        (g,) = torch.autograd.grad(score, a)
        a, g = a[:, prefix:], g[:, prefix:]
    elif a.dim() == 4 and a.shape[1] * width == a.shape[2] * height and a.shape[3] != a.shape[1]:
        rows, cols = a.shape[1:3]
        (g,) = torch.autograd.grad(score, a)
        a, g = a.flatten(1, 2), g.flatten(1, 2)
    else:
        return None
    cam = (g.mean(1, keepdim=True) * a).sum(-1).clamp(min=0).reshape(-1, 1, rows, cols)
    cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
    return cam.expand_as(x) / x.shape[1]


def last_convolution(model: nn.Module, x: torch.Tensor | None = None) -> str:
    """The module path of the last convolution in the model's traced graph; where relprop
    cannot trace the model, the last Conv2d module (Grad-CAM needs no relevance rules)."""
    try:
        convs = [op.module_path for op in traced(model, x).ops
                 if op.kind == "conv" and op.module_path]
    except (UnsupportedOperation, UntraceableModel):
        convs = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("grad-cam needs a convolution; this model has none that is a module")
    return convs[-1]


def _register(name: str, recipe: Recipe, summary: str, options: dict | None = None,
              supports_layer: bool = False) -> None:
    def build(model: nn.Module, method: str, **given) -> CaptumExplainer:
        return CaptumExplainer(model, method, recipe, **given)
    register_method(name, build, family="gradient", summary=summary, options=options or {},
                    supports_layer=supports_layer)


_BASELINE = {"baseline": (0.0, "the reference input (a number or a tensor like the input)")}
_register("gradient", Recipe(_gradient), supports_layer=True,
          summary="the plain gradient of the score (Captum's Saliency, signed): where a small "
                  "change would change the score, not what the score is made of.")
_register("gradient-x-input", Recipe(_gradient_x_input), supports_layer=True,
          summary="gradient times input: a first-order decomposition; equals LRP-0 in ReLU "
                  "networks without biases.")
_register("integrated-gradients", Recipe(_integrated_gradients), supports_layer=True,
          options={"steps": (50, "points on the path from the baseline"), **_BASELINE},
          summary="the gradient integrated from a baseline to the input: complete (sums to the "
                  "score's difference from the baseline), slower; one batch of the caller's "
                  "size per step.")
_register("smoothgrad", Recipe(_smoothgrad, exclusive=True),
          options={"samples": (25, "noisy copies averaged"),
                   "noise": (0.15, "the noise's standard deviation, as a share of the image's "
                                   "value range"),
                   "seed": (0, "the noise's seed (the caller's random state is not touched)")},
          summary="the gradient averaged over noisy copies: less noisy gradients.")
_register("guided-backprop",
          Recipe(_guided_backprop, exclusive=True, handles=(nn.ReLU,), falls_back_to="gradient"),
          summary="the gradient with negative signals stopped at every ReLU: sharp pictures of "
                  "edges, largely class-independent.")
_register("deeplift",
          Recipe(_deeplift, exclusive=True, wrap=one_relu_per_call,
                 handles=(nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus),
                 falls_back_to="gradient-x-input",
                 hint=("input/output attributes",
                       "Captum's DeepLift needs every ReLU module to be called once per forward "
                       "pass; this model calls one several times, and torch.fx could not trace "
                       "it to give each call a ReLU of its own")),
          options=_BASELINE, supports_layer=True,
          summary="DeepLift (Captum, rescale rule): complete like integrated gradients, in one "
                  "pass. Captum's DeepLift cannot take a ReLU module called several times "
                  "(torchvision's ResNet blocks), so relprop hands it a torch.fx copy of the "
                  "graph with one ReLU per call (sharing the model's weights), with `layer=` "
                  "too.")
_register("grad-cam", Recipe(_grad_cam, exclusive=True), supports_layer=True,
          options={"target_layer": (None, "the module path the CAM is computed at (None: the "
                                           "last convolution of the traced graph; on a "
                                           "transformer the last block's first norm)")},
          summary="Grad-CAM, upsampled to the input: coarse class localisation, no pixel detail; "
                  "`layer=` gives the CAM at that layer's own resolution. On a transformer, "
                  "on the token map the last attention reads (the last block's first norm).")
