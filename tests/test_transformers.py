"""Vision transformers (issue 17; rap-spec §8.5, §8.6): attention traced from unmodified models,
RAP's attention rule and conservation on every family, lrp-attn against LXT, and every method
with finite maps.

The families run as small models with the same ops as the full-size builders
(``transformer_models.build_small``); every full-size torchvision builder is traced and planned
on the meta device in ``test_zoo.py``, and ``python benchmarks/zoo.py --transformers`` runs them
at 224x224."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision

import relprop
from relprop.rules.rap import shift

from .transformer_models import SMALL, build_small, build_vit

pytestmark = pytest.mark.slow  # full-size models, training or a process: `-m "not slow"` leaves it out

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"integrated-gradients": {"steps": 4}, "smoothgrad": {"samples": 2}}


def _small(name, dtype=torch.float32):
    torch.manual_seed(0)
    model, size = build_small(name)
    model = model.to(dtype).eval()
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    return model, x


@pytest.mark.parametrize("name", SMALL)
def test_rap_conserves_and_the_graph_computes_the_model(name):
    """The decomposed attention computes what the model computes, and RAP and rap-stable keep
    |ΣR − score| ≤ 1e-9·max(1, |score|) in float64 (Swin at a size whose windows pad)."""
    model, x = _small(name, torch.float64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        expected = model(x)
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, target=[1, 7], method=method)
        assert torch.allclose(e.logits, expected, rtol=0, atol=1e-12), method
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), (method, e.delta)
        assert e.relevance.abs().sum() > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", SMALL)
def test_every_method_gives_finite_maps(name):
    model, x = _small(name)
    for method in relprop.methods():
        try:
            e = relprop.explain(model, x, target=[1, 7], method=method, **QUICK.get(method, {}))
        except (TypeError, ValueError) as err:  # a method that refuses says so in words
            assert method.startswith("attention-rollout") and "global attention" in str(err)
            continue
        assert e.relevance.shape == x.shape, method
        assert torch.isfinite(e.relevance).all(), method


def test_attention_rule_is_the_hidden_layer_rule_with_the_attention_weights():
    """§8.5 against an independent matrix form: for one head, out = A·V, each sign group u of V
    gets u ⊙ Aᵀ(R_g / A·u), R split by the groups' magnitudes, each shifted to its total."""
    torch.manual_seed(3)

    class Attention(nn.Module):
        def forward(self, x):  # x: (N, T, D); the scores from x itself
            a = (x @ x.transpose(-2, -1)).softmax(dim=-1)
            return (a @ x).flatten(1)

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.attention, self.head = nn.Linear(4, 3), Attention(), nn.Linear(15, 2)

        def forward(self, x):
            return self.head(self.attention(self.embed(x)))

    model = Model().double()
    x = torch.randn(1, 5, 4, dtype=torch.float64)
    plan = relprop.explainer(model, "rap").plan
    matmul = [op for op in plan.graph.ops if op.kind == "matmul"][-1]
    assert matmul.gated == (True, False)
    from relprop import engine
    kept = engine.forward(plan, x)
    v = engine.Run(kept, plan.notes, None, {}).args(matmul)[1]
    a = (v @ v.transpose(-2, -1)).softmax(-1)
    r = torch.randn(1, 5, 3, dtype=torch.float64)
    with torch.no_grad():  # as the engine calls rules
        (got,) = [s for s in plan.rules[matmul.name].fn(matmul, r, engine.Run(
            kept, plan.notes, torch.ones(1, dtype=torch.float64), {})) if s is not None]
    expected = torch.zeros_like(v)
    zs = [a[0] @ v[0].clamp(min=0), a[0] @ (-v[0]).clamp(min=0)]
    m = zs[0] + zs[1]
    shares = [torch.where(m == 0, r[0], r[0] * zs[0] / m), r[0] * zs[1] / m]
    for u, z, rg in zip((v[0].clamp(min=0), (-v[0]).clamp(min=0)), zs, shares):
        c = u * (a[0].T @ torch.where(z == 0, 0, rg / z))
        expected[0] += shift(c[None].clone(), rg.sum().view(1, 1, 1))[0]
    assert torch.allclose(got, expected, atol=1e-12)
    assert torch.allclose(got.sum(), r.sum(), atol=1e-12)


