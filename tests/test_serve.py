"""``relprop serve``'s JSON API as a script calls it, through FastAPI's test client: answers
checked against direct ``relprop.explain`` calls, bad and hostile requests refused in words, 20
concurrent requests each answered correctly."""
import base64
import io
import socket
import struct
import threading
import time
import urllib.error
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import relprop
from relprop import api, cli, models, prepare, serve
from relprop.images import load_image

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

with warnings.catch_warnings():  # Starlette >= 1.x asks for httpx2; httpx works the same here
    warnings.filterwarnings("ignore", message="Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient

MODEL = "efficientnet_lite0"  # the embedded model: real predictions, 0.1-0.3 s a map on a CPU
LAYER = "_blocks.10._project_conv"


def png_bytes(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


CHELSEA = png_bytes(Image.fromarray(skimage.data.chelsea()))
COFFEE = png_bytes(Image.fromarray(skimage.data.coffee()))


@pytest.fixture(scope="module")
def loaded():
    return models.load(MODEL)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A --images folder: one photo, one text file and a subfolder, which are not samples."""
    path = tmp_path_factory.mktemp("images")
    (path / "cat.png").write_bytes(CHELSEA)
    (path / "notes.txt").write_text("not an image")
    (path / "sub").mkdir()
    (path / "sub" / "hidden.png").write_bytes(COFFEE)
    return path


@pytest.fixture(scope="module")
def client(loaded, folder):
    model, preprocess, class_names = loaded
    return TestClient(serve.create_app(MODEL, model, preprocess, class_names, "cpu", folder))


def direct(loaded, data: bytes, method: str, target=None, layer=None) -> api.Explanation:
    """What relprop.explain says about an image file, without the server."""
    model, preprocess, _ = loaded
    x = preprocess(load_image(io.BytesIO(data), models.spec(MODEL).resize))[None]
    return relprop.explain(model, x, target, method, layer=layer)


def explain(client, data: bytes | None = CHELSEA, **fields):
    files = {"image": ("picture.png", data, "image/png")} if data is not None else None
    return client.post("/api/explain", files=files, data={"method": "rap", **fields})


def decoded(b64: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(b64))))


def npy(answer) -> np.ndarray:
    assert answer["relevance_format"] == "npy"
    return np.load(io.BytesIO(base64.b64decode(answer["relevance"])))


def assert_same(got: np.ndarray, want: torch.Tensor):
    want = want.detach().numpy()
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * np.abs(want).max())


def assert_words(response, status: int, *phrases: str) -> str:
    """An error answered with its status and a detail in words, never a traceback."""
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in detail and 'File "' not in detail
    for phrase in phrases:
        assert phrase in detail, detail
    return detail


def test_page_and_its_files_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and "<title>relprop</title>" in page.text
    for name, kind in (("app.js", "javascript"), ("style.css", "css")):
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
        assert f"/static/{name}" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
    schema = client.get("/api/openapi.json").json()
    assert {"/api/explain", "/api/models", "/api/methods", "/api/samples"} <= set(schema["paths"])


def test_models_methods_and_samples(client, loaded):
    listed = client.get("/api/models").json()
    assert listed["loaded"] == MODEL and listed["classes"] == loaded[2]
    assert {m["name"] for m in listed["available"]} == set(models.names())
    methods = client.get("/api/methods").json()
    assert [m["name"] for m in methods["methods"]] == relprop.methods()
    assert {m["name"] for m in methods["methods"] if m["family"] == "propagation"} == \
        set(relprop.methods("propagation"))
    assert methods["layers"][0] == "_conv_stem" and LAYER in methods["layers"]
    assert "_fc" not in methods["layers"]  # a linear layer's relevance is no map
    samples = {s["name"]: s["source"] for s in client.get("/api/samples").json()["samples"]}
    assert samples == {"chelsea": "scikit-image", "coffee": "scikit-image",
                       "astronaut": "scikit-image", "rocket": "scikit-image", "cat.png": "folder"}
    assert client.get("/api/samples/cat.png").content == CHELSEA
    chelsea = np.asarray(Image.open(io.BytesIO(client.get("/api/samples/chelsea").content)))
    assert (chelsea == skimage.data.chelsea()).all()


def test_explain_answers_what_relprop_explain_computes(client, loaded):
    answer = explain(client).json()
    want = direct(loaded, CHELSEA, "rap")
    assert answer["target"] == {"index": 285, "name": "Egyptian cat"}  # the predicted class
    probabilities = [p["probability"] for p in answer["predictions"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)
    top = want.probabilities[0].topk(5)
    assert [p["index"] for p in answer["predictions"]] == top.indices.tolist()
    np.testing.assert_allclose(probabilities, top.values.tolist(), rtol=1e-5)
    assert answer["score"] == pytest.approx(float(want.score[0]), rel=1e-5)
    assert answer["relevance_sum"] == pytest.approx(answer["score"], rel=1e-4)  # RAP conserves
    assert abs(answer["delta"]) < 1e-3
    assert_same(np.array(answer["relevance"]), want.relevance[0])
    for name in ("input", "heatmap", "overlay", "grey", "overlay_layer"):
        assert decoded(answer["png"][name]).shape[:2] == (224, 224)
    heat = decoded(answer["png"]["heatmap"])
    assert (heat.min(axis=2) < 250).mean() > 0.01  # not a blank picture


def test_class_by_name_or_index_and_a_layer(client, loaded):
    by_name = explain(client, target="tabby", relevance="npy").json()
    by_index = explain(client, target="281", relevance="npy").json()
    assert by_name["target"] == by_index["target"] == {"index": 281, "name": "tabby"}
    assert_same(npy(by_name), direct(loaded, CHELSEA, "rap", 281).relevance[0])
    assert (npy(by_name) == npy(by_index)).all()
    inside = explain(client, target="281", layer=LAYER, relevance="npy").json()
    want = direct(loaded, CHELSEA, "rap", 281, LAYER).relevance[0]
    assert_same(npy(inside), want)
    assert inside["layer"] == LAYER and inside["map_shape"] == list(want.shape[1:])
    assert decoded(inside["png"]["heatmap"]).shape[:2] == (224, 224)  # shown at the input's size


def test_positive_and_negative_views(client):
    positive = decoded(explain(client, sign="positive").json()["png"]["heatmap"]).astype(int)
    negative = decoded(explain(client, sign="negative").json()["png"]["heatmap"]).astype(int)
    # red (R > B) for, blue (B > R) against; zero is white, at most 1 grey level off
    assert (positive[..., 2] <= positive[..., 0] + 1).all() and (positive[..., 2] < 200).any()
    assert (negative[..., 0] <= negative[..., 2] + 1).all() and (negative[..., 0] < 200).any()


def test_page_overlay_is_relprops_overlay(client):
    """The page lays the RGBA layer over the grey picture at the slider's opacity: that must be
    plot.overlay_image at the same opacity, which the API returns."""
    for opacity in (0.3, 0.6, 1.0):
        answer = explain(client, opacity=str(opacity)).json()
        layer = decoded(answer["png"]["overlay_layer"]).astype(float)
        grey = decoded(answer["png"]["grey"]).astype(float)[..., None]
        weight = layer[..., 3:] / 255 * opacity
        composed = (1 - weight) * grey + weight * layer[..., :3]
        assert np.abs(composed - decoded(answer["png"]["overlay"])).max() <= 2


def test_folder_samples_and_small_greyscale_images(client, loaded):
    cat = client.get("/api/samples/cat.png").content
    assert explain(client, cat).json()["target"]["name"] == "Egyptian cat"
    tiny = png_bytes(Image.fromarray(np.arange(100, dtype=np.uint8).reshape(10, 10)))
    answer = explain(client, tiny, method="gradient")
    assert answer.status_code == 200 and len(answer.json()["predictions"]) == 5


def png_declaring(width: int, height: int) -> bytes:
    """A small PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's
    header, without the memory)."""
    data = png_bytes(Image.new("L", (8, 8)))
    header = b"IHDR" + struct.pack(">II", width, height) + data[24:29]
    return data[:12] + header + struct.pack(">I", zlib.crc32(header)) + data[33:]


@pytest.mark.parametrize("data, fields, status, phrases", [
    (None, {}, 400, ["no image", "'image'"]),
    (b"", {}, 400, ["empty"]),
    (b"just some text, no picture", {}, 400, ["not an image"]),
    (CHELSEA[:2000], {}, 400, ["truncated or corrupt"]),
    (png_declaring(7000, 7000), {}, 413, ["49 million", "limit is 40 million"]),
    (png_declaring(30000, 30000), {}, 413, ["40 million", "decompression bomb"]),
    (CHELSEA, {"method": "lrp"}, 400, ["unknown method 'lrp'", *relprop.methods()]),
    (CHELSEA, {"method": ""}, 400, ["no method given", *relprop.methods()]),
    (CHELSEA, {"target": "egyptian cat"}, 400, ["0..999", "did you mean 'Egyptian cat'"]),
    (CHELSEA, {"target": "1000"}, 400, ["out of range", "0..999"]),
    (CHELSEA, {"layer": "features.28"}, 400, ["unknown layer 'features.28'", LAYER]),
    (CHELSEA, {"method": "gradient", "layer": "_fc"}, 400, ["not a map"]),
    (CHELSEA, {"method": "smoothgrad", "layer": LAYER}, 400, ["no layer variant"]),
    (CHELSEA, {"sign": "red"}, 400, ["unknown sign 'red'", "both", "positive", "negative"]),
    (CHELSEA, {"opacity": "abc"}, 400, ["opacity"]),
    (CHELSEA, {"opacity": "1.5"}, 400, ["outside 0..1"]),
    (CHELSEA, {"relevance": "csv"}, 400, ["list", "npy", "none"]),
])
def test_bad_requests_are_refused_in_words(client, data, fields, status, phrases):
    assert_words(explain(client, data, **fields), status, *phrases)


def test_malformed_requests_are_refused_in_words(client):
    assert_words(client.post("/api/explain", json={"method": "rap"}), 400, "multipart/form-data")
    assert_words(client.post("/api/explain", data={"method": "rap", "image": "x"}), 400,
                 "must be a file")
    garbage = client.post("/api/explain", content=b"garbage",
                          headers={"content-type": "multipart/form-data; boundary=abc"})
    assert garbage.status_code == 400 and isinstance(garbage.json()["detail"], str)


def test_large_uploads_are_refused_before_they_are_read(client):
    """Over the limit, whether the length is declared or the body streams in chunks."""
    big = b"\0" * (serve.MAX_UPLOAD_BYTES + serve.FORM_OVERHEAD_BYTES + 1)
    assert_words(explain(client, big), 413, "20 MB")
    chunks = (big[i:i + 2**20] for i in range(0, len(big), 2**20))
    streamed = client.post("/api/explain", content=chunks,
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert_words(streamed, 413, "20 MB")
    just_over = b"\0" * (serve.MAX_UPLOAD_BYTES + 1)  # the form fits, the image does not
    assert_words(explain(client, just_over), 413, "20 MB")
    assert explain(client).status_code == 200  # and the server goes on


@pytest.mark.parametrize("path", [
    "/static/../serve.py", "/static/%2e%2e/serve.py", "/static/..%2fserve.py",
    "/api/samples/..%2Fserve.py", "/api/samples/%2Fetc%2Fpasswd", "/api/samples/notes.txt",
    "/api/samples/sub", "/api/samples/hidden.png", "/api/samples/sub%2Fhidden.png",
    "/../../etc/passwd", "/api/samples/..%2F..%2F..%2Fetc%2Fpasswd",
])
def test_no_server_path_is_reachable(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert "root:" not in response.text and "def serve" not in response.text


def test_unexpected_failures_are_500_in_words_and_the_server_goes_on(loaded, monkeypatch):
    model, preprocess, class_names = loaded
    quiet = TestClient(serve.create_app(MODEL, model, preprocess, class_names),
                       raise_server_exceptions=False)
    real = api.explain

    def broken(*args, **kwargs):
        raise RuntimeError("a bug in a method")
    monkeypatch.setattr(api, "explain", broken)
    assert_words(explain(quiet), 500, "internal error", "a bug in a method")
    monkeypatch.setattr(api, "explain", real)
    assert explain(quiet).status_code == 200


def test_twenty_concurrent_requests_each_get_their_own_answer(client, loaded, monkeypatch):
    """Two images x five methods x two classes at once: every answer is the one relprop.explain
    gives for that request alone. Methods that only read the model run side by side; Grad-CAM,
    whose Captum hooks would act on any other pass, never runs beside another request."""
    jobs = [(name, data, method, target)
            for name, data in (("chelsea", CHELSEA), ("coffee", COFFEE))
            for method in ("rap", "rap-stable", "lrp-epsilon-plus", "gradient", "grad-cam")
            for target in (None, 281)]
    assert len(jobs) == 20
    want = {(name, method, target): direct(loaded, data, method, target)
            for name, data, method, target in jobs}

    overlap = {}  # function name -> [running now, most at once]
    running, beside_hooks = [], []  # methods in flight; hooking calls that had company
    count = threading.Lock()

    def watched(module, name, pause=0.0):
        """``module.name``, counting how many requests run it at once."""
        real = getattr(module, name)
        overlap[name] = [0, 0]

        def run(*args, **kwargs):
            method = args[3] if len(args) > 3 else kwargs.get("method")
            with count:
                overlap[name][0] += 1
                overlap[name][1] = max(overlap[name][1], overlap[name][0])
                if name == "explain":
                    running.append(method)
                    if "grad-cam" in running and len(running) > 1:
                        beside_hooks.append(list(running))
            time.sleep(pause)
            try:
                return real(*args, **kwargs)
            finally:
                with count:
                    overlap[name][0] -= 1
                    if name == "explain":
                        running.remove(method)
        monkeypatch.setattr(module, name, run)
    watched(api, "explain", pause=0.05)
    watched(serve.app, "_read_upload", pause=0.05)

    def ask(job):
        name, data, method, target = job
        fields = {"method": method, "relevance": "npy"}
        if target is not None:
            fields["target"] = str(target)
        return job, explain(client, data, **fields)

    with ThreadPoolExecutor(max_workers=20) as pool:
        answers = list(pool.map(ask, jobs))
    assert overlap["_read_upload"][1] > 1  # the requests did run at the same time
    assert overlap["explain"][1] > 1  # so did the methods that only read the model
    assert not beside_hooks  # and Grad-CAM had the model to itself
    for (name, _, method, target), response in answers:
        assert response.status_code == 200, response.text
        answer, expected = response.json(), want[(name, method, target)]
        assert answer["method"] == method
        assert answer["target"]["index"] == int(expected.target[0])
        assert answer["score"] == pytest.approx(float(expected.score[0]), rel=1e-5)
        assert_same(npy(answer), expected.relevance[0])


def test_serve_checks_its_options_before_loading_the_model(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(prepare, "load_model", lambda *args: pytest.fail("model loaded"))
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        assert cli.main(["serve", "--port", str(port)]) == 2
        assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err
    finally:
        taken.close()
    assert cli.main(["serve", "--images", str(tmp_path / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli.main(["serve", "--port", "70000"]) == 2
    assert "not a port" in capsys.readouterr().err


def test_serve_offline_serves_the_embedded_model_on_this_machine_only(monkeypatch, tmp_path,
                                                                      capsys):
    """``relprop serve`` with no options, no network and an empty torch cache."""
    import torchvision
    import uvicorn

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    served = {}

    def run(self, sockets):
        served["app"], served["address"] = self.config.app, sockets[0].getsockname()
        sockets[0].close()
    monkeypatch.setattr(uvicorn.Server, "run", run)
    assert cli.main(["serve", "--device", "cpu", "--port", "0"]) == 0
    assert served["address"][0] == "127.0.0.1"
    err = capsys.readouterr().err
    assert f"using {MODEL}" in err
    assert f"serving {MODEL} on cpu at http://127.0.0.1:{served['address'][1]}/" in err
    assert TestClient(served["app"]).get("/api/models").json()["loaded"] == MODEL


def test_a_detector_serves_its_detections_and_the_map_of_the_one_clicked():
    """A detector's picture shows its detections; the list to click holds them (index: the
    detection's in the model's output); each answer is the map of one detection, as
    relprop.explain computes it, summing to the logit behind its score."""
    name = "fasterrcnn_mobilenet_v3_large_320_fpn"
    torch.manual_seed(0)
    model = models.spec(name).build()  # random weights (offline)
    model.roi_heads.score_thresh = 0.0  # so that every detection is kept
    model.eval()
    spec = models.spec(name)
    preprocess = spec.preprocess()
    client = TestClient(serve.create_app(name, model, preprocess, spec.class_names(), "cpu"))
    methods = {m["name"] for m in client.get("/api/methods").json()["methods"]}
    assert "rap-stable" in methods
    assert "deeplift" not in methods and {"grad-cam", "guided-backprop"} <= methods
    x = preprocess(load_image(io.BytesIO(CHELSEA), spec.resize))[None]
    image = {"image": ("cat.png", CHELSEA, "image/png")}
    answer = client.post("/api/explain", files=image, data={"method": "rap-stable"}).json()
    assert answer["detection"]["index"] == answer["target"]["index"] == 0  # the top one
    for index in (2,):
        fields = {"method": "rap-stable", "target": str(index)}
        answer = client.post("/api/explain", files=image, data=fields).json()
        want = relprop.explain(model, x, index, method="rap-stable")
        d = want.detections[0]
        assert answer["detection"]["index"] == answer["target"]["index"] == d.index == index
        assert answer["score"] == pytest.approx(d.logit, rel=1e-5)
        assert abs(answer["delta"]) < 1e-3 * max(1, abs(answer["score"]))
        assert_same(np.array(answer["relevance"]), want.relevance[0])
        assert d.index in [p["index"] for p in answer["predictions"]]
    assert_words(client.post("/api/explain", files=image, data={"method": "rap", "target": "cat"}),
                 400, "is no detection")
    assert_words(client.post("/api/explain", files=image,
                             data={"method": "rap", "target": "1000"}),
                 400, "there is no detection 1000")
