"""``relprop serve`` for a language model: the text page's JSON API, tested in-process (FastAPI's
test client) on small random models saved with ``save_pretrained``.

What could go wrong: a page that shows another token's map than the one clicked, predictions
that are not the model's, a user's mistake that becomes a traceback, an image model's page for a
language model."""
from __future__ import annotations

import pytest
import torch

from tests.text_models import build, tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _client(model):
    from fastapi.testclient import TestClient

    from relprop.serve.text import create_text_app
    return TestClient(create_text_app("hf:tiny", model, tokenizer()))


def test_the_text_page_explains_the_prediction_and_a_clicked_token():
    model = build("llama")
    client = _client(model)
    page = client.get("/")
    assert page.status_code == 200 and 'id="text-form"' in page.text
    assert client.get("/static/text.js").status_code == 200
    assert client.get("/api/models").json()["kind"] == "causal"
    methods = [m["name"] for m in client.get("/api/methods").json()["methods"]]
    assert "rap-stable" in methods and "attnlrp" in methods
    answer = client.post("/api/explain", json={"text": "the cat sat on the"}).json()
    assert answer["method"] == "rap-stable"
    assert [t["token"] for t in answer["tokens"]] == ["the", "cat", "sat", "on", "the"]
    ids = tokenizer()("the cat sat on the", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits[0, -1].double()
    probabilities = logits.softmax(-1)
    top = [p["index"] for p in answer["predictions"]]
    assert top == probabilities.topk(5).indices.tolist()  # the model's own top 5
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(
        probabilities.topk(5).values.tolist(), rel=1e-5)
    assert answer["target"]["index"] == top[0]
    assert answer["relevance_sum"] == pytest.approx(answer["score"], rel=1e-4, abs=1e-5)
    assert answer["score"] == pytest.approx(float(logits[top[0]]), rel=1e-4)
    clicked = client.post("/api/explain", json={"text": "the cat sat on the", "method": "rap",
                                                "target": top[2]}).json()
    assert clicked["target"]["index"] == top[2]
    assert clicked["score"] == pytest.approx(float(logits[top[2]]), rel=1e-4)
    assert sum(t["relevance"] for t in clicked["tokens"]) == pytest.approx(
        clicked["score"], rel=1e-4, abs=1e-5)
    assert "<span" in clicked["html"]


def test_a_classifier_is_explained_for_a_named_class():
    model = build("bert", "classifier")
    model.config.id2label = {0: "negative", 1: "neutral", 2: "positive"}
    client = _client(model)
    assert client.get("/api/models").json()["classes"] == ["negative", "neutral", "positive"]
    answer = client.post("/api/explain", json={"text": "the dog sat", "method": "lrp-attn",
                                               "target": "neutral"}).json()
    assert answer["target"] == {"index": 1, "name": "neutral"}
    assert sorted(p["name"] for p in answer["predictions"]) == ["negative", "neutral",
                                                                  "positive"]


@pytest.mark.parametrize("body, status, words", [
    ({"text": ""}, 400, "no text"),
    ({"text": "the cat", "method": "grad-cam"}, 400, "unknown method 'grad-cam'; methods:"),
    ({"text": "the cat", "target": [1, 2]}, 400, "target is a token id"),
    ({"text": "the cat", "target": "the cat"}, 400, "is 2 tokens for this tokenizer"),
    ({"text": "a " * 3000}, 413, "the limit is 4000"),
])
def test_a_users_mistake_is_refused_in_words(body, status, words):
    client = _client(build("gpt2"))
    answer = client.post("/api/explain", json=body)
    assert answer.status_code == status and words in answer.json()["detail"]


def test_a_request_that_is_not_json_is_refused_in_words():
    client = _client(build("gpt2"))
    answer = client.post("/api/explain", content=b"text=hello",
                         headers={"content-type": "application/x-www-form-urlencoded"})
    assert answer.status_code == 400 and "send JSON" in answer.json()["detail"]


def test_serve_takes_a_saved_language_model_as_text(tmp_path):
    from relprop import prepare, serve
    from relprop.text import is_text_checkpoint
    folder = tmp_path / "tiny-gpt2"
    build("gpt2").save_pretrained(folder)
    tokenizer().save_pretrained(folder)
    assert is_text_checkpoint(str(folder)) and not is_text_checkpoint(str(tmp_path / "none"))
    with pytest.raises(prepare.SetupError, match="is a language model: its page takes text"):
        serve.run(f"hf:{folder}", images=str(tmp_path))
