"""The API as a user meets it: inputs checked with clear errors, targets in every form, the
model left untouched, functional and in-place forms normalised, unsupported ops named."""
import copy
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

import relprop
from relprop import RAP, UnsupportedOperation, UntraceableModel, explain


@pytest.fixture(scope="module")
def vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg11(num_classes=10).eval()


def x(n=2, c=3, s=32, dtype=torch.float32):
    return torch.randn(n, c, s, s, dtype=dtype, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("bad, message", [
    (torch.randn(3, 32, 32), "add the batch dimension"),
    (torch.randn(1, 4, 32, 32), "expects 3 input channels"),
    (torch.randn(1, 3, 16, 16), "could not run on inputs of shape"),
    (torch.randn(0, 3, 32, 32), "empty batch"),
    (torch.full((1, 3, 32, 32), float("nan")), "NaN or Inf"),
    (torch.randn(1, 3, 32, 32).double(), r"model\.to\("),
    (torch.zeros(1, 3, 32, 32, dtype=torch.long), "floating point"),
    ([[1.0]], "must be a torch.Tensor"),
    (torch.tensor(1.0), r"batch of shape \(N, C, H, W\)"),
])
def test_bad_inputs_raise_clear_value_errors(vgg, bad, message):
    with pytest.raises(ValueError, match=message):
        RAP(vgg).attribute(bad)


@pytest.mark.parametrize("target, message", [(10, "out of range"), (-1, "out of range"),
                                             ([1, 2, 3], "3 entries for a batch of 2"),
                                             (1.5, "class indices")])
def test_bad_targets(vgg, target, message):
    with pytest.raises(ValueError, match=message):
        RAP(vgg).attribute(x(), target)


def test_target_forms(vgg):
    rap = RAP(vgg)
    e = rap.explain(x())
    assert torch.equal(e.target, vgg(x()).argmax(1))
    assert torch.equal(rap.explain(x(), 3).target, torch.tensor([3, 3]))
    assert torch.equal(rap.explain(x(), [4, 5]).target, torch.tensor([4, 5]))
    assert torch.equal(rap.explain(x(), torch.tensor([6, 7])).target, torch.tensor([6, 7]))
    assert torch.allclose(e.score, vgg(x()).gather(1, e.target.view(-1, 1)).squeeze(1),
                          rtol=1e-5, atol=1e-6)


def test_explanation_views(vgg):
    e = explain(vgg, x())
    assert e.relevance.shape == (2, 3, 32, 32) and e.heatmap.shape == (2, 32, 32)
    assert torch.equal(e.positive + e.negative, e.relevance)
    assert (e.positive >= 0).all() and (e.negative <= 0).all()
    assert e.method == "rap-stable"  # the default: the paper's RAP on a network without additions
    assert torch.equal(e.relevance, RAP(vgg).attribute(x()))
    assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score, rtol=1e-3, atol=1e-4)


def test_batch_results_equal_single_results(vgg):
    rap = RAP(vgg)
    batch = rap.attribute(x(3), [1, 2, 3])
    single = torch.cat([rap.attribute(x(3)[i:i + 1], i + 1) for i in range(3)])
    assert torch.allclose(batch, single, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["rap-stable", "gradient"])
