"""What relprop promises and once broke: never stale weights or graphs, every submodule's mode
given back, the explained score conserved wherever the reference rules lose relevance, clear
errors instead of wrong maps."""
import copy
import gc
import subprocess
import sys
import warnings
import weakref

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop import RAP, explain

D = torch.float64


def images(n=2, size=32, seed=0):
    return torch.randn(n, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(seed))


def conserves(e, tol=1e-9):
    return bool((e.delta.abs() <= tol * e.score.abs().clamp(min=1)).all())


@pytest.fixture
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg11(num_classes=10).double().eval()


# ------------------------------------------------------------------ stale weights and graphs

def _edit_in_place(model):
    """Edits PyTorch does not count in the version counter."""
    model.features[0].weight.data.mul_(2)
    model.classifier[6].weight.data.mul_(-1)


def test_in_place_weight_edits_are_seen_by_an_explainer(vgg):
    x = images()
    rap = RAP(vgg)
    rap.attribute(x, 3)
    _edit_in_place(vgg)
    e = rap.explain(x, 3)
    assert torch.allclose(e.relevance, RAP(vgg).attribute(x, 3), rtol=1e-10, atol=1e-12)
    assert torch.allclose(e.score, vgg(x)[:, 3])
    assert conserves(e)


def test_in_place_weight_edits_are_seen_by_explain(vgg):
    x = images()
    explain(vgg, x, 3)
    _edit_in_place(vgg)
    e = explain(vgg, x, 3)
    assert torch.allclose(e.relevance, RAP(vgg).attribute(x, 3), rtol=1e-10, atol=1e-12)
    assert torch.allclose(e.score, vgg(x)[:, 3])


def test_a_replaced_layer_is_explained_not_the_old_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 4),
                          nn.Linear(4, 3)).double().eval()
    x = torch.rand(2, 3, 2, 2, dtype=D)
    explain(model, x, 1)
    rap = RAP(model)
    model[4] = nn.Linear(4, 3).double().eval()
    for e in (explain(model, x, 1), rap.explain(x, 1)):
        assert torch.allclose(e.score, model(x)[:, 1])
        assert conserves(e)


def test_explain_does_not_keep_models_alive():
    refs = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = torchvision.models.resnet18(num_classes=4).eval()
        explain(model, torch.randn(1, 3, 32, 32))
        refs.append(weakref.ref(model))
        del model
    gc.collect()
    assert all(r() is None for r in refs)


def test_an_explainer_keeps_its_model():
    rap = RAP(nn.Sequential(nn.Linear(3, 2)).eval())
    gc.collect()
    assert rap.attribute(torch.rand(1, 3)).shape == (1, 3)


# ------------------------------------------------------------------ modes

class WithBN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(self.drop(self.bn(self.conv(x)).relu().mean((2, 3))))


def _modes(model):
    return {name: m.training for name, m in model.named_modules()}


@pytest.mark.parametrize("setup", ["frozen-bn", "mc-dropout"])
def test_every_submodule_gets_its_own_mode_back(setup):
    model = WithBN()
    if setup == "frozen-bn":
        model.train()
        model.bn.eval()
    else:
        model.eval()
        model.drop.train()
    before = _modes(model)
    with pytest.warns(UserWarning, match="training mode"):
        rap = RAP(model)
        assert _modes(model) == before
        rap.explain(torch.randn(2, 3, 8, 8))
    assert _modes(model) == before
    with pytest.warns(UserWarning):
        explain(model, torch.randn(2, 3, 8, 8))
    assert _modes(model) == before


def test_training_warning_points_at_the_callers_line():
    model = WithBN().train()
    for call in (lambda: RAP(model).explain(torch.randn(1, 3, 8, 8)),
                 lambda: RAP(model).attribute(torch.randn(1, 3, 8, 8)),
                 lambda: explain(model, torch.randn(1, 3, 8, 8))):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        assert [w.filename for w in caught] == [__file__]


# ------------------------------------------------------------------ conservation (spec §7.3, §7.4)

