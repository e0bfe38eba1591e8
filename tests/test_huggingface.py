"""Hugging Face image models, unmodified: torch.fx cannot trace them (their forwards branch on
sizes), so relprop captures them with torch.export on the given input (relprop.capture). Every
family explains with every method; rap and rap-stable conserve in float64; the captured graph
computes the model's logits; the model is left as it was."""
import pytest
import torch

import relprop
from relprop.errors import NotApplicable
from relprop.graph import traced

from . import hf_models

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

pytest.importorskip("transformers")
FAMILIES = sorted(hf_models.families())
D = torch.float64


def _x(n=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hf_models.SIZE, hf_models.SIZE, generator=g, dtype=D)


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    return request.param, hf_models.build(request.param).double()


def test_the_captured_graph_computes_the_logits(family):
    name, model = family
    x = _x()
    expected = relprop.targets.main_output(model(x))
    from relprop import engine
    graph = traced(model, x)
    kept = engine.values(graph, x, set())
    assert torch.allclose(kept.env[graph.output], expected, rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize("method", ["rap", "rap-stable"])
def test_rap_conserves_in_float64(family, method):
    name, model = family
    e = relprop.explain(model, _x(), method=method, target=[1, 3])
    tol = 1e-9 * e.score.abs().clamp(min=1)
    assert (e.delta.abs() <= tol).all(), (name, e.delta, e.score)
    assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


def test_every_method_explains_every_family(family):
    name, model = family
    x = _x()
    for method in relprop.methods():
        try:
            e = relprop.explain(model, x, method=method)
        except NotApplicable as refusal:  # rollout on windowed or convolutional models
            assert method.startswith("attention-rollout"), (name, method, refusal)
            continue
        assert e.relevance.shape == x.shape, (name, method)
        assert torch.isfinite(e.relevance).all(), (name, method)
        assert e.relevance.abs().sum() > 0, (name, method)


def test_the_model_is_left_as_it_was():
    model = hf_models.build("vit").double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forwards = {name: type(m).forward for name, m in model.named_modules()}
    x = _x()
    given = x.clone()
    with pytest.warns(UserWarning, match="training mode"):
        relprop.explain(model, x, method="rap-stable")
    assert all(m.training for m in model.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(type(m).forward is forwards[name] for name, m in model.named_modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                   for m in model.modules())
    assert torch.equal(x, given)


def test_a_capture_is_kept_per_input_shape():
    model = hf_models.build("vit").double()
    a, b, c = _x(2), _x(2, seed=5), _x(3)
    assert traced(model, a) is traced(model, b)
    assert traced(model, c) is not traced(model, a)
    e = relprop.explain(model, c, method="rap")
    assert e.relevance.shape == c.shape and (e.delta.abs() < 1e-9).all()


def test_weights_changed_in_place_are_seen():
    model = hf_models.build("vit").double()
    x = _x()
    first = relprop.explain(model, x, method="rap", target=1).score
    with torch.no_grad():
        model.classifier.weight.mul_(2)
        model.classifier.bias.mul_(2)
    assert torch.allclose(relprop.explain(model, x, method="rap", target=1).score, 2 * first)


def test_layer_by_module_path():
    model = hf_models.build("vit").double()
    x = _x()
    # the second block: vit.encoder.layer.1 in transformers 4, vit.layers.1 in 5
    block = next(name for name, _ in model.named_modules()
                 if name.endswith(("encoder.layer.1", "vit.layers.1")))
    e = relprop.explain(model, x, method="rap", layer=block)
    assert e.relevance.shape[0] == 2 and torch.isfinite(e.relevance).all()
    with pytest.raises(ValueError, match="neither a module path"):
        relprop.explain(model, x, method="rap", layer="vit.no_such_block")


def test_segformer_explains_a_region():
    model = hf_models.build("segformer").double()
    x = _x()
    logits = model(x).logits
    region = relprop.targets.ClassRegion(2, (0, 0, 4, 4))
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, target=region, method=method)
        assert torch.allclose(e.score, logits[:, 2, :4, :4].flatten(1).sum(1))
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), method
