"""LRP in relprop's engine against Zennit 0.5.1's composites of the same name and Captum's LRP,
number for number in float64 on random weights; and where those libraries lose relevance on
ResNet-50 and Inception-V3, relprop does not."""
import copy
import functools

import pytest
import torch
import torchvision

import relprop

zennit = pytest.importorskip("zennit", reason="the cross-checks need zennit (pip install -e '.[test]')")
from zennit.attribution import Gradient  # noqa: E402
from zennit import composites as zc  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

D = torch.float64
ZENNIT = {"lrp-epsilon-plus": zc.EpsilonPlus, "lrp-epsilon-plus-flat": zc.EpsilonPlusFlat,
          "lrp-epsilon-alpha2beta1": zc.EpsilonAlpha2Beta1,
          "lrp-epsilon-alpha2beta1-flat": zc.EpsilonAlpha2Beta1Flat,
          "lrp-epsilon-gamma-box": zc.EpsilonGammaBox}


def randomised(model, seed=1):
    """Non-trivial BatchNorm statistics and biases, so that merging and bias shares matter.

    BatchNorm's eps is set to 0: Zennit 0.5.1 merges BatchNorm into the convolution and leaves an
    "identity" BatchNorm behind that still divides by sqrt(1 + eps), so its merged ResNet computes
    another function (outputs off by 4.8e-5 relative on ResNet-18); with eps = 0 its merge is
    exact and the rules can be compared."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 0.0
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.4 - 0.2)
            elif isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)) \
                    and m.bias is not None:
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.2 - 0.1)
    return model.double().eval()


CASES = {"vgg16": (32, VGGCanonizer), "resnet50": (64, ResNetCanonizer)}


@functools.lru_cache(maxsize=None)
def _case(name):
    torch.manual_seed(0)
    model = randomised(torchvision.models.get_model(name, num_classes=10))
    size, canonizer = CASES[name]
    x = torch.randn(2, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(0))
    return model, x, canonizer


@pytest.fixture(params=list(CASES))
def case(request):
    return _case(request.param)


def _zennit(model, x, target, composite, classes=10):
    onehot = torch.nn.functional.one_hot(target, classes).to(D)
    with Gradient(model=copy.deepcopy(model), composite=composite) as attributor:
        _, relevance = attributor(x, lambda out: onehot * out)  # relevance starts at the score
    return relevance


@pytest.mark.parametrize("method", list(ZENNIT))
def test_lrp_matches_zennit(case, method):
    model, x, canonizer = case
    target = torch.tensor([3, 7])
    ours = relprop.explain(model, x, target, method=method).relevance
    kwargs = {}
    if method == "lrp-epsilon-gamma-box":  # z^B bounds: each image's own range, relprop's default
        dims = (1, 2, 3)
        kwargs = dict(low=x.amin(dims, keepdim=True).expand_as(x),
                      high=x.amax(dims, keepdim=True).expand_as(x))
    theirs = _zennit(model, x, target, ZENNIT[method](canonizers=[canonizer()], **kwargs))
    scale = theirs.flatten(1).abs().amax(1)
    err = (ours - theirs).flatten(1).abs().amax(1)
    assert (err <= 1e-6 * scale).all(), err / scale


def test_lrp_epsilon_matches_captum_on_vgg16():
    """Captum's LRP (ε-rule everywhere) on VGG-16, whose layers it all knows."""
    model, x, _ = _case("vgg16")
    from captum.attr import LRP
    target = torch.tensor([3, 7])
    ours = relprop.explain(model, x, target, method="lrp-epsilon", epsilon=1e-9,
                           stabilizer=1e-9).relevance
    theirs = LRP(copy.deepcopy(model)).attribute(x.clone().requires_grad_(), target=target)
    scale = theirs.flatten(1).abs().amax(1)
    assert ((ours - theirs).flatten(1).abs().amax(1) <= 1e-6 * scale).all()


