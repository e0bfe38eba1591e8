"""Conservation in float64 on every supported model family with random weights: the input
relevance of each image sums to the explained score, |sum R - score| <= 1e-9 * max(1, |score|),
and nothing is NaN or Inf."""
import pytest
import torch
import torchvision

import relprop
from relprop import RAP, models


def _family(name):
    if name == "efficientnet_lite0":
        return models.spec(name).build()
    kwargs = {"init_weights": False, "aux_logits": False, "transform_input": True} \
        if name == "inception_v3" else {}
    return torchvision.models.get_model(name, weights=None, **kwargs)


FAMILIES = {  # model -> input size that keeps float64 on 2 CPU cores quick
    "vgg11": 64, "vgg16_bn": 64, "resnet18": 64, "resnet50": 64, "inception_v3": 80,
    "efficientnet_lite0": 96, "squeezenet1_0": 64, "squeezenet1_1": 64,
}


@pytest.mark.parametrize("method", ["rap", "rap-stable"])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_conserves_to_the_logit(name, method):
    """RAP and rap-stable (spec §7.5) alike."""
    torch.manual_seed(0)
    model = _family(name).double().eval()
    _give_batchnorm_statistics(model)
    x = torch.randn(2, 3, FAMILIES[name], FAMILIES[name], dtype=torch.float64)
    e = relprop.explain(model, x, target=[1, 7], method=method)
    assert torch.isfinite(e.relevance).all()
    assert torch.allclose(e.score, model(x)[torch.arange(2), e.target])
    tol = 1e-9 * torch.clamp(e.score.abs(), min=1)
    assert (e.delta.abs() <= tol).all(), (e.delta, e.score)
    assert e.relevance.abs().sum() > 0


def _give_batchnorm_statistics(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)


@pytest.mark.parametrize("name", ["vgg16_bn", "inception_v3"])
def test_stable_rap_is_rap_without_additions(name):
    torch.manual_seed(0)
    model = _family(name).double().eval()
    x = torch.randn(2, 3, FAMILIES[name], FAMILIES[name], dtype=torch.float64)
    stable = relprop.explain(model, x, target=[1, 7], method="rap-stable").relevance
    assert torch.equal(stable, RAP(model).attribute(x, target=[1, 7]))
