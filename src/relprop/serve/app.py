"""``relprop serve``: a local web page, and the JSON API it runs on, to explain images in the
browser: upload a picture or pick a sample, see the top-5 predictions, click a class and see every
method's map side by side, inside the network too, without rerunning a command.

FastAPI with uvicorn rather than Gradio: the page is one static HTML/JS file over the same JSON API
that scripts call (``POST /api/explain``), so what a script gets is what the page shows; FastAPI's
test client tests that API in-process; nothing is fetched from the network (no CDN, no npm build).

The model is loaded once. relprop's explainers keep no per-call state, so requests run side by
side; only a method that hooks the model's modules while it runs or draws from the global random
generator (Captum's guided backprop, DeepLift, Grad-CAM, SmoothGrad, its layer variants) has the
model to itself meanwhile (:class:`ModelLock`).
"""
from __future__ import annotations

import base64
import io
import socket
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import Response
from PIL import Image

from .. import api, detection, models, plot, prepare, text as texts
from ..errors import UnsupportedOperation, UntraceableModel
from ..explanation import Explanation, class_scores
from ..graph import traced
from ..images import IMAGE_SUFFIXES, UnreadableImage, load_image
from ..registry import get_method, methods
from .web import TOP, Refused, number, web_app

MAX_UPLOAD_BYTES = 20 * 2**20  # one photo from any camera; more is refused before it is read
FORM_OVERHEAD_BYTES = 2**20  # the other form fields and multipart headers
MAX_PIXELS = 40_000_000  # decoded RGB: 120 MB; a larger picture is refused from its header
SIGNS = {"both": "all", "positive": "positive", "negative": "negative"}  # API word -> plot's
RELEVANCE_FORMATS = ("list", "npy", "none")
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
FORMS = ("multipart/form-data", "application/x-www-form-urlencoded")  # a form without a file too


@dataclass
class Sample:
    name: str
    source: str  # "scikit-image" or "folder"
    read: Callable[[], tuple[bytes, str]]  # the file's bytes and media type