def bias_free(name, size):
    """A family member with every bias 0 and default BatchNorm statistics, so that the LRP rules
    (bias-free, ε and stabiliser at 1e-30) must conserve; and an input of that size."""
    from relprop import models
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        model = models.spec(name).build()
    else:
        kwargs = {"init_weights": False, "aux_logits": False, "transform_input": True} \
            if name == "inception_v3" else {}
        model = torchvision.models.get_model(name, weights=None, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eps = 0.0  # Zennit's merge is exact only then (see randomised)
    x = torch.randn(2, 3, size, size, dtype=D, generator=torch.Generator().manual_seed(0))
    return model.double().eval(), x


TINY = dict(epsilon=1e-30, stabilizer=1e-30)
SIZES = {"vgg16": 32, "resnet50": 64, "inception_v3": 80, "efficientnet_lite0": 64}
RELU_NETWORKS = ["vgg16", "resnet50", "inception_v3"]


@pytest.mark.parametrize("name, method", [(n, "lrp-epsilon") for n in SIZES] + [
    (n, m) for n in RELU_NETWORKS for m in ("lrp-epsilon-plus", "lrp-epsilon-alpha2beta1")])
def test_conservative_rules_conserve(name, method):
    """ε -> 0 everywhere; z+ and α2β1 on ReLU networks (EfficientNet's signed activations break
    their conservation by design: z+ drops the relevance of units whose positive part is 0)."""
    model, x = bias_free(name, SIZES[name])
    e = relprop.explain(model, x, [1, 2], method=method, **TINY)
    assert torch.isfinite(e.relevance).all()
    assert (e.delta.abs() <= 1e-9 * e.score.abs()).all(), e.delta / e.score


def test_captum_loses_relevance_on_resnet50_and_relprop_does_not():
    """Captum's LRP passes the residual additions as a plain gradient: on a bias-free ResNet-50
    its relevance explodes; relprop's ε-rule conserves the score."""
    from captum.attr import LRP
    model, x = bias_free("resnet50", 64)
    target = torch.tensor([1, 2])
    ours = relprop.explain(model, x, target, method="lrp-epsilon", **TINY)
    captum = LRP(copy.deepcopy(model)).attribute(x.clone().requires_grad_(), target=target)
    captum_error = ((captum.sum((1, 2, 3)) - ours.score) / ours.score).abs()
    assert (captum_error > 1).all(), captum_error
    assert (ours.delta.abs() <= 1e-9 * ours.score.abs()).all()


def test_zennit_loses_relevance_on_inception_and_relprop_does_not():
    """Zennit has no Inception canonizer: its functional average pooling and input transform take
    the plain gradient, and EpsilonPlus loses most of the score; relprop keeps it."""
    from zennit.canonizers import SequentialMergeBatchNorm
    model, x = bias_free("inception_v3", 80)
    target = torch.tensor([1, 2])
    ours = relprop.explain(model, x, target, method="lrp-epsilon-plus", **TINY)
    theirs = _zennit(model, x, target, zc.EpsilonPlus(canonizers=[SequentialMergeBatchNorm()],
                                                      **TINY), classes=1000)
    zennit_error = ((theirs.sum((1, 2, 3)) - ours.score) / ours.score).abs()
    assert (zennit_error > 0.1).all(), zennit_error
    assert (ours.delta.abs() <= 1e-9 * ours.score.abs()).all()


class Signal1d(torch.nn.Module):
    """A 1-D convolutional classifier (Conv1d, max and average pooling), as for signals."""

    def __init__(self):
        super().__init__()
        self.features = torch.nn.Sequential(
            torch.nn.Conv1d(2, 6, 5, padding=2), torch.nn.ReLU(), torch.nn.MaxPool1d(2),
            torch.nn.Conv1d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.AvgPool1d(2))
        self.classifier = torch.nn.Linear(8 * 10, 10)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@pytest.mark.parametrize("method", [m for m in ZENNIT if m != "lrp-epsilon-gamma-box"])
def test_lrp_on_conv1d_matches_zennit(method):
    """Zennit's composites map Conv1d as Conv2d; relprop's convolution rules take 1-D inputs
    through the same algebra (``F.conv1d`` and its input gradient)."""
    torch.manual_seed(0)
    model = randomised(Signal1d())
    x = torch.randn(2, 2, 40, dtype=D, generator=torch.Generator().manual_seed(0))
    target = torch.tensor([3, 7])
    ours = relprop.explain(model, x, target, method=method).relevance
    theirs = _zennit(model, x, target, ZENNIT[method]())
    scale = theirs.flatten(1).abs().amax(1)
    err = (ours - theirs).flatten(1).abs().amax(1)
    assert (err <= 1e-6 * scale).all(), err / scale


@pytest.mark.parametrize("method", ["rap", "rap-stable"])
def test_rap_conserves_on_conv1d(method):
    torch.manual_seed(0)
    model = randomised(Signal1d())
    x = torch.randn(3, 2, 40, dtype=D, generator=torch.Generator().manual_seed(1))
    e = relprop.explain(model, x, method=method)
    assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all()


class Decoder(torch.nn.Module):
    """An encoder-decoder with a (grouped) transposed convolution, as segmenters upsample."""

    def __init__(self, groups):
        super().__init__()
        self.enc = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1),
                                       torch.nn.ReLU())
        self.up = torch.nn.ConvTranspose2d(8, 8, 4, stride=2, padding=1, groups=groups)
        self.head = torch.nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.up(self.enc(x))))


@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("method", ["lrp-epsilon-plus", "lrp-epsilon-alpha2beta1",
                                    "lrp-epsilon-plus-flat"])
def test_transposed_convolution_matches_zennit(method, groups):
    """rap-spec §9.2: a transposed convolution takes the convolution rules with its own map
    (the stacked W+/|W-| along its output channels); Zennit maps ConvTranspose2d in its
    composites too. A region of the class map is the target."""
    from relprop.targets import ClassRegion
    torch.manual_seed(0)
    model = randomised(Decoder(groups))
    with torch.no_grad():
        model.up.bias.uniform_(-0.1, 0.1)
    x = torch.randn(2, 3, 16, 16, dtype=D, generator=torch.Generator().manual_seed(0))
    weights = ClassRegion(1, (2, 2, 10, 10)).weights(model(x))
    ours = relprop.explain(model, x, target=weights, method=method).relevance
    with Gradient(model=copy.deepcopy(model), composite=ZENNIT[method]()) as attributor:
        _, theirs = attributor(x, lambda out: weights * out)
    assert ((ours - theirs).abs().max() <= 1e-9 * theirs.abs().max())
    for rap_method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, target=weights, method=rap_method)
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all()