def test_several_targets_of_one_forward_pass_equal_separate_calls(method):
    """``explain_each``: the top classes of a batch from one forward pass (a propagation
    method sweeps back once per target from what it kept, without freeing it between sweeps)
    are the separate calls' maps exactly."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval().double()
    inputs = x(2, dtype=torch.float64)
    explainer = relprop.explainer(model, method)
    targets = [None, [3, 4], 7]
    together = explainer.explain_each(inputs, targets)
    for target, e in zip(targets, together):
        alone = explainer.explain(inputs, target)
        assert torch.equal(e.target, alone.target)
        torch.testing.assert_close(e.relevance, alone.relevance, rtol=0, atol=1e-13)
        torch.testing.assert_close(e.score, alone.score, rtol=0, atol=1e-13)


def test_model_is_left_as_it_was(vgg):
    model = copy.deepcopy(vgg).train()
    model.features[0].weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(UserWarning, match="training mode"):
        e = RAP(model).explain(x())
    assert model.training and all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model.features[0].weight.requires_grad and model.features[3].weight.requires_grad
    assert all(not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks
               for m in model.modules())
    # explained in eval mode: the same relevance as the eval-mode model
    assert torch.allclose(e.relevance, RAP(vgg).attribute(x()), atol=1e-6)
    assert not e.relevance.requires_grad and e.relevance.grad_fn is None


class Functional(nn.Module):
    """The forms real models use: F.conv2d on attributes, grouped and depthwise convolutions,
    ZeroPad2d, in-place ReLU and +=, relu6/hardtanh, cat, F.max_pool2d, torch.flatten,
    F.linear, dropout and scaling by constants."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.3)
        self.b1 = nn.Parameter(torch.randn(8, generator=g) * 0.1)
        self.pad = nn.ZeroPad2d((0, 1, 0, 1))
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.fc_w = nn.Parameter(torch.randn(5, 16 * 4 * 4, generator=g) * 0.05)
        self.fc_b = nn.Parameter(torch.zeros(5))

    def forward(self, x):
        x = x * 0.5 + 0.1
        x = F.conv2d(self.pad(x), self.w1, self.b1, stride=2)
        x = x.relu_()
        y = F.relu6(self.bn(self.dw(x)))
        z = F.hardtanh(self.grouped(x), 0.0, 4.0)
        y += x
        x = torch.cat([y, z], 1)
        x = F.max_pool2d(x, 2)
        x = F.dropout(torch.flatten(x, 1), 0.5, training=False)
        return F.linear(x, self.fc_w, self.fc_b)


def test_functional_and_inplace_forms_conserve():
    model = Functional().double().eval()
    e = RAP(model).explain(x(2, s=16, dtype=torch.float64))
    assert torch.isfinite(e.relevance).all()
    assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score, rtol=1e-9, atol=1e-12)
    notes = RAP(model).plan.notes
    assert notes["conv2d"] == {"role": "input", "input_pad": (0, 1, 0, 1)}
    assert notes["linear"] == {"role": "output"}


def test_zero_padded_input_layer_gives_the_border_nothing():
    model = Functional().double().eval()
    rap = RAP(model)
    run_inputs = x(1, s=16, dtype=torch.float64)
    assert torch.allclose(rap.attribute(run_inputs).sum(), rap.explain(run_inputs).score)


def test_inplace_add_reads_the_updated_tensor():
    class Inplace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x):
            h = self.a(x).relu()
            h += x
            return self.b(h)

    class OutOfPlace(Inplace):
        def forward(self, x):
            return self.b(self.a(x).relu() + x)

    torch.manual_seed(0)
    m1 = Inplace().double().eval()
    m2 = OutOfPlace().double().eval()
    m2.load_state_dict(m1.state_dict())
    inp = torch.rand(3, 4, dtype=torch.float64)
    assert torch.allclose(RAP(m1).attribute(inp), RAP(m2).attribute(inp))


def test_unsupported_operation_names_node_module_and_fix():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(3, 4, 3), nn.Linear(4, 2)

        def forward(self, x):
            x = self.conv(x)
            x = x * torch.erf(x)  # sigmoid and GELU have rules now (rap-spec §8); erf has none
            return self.fc(x.mean((2, 3)))

    with pytest.raises(UnsupportedOperation, match=r"erf.*graph node 'erf'.*register_op"):
        RAP(Gated())

    class WithSoftsign(Gated):
        def __init__(self):
            super().__init__()
            self.act = nn.Softsign()

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    with pytest.raises(UnsupportedOperation, match=r"module Softsign .*module 'act'"):
        RAP(WithSoftsign())