def create_app(model_name: str, model: torch.nn.Module, preprocess: Callable,
               class_names: list[str], device: torch.device | str = "cpu",
               images_dir: str | Path | None = None) -> FastAPI:
    """The web app around one loaded model (in eval mode, already on ``device``); tests build it
    without a server. ``images_dir``'s image files are offered as samples by file name."""
    device = torch.device(device)
    spec = models.spec(model_name)
    lock = ModelLock()
    all_methods = methods()
    try:
        layers = list(dict.fromkeys(op.module_path for op in traced(model).ops
                                    if op.kind == "conv" and op.module_path))
    except (UnsupportedOperation, UntraceableModel):  # the gradient methods may still work;
        layers = []  # the propagation methods say why they do not, per request
    modules = {name for name, _ in model.named_modules() if name}
    samples = _samples(images_dir)
    detector = spec.kind == "detection"
    if detector:  # methods that hook the model's modules do not explain a detection yet
        all_methods = [m for m in all_methods if m not in detection.NEEDS_MODULES]

    app = web_app("index.html", MAX_UPLOAD_BYTES + FORM_OVERHEAD_BYTES,
                  "the upload is larger than the limit: images up to "
                               f"{MAX_UPLOAD_BYTES // 2**20} MB")

    @app.get("/api/models")
    def models_endpoint():
        """The loaded model, its class names (index = class index), and the registry."""
        return {"loaded": model_name, "description": spec.description,
                "input_size": spec.input_size, "classes": class_names,
                "available": [{"name": n, "description": models.spec(n).description}
                              for n in models.names()]}

    @app.get("/api/methods")
    def methods_endpoint():
        """Every method, and the layers (module paths, input first to output last) whose
        relevance the propagation methods can show."""
        return {"methods": [{"name": m, "family": get_method(m).family} for m in all_methods],
                "layers": layers}

    @app.get("/api/samples")
    def samples_endpoint():
        return {"samples": [{"name": s.name, "source": s.source} for s in samples.values()]}

    @app.get("/api/samples/{name}")
    def sample_endpoint(name: str):
        """A sample's bytes, looked up by name: no path from the request is ever opened."""
        sample = samples.get(name)
        if sample is None:
            raise Refused(f"no sample named '{name}'; samples: {', '.join(samples)}", 404)
        try:
            data, media_type = sample.read()
        except OSError as e:
            raise Refused(f"sample '{name}' cannot be read: {e.strerror or e}", 404) from None
        return Response(data, media_type=media_type)

    @app.post("/api/explain")
    def explain_endpoint(request: Request, image: UploadFile | None = File(None),
                         method: str | None = Form(None), target: str | None = Form(None),
                         layer: str | None = Form(None), sign: str = Form("both"),
                         opacity: float = Form(0.6), relevance: str = Form("list")):
        """Explain one uploaded image with one method for one class (default: the predicted)."""
        if not request.headers.get("content-type", "").startswith(FORMS):
            raise Refused("send a multipart/form-data form: the file 'image', 'method' and "
                          "optionally 'target', 'layer', 'sign', 'opacity', 'relevance' "
                          "(curl -F image=@photo.jpg -F method=rap)")
        if method not in all_methods:
            given = "no method given" if not method else f"unknown method '{method}'"
            raise Refused(f"{given}; methods: {', '.join(all_methods)}")
        if sign not in SIGNS:
            raise Refused(f"unknown sign '{sign}'; signs: {', '.join(SIGNS)}")
        if not 0 <= opacity <= 1:
            raise Refused(f"opacity {opacity} is outside 0..1")
        if relevance not in RELEVANCE_FORMATS:
            raise Refused(f"unknown relevance format '{relevance}'; formats: "
                          f"{', '.join(RELEVANCE_FORMATS)}")
        index = _detection_index(target) if detector else _class_index(target, class_names)
        layer = layer or None
        if layer is not None and layer not in modules:  # a module's map may still be refused
            # below, by the method (no layer variant) or for its shape (not a map)
            raise Refused(f"unknown layer '{layer}'; this model's layers: {', '.join(layers)}")
        if image is None:
            raise Refused("no image: send the picture as a file in the multipart form field "
                          "'image'")
        picture = _read_upload(image.file.read(MAX_UPLOAD_BYTES + 1), spec.resize)
        try:
            x = preprocess(picture)[None].to(device)
        except Exception as e:  # the model's preprocessing on a picture Pillow could read
            raise Refused(f"the image could not be prepared for {model_name}: "
                          f"{type(e).__name__}: {e}") from None
        view = plot.model_view(spec, picture)
        if detector:
            with prepare.out_of_memory(f"explaining one image on {device}",
                                       "serve with --device cpu"):
                return _detection_answer(model, x, index, method, view, class_names,
                                         model_name, sign, opacity, relevance)
        try:
            exclusive = api.explainer(model, method).exclusive(layer)
            with lock.held(exclusive), prepare.out_of_memory(
                    f"explaining one image on {device}", "serve with --device cpu"):
                # a segmenter explains the class over its predicted pixels (rap-spec §9.1)
                target = prepare.region(None, spec.kind, index, class_names, spec.input_size)
                e = api.explain(model, x, target, method, layer=layer)
        except prepare.OutOfMemory as error:
            raise Refused(error.phrased(""), 503) from None
        except (ValueError, UnsupportedOperation, UntraceableModel) as error:
            raise Refused(str(error)) from None
        if hasattr(target, "mask"):  # the region the map explains, outlined on the picture
            view = plot.outline(view, target.mask(e.logits, e.target)[0].cpu().numpy())
        return _answer(e, view, class_names, model_name, method, layer, sign, opacity,
                       relevance)

    return app


class ModelLock:
    """Calls that only read the model share it; a call that hooks its modules has it alone,
    since its hooks would act on any other pass through the model meanwhile. A waiting
    exclusive call goes before shared calls that come after it."""

    def __init__(self):
        self._changed = threading.Condition()
        self._sharing = 0
        self._exclusive = False
        self._waiting = 0  # exclusive calls waiting

    @contextmanager
    def held(self, exclusive: bool):
        with self._changed:
            if exclusive:
                self._waiting += 1
                self._changed.wait_for(lambda: not self._exclusive and self._sharing == 0)
                self._waiting -= 1
                self._exclusive = True
            else:
                self._changed.wait_for(lambda: not self._exclusive and self._waiting == 0)
                self._sharing += 1
        try:
            yield
        finally:
            with self._changed:
                if exclusive:
                    self._exclusive = False
                else:
                    self._sharing -= 1
                self._changed.notify_all()


def _class_index(text: str | None, class_names: list[str]) -> int | None:
    """The class a request names, by index or exact name, in the API's words."""
    try:
        return prepare.target(text, class_names)
    except prepare.SetupError as e:
        raise Refused(e.phrased("") + " (GET /api/models lists the class names in index "
                      "order)") from None


def _detection_index(text: str | None) -> int | None:
    """A detector's target: the index of a detection in its output (None: the top one)."""
    if text is None or text == "":
        return None
    if not text.strip().isdigit():
        raise Refused(f"'{text}' is no detection: a detector's target is the index of a "
                      "detection in its output (0: the highest score)")
    return int(text)


SHOWN_SCORE = 0.3  # detections drawn on a detector's picture, and offered to explain