def test_class_token_relevance_goes_back_to_the_patches():
    """§8.6: the relevance the class token's position holds at the first layer is not lost."""
    model, x = _small("vit", torch.float64)
    e = relprop.explain(model, x, method="rap")
    assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, atol=1e-12)
    lrp = relprop.explain(model, x, method="lrp-attn")  # as LXT: the class token keeps it
    assert not torch.allclose(lrp.relevance.flatten(1).sum(1), lrp.score, atol=1e-6)


def test_tracing_patches_nothing():
    """Decompositions exist only in relprop's graph: MultiheadAttention, the functions and the
    modules' forward methods are the same objects after a trace."""
    import torch.nn.functional as F
    from torchvision.models import swin_transformer
    before = (nn.MultiheadAttention.forward, F.scaled_dot_product_attention,
              swin_transformer.shifted_window_attention, nn.LayerNorm.forward, nn.GELU.forward)
    for name in ("vit", "swin"):
        relprop.explain(*_small(name), method="rap")
    assert before == (nn.MultiheadAttention.forward, F.scaled_dot_product_attention,
                      swin_transformer.shifted_window_attention, nn.LayerNorm.forward,
                      nn.GELU.forward)


def test_cross_attention_is_refused_in_words():
    class Cross(nn.Module):
        def __init__(self):
            super().__init__()
            self.attention, self.head = nn.MultiheadAttention(4, 2, batch_first=True), \
                nn.Linear(4, 2)

        def forward(self, x):
            return self.head(self.attention(x, x * 2, x * 2)[0].mean(1))

    with pytest.raises(relprop.UnsupportedOperation, match="cross-attention"):
        relprop.explainer(Cross(), "rap")


LXT_ENV = Path(os.environ.get("RELPROP_LXT_ENV", ROOT / ".lxt-env"))