def test_register_op_extends_without_touching_the_engine():
    class Swish(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.fc = nn.Conv2d(3, 4, 3), Swish(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.act(self.conv(x)).mean((2, 3)))

    relprop.register_op(Swish, kind="passthrough")
    net = Net().double().eval()
    e = explain(net, x(2, s=8, dtype=torch.float64))
    assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score)


def test_untraceable_model_gets_a_clear_error():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:
                return self.fc(x)
            return -self.fc(x)

    explainer = RAP(Branchy())  # fx cannot trace it: captured on the first input instead
    with pytest.raises(UntraceableModel, match="neither torch.fx nor torch.export could "
                                               "capture Branchy on inputs of shape \\(2, 4\\)"):
        explainer.attribute(torch.randn(2, 4))


def test_unknown_method(vgg):
    with pytest.raises(ValueError, match="unknown method 'lrp'; available: rap"):
        explain(vgg, x(), method="lrp")


def test_no_warning_in_eval_mode(vgg):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        explain(vgg, x())


def test_register_rule_adds_a_new_kind():
    """docs/extending.md's recipe: a module of one's own with a rule of one's own. Registered for rap,
    it serves rap-stable (the default explain uses below), a variant of rap, too."""
    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.halve, self.fc = nn.Conv2d(3, 4, 3), Halve(), nn.Linear(4, 2)

        def forward(self, x):
            return self.fc(self.halve(self.conv(x).relu()).mean((2, 3)))

    seen = []

    @relprop.register_rule("halve", method="rap", needs_inputs=True)
    def halve_rule(op, relevance, run):
        (inp,) = run.args(op)
        seen.append(inp.shape)
        return (relevance,)

    relprop.register_op(Halve, kind="halve", sign="same")
    net = Net().double().eval()
    e = explain(net, x(2, s=8, dtype=torch.float64))
    assert seen == [torch.Size([2, 4, 6, 6])]
    assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score)
    assert RAP(net).graph.op("fc").input_nonneg  # sign='same' carried ReLU's fact through
    # A rule that names no dtypes is trusted in float32/float64 only.
    half = Net().bfloat16().eval()
    with pytest.raises(ValueError, match="not tested in torch.bfloat16 for ops of kind halve"):
        explain(half, x(1, s=8, dtype=torch.bfloat16))


def test_a_rule_can_compute_its_ops_forward_and_keep_a_by_product():
    """``register_rule(..., forward=)``: the rule's own forward replaces the op in the forward
    pass, its output is what the layers above read, and what it kept reaches the rule (and no
    other op's rule) in the sweep."""
    class Halve(nn.Module):
        def forward(self, x):
            return x / 2

    import gc
    import weakref

    class Mark(nn.Module):  # an op below Halve: its rule runs after Halve's in the sweep
        def forward(self, x):
            return x * 1

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), Mark(), Halve(), nn.Linear(4, 2))
    net = net.double().eval()
    kept, seen, freed = [], [], []

    def halve_forward(op, args, kwargs, note):
        out = args[0] / 2
        by_product = out * 2
        kept.append((weakref.ref(by_product), by_product.clone()))
        return out, by_product

    @relprop.register_rule("halve", method="rap", forward=halve_forward)
    def halve_rule(op, relevance, run):
        seen.append(run.by_product(op) is kept[-1][0]())
        return (relevance,)

    @relprop.register_rule("mark", method="rap", needs_inputs=False)
    def mark_rule(op, relevance, run):
        gc.collect()
        freed.append(kept[-1][0]() is None)
        return (relevance,)

    relprop.register_op(Halve, kind="halve", sign="same")
    relprop.register_op(Mark, kind="mark", sign="same")
    inputs = torch.rand(2, 3, dtype=torch.float64)
    e = explain(net, inputs, 1, method="rap")
    assert len(kept) == 1 and seen == [True]
    assert torch.equal(kept[0][1], net[1](net[0](inputs)))  # it read the op's real input
    assert torch.allclose(e.score, net(inputs)[:, 1])  # the layer above read its output
    assert torch.allclose(e.relevance.sum(1), e.score)
    assert freed == [True]  # the sweep let go of the by-product once Halve's rule had run