def test_constant_image_conserves_on_the_embedded_model():
    """z^B's denominator is 0 everywhere on a constant image: §7.3 hands the relevance on."""
    model = relprop.models.load("efficientnet_lite0")[0].double()
    grey = torch.full((1, 3, 224, 224), 0.3, dtype=D)
    e = RAP(model).explain(grey)
    assert e.score.abs() > 0.1
    assert conserves(e)
    assert e.relevance.abs().sum() > 0


def test_a_photo_with_saturated_patches_conserves_in_float64():
    """scikit-image's astronaut lost 2.1e-2 of its logit of 6.07 at the input layer."""
    import skimage.data
    from PIL import Image
    model, preprocess, _ = relprop.models.load("efficientnet_lite0")
    x = preprocess(Image.fromarray(skimage.data.astronaut())).unsqueeze(0).double()
    e = RAP(model.double()).explain(x)
    assert conserves(e), e.delta


def _conv_head_net(bias=True, after=None):
    """A small CNN whose classifier is a 1x1 convolution, pooled (and more) after it."""
    layers = [nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
              nn.Conv2d(8, 5, 1, bias=bias)]
    layers += after if after is not None else [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
    torch.manual_seed(0)
    model = nn.Sequential(*layers).double().eval()
    with torch.no_grad():
        model[4].bias.uniform_(-1, 1) if bias else None
    return model


class Scaled(nn.Module):
    def forward(self, x):
        return x * 3.0 - 2.0


@pytest.mark.parametrize("after", [
    "conv-head-pooled", "relu-then-pooled", "spatial", "scaled-logits", "batchnorm-logits"])
def test_output_layer_conserves_the_explained_score(after):
    if after in ("scaled-logits", "batchnorm-logits"):
        torch.manual_seed(0)
        tail = Scaled() if after == "scaled-logits" else nn.BatchNorm1d(5)
        model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                              nn.Flatten(), nn.Linear(6, 5), tail).double().eval()
        if after == "batchnorm-logits":
            with torch.no_grad():
                tail.running_mean.uniform_(-1, 1)
                tail.running_var.uniform_(0.5, 2)
                tail.bias.uniform_(-1, 1)
    else:
        model = _conv_head_net(after={
            "conv-head-pooled": None,
            "relu-then-pooled": [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()],
            "spatial": []}[after])
    x = images(3, 12)
    e = RAP(model).explain(x, target=[0, 2, 4])
    out = model(x)
    expected = out.flatten(2).sum(-1) if out.dim() > 2 else out
    assert torch.allclose(e.score, expected[torch.arange(3), e.target])
    assert conserves(e), (e.delta, e.score)


def test_a_linear_head_over_a_sequence_conserves():
    """The Linear layer's classes are its last dim, not dim 1."""
    class Tokens(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = nn.Linear(4, 6), nn.Linear(6, 5)

        def forward(self, x):  # (N, T, 4) -> (N, 5)
            return self.head(self.embed(x).relu()).mean(1)

    torch.manual_seed(0)
    model = Tokens().double().eval()
    x = torch.randn(2, 3, 4, dtype=D)
    with torch.no_grad():
        model.head.bias.uniform_(-2, 2)
    e = RAP(model).explain(x, target=[1, 4])
    assert torch.allclose(e.score, model(x)[torch.arange(2), e.target]) and conserves(e)


def test_padding_computed_from_the_input_size_is_zero_padding():
    """Dynamic "same" padding in front of the first layer (as timm's pad_same): the border is
    padding, not image, and gets no relevance."""
    class DynamicPad(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3, stride=2), nn.Linear(4, 3)

        def forward(self, x):
            x = nn.functional.pad(x, [0, x.size(3) % 2 + 1, 0, x.size(2) % 2 + 1])
            return self.fc(self.conv(x).relu().mean((2, 3)))

    torch.manual_seed(0)
    model = DynamicPad().double().eval()
    for size in (9, 10):
        e = RAP(model).explain(images(2, size))
        assert e.relevance.shape == (2, 3, size, size) and conserves(e)


def test_spatial_output_predicts_by_the_summed_class_map():
    model = _conv_head_net(after=[])
    x = images(2, 12)
    e = RAP(model).explain(x)
    assert torch.equal(e.target, model(x).sum((2, 3)).argmax(1))
    assert torch.allclose(e.probabilities.sum(1), torch.ones(2, dtype=D))


@pytest.mark.parametrize("name", ["squeezenet1_0", "squeezenet1_1"])
def test_squeezenet_conserves(name):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).double().eval()
    e = RAP(model).explain(images(2, 64), target=[1, 7])
    assert torch.isfinite(e.relevance).all() and conserves(e)


