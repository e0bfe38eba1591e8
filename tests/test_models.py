"""The model registry: every name builds and traces; checkpoints load through --weights PATH."""
import contextlib
import urllib.error

import pytest
import torch
import torchvision

from relprop import RAP, errors, models


def test_registry_covers_every_torchvision_builder():
    """Every torchvision classification, segmentation (issue 24) and detection (issue 25)
    builder, the embedded EfficientNet-Lite0 and relprop's networks trained on the synthetic
    sets."""
    expected = set(torchvision.models.list_models(module=torchvision.models))
    expected |= set(torchvision.models.list_models(module=torchvision.models.segmentation))
    expected |= set(torchvision.models.list_models(module=torchvision.models.detection))
    expected |= {"efficientnet_lite0", "synthetic-cnn", "synthetic-vit", "synthetic-detector"}
    assert set(models.names()) == expected
    assert {"vgg16", "resnet50", "inception_v3", "vit_h_14", "convnext_tiny",
            "fcn_resnet50", "lraspp_mobilenet_v3_large"} <= expected
    assert models.spec("fcn_resnet50").kind == "segmentation"
    assert models.spec("fcos_resnet50_fpn").kind == "detection"
    assert models.spec("retinanet_resnet50_fpn").class_names()[1] == "person"
    assert models.spec("convnext_tiny").class_names()[281] == "tabby"
    assert models.spec("deeplabv3_resnet50").class_names()[8] == "cat"
    assert models.DEFAULT == "vgg16" and models.FALLBACK == "efficientnet_lite0"


def _without_weights(name):
    """The architecture of ``name`` without the cost of its weights: on the meta device (ViT-H/14
    has 632M of them), or, for builders that compute with tensors while they build (RegNet's
    widths), on the CPU with initialisation skipped."""
    try:
        with torch.device("meta"):
            return models.spec(name).build().eval()
    except NotImplementedError:
        import unittest.mock
        inits = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
        with contextlib.ExitStack() as stack:
            for n in inits:
                stack.enter_context(unittest.mock.patch.object(torch.nn.init, n,
                                                               lambda t, *a, **k: t))
            return models.spec(name).build().eval()


@pytest.mark.parametrize("name", [n for n in models.names()
                                  if models.spec(n).kind != "detection"])
def test_every_registered_model_traces(name):
    model = _without_weights(name)
    graph = RAP(model).graph
    assert graph.input_layers and graph.output_layers


@pytest.mark.parametrize("name", [n for n in models.names()
                                  if models.spec(n).kind == "detection"])
def test_every_registered_detector_builds_without_weights_and_is_one(name):
    """Its detections are explained in tests/test_detection.py; here: the entry builds offline
    (no backbone weights fetched) and relprop reads it as a detector."""
    from relprop.detection import is_detector
    assert is_detector(_without_weights(name))


def test_weights_file_loads_into_a_torchvision_model(tmp_path):
    torch.manual_seed(0)
    source = models.spec("resnet18").build().eval()
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model, preprocess, classes = models.load("resnet18", weights=str(path))
    assert not model.training and len(classes) == 1000
    x = torch.randn(1, 3, 64, 64)
    assert torch.equal(model(x), source(x))


def test_inception_v3_explains_at_299_with_its_input_transform():
    torch.manual_seed(0)
    model = models.spec("inception_v3").build().eval()
    assert model.transform_input
    x = torch.randn(1, 3, 299, 299)
    e = RAP(model).explain(x)
    assert e.relevance.shape == x.shape
    assert torch.isfinite(e.relevance).all()
    assert abs(e.relevance.sum() - e.score[0]) <= 1e-3 * max(1.0, abs(float(e.score[0])))


def test_embedded_model_preprocessing():
    from PIL import Image
    model, preprocess, classes = models.load("efficientnet_lite0")
    x = preprocess(Image.new("RGB", (320, 240), (255, 0, 0)))
    assert x.shape == (3, 224, 224)
    assert torch.allclose(x[0], torch.ones(224, 224)) and torch.allclose(x[1], -torch.ones(224, 224))


