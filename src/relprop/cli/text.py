"""``relprop explain --model hf:NAME --text "..."`` and ``relprop compare ... --text "..."``: a
language model's decision on each text. explain prints the coloured tokens and writes
textK.html, textK.json and textK.png per text and a summary; compare writes one picture and one
page per text with a block of coloured tokens per method (methods × tokens)."""
from __future__ import annotations

import sys

import torch

from .. import text as texts
from ..api import explainer
from ..errors import NotApplicable, UnsupportedOperation, UntraceableModel
from ..outputs import write_json
from .common import Failure, check_out, writing

def _setup(args):
    """(model, tokenizer, target, out) for a text command, refused in one line where the
    arguments do not make one."""
    if args.images:
        raise Failure("--text explains texts: leave out the image files")
    name = args.model or ""
    if not name.startswith("hf:"):
        raise Failure(f"--text needs a Hugging Face language model: --model hf:NAME_OR_PATH "
                      f"(got {name or 'none'})")
    if getattr(args, "layer", None) is not None:
        raise Failure("--layer is not supported for language models yet")
    out = check_out(args.out)
    try:
        model, tokenizer = texts.load(name[3:])
    except ValueError as e:
        raise Failure(str(e)) from None
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
    return model, tokenizer, target, out


def _explained(explain, tokenizer, sentence: str, i: int, target):
    ids = tokenizer(sentence, return_tensors="pt")["input_ids"]
    if ids.shape[1] == 0:
        raise Failure(f"text {i} has no tokens")
    try:
        return explain.explain(ids, target)
    except (ValueError, UnsupportedOperation, UntraceableModel) as error:
        raise Failure(f"text {i}: {error}") from None


def explain(args) -> int:
    model, tokenizer, target, out = _setup(args)
    model = model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype])
    explain_one = explainer(model, args.method, tokenizer=tokenizer)
    rows = []
    for i, sentence in enumerate(args.text, 1):
        e = _explained(explain_one, tokenizer, sentence, i, target)
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
        write_json(out / "summary.json", {"model": args.model, "method": args.method,
                                          "texts": rows})
    print(f"wrote {', '.join(r['file'] for r in rows)} (and .json, .png) and summary.json to "
          f"{out}/", file=sys.stderr)
    return 0


def compare(args, chosen: list[str]) -> int:
    model, tokenizer, target, out = _setup(args)
    explainers = {method: explainer(model, method, tokenizer=tokenizer) for method in chosen}
    records = []
    for i, sentence in enumerate(args.text, 1):
        found = {}
        for method, explain_one in list(explainers.items()):
            try:
                found[method] = _explained(explain_one, tokenizer, sentence, i, target)
            except Failure as e:
                if not isinstance(e.__context__, NotApplicable):
                    raise
                print(f"relprop: {method} left out: {e.__context__}", file=sys.stderr)
                del explainers[method]
        if not found:
            raise Failure("no method applies to this model")
        stem = f"compare{i}"
        with writing(out):
            (out / f"{stem}.html").write_text(
                "<!doctype html><meta charset='utf-8'>\n" +
                "\n".join(e.html() for e in found.values()), encoding="utf-8")
            _stack([e.figure() for e in found.values()], out / f"{stem}.png")
        for e in found.values():
            print(e.terminal())
        records.append({"text": sentence, "picture": f"{stem}.png",
                        "methods": {m: e.records()[0] for m, e in found.items()}})
    with writing(out / "compare.json"):
        write_json(out / "compare.json", {"model": args.model, "methods": list(explainers),
                                          "texts": records})
    print(f"wrote compare1.png ... compare{len(records)}.png, the .html pages and compare.json "
          f"to {out}/", file=sys.stderr)
    return 0


def _stack(figures, path) -> None:
    """The figures one under the other, in one PNG."""
    import io

    from PIL import Image
    pictures = []
    for figure in figures:
        buffer = io.BytesIO()
        figure.savefig(buffer, dpi=130, format="png")
        pictures.append(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
    sheet = Image.new("RGB", (max(p.width for p in pictures), sum(p.height for p in pictures)),
                      "white")
    y = 0
    for picture in pictures:
        sheet.paste(picture, (0, y))
        y += picture.height
    sheet.save(path)