def test_a_rule_in_factor_form_meets_rules_without_one():
    """``register_rule(..., factor=Factored(...))``: between two rules in factor form the sweep
    carries ``g = R / value``; where one meets a rule without that form (RAP's Linear and ReLU
    rules here) the engine converts, ``g = R / y`` on the way in and ``R = x ⊙ g`` on the way
    out, and the map is the one the relevance forms give."""
    from relprop.rules import Factored
    from relprop.rules.algebra import sdiv

    class Triple(nn.Module):
        def forward(self, x):
            return x * 3

    calls = []

    def triple_rule(op, relevance, run):  # the z-rule: R_x = x ⊙ 3 (R / y)
        calls.append("relevance")
        return (run.args(op)[0] * 3 * sdiv(relevance, run.output(op)),)

    def triple_factor(op, g, run):  # the same in factor form: g_x = 3 g
        calls.append("factor")
        return (3 * g,)

    relprop.register_op(Triple, kind="triple", sign="same")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), Triple(), Triple(), nn.Linear(16, 2))
    net = net.double().eval()
    inputs = torch.randn(2, 3, dtype=torch.float64)
    maps = []
    for factor in (Factored(triple_factor), None):
        relprop.register_rule("triple", triple_rule, method="rap", needs_output=True,
                              factor=factor)
        calls.clear()
        e = explain(net, inputs, 1, method="rap")
        maps.append(e.relevance)
        assert torch.allclose(e.relevance.sum(1), e.score)
        assert calls == (["factor"] * 2 if factor else ["relevance"] * 2)
    assert torch.allclose(maps[0], maps[1], rtol=1e-12, atol=1e-14)
    assert maps[1].abs().max() > 0


def test_mlp_inputs_need_a_batch_dimension():
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with pytest.raises(ValueError, match="at least two dimensions"):
        RAP(mlp).attribute(torch.rand(4))
    e = RAP(mlp.double()).explain(torch.rand(5, 4, dtype=torch.float64))
    assert torch.allclose(e.relevance.sum(1), e.score)


def test_tf32_is_off_while_explaining_and_restored_after():
    """cuDNN's default TF32 convolutions would change residual networks' maps (see api)."""
    conv = torch.backends.cudnn.conv
    if not hasattr(conv, "fp32_precision"):
        pytest.skip("torch < 2.9: no fp32_precision settings")
    seen = []

    class Probe(nn.Module):
        def forward(self, t):
            seen.append(conv.fp32_precision)
            return t

    relprop.register_op(Probe, kind="passthrough")
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), Probe(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 2)).eval()
    before = conv.fp32_precision
    conv.fp32_precision = "tf32"
    try:
        RAP(net).attribute(x(1, s=8))
        assert seen == ["ieee"]
        assert conv.fp32_precision == "tf32"
    finally:
        conv.fp32_precision = before


def test_same_padding_is_read_from_the_weight_and_refused_for_a_computed_one():
    class Same(nn.Module):
        def __init__(self, computed):
            super().__init__()
            self.computed = computed
            self.conv, self.fc = nn.Conv2d(3, 4, 3, padding="same"), nn.Linear(4, 2)

        def forward(self, x):
            w = self.conv.weight * 2 if self.computed else self.conv.weight
            return self.fc(F.conv2d(x, w, padding="same").relu().mean((2, 3)))

    e = RAP(Same(False).double().eval()).explain(x(2, s=8, dtype=torch.float64))
    assert torch.allclose(e.relevance.sum((1, 2, 3)), e.score)
    with pytest.raises(UnsupportedOperation, match="padding='same' with a computed weight"):
        RAP(Same(True))