def test_weights_unavailable_is_the_one_in_errors():
    assert models.WeightsUnavailable is errors.WeightsUnavailable


@pytest.mark.parametrize("name, file", [("squeezenet1_0", "squeezenet1_0-b66bff10.pth"),
                                        ("squeezenet1_1", "squeezenet1_1-b8a52dc0.pth")])
def test_squeezenet_weights_come_through_torchvision(name, file, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    asked = []

    def no_network(url, *args, **kwargs):
        asked.append(url)
        raise urllib.error.URLError("no network (test)")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", no_network)
    with pytest.raises(models.WeightsUnavailable, match=file):
        models.load(name)
    assert asked == [f"https://download.pytorch.org/models/{file}"]
    assert models.spec(name).input_size == 224 and models.spec(name).resize == 256


def test_squeezenet_checkpoint_loads_and_explains(tmp_path):
    torch.manual_seed(0)
    source = models.spec("squeezenet1_1").build().eval()
    torch.save(source.state_dict(), tmp_path / "sq.pth")
    model, _, _ = models.load("squeezenet1_1", weights=str(tmp_path / "sq.pth"))
    x = torch.randn(1, 3, 96, 96)
    e = RAP(model).explain(x)
    # RAP computes its hidden layers' outputs from the two maps it keeps (Lin(x, W+) - Lin(x,
    # |W-|) + b): the model's logits to about 1e-5 of their size; other weights would be far off
    torch.testing.assert_close(e.logits, source(x), rtol=1e-4, atol=1e-5)
    assert torch.equal(e.target, source(x).argmax(1))
    assert abs(float(e.relevance.sum() - e.score[0])) <= 1e-3 * max(1.0, abs(float(e.score[0])))


def test_corrupt_weights_file_says_what_it_is_not(tmp_path):
    path = tmp_path / "weights.pth"
    path.write_text("hello, not a checkpoint")
    with pytest.raises(models.WeightsUnavailable) as info:
        models.load("resnet18", weights=str(path))
    message = str(info.value)
    assert "is not a PyTorch checkpoint that torch.load can read" in message
    assert "torch.save(model.state_dict(), PATH)" in message and "\n" not in message


def test_pickled_model_is_refused_with_what_to_save_instead(tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "whole.pth")
    with pytest.raises(models.WeightsUnavailable, match="pickled Python objects.*state_dict"):
        models.load("resnet18", weights=str(tmp_path / "whole.pth"))


def test_state_dict_of_another_model_names_the_keys(tmp_path):
    state = models.spec("resnet18").build().state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc.bias"]
    state["fc.weight"] = torch.zeros(10, 512)
    torch.save(state, tmp_path / "r.pth")
    with pytest.raises(models.WeightsUnavailable) as info:
        models.load("resnet18", weights=str(tmp_path / "r.pth"))
    message = str(info.value)
    assert "1 missing keys (fc.bias)" in message
    assert "1 unexpected keys (extra.weight)" in message
    assert "1 shape mismatches (fc.weight (10, 512) where the model has (1000, 512))" in message

    torch.save(models.spec("vgg11").build().state_dict(), tmp_path / "vgg.pth")
    with pytest.raises(models.WeightsUnavailable, match=r"\d+ missing keys \(conv1.weight, "
                                                        r"bn1.weight, bn1.bias, \.\.\.\)"):
        models.load("resnet18", weights=str(tmp_path / "vgg.pth"))


def test_training_checkpoint_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "model": {"fc.weight": torch.zeros(1)}}, tmp_path / "ckpt.pth")
    with pytest.raises(models.WeightsUnavailable, match="holds a dict with keys epoch, model, "
                                                        "not a state dict of tensors"):
        models.load("resnet18", weights=str(tmp_path / "ckpt.pth"))
