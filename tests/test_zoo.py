"""Every torchvision classifier (issues 16, 17; rap-spec §8): each builder's
graph has a rule for every op under every propagation method, and the smallest builder of each
family runs every method with finite maps of the input's size and conserves in float64.

Every builder is checked on the meta device (no memory, no arithmetic: the trace and the plans
are what can fail); the numbers are checked on each family's smallest builder at a small input,
which holds the same ops. ``python benchmarks/zoo.py`` runs one full-size builder per family at
224x224 with every method (the README's table)."""
from __future__ import annotations

import pytest
import torch
import torchvision

import relprop

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

ATTENTION = ("vit_", "swin_", "maxvit_")  # small models of these: test_transformers.py
BUILDERS = torchvision.models.list_models(module=torchvision.models)
SMALLEST = {  # family -> its smallest builder, and an input size it takes
    "alexnet": ("alexnet", 64), "convnext": ("convnext_tiny", 64),
    "densenet": ("densenet121", 64), "efficientnet": ("efficientnet_b0", 64),
    "efficientnet_v2": ("efficientnet_v2_s", 64), "googlenet": ("googlenet", 64),
    "inception": ("inception_v3", 80), "mnasnet": ("mnasnet0_5", 64),
    "mobilenet_v2": ("mobilenet_v2", 64), "mobilenet_v3": ("mobilenet_v3_small", 64),
    "regnet_x": ("regnet_x_400mf", 64), "regnet_y": ("regnet_y_400mf", 64),
    "resnet": ("resnet18", 64), "resnext": ("resnext50_32x4d", 64),
    "shufflenet": ("shufflenet_v2_x0_5", 64), "squeezenet": ("squeezenet1_1", 64),
    "vgg": ("vgg11", 64), "wide_resnet": ("wide_resnet50_2", 64),
}
# Small settings for the slow gradient methods: they run the same code with fewer passes.
QUICK = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 2}}
TINY = {"epsilon": 1e-30, "stabilizer": 1e-30}


def test_every_family_is_covered():
    """A builder torchvision adds in a new family fails here until the family is listed."""
    def family(name):
        for key, (builder, _) in sorted(SMALLEST.items(), key=lambda kv: -len(kv[0])):
            if name.startswith(key) or name == builder:
                return key
        return None
    assert [n for n in BUILDERS if family(n) is None and not n.startswith(ATTENTION)] == []


def build(name: str, **kwargs):
    extra = {"init_weights": False, "aux_logits": False} if name in ("inception_v3",
                                                                      "googlenet") else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **extra, **kwargs)


@pytest.mark.parametrize("name", BUILDERS)
def test_every_builder_has_a_rule_for_every_op(name, monkeypatch):
    """Parameters are put on the meta device as the builder registers them (RegNet's builders
    compute their widths with tensors, so the whole build cannot run on meta): RegNet-Y 128GF is
    traced without its 2.6 GB of weights."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None:
            param = torch.nn.Parameter(param.to("meta"), param.requires_grad)
        register(module, name, param)
    monkeypatch.setattr(torch.nn.Module, "register_parameter", on_meta)
    model = build(name).eval()
    monkeypatch.undo()
    assert all(p.is_meta for p in model.parameters())
    for method in relprop.methods("propagation"):
        if method != "attnlrp":  # lrp-attn's rules and two of its own: lrp-attn's check holds
            relprop.explainer(model, method)  # traces and plans: an op without a rule raises


def _with_statistics(model):
    """BatchNorm statistics and biases that are not the defaults, so that they matter."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.4 - 0.2)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


@pytest.mark.parametrize("family", sorted(SMALLEST))
def test_the_smallest_of_each_family_runs_every_method_and_conserves(family):
    name, size = SMALLEST[family]
    torch.manual_seed(0)
    model = _with_statistics(build(name)).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    for method in relprop.methods():
        if method == "attnlrp":  # = lrp-attn without attention (test_methods checks it)
            continue
        if method in relprop.methods("attention"):  # attention rollout: transformers only
            with pytest.raises(relprop.errors.NotApplicable, match="needs a transformer"):
                relprop.explainer(model, method)
            continue
        e = relprop.explain(model, x, target=[1, 7], method=method, **QUICK.get(method, {}))
        assert e.relevance.shape == x.shape, method
        assert torch.isfinite(e.relevance).all(), method
    model64, x64 = model.double(), x.double()
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model64, x64, target=[1, 7], method=method)
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), (method, e.delta)
        assert e.relevance.abs().sum() > 0
    with torch.no_grad():  # LRP-ε conserves where no bias takes a share and ε -> 0
        for m in model64.modules():
            if getattr(m, "bias", None) is not None and not isinstance(
                    m, (torch.nn.LayerNorm, torch.nn.GroupNorm)):
                m.bias.zero_()
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
    e = relprop.explain(model64, x64, target=[1, 7], method="lrp-epsilon", **TINY)
    assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), e.delta