def lxt_environment() -> dict:
    """The environment of a process that runs LXT 2.1: its packages (LXT, transformers 4.57, the
    hub and tokenizers those need; ``pip install --target .lxt-env``, as .ci/run does) first on
    the path, since LXT cannot import under the transformers 5 that relprop is tested on."""
    if not (LXT_ENV / "lxt").is_dir():
        why = (f"LXT's packages are not in {LXT_ENV}: .venv/bin/pip install --no-deps --target "
               ".lxt-env lxt==2.1 transformers==4.57.6 'tokenizers>=0.22,<0.23' "
               "'huggingface-hub>=0.34,<1.0' (.ci/run does it)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    path = os.pathsep.join([str(LXT_ENV), str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")]
                                                        if p])
    return {**os.environ, "PYTHONPATH": path,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


# A small ViT of torchvision's own class proves the rules agree; vit_b_16 (measured 4e-14, 35 s
# of CI) is the same classes at full size: `python -m tests.lxt_reference vit_b_16 SEED OUT`
@pytest.mark.parametrize("spec", ["small"])
def test_lrp_attn_equals_lxt(spec, tmp_path):
    """lrp-attn = LXT 2.1's input relevance after monkey_patch(torchvision's ViT), random
    weights, float64, to 1e-6·max|LXT| per image. LXT patches torch classes globally, so it runs
    in a process of its own, on its own packages (:func:`lxt_environment`)."""
    out = tmp_path / "lxt.pt"
    env = lxt_environment()
    subprocess.run([sys.executable, "-m", "tests.lxt_reference", spec, "0", str(out)],
                   cwd=ROOT, check=True, env=env)
    ref = torch.load(out)
    model = build_vit(spec).double().eval()
    model.load_state_dict(ref["state"])
    e = relprop.explain(model, ref["x"], target=ref["target"], method="lrp-attn")
    lxt = ref["relevance"]
    error = (e.relevance - lxt).flatten(1).abs().amax(1)
    assert (error <= 1e-6 * lxt.flatten(1).abs().amax(1)).all(), error


def test_attention_rollout_equals_the_rollout_of_the_modules_own_weights():
    """The plain rollout from the attention weights nn.MultiheadAttention itself returns
    (need_weights=True), against relprop's from its traced graph."""
    import torch.nn.functional as F
    model, x = _small("vit", torch.float64)
    inputs = []
    hooks = [layer.self_attention.register_forward_pre_hook(lambda m, a: inputs.append(a[0]))
             for layer in model.encoder.layers]
    with torch.no_grad():
        model(x)
        weights = [layer.self_attention(h, h, h, need_weights=True,
                                        average_attn_weights=False)[1]
                   for layer, h in zip(model.encoder.layers, inputs)]
    for hook in hooks:
        hook.remove()
    tokens = weights[0].shape[-1]
    rollout = torch.eye(tokens, dtype=x.dtype).expand(len(x), tokens, tokens)
    for a in weights:
        mixed = (a.mean(1) + torch.eye(tokens, dtype=x.dtype)) / 2
        rollout = (mixed / mixed.sum(-1, keepdim=True)) @ rollout
    patches = rollout[:, 0, 1:].reshape(len(x), 1, 4, 4)
    expected = F.interpolate(patches, size=x.shape[2:], mode="bilinear", align_corners=False)
    e = relprop.explain(model, x, method="attention-rollout")
    assert torch.allclose(e.heatmap, expected[:, 0], atol=1e-12)


def test_gradient_rollout_depends_on_the_class_and_plain_rollout_does_not():
    model, x = _small("timm-vit")
    plain = [relprop.explain(model, x, target=t, method="attention-rollout").relevance
             for t in (1, 7)]
    grad = [relprop.explain(model, x, target=t, method="attention-rollout-grad").relevance
            for t in (1, 7)]
    assert torch.equal(plain[0], plain[1])
    assert not torch.allclose(grad[0], grad[1])
    assert (grad[0] >= 0).all() and grad[0].sum() > 0


@pytest.mark.parametrize("name, layer, grid", [
    ("vit", "encoder.layers.encoder_layer_0", (4, 4)),  # (N, 1 + 16, C): the class token goes
    ("timm-vit", "blocks.5", (4, 4)),
    ("swin", "features.1", (9, 9)),  # a stage of blocks, channels last
])
def test_layer_gives_a_patch_map_of_the_blocks_tokens(name, layer, grid):
    model, x = _small(name)
    for method in ("rap-stable", "lrp-attn"):
        e = relprop.explain(model, x, method=method, layer=layer)
        assert e.relevance.shape == (len(x), *grid), method
        assert torch.isfinite(e.relevance).all() and e.relevance.abs().sum() > 0


@pytest.fixture(scope="module")
def digits_vit():
    from .digits import train_digits_vit
    model, accuracy, images = train_digits_vit()
    assert accuracy >= 0.9, f"the fixture transformer did not learn the digits ({accuracy:.2f})"
    return model, images


def test_attention_keeps_rap_stable_stable_and_rap_is_not(digits_vit):
    """On a trained ViT, float64, Gaussian noise of std 1e-3: rap-stable (which changes only the
    residual additions) keeps its maps, so the attention rule is not what moves them; the
    paper's rule at the additions does (benchmarks/stability.py --network vit: 0.33 against
    0.999 in float32)."""
    import copy
    model, images = digits_vit
    model64, x = copy.deepcopy(model).double(), images[:16].double()
    noise = 1e-3 * torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(1))
    median = {}
    for method in ("rap", "rap-stable", "lrp-attn"):
        clean = relprop.explain(model64, x, method=method)
        noisy = relprop.explain(model64, x + noise, clean.target, method=method)
        pairs = torch.stack([clean.heatmap.flatten(1), noisy.heatmap.flatten(1)], 1)
        median[method] = torch.stack([torch.corrcoef(p)[0, 1] for p in pairs]).median()
        conserves = (clean.delta.abs() <= 1e-9 * clean.score.abs().clamp(min=1)).all()
        assert conserves or method == "lrp-attn", (method, clean.delta)
    assert median["rap-stable"] >= 0.99 and median["lrp-attn"] >= 0.99, median
    assert median["rap"] < 0.9, median


def test_compare_and_evaluate_take_a_timm_transformer(tmp_path):
    """``--model timm:deit_tiny_patch16_224`` with a checkpoint: compare's grid and evaluate's
    figures, as for any model."""
    import json

    import timm

    from relprop import cli
    torch.manual_seed(0)
    path = tmp_path / "deit.pth"
    torch.save(timm.create_model("deit_tiny_patch16_224", pretrained=False).state_dict(), path)
    model = ["--model", "timm:deit_tiny_patch16_224", "--weights", str(path)]
    methods = "rap-stable,lrp-attn,attention-rollout-grad"
    assert cli.main(["compare", *model, "--methods", methods, "--out",
                     str(tmp_path / "compare")]) == 0
    assert (tmp_path / "compare" / "compare.png").stat().st_size > 0
    assert cli.main(["evaluate", *model, "--methods", "rap-stable,attention-rollout", "--limit",
                     "2", "--metrics", "perturbation", "--steps", "4", "--region", "56",
                     "--out", str(tmp_path / "evaluate")]) == 0
    record = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert record["methods"] == ["rap-stable", "attention-rollout"]
    assert record["model"] == "timm:deit_tiny_patch16_224" and record["images"] == 2


