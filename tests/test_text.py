"""Language models (rap-spec §9.5): every listed Hugging Face family, small and random, explained
from its token ids at its input embeddings, in float64.

What could go wrong and is checked here: relevance lost on the way (Σ R = the logit for RAP),
padding that takes relevance or changes the text's, a token-string target that explains another
token, a map that does not show what the arrays hold, the user's ids or model changed."""
from __future__ import annotations

import json

import pytest
import torch

import relprop
from relprop.text import TextExplanation
from tests.text_models import build, families, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

# Every family as a causal LM, and as a classifier where it has no causal LM or where its
# backbone differs from Llama's (Qwen2, Mistral and Phi-3's classifiers are Llama's head on
# their backbones, which their causal LMs test)
_MODELS = [(name, kind) for name, (_, causal, classifier, _) in families().items()
           for kind, cls in (("causal", causal), ("classifier", classifier)) if cls is not None
           and (kind, name) not in {("classifier", "qwen2"), ("classifier", "mistral"),
                                    ("classifier", "phi3")}]


def _ids(n=2, t=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(4, 29, (n, t), generator=g)


@pytest.mark.parametrize("name, kind", _MODELS)
def test_rap_relevance_sums_to_the_logit_in_float64(name, kind):
    model = build(name, kind).double()
    ids = _ids()
    for method in ("rap", "rap-stable"):
        e = relprop.explain(model, ids, method=method)
        assert isinstance(e, TextExplanation)
        assert e.relevance.shape == (2, 7, model.get_input_embeddings().embedding_dim)
        assert e.heatmap.shape == (2, 7) and e.heatmap.abs().sum() > 0
        with torch.no_grad():
            logits = model(ids).logits
        row = logits[:, -1] if kind == "causal" else logits
        assert torch.equal(e.target, row.argmax(-1))  # the predicted token or class
        # the model rounds its RMSNorms and rotary angles through float32 even in float64;
        # relprop computes them in the model's dtype (relprop.ops.keeps_precision)
        torch.testing.assert_close(e.score, row.gather(1, e.target[:, None])[:, 0], rtol=1e-6,
                                   atol=1e-9)
        assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all(), (method, e.delta)


@pytest.mark.parametrize("name", list(families()))
def test_every_family_is_explained_by_every_text_method_with_a_finite_map(name):
    """Every method offered for text (``relprop.text.METHODS``) and SmoothGrad, on each family
    (its causal LM where it has one, else its classifier)."""
    from relprop.text import METHODS
    kind = "causal" if families()[name][1] is not None else "classifier"
    model = build(name, kind).double()
    ids = _ids()
    for method in (*METHODS, "smoothgrad"):
        options = {"steps": 4} if method == "integrated-gradients" else \
            {"samples": 3} if method == "smoothgrad" else {}
        e = relprop.explain(model, ids, method=method, **options)
        assert torch.isfinite(e.relevance).all() and e.heatmap.abs().sum() > 0, method


@pytest.mark.parametrize("name", ["gpt2", "llama", "bert"])
@pytest.mark.parametrize("method", ["rap", "lrp-epsilon-plus"])
def test_padding_gets_no_relevance_and_leaves_the_text_as_it_was(name, method):
    """Left padding for a causal LM, right padding for a classifier: the padding's relevance is
    0, Σ R is still the logit, and the text's relevance is the unpadded sequence's. RAP
    normalises over all units of a layer, and a classifier's padding positions are units (they
    attend to the text, which does not attend to them): on BERT they shift the text's RAP
    relevance by up to 1e-4 of itself, and by 0 on the causal models."""
    kind = "classifier" if name == "bert" else "causal"
    model = build(name, kind).double()
    ids = _ids(2, 7)
    mask = torch.ones_like(ids)
    text = slice(2, 7) if kind == "causal" else slice(0, 5)
    pad = slice(0, 2) if kind == "causal" else slice(5, 7)
    mask[1, pad] = 0
    padded = relprop.explain(model, ids, method=method, attention_mask=mask)
    alone = relprop.explain(model, ids[1:, text], method=method)
    assert torch.equal(padded.relevance[1, pad], torch.zeros_like(padded.relevance[1, pad]))
    assert int(padded.target[1]) == int(alone.target[0])
    assert float(padded.score[1]) == pytest.approx(float(alone.score[0]), abs=1e-12)
    if method == "rap":
        assert abs(float(padded.delta[1])) <= 1e-9 * max(1.0, abs(float(padded.score[1])))
    tol = 1e-4 if (method, kind) == ("rap", "classifier") else 1e-9
    torch.testing.assert_close(padded.heatmap[1, text], alone.heatmap[0], rtol=tol, atol=1e-12)


def test_a_token_string_target_is_that_tokens_logit():
    tok = tokenizer()
    model = build("llama").double()
    ids = tok("the cat sat on the", return_tensors="pt")["input_ids"]
    e = relprop.explain(model, ids, target="mat", tokenizer=tok, method="rap")
    mat = tok.convert_tokens_to_ids("mat")
    assert int(e.target[0]) == mat and e.target_names == ["mat"]
    with torch.no_grad():
        assert float(e.score[0]) == pytest.approx(float(model(ids).logits[0, -1, mat]), rel=1e-6)
    assert e.tokens[0] == ["the", "cat", "sat", "on", "the"]
    with pytest.raises(ValueError, match="2 tokens"):
        relprop.explain(model, ids, target="cat sat", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer="):
        relprop.explain(model, ids, target="mat")
    with pytest.raises(ValueError, match="input_ids, an integer tensor"):
        relprop.explain(model, ids.double())
    contrast = relprop.explain(model, ids, target=lambda y: y[:, mat] - y[:, 6], method="rap")
    assert float(contrast.score[0]) == pytest.approx(
        float(e.score[0]) - float(relprop.explain(model, ids, target=6, method="rap").score[0]),
        abs=1e-12)


def test_the_explanation_shows_its_tokens_in_html_json_and_the_terminal(tmp_path):
    tok = tokenizer()
    model = build("gpt2").double()
    ids = tok("the movie was not good", return_tensors="pt")["input_ids"]
    e = relprop.explain(model, ids, tokenizer=tok, method="rap")
    heat = e.heatmap[0]
    page = e._repr_html_()
    for word in ("movie", "not", "good"):
        assert f">{word}</span>" in page
    strongest = int(heat.abs().argmax())
    colour = "220,40,40" if heat[strongest] >= 0 else "40,90,220"
    assert f"rgba({colour},1.000)" in page  # the largest |R| at full strength, in its sign
    e.save(tmp_path / "x.html")
    e.save(tmp_path / "x.json")
    assert "movie" in (tmp_path / "x.html").read_text()
    record = json.loads((tmp_path / "x.json").read_text())[0]
    assert [t["token"] for t in record["tokens"]] == e.tokens[0]
    assert [t["relevance"] for t in record["tokens"]] == pytest.approx(heat.tolist(), abs=1e-12)
    assert record["score"] == pytest.approx(float(e.score[0]))
    shown = e.terminal()
    assert "movie" in shown and "\x1b[48;2;" in shown
    e.save(tmp_path / "x.png")
    from PIL import Image
    with Image.open(tmp_path / "x.png") as picture:
        assert picture.format == "PNG" and picture.size[0] > picture.size[1]
    with pytest.raises(ValueError, match=".html, .json"):
        e.save(tmp_path / "x.txt")


def test_the_users_ids_and_model_are_not_changed():
    model = build("qwen2")
    ids = _ids()
    before = ids.clone()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    relprop.explain(model, ids, method="rap-stable")
    assert torch.equal(ids, before) and model.training
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_the_cli_explains_a_text_of_a_saved_model(tmp_path, capsys):
    from relprop import cli
    folder = tmp_path / "tiny-llama"
    build("llama").save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    out = tmp_path / "out"
    assert cli.main(["explain", "--model", f"hf:{folder}", "--text", "the cat sat on the",
                     "--text", "the dog", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "cat" in printed.out and "\x1b[48;2;" in printed.out
    summary = json.loads((out / "summary.json").read_text())
    assert [r["text"] for r in summary["texts"]] == ["the cat sat on the", "the dog"]
    assert abs(summary["texts"][0]["relevance_sum"] - summary["texts"][0]["score"]) < 1e-3
    assert (out / "text1.html").is_file() and (out / "text2.json").is_file()
    assert cli.main(["compare", "--model", f"hf:{folder}", "--text", "the cat sat on the",
                     "--methods", "rap,attnlrp", "--out", str(tmp_path / "compared")]) == 0
    capsys.readouterr()
    compared = json.loads((tmp_path / "compared" / "compare.json").read_text())
    assert compared["methods"] == ["rap", "attnlrp"]
    by_method = compared["texts"][0]["methods"]
    assert [t["token"] for t in by_method["rap"]["tokens"]] == ["the", "cat", "sat", "on", "the"]
    assert by_method["rap"]["target"] == by_method["attnlrp"]["target"]  # the same token
    assert (tmp_path / "compared" / "compare1.png").is_file()
    assert cli.main(["explain", "--model", f"hf:{tmp_path / 'missing'}", "--text", "a",
                     "--out", str(out)]) != 0
    err = capsys.readouterr().err.strip()
    assert "neither a folder nor in the HF cache" in err and len(err.splitlines()) == 1


def test_written_out_norms_and_activations_are_read_as_what_they_are():
    """Llama's RMSNorm (x · rsqrt(mean x² + eps)) is one norm and GPT-2's NewGELUActivation
    (0.5·x·(1 + tanh(...))) one activation: read op by op they would be products of the input
    with functions of itself, taking the uniform rule (rap-spec §8.2) instead of §8.3/§8.1."""
    from relprop.graph import traced
    from relprop.text import OnEmbeddings
    for name, part in (("llama", "layernorm"), ("gpt2", "mlp.act")):
        model = build(name).double()
        ids = _ids(1, 5)
        graph = traced(OnEmbeddings(model, torch.ones_like(ids)),
                       model.get_input_embeddings()(ids).detach())
        inside = [op for op in graph.ops if op.module_path and op.module_path.endswith(
            part.split(".")[-1]) and op.kind not in ("meta", "constant")]
        assert inside and not [op for op in inside if op.kind in ("product", "matmul")], \
            [(op.name, op.kind) for op in inside]


@pytest.mark.parametrize("family, patch_map, method", [
    ("gpt2", "cp_LRP", "lrp-attn"), ("gpt2", "attnLRP", "attnlrp"),
    ("llama", "attnLRP", "attnlrp"), ("bert", "attnLRP", "attnlrp")])
def test_lrp_attn_and_attnlrp_equal_lxt(family, patch_map, method, tmp_path):
    """LXT 2.1's input relevance with the family's patch map (``lxt.efficient.models.FAMILY``:
    ``attnLRP``, its default for language models, = relprop's attnlrp; ``cp_LRP``, its ViT
    default, = lrp-attn), random weights, float64, to 1e-5·max|LXT| per sequence (LXT computes
    RMSNorm in float32: 6e-8 on Llama, 9e-8 on Qwen2 measured once, 8e-9 on GPT-2). LXT runs in a process of its
    own on transformers 4.57 (:func:`tests.test_transformers.lxt_environment`)."""
    import subprocess
    import sys

    from tests.test_transformers import ROOT, lxt_environment
    out = tmp_path / "lxt.pt"
    subprocess.run([sys.executable, "-m", "tests.lxt_text_reference", family, patch_map, "0",
                    str(out)], cwd=ROOT, check=True, env=lxt_environment())
    ref = torch.load(out)
    model = build(family, "classifier" if family == "bert" else "causal").double()
    model.load_state_dict(ref["state"])
    e = relprop.explain(model, ref["ids"], target=ref["target"], method=method)
    lxt = ref["relevance"]
    error = (e.relevance - lxt).flatten(1).abs().amax(1)
    assert (error <= 1e-5 * lxt.flatten(1).abs().amax(1)).all(), error


@pytest.mark.parametrize("method", ["rap", "lrp-attn"])
def test_each_generated_token_is_explained_as_its_own_prefix_would_be(method):
    """generate(): one forward pass of the continuation, one sweep per new token; row k equals
    explaining the prompt plus the k tokens before it for that token, and is 0 after it."""
    model = build("gpt2").double()
    prompt = _ids(1, 5)
    explainer = relprop.explainer(model, method)
    e = explainer.generate(prompt, max_new_tokens=3)
    assert e.relevance.shape[0] == 3 and e.heatmap.shape == (3, 7)
    with torch.no_grad():
        greedy = prompt
        for _ in range(3):
            greedy = torch.cat([greedy, model(greedy).logits[:, -1:].argmax(-1)], 1)
    assert e.target.tolist() == greedy[0, 5:].tolist()
    for k in range(3):
        alone = relprop.explain(model, greedy[:, :5 + k], target=int(greedy[0, 5 + k]),
                                method=method)
        torch.testing.assert_close(e.score[k], alone.score[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(e.heatmap[k, :5 + k], alone.heatmap[0], rtol=1e-9,
                                   atol=1e-12)
        assert not e.heatmap[k, 5 + k:].any()
    with pytest.raises(ValueError, match="one prompt"):
        explainer.generate(_ids(2, 5))


def test_what_a_classifier_cannot_be_given_is_one_clear_error_and_names_say_what_was_explained(
        tmp_path):
    model = build("bert", "classifier").double()
    model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    ids = _ids()
    e = relprop.explain(model, ids, target="positive", method="rap")
    assert e.target.tolist() == [2, 2] and e.target_names == ["positive", "positive"]
    with pytest.raises(ValueError, match="'happy' is no class"):
        relprop.explain(model, ids, target="happy")
    custom = relprop.explain(model, ids, target=lambda y: y[:, 2] - y[:, 0], method="rap",
                             tokenizer=tokenizer())
    assert custom.target_names == ["custom", "custom"]
    with pytest.raises(ValueError, match="outside the model's 64 embeddings"):
        relprop.explain(model, torch.full((1, 3), 64))
    # a decoder's classifier reads the last token of input_ids, which embeddings do not give:
    # right padding is refused instead of explaining a padding position
    gpt2 = build("gpt2", "classifier").double()
    padded, mask = ids.clone(), torch.ones_like(ids)
    padded[1, 5:], mask[1, 5:] = 0, 0  # the pad id, as a tokenizer pads
    with pytest.raises(ValueError, match="Pad on the left"):
        relprop.explain(gpt2, padded, attention_mask=mask)
    padded, mask = ids.clone(), torch.ones_like(ids)
    padded[1, :2], mask[1, :2] = 0, 0  # on the left: the last position is the text's
    e = relprop.explain(gpt2, padded, attention_mask=mask, method="rap")
    assert (e.delta.abs() <= 1e-9 * e.score.abs().clamp(min=1)).all()
    import transformers
    masked = transformers.BertForMaskedLM(model.config)
    masked.save_pretrained(tmp_path / "mlm")
    tokenizer().save_pretrained(tmp_path / "mlm")
    with pytest.raises(ValueError, match="BertForMaskedLM; relprop explains causal"):
        relprop.text.load(str(tmp_path / "mlm"))


def test_methods_and_calls_share_one_capture_of_a_text_model(monkeypatch):
    """Each call wraps the model anew (``OnEmbeddings``); the wrappers of one model and mask
    share one capture, which outlives the wrapper it was made from."""
    import gc

    from relprop import graph
    import weakref
    captured = []
    original = graph.capture
    monkeypatch.setattr(graph, "capture",
                        lambda m, x: captured.append(weakref.ref(m)) or original(m, x))
    model = build("gpt2").double()
    ids = _ids()
    first = relprop.explain(model, ids, method="rap")
    gc.collect()  # the first wrapper is gone; its graph is read through the next ones
    assert captured[0]() is None
    for method in ("rap", "lrp-attn", "attnlrp"):
        e = relprop.explain(model, ids, method=method)
        assert torch.isfinite(e.relevance).all()
    assert len(captured) == 1
    assert torch.equal(e.score, first.score) and torch.equal(
        relprop.explain(model, ids, method="rap").relevance, first.relevance)
    relprop.explain(model, ids[:, :5], method="rap")  # another shape: captured again
    assert len(captured) == 2