def _detection_answer(model, x, index, method, view, class_names, model_name, sign, opacity,
                      relevance) -> dict:
    """One detection of one image (default: the top one): the picture with the detections
    scored at least ``SHOWN_SCORE`` (the explained one in red), its map, and the detections as
    the list one clicks to explain another."""
    try:
        found = detection.scene(model, x)
        if not found.detections:
            raise Refused("the model detects nothing in this image (above its own score "
                          "threshold)")
        index = 0 if index is None else index
        if index >= len(found.detections):
            raise Refused(f"there is no detection {index}: the model found "
                          f"{len(found.detections)} in this image")
        chosen = found.detections[index]
        e = api.explainer(model, method).explain_scene(found, x, [chosen])
    except (ValueError, UnsupportedOperation, UntraceableModel) as error:
        raise Refused(str(error)) from None

    def name(d):
        return class_names[d.label] if 0 <= d.label < len(class_names) else str(d.label)
    shown = [d for d in found.detections if d.score >= SHOWN_SCORE] or found.detections[:1]
    if chosen not in shown:
        shown.append(chosen)
    view = plot.draw_boxes(view, [d.box for d in shown],
                           [f"{d.index}: {name(d)} {d.score:.2f}" for d in shown])
    view = plot.draw_boxes(view, [chosen.box], [f"{chosen.index}: {name(chosen)}"],
                           color=(255, 60, 60))
    predictions = [{"index": d.index, "name": f"{name(d)} (detection {d.index})",
                    "probability": d.score, "score": d.logit} for d in shown]
    answer = _answer(e, view, class_names, model_name, method, None, sign, opacity, relevance,
                     predictions=predictions,
                     target={"index": chosen.index, "name": f"{name(chosen)} (detection "
                                                            f"{chosen.index})"})
    answer["detection"] = {"index": chosen.index, "box": list(chosen.box),
                           "label": chosen.label, "score": chosen.score}
    return answer


