"""The gradient family, computed by Captum (Meta's attribution library), behind relprop's API:
the same ``explain(model, inputs, target, method=...)`` and the same :class:`Explanation`, so
that RAP and LRP can be put beside them on one model, one image, one colour scale.

Captum does these well; relprop only chooses the layer for Grad-CAM from the traced graph, wraps
models with a spatial output so that a class's score is its map's sum (as for RAP), and turns
what Captum cannot do on a model into an error that says why.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn as nn

from .graph import eval_mode, trace

# method -> its keyword options and their defaults
METHODS = {
    "gradient": {},
    "gradient-x-input": {},
    "integrated-gradients": {"steps": 50, "baseline": 0.0},
    "smoothgrad": {"samples": 25, "noise": 0.15, "seed": 0},
    "guided-backprop": {},
    "deeplift": {"baseline": 0.0},
    "grad-cam": {"layer": None},
}


# Activations Captum's modified backward passes act on; any other activation module is passed
# through with its plain gradient, as if the method were not there.
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh,
               nn.Softplus, nn.SiLU, nn.GELU, nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.PReLU,
               nn.SELU, nn.CELU)
CAPTUM_HANDLES = {"guided-backprop": (nn.ReLU,),
                  "deeplift": (nn.ReLU, nn.ELU, nn.LeakyReLU, nn.Sigmoid, nn.Tanh, nn.Softplus)}
FALLS_BACK_TO = {"guided-backprop": "gradient", "deeplift": "gradient-x-input"}


def _warn_if_unhandled(model: nn.Module, method: str) -> None:
    """Say where Captum's method would silently become another one: its rule at an activation
    it does not know is the plain gradient (EfficientNet-Lite0's ReLU6: guided backprop's map is
    then the gradient's, DeepLift's with a zero baseline gradient x input's, up to rounding)."""
    if method not in CAPTUM_HANDLES:
        return
    unhandled = sorted({type(m).__name__ for m in model.modules() if isinstance(m, ACTIVATIONS)
                        and type(m) not in CAPTUM_HANDLES[method]})
    if unhandled:
        from .api import _warn
        _warn(f"{method}: Captum applies its rule at {', '.join(t.__name__ for t in CAPTUM_HANDLES[method])} "
              f"only; this model's {', '.join(unhandled)} pass the plain gradient, so where they "
              f"are the only activations the map is {FALLS_BACK_TO[method]}'s")


class _ClassScores(nn.Module):
    """The model with one score per class: a spatial output's map summed over its positions.
    A new module around the user's; theirs is not changed."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        from .api import class_scores
        return class_scores(self.model(x))


def explain(model: nn.Module, inputs: torch.Tensor, target, method: str,
            layer: str | None = None, **options):
    from .api import (Explanation, _check_finite, _options, _targets, _warn_if_training,
                      check_batch, class_scores, exact_float32)
    opts = _options(method, METHODS[method], options)
    attribute = _ATTRIBUTE[method]
    if layer is not None:
        attribute = _layer_variant(model, method, layer)
    check_batch(model, inputs)
    _warn_if_training(model)
    _warn_if_unhandled(model, method)
    scores_model = _ClassScores(model)
    with torch.inference_mode(False), eval_mode(model), exact_float32():
        x = inputs.clone() if inputs.is_inference() else inputs
        with torch.no_grad():
            try:
                logits = model(x)
            except Exception as e:  # the model's own error on these inputs
                raise ValueError(f"the model could not run on inputs of shape "
                                 f"{tuple(inputs.shape)}: {type(e).__name__}: {e}") from None
            _check_finite(logits)
            scores = class_scores(logits)
        tgt = _targets(target, scores)
        with torch.enable_grad(), warnings.catch_warnings():
            # Captum announces the hooks it sets and removes; relprop says what it computes.
            warnings.filterwarnings("ignore", message=".*(hooks|require gradients)",
                                    category=UserWarning)
            try:
                leaf = x.detach().requires_grad_()  # a new tensor: the caller's is not touched
                attribution = attribute(scores_model, leaf, tgt, opts)
            except (RuntimeError, AssertionError, TypeError) as e:
                hint = ""
                if method == "deeplift" and "input/output attributes" in str(e):
                    hint = (" (Captum's DeepLift needs every ReLU module to be called once per "
                            "forward pass; this model calls one several times, and torch.fx "
                            "could not trace it to give each call a ReLU of its own)")
                raise ValueError(f"Captum cannot compute '{method}' on {type(model).__name__}"
                                 f"{hint}: {type(e).__name__}: {e}") from None
    score = scores.gather(1, tgt.view(-1, 1)).squeeze(1)
    return Explanation(attribution.detach(), tgt, score, logits.detach(), method)


def _gradient(f, x, target, opts):
    from captum.attr import Saliency
    return Saliency(f).attribute(x, target=target, abs=False)


def _gradient_x_input(f, x, target, opts):
    from captum.attr import InputXGradient
    return InputXGradient(f).attribute(x, target=target)


def _integrated_gradients(f, x, target, opts):
    from captum.attr import IntegratedGradients
    # One batch of the caller's size per step: memory like a gradient's, not steps times it.
    return IntegratedGradients(f).attribute(x, baselines=opts["baseline"], target=target,
                                            n_steps=opts["steps"], internal_batch_size=len(x))


def _smoothgrad(f, x, target, opts):
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
            target=target, abs=False, nt_samples_batch_size=1)  # one noisy batch at a time


def _guided_backprop(f, x, target, opts):
    from captum.attr import GuidedBackprop
    return GuidedBackprop(f).attribute(x, target=target)


def _deeplift(f, x, target, opts):
    from captum.attr import DeepLift
    return DeepLift(_ClassScores(one_relu_per_call(f.model))).attribute(
        x, baselines=opts["baseline"], target=target)


def one_relu_per_call(model: nn.Module) -> nn.Module:
    """The model as a torch.fx GraphModule in which every call of a ReLU module has a ReLU module
    of its own: Captum's DeepLift keeps state per module, so a ReLU module called several times
    (torchvision's ResNet blocks) breaks it. The GraphModule shares the model's submodules and
    weights; nothing is copied and the model is not changed. A model fx cannot trace is
    returned as it is."""
    try:
        gm = torch.fx.symbolic_trace(model)
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
    return gm


def _grad_cam(f, x, target, opts):
    """Grad-CAM at the last convolution (found from the traced graph unless ``layer`` names a
    module), ReLU'd and upsampled to the input; spread evenly over the colour channels so that the
    heat map is the CAM."""
    from captum.attr import LayerAttribution, LayerGradCam
    path = opts["layer"] or last_convolution(f.model)
    try:
        layer = f.model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"grad-cam: the model has no module '{path}'; pass layer= a module path "
                         "such as 'features.28'") from None
    cam = LayerGradCam(f, layer).attribute(x, target=target, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, tuple(x.shape[2:]), interpolate_mode="bilinear")
    return cam.expand_as(x) / x.shape[1]


def last_convolution(model: nn.Module) -> str:
    """The module path of the last convolution in the model's traced graph."""
    convs = [op.module_path for op in trace(model).ops if op.kind == "conv" and op.module_path]
    if not convs:
        raise ValueError("grad-cam needs a convolution; this model has none that is a module")
    return convs[-1]


def _layer_variant(model, method, layer):
    """Captum's layer variant of ``method`` at the module ``layer``: the attribution of that
    layer's output."""
    from captum import attr
    variants = {
        "gradient": lambda f, m: attr.LayerGradientXActivation(f, m, multiply_by_inputs=False),
        "gradient-x-input": attr.LayerGradientXActivation,
        "integrated-gradients": attr.LayerIntegratedGradients,
        "deeplift": attr.LayerDeepLift, "grad-cam": attr.LayerGradCam}
    if method not in variants:
        raise ValueError(f"Captum has no layer variant of '{method}'; layer= works with the "
                         f"propagation methods and {', '.join(variants)}")
    try:
        model.get_submodule(layer)  # checked now: an unknown layer fails before any work
    except AttributeError:
        raise ValueError(f"layer '{layer}' is not a module path of {type(model).__name__} (e.g. "
                         f"'{last_convolution(model)}')") from None

    def attribute(f, x, target, opts):
        extra = {"relu_attributions": True} if method == "grad-cam" else {}
        if "baseline" in opts:
            extra["baselines"] = opts["baseline"]
        if "steps" in opts:
            extra["n_steps"] = opts["steps"]
        found = variants[method](f, f.model.get_submodule(layer)).attribute(
            x, target=target, **extra)
        return found[0] if isinstance(found, tuple) else found
    return attribute


_ATTRIBUTE = {"gradient": _gradient, "gradient-x-input": _gradient_x_input,
              "integrated-gradients": _integrated_gradients, "smoothgrad": _smoothgrad,
              "guided-backprop": _guided_backprop, "deeplift": _deeplift, "grad-cam": _grad_cam}
