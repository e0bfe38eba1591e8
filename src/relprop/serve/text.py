"""``relprop serve --model hf:PATH`` for a language model: a text box instead of an upload. Type a
text, see the model's top predictions (the next token, or the classes), click one, and see each
chosen method's coloured tokens side by side. The page runs on the JSON API scripts call
(``POST /api/explain`` with ``{"text": ..., "method": ..., "target": ...}``).

The explainers are kept per method (they keep the captured model per attention mask).
Explanations run one at a time in a worker thread, so that the page and the API answer
meanwhile: a CPU's threads serve one explanation best whole.
"""
from __future__ import annotations

import threading

import torch
from fastapi import FastAPI, Request

from starlette.concurrency import run_in_threadpool

from .. import prepare, text as texts
from ..api import explainer
from ..errors import UnsupportedOperation, UntraceableModel
from .web import TOP, Refused, number, web_app

MAX_TEXT = 4000  # characters: a page of text; longer is refused before it is tokenised


def create_text_app(model_name: str, model: torch.nn.Module, tokenizer,
                    device: torch.device | str = "cpu") -> FastAPI:
    """The web app around one loaded language model (eval mode, on ``device``) and its
    tokenizer; tests build it without a server."""
    kind = texts.text_kind(model)
    labels = [str(v) for _, v in sorted((int(k), v) for k, v in
                                        (model.config.id2label or {}).items())] \
        if kind == "classifier" else []
    explainers: dict = {}
    lock = threading.Lock()
    positions = getattr(model.config, "max_position_embeddings", None) or \
        getattr(model.config, "n_positions", None)
    app = web_app("text.html", 12 * MAX_TEXT + 4096,  # JSON may escape a character in 12 bytes
                  f"the request is larger than the limit: texts up to {MAX_TEXT} "
                               "characters")

    @app.get("/api/models")
    def models_endpoint():
        """The loaded model, what it predicts (next tokens or classes) and its classes."""
        return {"loaded": model_name, "kind": kind, "architecture": type(model).__name__,
                "classes": labels}

    @app.get("/api/methods")
    def methods_endpoint():
        return {"methods": [{"name": m, "default": m == "rap-stable"} for m in texts.METHODS]}

    @app.post("/api/explain")
    async def explain_endpoint(request: Request):
        """Explain one text with one method for one target (default: the prediction)."""
        try:
            body = await request.json()
        except Exception:
            body = None
        if not isinstance(body, dict):
            raise Refused('send JSON: {"text": "...", "method": "rap-stable", "target": null}')
        text, method, target = body.get("text"), body.get("method", "rap-stable"), \
            body.get("target")
        if not isinstance(text, str) or not text.strip():
            raise Refused("no text: send the text to explain as \"text\"")
        if len(text) > MAX_TEXT:
            raise Refused(f"the text has {len(text)} characters; the limit is {MAX_TEXT}", 413)
        if method not in texts.METHODS:
            raise Refused(f"unknown method '{method}'; methods: {', '.join(texts.METHODS)}")
        if target is not None and not isinstance(target, (int, str)) or isinstance(target, bool):
            raise Refused("target is a token id or class index (a number), a token or class "
                          "name (a string), or null for the prediction")
        ids = tokenizer(text, return_tensors="pt")["input_ids"].to(device)
        if ids.shape[1] == 0:
            raise Refused("the text has no tokens")
        if positions is not None and ids.shape[1] > positions:
            raise Refused(f"the text is {ids.shape[1]} tokens; this model reads at most "
                          f"{positions}", 413)
        # the explanation runs in a worker thread: the page and other requests are served
        # meanwhile
        return await run_in_threadpool(explain_one, ids, method, target)

    def explain_one(ids, method, target) -> dict:
        try:
            with lock, prepare.out_of_memory(f"explaining one text on {device}",
                                             "serve with --device cpu"):
                if method not in explainers:
                    explainers[method] = explainer(model, method, tokenizer=tokenizer)
                e = explainers[method].explain(ids, target)
        except prepare.OutOfMemory as error:
            raise Refused(error.phrased(""), 503) from None
        except (ValueError, UnsupportedOperation, UntraceableModel) as error:
            raise Refused(str(error)) from None
        record = e.records()[0]
        return {"model": model_name, "method": method, "kind": kind,
                "predictions": _predictions(e.logits[0], kind, labels, tokenizer),
                "target": {"index": record["target"], "name": record["target_token"]},
                "score": number(record["score"]), "relevance_sum": number(e.relevance[0].sum()),
                "delta": number(record["delta"]),
                "tokens": [{"token": t["token"], "shown": texts.shown(t["token"]),
                            "id": t["id"], "relevance": number(t["relevance"])}
                           for t in record["tokens"]],
                "html": e.html()}

    return app


def _predictions(logits: torch.Tensor, kind: str, labels: list[str], tokenizer) -> list[dict]:
    """The top predictions with their probabilities: next tokens or classes."""
    probabilities = logits.double().softmax(-1)
    top = probabilities.topk(min(TOP, len(probabilities)))
    found = []
    for p, i in zip(top.values.tolist(), top.indices.tolist()):
        if kind == "classifier":
            name = labels[i] if i < len(labels) else str(i)
        else:
            name = texts.shown(tokenizer.convert_ids_to_tokens(i) or f"#{i}")
        found.append({"index": i, "name": name, "probability": number(p),
                      "score": number(logits[i])})
    return found