def test_non_finite_output_is_refused(vgg):
    with torch.no_grad():
        vgg.classifier[0].weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="output is not finite"):
        RAP(vgg).explain(images())


# ------------------------------------------------------------------ the API

def test_import_relprop_is_light_and_models_is_an_attribute():
    code = ("import sys, relprop; light = 'relprop.models' not in sys.modules and "
            "'matplotlib' not in sys.modules; print(light, 'vgg16' in relprop.models.names())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "True"]


def test_explains_inside_inference_mode(vgg):
    x = images()
    expected = RAP(vgg).attribute(x, 3)
    with torch.inference_mode():
        xi = x.clone()
        got = RAP(vgg).attribute(xi, 3)
        got_explain = explain(vgg, xi, 3).relevance
    assert torch.allclose(got, expected) and torch.allclose(got_explain, expected)


@pytest.mark.parametrize("target, message", [("cat", "class indices.*'cat'.*index"),
                                             ([], "target is empty"),
                                             (["a", "b"], "class indices")])
def test_targets_that_are_not_indices(vgg, target, message):
    with pytest.raises(ValueError, match=message):
        RAP(vgg).explain(images(), target)


def test_hint_for_a_tensor_method_is_what_register_op_takes():
    class Clamped(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(x.cumsum(dim=1))

    with pytest.raises(relprop.UnsupportedOperation, match=r"register_op\('cumsum', "):
        RAP(Clamped())
    relprop.register_op("cumsum", kind="passthrough")
    e = RAP(Clamped().double().eval()).explain(torch.rand(2, 4, dtype=D))
    assert conserves(e)


@pytest.mark.parametrize("wrap", ["weight_norm", "spectral_norm"])
def test_parametrized_convs_are_explained_as_convs(wrap):
    from torch.nn.utils import parametrizations
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double().eval()
    wrapped = copy.deepcopy(plain)
    getattr(parametrizations, wrap)(wrapped[2])
    wrapped.eval()
    with torch.no_grad():  # the plain twin gets the weight the parametrization computes
        plain[2].weight.copy_(wrapped[2].weight)
    x = images(2, 10)
    ours = RAP(wrapped).explain(x, 1)
    assert torch.allclose(ours.relevance, RAP(plain).attribute(x, 1), rtol=1e-9, atol=1e-12)
    assert conserves(ours)


def test_a_compiled_model_is_explained_as_its_module(vgg):
    compiled = torch.compile(vgg)
    x = images()
    assert torch.allclose(RAP(compiled).attribute(x, 2), RAP(vgg).attribute(x, 2))
    assert torch.allclose(explain(compiled, x, 2).relevance, RAP(vgg).attribute(x, 2))


def test_a_rule_must_return_one_share_per_input():
    class Half(nn.Module):
        def forward(self, x):
            return x / 2

    @relprop.register_rule("halving", method="rap")
    def bad_rule(op, relevance, run):
        return (relevance, relevance)

    relprop.register_op(Half, kind="halving")
    net = nn.Sequential(nn.Linear(3, 3), Half(), nn.Linear(3, 2)).eval()
    with pytest.raises(RuntimeError, match="returned 2 relevance tensors for the 1 inputs"):
        RAP(net).attribute(torch.rand(1, 3))
