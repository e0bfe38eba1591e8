"""The model registry: every name builds and traces; checkpoints load through --weights PATH."""
import pytest
import torch

from relprop import RAP, models


def test_registry_covers_the_issue_models():
    expected = {f"vgg{d}{bn}" for d in (11, 13, 16, 19) for bn in ("", "_bn")}
    expected |= {f"resnet{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {"inception_v3", "efficientnet_lite0"}
    assert set(models.names()) == expected
    assert models.DEFAULT == "vgg16" and models.FALLBACK == "efficientnet_lite0"


@pytest.mark.parametrize("name", models.names())
def test_every_registered_model_traces(name):
    graph = RAP(models.spec(name).build().eval()).graph
    assert graph.input_layers and graph.output_layer


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