@pytest.mark.parametrize("name, layer", [("vit", "encoder.layers.encoder_layer_1.ln_1"),
                                         ("swin", "features.3.1.norm1"),
                                         ("timm-vit", "blocks.11.norm1")])
def test_grad_cam_on_a_transformer_uses_the_token_map_the_last_attention_reads(name, layer):
    """The default layer is the last block's first norm; the CAM there is the channels weighted
    by their token-averaged gradient, summed and ReLU'd, computed here by hand with a hook."""
    import torch.nn.functional as F

    from relprop.gradients import last_token_layer
    model, x = _small(name)
    assert last_token_layer(model) == layer
    e = relprop.explain(model, x, target=[1, 7], method="grad-cam")
    kept = []
    hook = model.get_submodule(layer).register_forward_hook(lambda m, i, o: kept.append(o))
    xi = x.clone().requires_grad_()
    logits = model(xi)
    hook.remove()
    (g,) = torch.autograd.grad(logits[[0, 1], [1, 7]].sum(), kept[0])
    a = kept[0]
    if a.dim() == 3:
        a, g, side = a[:, 1:], g[:, 1:], int((a.shape[1] - 1) ** 0.5)
    else:
        a, g, side = a.flatten(1, 2), g.flatten(1, 2), a.shape[1]
    cam = (g.mean(1, keepdim=True) * a).sum(-1).clamp(min=0).reshape(-1, 1, side, side)
    expected = F.interpolate(cam, size=x.shape[2:], mode="bilinear", align_corners=False)
    assert torch.allclose(e.heatmap, expected[:, 0], atol=1e-6 * float(expected.abs().max()))
    assert e.heatmap.abs().sum() > 0


def test_every_method_by_default_leaves_out_what_does_not_apply(tmp_path, capsys):
    """``relprop compare`` without --methods on a CNN runs every method but attention rollout,
    and says so; asked for by name, rollout on a CNN is one line and exit status 2."""
    import json

    from relprop import cli
    torch.manual_seed(0)
    path = tmp_path / "squeezenet.pth"
    import torchvision
    torch.save(torchvision.models.squeezenet1_1().state_dict(), path)
    model = ["--model", "squeezenet1_1", "--weights", str(path)]
    sample = ["--out", str(tmp_path / "compare")]
    assert cli.main(["compare", *model, *sample]) == 0
    chosen = json.loads((tmp_path / "compare" / "compare.json").read_text())["methods"]
    assert chosen == [m for m in relprop.methods() if m not in relprop.methods("attention")]
    err = capsys.readouterr().err
    assert "attention-rollout, attention-rollout-grad left out" in err
    assert cli.main(["compare", *model, "--methods", "attention-rollout", *sample]) == 2
    err = capsys.readouterr().err
    assert "needs a transformer" in err and "Traceback" not in err


def test_batches_whose_size_equals_another_dimension_conserve_per_image():
    """The batch moved by a permute ((3, N, heads, T, D) at N = 3) or a sequence-first
    MultiheadAttention at N = T: each image still sums to its own score."""
    model, _ = _small("vit", torch.float64)
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    e = relprop.explain(model, x, method="rap")
    assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, atol=1e-12)

    class SequenceFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Conv2d(3, 8, 4, stride=4)
            self.attention = nn.MultiheadAttention(8, 2)  # batch_first=False
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            tokens = self.embed(x).flatten(2).permute(2, 0, 1)  # (T, N, C)
            out, _ = self.attention(tokens, tokens, tokens)
            return self.head(out.mean(0))

    torch.manual_seed(0)
    model = SequenceFirst().double().eval()
    x = torch.randn(4, 3, 8, 8, dtype=torch.float64)  # 4 tokens, 4 images
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, x, method=method)
        assert torch.allclose(e.logits, model(x), atol=1e-12)
        assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, atol=1e-12), method


