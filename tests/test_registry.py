"""One registry of methods, one explainer: what each method declares is what it does (issue 15).

The first four tests are the defects the four copies of the method layer had drifted into; each
fails on the code before the registry."""
from __future__ import annotations

import re
import threading
from pathlib import Path

import pytest
import torch
import torchvision

import relprop
from relprop import cli, registry

DOCS = Path(__file__).resolve().parents[1] / "docs"  # the site's pages, where the recipes live


def _vgg():
    torch.manual_seed(0)
    return torchvision.models.vgg11(num_classes=10).eval()


def test_integrated_gradients_at_a_layer_runs_one_batch_per_step():
    """All 50 steps at once is the memory blow-up the docs warn about; the layer variant must
    run one batch of the caller's size per step, as the input variant does."""
    model, x = _vgg(), torch.randn(2, 3, 32, 32)
    seen = []
    hook = model.features[0].register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    try:
        e = relprop.explain(model, x, method="integrated-gradients", layer="features.2", steps=8)
    finally:
        hook.remove()
    assert e.relevance.shape == (2, 64, 16, 16) and torch.isfinite(e.relevance).all()
    assert max(seen) == len(x), seen


def test_deeplift_at_a_layer_works_on_resnet():
    """torchvision's ResNet calls one ReLU module several times; the input variant gets a copy
    with one ReLU per call, and so must the layer variant."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    e = relprop.explain(model, x, method="deeplift", layer="layer2.0.conv1")
    assert e.relevance.shape == (2, 128, 8, 8) and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0


@pytest.mark.parametrize("method", ["deeplift", "gradient-x-input", "rap-stable",
                                    "integrated-gradients"])
def test_a_container_layer_works_for_every_family(method):
    """``layer2`` (a stage of blocks) by module path: its output's relevance, for the copy that
    DeepLift runs too (the copy calls the container whole); DeepLift's layer attribution is
    complete, so it sums to the score's difference from the baseline's."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    e = relprop.explain(model, x, method=method, layer="layer2")
    assert e.relevance.shape == (2, 128, 8, 8) and torch.isfinite(e.relevance).all()
    assert e.relevance.abs().sum() > 0
    if method == "deeplift":
        with torch.no_grad():
            baseline = model(torch.zeros_like(x))[torch.arange(2), e.target]
        total = e.relevance.flatten(1).sum(1)
        assert torch.allclose(total, e.score - baseline, rtol=1e-3, atol=1e-4)


