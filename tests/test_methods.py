"""Every method of relprop.methods() through relprop.explain on the model families: finite maps
of the input's shape, one Explanation; what a method cannot do is a clear ValueError."""
import functools

import pytest
import torch
import torchvision

import relprop
from relprop import models

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

FAMILIES = {"vgg16": 32, "resnet50": 32, "inception_v3": 75, "efficientnet_lite0": 32}
CANNOT: dict = {  # (family, method) -> what the error says, where a method cannot run
    (name, method): "needs a transformer" for name in FAMILIES
    for method in relprop.methods("attention")}


@functools.lru_cache(maxsize=None)
def family(name):
    torch.manual_seed(0)
    if name == "efficientnet_lite0":
        return models.spec(name).build().eval()
    kwargs = {"init_weights": False, "aux_logits": False, "transform_input": True} \
        if name == "inception_v3" else {}
    return torchvision.models.get_model(name, weights=None, **kwargs).eval()


def test_methods_lists_what_explain_accepts():
    assert relprop.methods()[0] == "rap"
    assert {"lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat", "lrp-epsilon-alpha2beta1",
            "lrp-epsilon-alpha2beta1-flat", "lrp-epsilon-gamma-box", "gradient",
            "gradient-x-input", "integrated-gradients", "smoothgrad", "guided-backprop",
            "deeplift", "grad-cam"} <= set(relprop.methods())
    with pytest.raises(ValueError, match="unknown method 'lrp'; available: rap, rap-stable, lrp-epsilon"):
        relprop.explain(family("vgg16"), torch.randn(1, 3, 32, 32), method="lrp")


# attnlrp is lrp-attn with attention rules of its own: on these CNNs it is lrp-attn (checked
# below), and it is tested where there is attention (test_transformers, test_text)
_METHODS = [m for m in relprop.methods() if m != "attnlrp"]


@pytest.mark.parametrize("method", _METHODS)
@pytest.mark.parametrize("name", list(FAMILIES))
def test_every_method_on_every_family(name, method):
    model, size = family(name), FAMILIES[name]
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    before = x.clone()
    if (name, method) in CANNOT:
        with pytest.raises(ValueError, match=CANNOT[(name, method)]):
            relprop.explain(model, x, method=method)
        return
    e = relprop.explain(model, x, target=[1, 2], method=method)
    assert e.relevance.shape == x.shape and torch.isfinite(e.relevance).all()
    assert e.method == method and e.target.tolist() == [1, 2]
    # RAP computes its hidden layers' outputs from its two maps (Lin(x, W+) - Lin(x, |W-|) + b),
    # whose difference cancels: its logits are the model's to 1e-5 of their size (measured 1e-5
    # on this ResNet-50 with one thread; the model's own float32 error is 1e-6)
    rtol = 1e-4 if method in ("rap", "rap-stable") else 1e-5
    assert torch.allclose(e.score, model(x)[:, [1, 2]].diagonal(), rtol=rtol)
    if method != "grad-cam":  # a ReLU'd CAM of random weights may be 0 everywhere
        assert e.relevance.abs().sum() > 0
    assert torch.equal(x, before) and not x.requires_grad


def test_options_are_checked_and_used():
    model, x = family("vgg16"), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="takes no option alpha; its options: epsilon=1e-06"):
        relprop.explain(model, x, method="lrp-epsilon", alpha=2)
    with pytest.raises(ValueError, match="'rap' takes no option epsilon"):
        relprop.explain(model, x, method="rap", epsilon=1)
    coarse = relprop.explain(model, x, method="lrp-epsilon", epsilon=10.0).relevance
    fine = relprop.explain(model, x, method="lrp-epsilon").relevance
    assert not torch.allclose(coarse, fine)
    a = relprop.explain(model, x, method="smoothgrad", samples=4, seed=3).relevance
    b = relprop.explain(model, x, method="smoothgrad", samples=4, seed=3).relevance
    assert torch.equal(a, b)


def test_smoothgrad_leaves_the_callers_random_state():
    model, x = family("vgg16"), torch.randn(1, 3, 32, 32)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    relprop.explain(model, x, method="smoothgrad", samples=2)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("method", ["rap", "lrp-epsilon-plus", "gradient-x-input", "deeplift",
                                    "grad-cam"])
def test_relevance_inside_the_network(method):
    model, x = family("vgg16"), torch.randn(2, 3, 32, 32)
    e = relprop.explain(model, x, target=[1, 2], method=method, layer="features.28")
    channels = 1 if method == "grad-cam" else 512
    assert e.relevance.shape == (2, channels, 2, 2) and torch.isfinite(e.relevance).all()
    if method == "rap":  # RAP conserves at every layer
        assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score, rtol=1e-4, atol=1e-6)


def test_layer_errors_say_what_to_pass():
    model, x = family("vgg16"), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="neither a module path nor a graph node.*features.28"):
        relprop.explain(model, x, layer="features.99")
    with pytest.raises(ValueError, match="no layer variant of 'smoothgrad'"):
        relprop.explain(model, x, method="smoothgrad", layer="features.28")


def test_deeplift_runs_on_resnet_and_is_complete():
    """torchvision's ResNet calls one ReLU module several times, which Captum's DeepLift cannot
    take; relprop gives each call its own ReLU (an fx GraphModule sharing the weights). With a
    zero baseline on a bias-free model, DeepLift's map sums to the score."""
    torch.manual_seed(0)
    model = torchvision.models.resnet50(num_classes=10).double().eval()
    with torch.no_grad():
        model.fc.bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_modules()]
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    e = relprop.explain(model, x, [1, 2], method="deeplift")
    assert (e.delta.abs() <= 1e-9 * e.score.abs()).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [n for n, _ in model.named_modules()] == names


def test_gradient_methods_explain_in_eval_mode_and_say_so():
    model = family("vgg16").train()
    x = torch.randn(1, 3, 32, 32)
    try:
        with pytest.warns(UserWarning, match="training mode"):
            e = relprop.explain(model, x, target=1, method="gradient")
        assert model.training and all(m.training for m in model.modules())
        assert torch.allclose(e.relevance, relprop.explain(model.eval(), x, target=1,
                                                           method="gradient").relevance)
    finally:
        model.eval()


@pytest.mark.parametrize("method,same_as", [("guided-backprop", "gradient"),
                                            ("deeplift", "gradient-x-input")])
def test_captum_methods_that_become_others_on_relu6_say_so(method, same_as):
    """EfficientNet-Lite0's activations are ReLU6, which Captum's guided backprop and DeepLift
    do not know: their maps are then the gradient's and gradient x input's (up to rounding)."""
    from efficientnet_lite_pytorch import EfficientNet
    torch.manual_seed(0)
    model = EfficientNet.from_name("efficientnet-lite0").eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.warns(UserWarning, match=f"{method}: Captum applies its rule at .*ReLU6 pass the "
                                         f"plain gradient.*{same_as}'s") as caught:
        found = relprop.explain(model, x, 3, method).relevance
    assert caught[0].filename == __file__
    other = relprop.explain(model, x, 3, same_as).relevance
    torch.testing.assert_close(found, other, rtol=1e-4, atol=1e-5 * float(other.abs().max()))


def test_attnlrp_is_lrp_attn_on_a_network_without_attention():
    model = family("vgg16")
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(relprop.explain(model, x, method="attnlrp").relevance,
                               relprop.explain(model, x, method="lrp-attn").relevance,
                               rtol=0, atol=0)
