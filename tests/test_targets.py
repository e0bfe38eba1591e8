"""Any output and any target (rap-spec §9.1): the main output of a tensor, a dict, a tuple or a
ModelOutput; targets as classes, weights, callables, pytorch-grad-cam's targets and
relprop.targets.ClassRegion, in every method family; segmentation models conserve the score of a
class over a region in float64."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop.targets import ClassRegion, main_output

D = torch.float64


class TinySegmenter(nn.Module):
    """A segmenter's shape: a strided backbone, a 1x1 classifier, bilinear upsampling to the input
    size, the map returned in a dict as torchvision's segmentation models do."""

    def __init__(self, classes=4):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  nn.ReLU())
        self.classifier = nn.Conv2d(8, classes, 1)

    def forward(self, x):
        y = self.classifier(self.body(x))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


class TinyClassifier(nn.Module):
    def __init__(self, wrap=None):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(2), nn.Flatten())
        self.fc = nn.Linear(24, 5)
        self.wrap = wrap

    def forward(self, x):
        y = self.fc(self.features(x))
        if self.wrap == "tuple":
            return y, self.features(x)
        if self.wrap == "dict":
            return {"logits": y}
        return y


def _seeded(model):
    torch.manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 1.5)
        if getattr(m, "bias", None) is not None:
            with torch.no_grad():
                m.bias.uniform_(-0.2, 0.2)
    return model.double().eval()


@pytest.fixture(scope="module")
def segmenter():
    torch.manual_seed(0)
    return _seeded(TinySegmenter())


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return _seeded(TinyClassifier())


def _x(n=2, size=16, seed=1):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed), dtype=D)


def _conserves(e):
    return ((e.delta.abs() / e.score.abs().clamp(min=1)) <= 1e-9).all()


# ------------------------------------------------------------------------------ outputs


@pytest.mark.parametrize("wrap", ["tuple", "dict"])
@pytest.mark.parametrize("method", ["rap-stable", "gradient"])
def test_the_main_output_of_a_tuple_or_a_dict(wrap, method):
    torch.manual_seed(0)
    plain = _seeded(TinyClassifier())
    wrapped = _seeded(TinyClassifier(wrap))
    wrapped.load_state_dict(plain.state_dict())
    x = _x()
    a = relprop.explain(plain, x, target=[1, 3], method=method)
    b = relprop.explain(wrapped, x, target=[1, 3], method=method)
    assert torch.allclose(a.relevance, b.relevance, rtol=1e-12, atol=1e-14)
    assert torch.equal(a.score, b.score)


def test_a_model_output_gives_its_logits():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_outputs import ImageClassifierOutput
    y = torch.randn(2, 5)
    assert main_output(ImageClassifierOutput(logits=y)) is y
    with pytest.raises(ValueError, match="'out' or 'logits'"):
        main_output({"boxes": y})
    assert transformers is not None


# ------------------------------------------------------------------------------ targets


@pytest.mark.parametrize("method", ["rap", "rap-stable", "lrp-epsilon"])
def test_a_tensor_of_weights_is_explained_as_its_weighted_sum(classifier, method):
    x = _x()
    y = classifier(x)
    w = torch.rand(y.shape, generator=torch.Generator().manual_seed(2), dtype=D)
    e = relprop.explain(classifier, x, target=w, method=method)
    assert torch.allclose(e.score, (w * y).sum(1))
    assert (e.target == -1).all()
    if method.startswith("rap"):
        assert _conserves(e), (e.delta, e.score)
    one_image = relprop.explain(classifier, x, target=w[0], method=method)
    assert torch.allclose(one_image.score, (w[0] * y).sum(1))