def test_grad_cam_layer_can_be_chosen_and_the_model_is_traced_once():
    from captum.attr import LayerAttribution, LayerGradCam
    model, x = _vgg(), torch.randn(2, 3, 32, 32)
    traces = []
    real = torch.fx.Tracer.trace

    def counted(self, *args, **kwargs):
        traces.append(1)
        return real(self, *args, **kwargs)
    torch.fx.Tracer.trace = counted
    try:
        default = [relprop.explain(model, x, target=1, method="grad-cam") for _ in range(3)]
    finally:
        torch.fx.Tracer.trace = real
    assert len(traces) <= 1  # the traced graph is kept per model and shared
    assert torch.equal(default[0].relevance, default[2].relevance)
    chosen = relprop.explain(model, x, target=1, method="grad-cam", target_layer="features.3")
    cam = LayerGradCam(model, model.features[3]).attribute(x, target=1, relu_attributions=True)
    cam = LayerAttribution.interpolate(cam, (32, 32), interpolate_mode="bilinear")
    assert chosen.relevance.shape == x.shape
    assert torch.allclose(chosen.heatmap, cam[:, 0], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(chosen.relevance, default[0].relevance)
    with pytest.raises(ValueError, match="not both"):
        relprop.explain(model, x, method="grad-cam", layer="features.3", target_layer="features.0")


@pytest.mark.parametrize("method", ["lrp-epsilon", "lrp-epsilon-plus", "lrp-epsilon-plus-flat",
                                    "lrp-epsilon-alpha2beta1", "lrp-epsilon-alpha2beta1-flat"])
@pytest.mark.parametrize("option", ["gamma", "low", "high"])
def test_an_option_no_rule_of_the_composite_reads_is_refused(method, option):
    model, x = _vgg(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match=f"'{method}' takes no option {option}"):
        relprop.explain(model, x, method=method, **{option: 0.5})


def test_the_gamma_composite_reads_its_options():
    model, x = _vgg(), torch.randn(1, 3, 32, 32).double()
    model = model.double()
    base = relprop.explain(model, x, method="lrp-epsilon-gamma-box")
    boosted = relprop.explain(model, x, method="lrp-epsilon-gamma-box", gamma=1.0)
    bounded = relprop.explain(model, x, method="lrp-epsilon-gamma-box", low=-3.0, high=3.0)
    assert not torch.allclose(base.relevance, boosted.relevance)
    assert not torch.allclose(base.relevance, bounded.relevance)


def test_every_method_declares_itself_in_the_registry():
    assert relprop.methods() == [s.name for s in registry.specs()]
    assert relprop.methods()[:2] == ["rap", "rap-stable"]
    for spec in registry.specs():
        assert spec.family in ("propagation", "gradient", "attention") \
            and spec.summary.endswith(".")
        assert all(o.doc for o in spec.options)
    with pytest.raises(ValueError, match="unknown method 'nope'; available: rap, rap-stable"):
        relprop.explain(_vgg(), torch.randn(1, 3, 32, 32), method="nope")


def test_a_name_is_registered_once():
    with pytest.raises(ValueError, match="'rap' is already registered"):
        relprop.register_method("rap", relprop.RAP, family="propagation", summary="again.")


def _docs_block(page: str, heading: str) -> str:
    text = (DOCS / page).read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_docs_recipe_adds_a_method_with_one_call(tmp_path, capsys):
    """docs/extending.md's 'A method of your own': one register_method call, and the method is in
    relprop.methods(), explain, the command line's choices, and conserves as it says."""
    namespace = {}
    exec(_docs_block("extending.md", "## A method of your own"), namespace)
    assert "occlusion" in relprop.methods()
    model, x = _vgg(), torch.randn(2, 3, 32, 32)
    e = relprop.explain(model, x, method="occlusion", window=8)
    assert e.relevance.shape == x.shape and e.method == "occlusion"
    # Occluding a window with zeros changes the score by what the window held: the map is the
    # drop of the score, spread over the window's pixels.
    with torch.no_grad():
        covered = x.clone()
        covered[:, :, :8, :8] = 0
        drop = model(x)[torch.arange(2), e.target] - model(covered)[torch.arange(2), e.target]
    assert torch.allclose(e.relevance[:, :, :8, :8].sum((1, 2, 3)), drop, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="'occlusion' takes no option size"):
        relprop.explain(model, x, method="occlusion", size=8)
    assert cli.main(["methods"]) == 0
    assert "occlusion" in capsys.readouterr().out


def test_the_docs_method_table_is_the_registry():
    text = (DOCS / "methods.md").read_text()
    table = registry.markdown_table(relprop.DEFAULT_METHOD)
    assert table in text, "docs/methods.md's method table is not the registry's; run " \
        "python -c 'import relprop; print(relprop.registry.markdown_table(\"rap-stable\"))'"


def test_one_explainer_serves_two_threads_with_their_own_options():
    """Per-call options and scores live in the call, not on the explainer: two threads with one
    explainer and different options get what each would get alone."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).double().eval()
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    explainer = relprop.explainer(model, "rap-stable")
    alone = {eps: explainer.explain(x, None, epsilon=eps).relevance for eps in (0.01, 0.5)}
    assert not torch.allclose(alone[0.01], alone[0.5])
    wrong, start = [], threading.Barrier(2)

    def work(eps):
        start.wait()
        for _ in range(4):
            if not torch.equal(explainer.explain(x, None, epsilon=eps).relevance, alone[eps]):
                wrong.append(eps)
    threads = [threading.Thread(target=work, args=(eps,)) for eps in alone]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def test_exact_float32_is_given_back_after_concurrent_calls():
    from relprop.explainer import exact_float32
    before = torch.backends.mkldnn.matmul.fp32_precision
    inside, gate = [], threading.Barrier(2)

    def hold():
        with exact_float32():
            gate.wait()
            inside.append(torch.backends.mkldnn.matmul.fp32_precision)
            gate.wait()
    torch.backends.mkldnn.matmul.fp32_precision = "tf32"
    try:
        threads = [threading.Thread(target=hold) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert inside == ["ieee", "ieee"]
        assert torch.backends.mkldnn.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before


def test_legacy_tf32_flags_stay_readable_while_explaining():
    """Model code reads ``torch.backends.cudnn.allow_tf32`` (transformers 4.x's attention does);
    torch raises there when the conv and RNN settings disagree with that flag, so an explained
    forward would fail. Inside: readable and off; after: the caller's settings, all of them."""
    from relprop.explainer import exact_float32
    cudnn = torch.backends.cudnn
    before = (cudnn.allow_tf32, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision,
              torch.backends.cuda.matmul.allow_tf32)
    with exact_float32():
        assert cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
        assert cudnn.conv.fp32_precision == "ieee"
    assert (cudnn.allow_tf32, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision,
            torch.backends.cuda.matmul.allow_tf32) == before


def test_a_method_without_a_layer_variant_says_which_have_one():
    with pytest.raises(ValueError, match="no layer variant of 'smoothgrad'.*rap, rap-stable"):
        relprop.explain(_vgg(), torch.randn(1, 3, 32, 32), method="smoothgrad",
                        layer="features.3")


def test_a_dropped_model_frees_its_graph_and_plans():
    """The traced graph and the plans made from it are kept per model, weakly: the model goes,
    and they go with it."""
    import gc
    import weakref
    model = _vgg()
    relprop.explain(model, torch.randn(1, 3, 32, 32), method="rap")
    relprop.explain(model, torch.randn(1, 3, 32, 32), method="lrp-epsilon")
    graph = weakref.ref(relprop.explainer(model, "rap").graph)
    assert graph() is not None and {method for method, _ in graph().derived["plans"]} >= {"rap", "lrp-epsilon"}
    del model
    gc.collect()  # the model (if a cycle holds it), and with it the entry that held the graph
    gc.collect()  # the graph and its plans, a cycle of their own
    assert graph() is None


def test_register_op_refuses_a_sign_or_a_misspelt_kind_in_words():
    from relprop.ops import Kind, Sign
    with pytest.raises(ValueError, match="did you mean 'passthrough'"):
        relprop.register_op(torch.erf, kind="passtrough")
    with pytest.raises(ValueError, match="sign must be one of nonneg, same, any"):
        relprop.register_op(torch.erf, kind="passthrough", sign="positive")
    relprop.register_op(torch.erf, kind=Kind.PASSTHROUGH, sign=Sign.ANY)  # the enums themselves
    relprop.register_op(torch.erf, kind="my_own_kind")  # a kind of one's own, ruled elsewhere
