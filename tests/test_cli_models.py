"""Models beyond the classifiers relprop listed by hand, in every command, offline: any
torchvision builder by name (segmenters too, with --target and --region), and Hugging Face models
through hf:PATH from a folder save_pretrained wrote."""
import json

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from relprop import cli, models

from . import hf_models

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A tiny random ViT with its image processor and class names, as save_pretrained writes."""
    folder = tmp_path_factory.mktemp("hf-vit")
    model = hf_models.build("vit")
    model.config.id2label = {i: f"thing {i}" for i in range(5)}
    model.config.label2id = {v: k for k, v in model.config.id2label.items()}
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def hf_segformer(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf-segformer")
    model = hf_models.build("segformer")
    model.save_pretrained(folder)
    transformers.SegformerImageProcessor(size={"height": 64, "width": 64}).save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def lraspp_weights(tmp_path_factory):
    torch.manual_seed(0)
    model = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                         weights_backbone=None)
    path = tmp_path_factory.mktemp("lraspp") / "lraspp.pth"
    torch.save(model.state_dict(), path)
    return path


def _image(tmp_path, size=(80, 60)):
    path = tmp_path / "picture.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(path)
    return path


def test_hf_model_from_a_folder_in_explain(hf_vit, tmp_path, capsys):
    folder, model = hf_vit
    out = tmp_path / "out"
    image = _image(tmp_path)
    assert cli.main(["explain", "--model", f"hf:{folder}", str(image), "--out", str(out),
                     "--method", "rap"]) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["explained"].startswith("thing ")
    assert abs(row["relevance_sum"] - row["logit"]) < 1e-4 * max(1, abs(row["logit"]))
    processor = transformers.ViTImageProcessor.from_pretrained(folder)
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt")
    with torch.no_grad():
        expected = model(pixels["pixel_values"]).logits[0]
    assert row["logit"] == pytest.approx(float(expected.max()), rel=1e-5)
    with Image.open(out / "picture_overlay.png") as overlay:
        assert overlay.size == (32, 32)  # the picture the model sees: the processor's 32x32


def test_hf_model_in_compare_and_the_spec(hf_vit, tmp_path):
    folder, _ = hf_vit
    spec = models.spec(f"hf:{folder}")
    assert spec.kind == "classification" and spec.class_names()[2] == "thing 2"
    assert spec.input_size == 32
    out = tmp_path / "cmp"
    assert cli.main(["compare", "--model", f"hf:{folder}", str(_image(tmp_path)), "--methods",
                     "rap-stable,gradient,lrp-attn", "--out", str(out)]) == 0
    assert (out / "compare.json").exists()


def test_hf_segmenter_explains_a_region(hf_segformer, tmp_path):
    folder, _ = hf_segformer
    out = tmp_path / "out"
    assert models.spec(f"hf:{folder}").kind == "segmentation"
    assert cli.main(["explain", "--model", f"hf:{folder}", str(_image(tmp_path)), "--region",
                     "8,8,40,40", "--method", "rap", "--out", str(out)]) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert abs(row["relevance_sum"] - row["logit"]) < 1e-3 * max(1, abs(row["logit"]))


def test_missing_hf_model_is_one_line(tmp_path, capsys):
    assert cli.main(["explain", "--model", f"hf:{tmp_path / 'nothing'}", "--out",
                     str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "neither a folder nor in the HF cache" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_torchvision_segmenter_by_name_with_a_class_and_a_region(lraspp_weights, tmp_path):
    out = tmp_path / "out"
    image = _image(tmp_path, (120, 100))
    assert cli.main(["explain", "--model", "lraspp_mobilenet_v3_large", "--weights",
                     str(lraspp_weights), str(image), "--target", "cat", "--region",
                     "100,120,300,400", "--out", str(out)]) == 0
    row = json.loads((out / "summary.json").read_text())["images"][0]
    assert row["explained"] == "cat" and row["target"] == 8
    assert abs(row["relevance_sum"] - row["logit"]) < 1e-3 * max(1, abs(row["logit"]))
    with Image.open(out / "picture_overlay.png") as overlay:
        picture = np.asarray(overlay.convert("RGB"))
    green = (picture == [0, 255, 0]).all(-1)
    assert green[120, 100:300].all() and green[300, 100].all()  # the box's outline
    assert not green[250, 200]


def test_region_is_refused_in_words(tmp_path, capsys, hf_vit):
    folder, _ = hf_vit
    assert cli.main(["explain", "--model", f"hf:{folder}", "--region", "0,0,4,4", "--out",
                     str(tmp_path / "o")]) == 2
    assert "needs a segmentation model" in capsys.readouterr().err


def test_every_torchvision_builder_is_a_command_line_model(capsys):
    assert cli.main(["models"]) == 0
    listed = capsys.readouterr().out
    for name in ("convnext_tiny", "densenet121", "efficientnet_b0", "fcn_resnet50",
                 "deeplabv3_mobilenet_v3_large", "regnet_y_400mf", "vgg16", "hf:NAME_OR_PATH",
                 "timm:NAME"):
        assert name in listed, name


@pytest.mark.slow
def test_serve_explains_a_segmenter_over_the_class_region(lraspp_weights):
    """relprop serve with a segmentation model: the class asked for, over its predicted pixels,
    conserving; the picture outlines the region."""
    import io

    from fastapi.testclient import TestClient

    from relprop import serve
    model = torchvision.models.get_model("lraspp_mobilenet_v3_large", weights=None,
                                         weights_backbone=None)
    model.load_state_dict(torch.load(lraspp_weights))
    spec = models.spec("lraspp_mobilenet_v3_large")
    app = serve.create_app(spec.name, model.eval(), spec.preprocess(), spec.class_names())
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8)
                    ).save(buffer, "PNG")
    answer = TestClient(app).post(
        "/api/explain", files={"image": ("a.png", buffer.getvalue(), "image/png")},
        data={"method": "rap-stable", "target": "cat"}).json()
    assert answer["target"] == {"index": 8, "name": "cat"}
    assert abs(answer["delta"]) <= 1e-3 * max(1, abs(answer["score"]))
