"""``relprop explain --model hf:NAME --text "..."``: a language model's decision on each text,
as coloured tokens in the terminal, textK.html, textK.json and textK.png per text, and a
summary."""
from __future__ import annotations

import sys

import torch

from .. import text as texts
from ..api import explainer
from ..outputs import write_json
from .common import Failure, check_out, writing


def run(args) -> int:
    if args.images:
        raise Failure("--text explains texts: leave out the image files")
    name = args.model or ""
    if not name.startswith("hf:"):
        raise Failure(f"--text needs a Hugging Face language model: --model hf:NAME_OR_PATH "
                      f"(got {name or 'none'})")
    if args.layer is not None:
        raise Failure("--layer is not supported for language models yet")
    out = check_out(args.out)
    try:
        model, tokenizer = texts.load(name[3:])
    except ValueError as e:
        raise Failure(str(e)) from None
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    model = model.to(dtype)
    explain = explainer(model, args.method, tokenizer=tokenizer)
    target = args.target
    if target is not None and target.lstrip("-").isdigit():
        target = int(target)
    elif target is not None and texts.text_kind(model) == "classifier":
        labels = {str(v): int(k) for k, v in (model.config.id2label or {}).items()}
        if target not in labels:
            raise Failure(f"--target {target} is no class of this classifier; its classes: "
                          f"{', '.join(labels)}")
        target = labels[target]
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, sentence in enumerate(args.text, 1):
        ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
        if ids.shape[1] == 0:
            raise Failure(f"text {i} has no tokens")
        try:
            e = explain.explain(ids, target)
        except ValueError as error:
            raise Failure(f"text {i}: {error}") from None
        stem = f"text{i}"
        with writing(out):
            for suffix in (".html", ".json", ".png"):
                e.save(out / f"{stem}{suffix}")
        print(e.terminal())
        record = e.records()[0]
        rows.append({"text": sentence, "file": f"{stem}.html", "explained": record["target_token"],
                     "target": record["target"], "score": record["score"],
                     "relevance_sum": float(e.relevance[0].sum()), "tokens": len(record["tokens"])})
    with writing(out / "summary.json"):
        write_json(out / "summary.json", {"model": name, "method": args.method, "texts": rows})
    print(f"wrote {', '.join(r['file'] for r in rows)} (and .json, .png) and summary.json to "
          f"{out}/",
          file=sys.stderr)
    return 0