def _read_upload(data: bytes, min_size: int) -> Image.Image:
    """The uploaded picture as RGB (read as the CLI reads a file: ``min_size`` is the short side
    the model needs), refused in words where it is too large, empty or no image. The pixel
    count is read from the header, before anything is decoded."""
    if len(data) > MAX_UPLOAD_BYTES:
        raise Refused(f"the image is larger than {MAX_UPLOAD_BYTES // 2**20} MB", 413)
    if not data:
        raise Refused("the image is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            width, height = probe.size
    except Image.DecompressionBombError:
        raise Refused(f"the image has more than {MAX_PIXELS // 10**6} million pixels, the "
                      "limit; refused unread (a possible decompression bomb)", 413) from None
    except Exception:
        width = height = 0  # load_image below says what is wrong with it
    if width * height > MAX_PIXELS:
        raise Refused(f"the image is {width} x {height} = {width * height / 1e6:.0f} million "
                      f"pixels; the limit is {MAX_PIXELS // 10**6} million", 413)
    try:
        return load_image(io.BytesIO(data), min_size)
    except UnreadableImage as e:
        raise Refused(f"the upload is {e}") from None


def _answer(e: Explanation, view: Image.Image, class_names, model_name, method, layer,
            sign, opacity, relevance, predictions=None, target=None) -> dict:
    """The JSON of one explanation: numbers, the maps as base64 PNGs at the input's size, and
    the raw relevance as asked; ``predictions`` and ``target`` where they are not classes (a
    detector's detections)."""
    heat = e.heatmap[0].detach().float().cpu()
    if heat.dim() != 2:
        raise Refused(f"the relevance of layer '{layer}' has shape "
                      f"{tuple(e.relevance.shape[1:])}, not a map; choose a convolution")
    own_shape = list(heat.shape)
    size = view.size[::-1]
    if tuple(heat.shape) != size:  # a layer's map, shown at the picture's size as the CLI does
        heat = torch.nn.functional.interpolate(heat[None, None], size=size, mode="nearest")[0, 0]
    shown = SIGNS[sign]
    layer_image, limit = overlay_layer(heat, shown)
    r = e.relevance[0].detach().float().cpu()
    if predictions is None:
        probs = e.probabilities[0].float().cpu()
        top = probs.topk(min(TOP, len(probs)))
        scores = class_scores(e.logits)[0].float().cpu()
        predictions = [{"index": int(i), "name": class_names[int(i)], "probability": float(p),
                        "score": number(scores[int(i)])}
                       for p, i in zip(top.values, top.indices)]
        t = int(e.target[0])
        target = {"index": t, "name": class_names[t]}
    answer = {
        "model": model_name, "method": method, "layer": layer, "sign": sign,
        "predictions": predictions, "target": target,
        "score": number(e.score[0]), "relevance_sum": number(r.sum()),
        "positive": number(r.clamp(min=0).sum()), "negative": number(r.clamp(max=0).sum()),
        "delta": number(e.delta[0]), "colour_limit": number(limit), "map_shape": own_shape,
        "png": {"input": _png(view), "grey": _png(view.convert("L")),
                "heatmap": _png(plot.heatmap_image(heat, sign=shown)),
                "overlay": _png(plot.overlay_image(view, heat, alpha=opacity, sign=shown)),
                "overlay_layer": _png(layer_image)},
        "relevance_shape": list(r.shape), "relevance_format": relevance,
    }
    if relevance == "list":
        values = r.numpy()
        answer["relevance"] = (values.tolist() if np.isfinite(values).all()
                               else np.where(np.isfinite(values), values, None).tolist())
    elif relevance == "npy":
        buffer = io.BytesIO()
        np.save(buffer, r.numpy())
        answer["relevance"] = base64.b64encode(buffer.getvalue()).decode("ascii")
    return answer


def overlay_layer(heat, sign: str = "all") -> tuple[Image.Image, float]:
    """``plot.overlay_image``'s colours and per-pixel weight as one RGBA picture, and its colour
    limit: laid over the grey picture at opacity a, it is ``overlay_image(..., alpha=a)``, so
    the page's opacity slider redraws without a request."""
    h = plot.to_numpy(heat, sign)
    limit = plot.default_limit(h)
    alpha = (plot.opacity(h, limit) * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(np.dstack([plot.colorize(h, limit), alpha]), "RGBA"), limit


def _png(picture: Image.Image) -> str:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _samples(images_dir) -> dict[str, Sample]:
    """scikit-image's photos, then the image files directly in ``images_dir``, by name."""
    found = {name: Sample(name, "scikit-image", _skimage_reader(name))
             for name in prepare.SAMPLES}
    if images_dir is None:
        return found
    for path in sorted(Path(images_dir).iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and path.name not in found:
            found[path.name] = Sample(path.name, "folder", _file_reader(path))
    return found


def _skimage_reader(name: str):
    def read():
        buffer = io.BytesIO()
        prepare.read_sample(name).save(buffer, format="PNG")
        return buffer.getvalue(), "image/png"
    return read


def _file_reader(path: Path):
    def read():
        return path.read_bytes(), "application/octet-stream"
    return read


def run(model: str | None = None, weights: str | None = None, device: str | None = None,
        images: str | None = None, host: str = "127.0.0.1", port: int = 8000,
        say: Callable[[str], None] = lambda line: print(f"relprop: {line}", file=sys.stderr)
        ) -> int:
    """Check the settings, listen, load the model once, serve until Ctrl+C. A setting that
    cannot work raises :class:`relprop.prepare.SetupError` before the model is loaded; ``say``
    tells the user what happens."""
    import uvicorn
    where = prepare.device(device)
    if images is not None and not Path(images).is_dir():
        raise prepare.SetupError(f"{images} is not a folder; pass a folder of images", "images")
    language = (model or "").startswith("hf:") and texts.is_text_checkpoint(model[3:])
    if language and (images is not None or weights):
        raise prepare.SetupError(f"{model} is a language model: its page takes text; leave out "
                                 "--images and --weights", "model")
    sock = _listen(host, port)
    try:
        if language:
            app, name = _text_app(model, where)
        else:
            loaded = prepare.load_model(model, weights)
            if loaded.notice:
                say(loaded.notice)
            with prepare.out_of_memory(f"moving {loaded.name} to {where}", "use --device cpu"):
                on_device = loaded.model.to(where)
            app = create_app(loaded.name, on_device, loaded.preprocess, loaded.class_names,
                             where, images)
            name = loaded.name
    except BaseException:
        sock.close()
        raise
    bound_host, bound_port = sock.getsockname()[:2]
    shown_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    say(f"serving {name} on {where} at http://{shown_host}:{bound_port}/ (Ctrl+C stops)")
    if host not in LOCAL_HOSTS:
        say(f"--host {host}: other machines can reach this page and use this machine's "
            "processors")
    config = uvicorn.Config(app, log_level="warning")
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _text_app(model: str, where: torch.device):
    """The text page's app around the language model ``hf:NAME``, and the model's name."""
    from .text import create_text_app
    try:
        language_model, tokenizer = texts.load(model[3:])
    except ValueError as e:
        raise prepare.SetupError(str(e)) from None
    with prepare.out_of_memory(f"moving {model} to {where}", "use --device cpu"):
        language_model = language_model.to(where)
    return create_text_app(model, language_model, tokenizer, where), model


def _listen(host: str, port: int) -> socket.socket:
    """A bound socket, so that a port in use or a wrong host is one line before the model loads."""
    if not 0 <= port <= 65535:
        raise prepare.SetupError(f"{port} is not a port (0..65535)", "port")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port,
                                                             type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise prepare.SetupError(f"cannot listen on {host}:{port}: {e.strerror or e}; pass "
                                 "another --port (or --host)") from None
    return sock