def test_a_one_hot_weight_is_the_class(classifier):
    x = _x()
    w = torch.zeros(2, 5, dtype=D)
    w[0, 1] = w[1, 3] = 1
    by_weight = relprop.explain(classifier, x, target=w, method="rap")
    by_class = relprop.explain(classifier, x, target=[1, 3], method="rap")
    assert torch.allclose(by_weight.relevance, by_class.relevance, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("method", ["rap", "rap-stable", "gradient", "integrated-gradients"])
def test_a_linear_callable_is_its_gradient_times_the_output(classifier, method):
    x = _x()
    contrast = lambda y: y[:, 3] - y[:, 1]  # noqa: E731
    e = relprop.explain(classifier, x, target=contrast, method=method)
    assert torch.allclose(e.score, contrast(classifier(x)))
    w = torch.zeros(2, 5, dtype=D)
    w[:, 3], w[:, 1] = 1, -1
    assert torch.allclose(e.relevance,
                          relprop.explain(classifier, x, target=w, method=method).relevance,
                          rtol=1e-10, atol=1e-14)
    if method.startswith("rap"):
        assert _conserves(e)


def test_a_non_linear_callable_is_refused_by_propagation_and_taken_by_gradients(classifier):
    x = _x()
    probability = lambda y: y.softmax(1)[:, 2]  # noqa: E731
    with pytest.raises(ValueError, match="not linear in the model output"):
        relprop.explain(classifier, x, target=probability, method="rap")
    e = relprop.explain(classifier, x, target=probability, method="gradient")
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(probability(classifier(leaf)).sum(), leaf)
    assert torch.allclose(e.relevance, expected, rtol=1e-10, atol=1e-15)
    assert torch.allclose(e.score, probability(classifier(x)))


def test_pytorch_grad_cams_classifier_target_is_taken_unchanged(classifier):
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    x = _x()
    for method in ("rap-stable", "gradient", "grad-cam"):
        theirs = relprop.explain(classifier, x, method=method,
                                 target=[ClassifierOutputTarget(1), ClassifierOutputTarget(3)])
        ours = relprop.explain(classifier, x, target=[1, 3], method=method)
        assert torch.allclose(theirs.relevance, ours.relevance, rtol=1e-12, atol=1e-15), method
        assert theirs.target.tolist() == [1, 3]


def test_bad_callables_are_refused_in_words(classifier):
    x = _x()
    with pytest.raises(ValueError, match="3 callables for a batch of 2"):
        relprop.explain(classifier, x, target=[lambda y: y[0]] * 3)
    with pytest.raises(ValueError, match="does not depend on the model output"):
        relprop.explain(classifier, x, target=lambda y: torch.ones(2, dtype=D))
    with pytest.raises(ValueError, match="one number per image"):
        relprop.explain(classifier, x, target=lambda y: y)
    with pytest.raises(ValueError, match="failed on the model output"):
        relprop.explain(classifier, x, target=lambda y: y[:, 99])
    with pytest.raises(ValueError, match="output's shape"):
        relprop.explain(classifier, x, target=torch.ones(3, dtype=D))
    with pytest.raises(ValueError, match="weighs nothing"):
        relprop.explain(classifier, x, target=torch.zeros(2, 5, dtype=D))


# ------------------------------------------------------------------------------ regions


def test_class_region_masks(segmenter):
    x = _x()
    y = segmenter(x)["out"]
    predicted = ClassRegion(int(y.argmax(1)[0, 0, 0])).mask(y)
    assert torch.equal(predicted[0], y.argmax(1)[0] == y.argmax(1)[0, 0, 0])
    box = ClassRegion(1, (2, 3, 10, 8)).mask(y)
    assert box.sum(dim=(1, 2)).tolist() == [40, 40] and box[0, 3, 2] and not box[0, 8, 2]
    with pytest.raises(ValueError, match="not a box"):
        ClassRegion(1, (0, 0, 99, 4)).mask(y)
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        ClassRegion(1, torch.ones(3, 3)).mask(y)
    with pytest.raises(ValueError, match="spatial output"):
        ClassRegion(1).weights(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="out of range"):
        ClassRegion(9).weights(y)


@pytest.mark.parametrize("method", ["rap", "rap-stable"])
def test_a_class_over_a_region_conserves(segmenter, method):
    x = _x()
    y = segmenter(x)["out"]
    for region in (None, (2, 3, 10, 8), y.argmax(1) == 2):
        target = ClassRegion(2, region)
        e = relprop.explain(segmenter, x, target=target, method=method)
        assert torch.allclose(e.score, (y[:, 2] * target.mask(y)).flatten(1).sum(1))
        assert _conserves(e), (region, e.delta, e.score)
        assert (e.target == 2).all()


def test_pytorch_grad_cams_segmentation_target_equals_the_region(segmenter):
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget
    x = _x()
    mask = torch.zeros(16, 16)
    mask[4:12, 2:9] = 1
    theirs = [SemanticSegmentationTarget(1, mask.numpy()) for _ in range(2)]
    for method in ("rap-stable", "gradient"):
        a = relprop.explain(segmenter, x, target=theirs, method=method)
        b = relprop.explain(segmenter, x, target=ClassRegion(1, mask.bool()), method=method)
        assert torch.allclose(a.relevance, b.relevance, rtol=1e-10, atol=1e-15), method
        assert torch.allclose(a.score, b.score)


def test_every_method_family_takes_a_region(segmenter):
    """Propagation, the Captum gradient family and Grad-CAM explain the region's score; the
    gradient's map is the gradient of the region's score (computed here with autograd)."""
    x = _x()
    target = ClassRegion(1, (0, 0, 8, 8))
    for method in relprop.methods():
        if method.startswith("attention-rollout"):
            continue  # needs attention: tested on a transformer below
        e = relprop.explain(segmenter, x, target=target, method=method)
        assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0, method
    leaf = x.clone().requires_grad_()
    (expected,) = torch.autograd.grad(target(segmenter(leaf)["out"]).sum(), leaf)
    found = relprop.explain(segmenter, x, target=target, method="gradient").relevance
    assert torch.allclose(found, expected, rtol=1e-10, atol=1e-15)


def test_rollout_takes_a_callable_target():
    from .transformer_models import build_vit
    torch.manual_seed(0)
    model = build_vit("small").double().eval()
    x = torch.randn(1, 3, 32, 32, dtype=D)
    a = relprop.explain(model, x, target=lambda y: y[:, 2], method="attention-rollout-grad")
    b = relprop.explain(model, x, target=2, method="attention-rollout-grad")
    assert torch.allclose(a.relevance, b.relevance)


SEGMENTERS = ["fcn_resnet50", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


@pytest.mark.slow
@pytest.mark.parametrize("name", SEGMENTERS)
def test_torchvision_segmenters_conserve_a_region_in_float64(name):
    torch.manual_seed(0)
    model = _seeded(torchvision.models.get_model(name, weights=None, weights_backbone=None,
                                                  num_classes=4))
    x = _x(size=48)
    y = model(x)["out"]
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, target=ClassRegion(1, (4, 4, 30, 20)), method=method)
        assert torch.allclose(e.score, y[:, 1, 4:20, 4:30].flatten(1).sum(1))
        assert _conserves(e), (method, e.delta, e.score)