def test_a_residual_sum_of_layers_at_the_output_is_no_pair_of_heads():
    class Residual(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(4, 3), nn.Linear(3, 3)

        def forward(self, x):
            h = self.fc1(x)
            return self.fc2(torch.relu(h)) + h

    with pytest.raises(relprop.UnsupportedOperation, match="RAP starts at the layer"):
        relprop.explainer(Residual(), "rap")


def test_a_class_map_with_an_empty_window_conserves():
    """§7.4 on a spatial output through average pooling where one window is all zero."""
    class Spatial(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.pool = nn.Conv2d(3, 2, 1), nn.AvgPool2d(2)

        def forward(self, x):
            return self.pool(torch.relu(self.conv(x)))

    model = Spatial().double().eval()
    with torch.no_grad():
        model.conv.weight.fill_(1.0)
        model.conv.bias.fill_(-0.5)
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) + 1
    x[:, :, :2, :2] = 0  # the top-left window's conv output is -0.5: 0 after the ReLU
    e = relprop.explain(model, x, target=1, method="rap")
    assert torch.allclose(e.relevance.sum(), e.score.sum(), atol=1e-12)


def test_lrp_on_a_model_that_normalises_its_input_first():
    model = nn.Sequential(nn.BatchNorm2d(3), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 36, 2)).eval()
    for method in ("lrp-epsilon-plus", "lrp-attn"):
        e = relprop.explain(model, torch.randn(2, 3, 8, 8), method=method)
        assert torch.isfinite(e.relevance).all()


def test_optional_forward_arguments_and_an_in_forward_boolean_mask():
    """A forward with a tuple default, and F.scaled_dot_product_attention with a boolean mask
    computed in the forward: traced at the defaults, the mask applied as it means."""
    import torch.nn.functional as F

    class Masked(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.head = nn.Linear(4, 12), nn.Linear(4, 2)
            self.causal = nn.Parameter(torch.ones(5, 5).tril(), requires_grad=False)

        def forward(self, x, scales=(1.0, 1.0)):
            q, k, v = self.qkv(x).chunk(3, dim=-1)
            keep = self.causal > 0  # computed in the forward: traced, not a tensor
            return self.head(F.scaled_dot_product_attention(q, k, v, attn_mask=keep).mean(1))

    torch.manual_seed(0)
    model = Masked().double().eval()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    e = relprop.explain(model, x, method="rap")
    assert torch.allclose(e.logits, model(x), atol=1e-12)
    assert torch.allclose(e.relevance.flatten(1).sum(1), e.score, atol=1e-12)


@pytest.mark.parametrize("method", ["lrp-attn", "attnlrp"])
def test_the_factor_form_gives_the_maps_of_the_relevance_form_and_keeps_less(method):
    """lrp-attn's and attnlrp's rules run in factor form (LXT's gradient × input: the sweep
    carries R / value between them) unless a sweep stops at a layer; the maps are the relevance
    form's to rounding in float64, and the forward pass keeps fewer values for it."""
    from relprop import engine
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                                 num_heads=2, hidden_dim=32, mlp_dim=64,
                                                 num_classes=10).double().eval()
    torch.nn.init.normal_(model.heads.head.weight)  # torchvision starts it at 0
    x = torch.randn(3, 3, 32, 32, dtype=torch.float64)
    graph = relprop.explainer(model, method).graph
    plans = {f: engine.plan(graph, method, factored=f) for f in (True, False)}
    assert plans[True].factored and not plans[False].factored
    assert len(plans[True].kept) < len(plans[False].kept)
    maps = {}
    scales = [op.name for op in graph.ops if op.kind == "passthrough" and op.fn is torch.mul]
    assert scales  # attention's scaled scores: CP-LRP's relevance never reaches them
    for factored, plan in plans.items():
        kept = engine.forward(plan, x)
        if method == "lrp-attn":  # kept neither as values nor as by-products of their forward
            unreached = set(scales) | {engine.by_product_key(name) for name in scales}
            assert not unreached & set(kept.env)
        y = kept.env[graph.output]
        start = torch.zeros_like(y)
        start[:, 4] = y[:, 4]
        with torch.no_grad():
            maps[factored] = engine.backward(plan, kept, start, y[:, 4], {})
    assert torch.allclose(maps[True], maps[False], rtol=1e-10,
                          atol=1e-12 * float(maps[False].abs().max()))
    assert torch.allclose(maps[True].sum((1, 2, 3)), maps[False].sum((1, 2, 3)))
    assert maps[False].abs().max() > 0
