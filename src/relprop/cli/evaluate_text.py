"""``relprop evaluate --data synthetic:text-negation``: every chosen method on the sentences of
the synthetic negation task, against its known deciding words (:mod:`relprop.evaluate.text`),
for relprop's classifier (``--model synthetic-classifier``, the default) or causal LM
(``--model synthetic-lm``)."""
from __future__ import annotations

import csv
import sys

from tqdm import tqdm

from ..errors import UnsupportedOperation, UntraceableModel
from ..evaluate import synthetic_text, text as measures
from ..outputs import strict_json, write_json
from .common import Failure, check_out, choices, writing

DEFAULT_SENTENCES = 100
BATCH = 25  # sentences explained at once
MODELS = {"synthetic-classifier": "classifier", "synthetic-lm": "lm"}


def run(args) -> int:
    from ..registry import methods
    from ..text import METHODS as TEXT_METHODS, TextExplainer
    name = args.model or "synthetic-classifier"
    if name not in MODELS or args.weights:
        raise Failure(f"--data synthetic:{synthetic_text.NAME} explains the networks relprop "
                      f"trains on it: --model {' or '.join(MODELS)} (the first is the default), "
                      "no --weights")
    arch = MODELS[name]
    chosen = choices(args.methods, methods(), "--methods") if args.methods else \
        list(TEXT_METHODS)
    count = DEFAULT_SENTENCES if args.limit is None else args.limit
    steps = synthetic_text.LENGTH if args.steps is None else args.steps
    for option, value in (("--limit", count), ("--steps", steps), ("--samples", args.samples)):
        if value < 1:
            raise Failure(f"{option} must be at least 1")
    if args.device not in (None, "cpu"):
        raise Failure(f"--data synthetic:{synthetic_text.NAME} runs on the CPU (its models are "
                      "tiny): leave out --device")
    out = check_out(args.out)
    settings = measures.Settings(steps=min(steps, synthetic_text.LENGTH), samples=args.samples,
                                 seed=args.seed)
    model, accuracy = synthetic_text.trained(arch)
    print(f"relprop: the synthetic text {arch}, held-out accuracy {accuracy:.3f}",
          file=sys.stderr)
    model = model.double()  # tiny: explained in float64, so that Σ R = logit is exact
    start = synthetic_text.EVALUATE_START
    indices = list(range(start, start + count))
    rows = []
    with tqdm(total=count * len(chosen), desc=f"evaluate {synthetic_text.NAME}",
              unit="sentence", file=sys.stderr, disable=count * len(chosen) < 10) as bar:
        for method in chosen:
            explainer = TextExplainer(model, method)
            for i in range(0, count, BATCH):
                batch = indices[i:i + BATCH]
                try:
                    rows += measures.measure(model, arch, method, explainer, batch, settings)
                except (ValueError, UnsupportedOperation, UntraceableModel) as e:
                    raise Failure(f"--methods: {method} does not explain this text model: "
                                  f"{e}") from None
                bar.update(len(batch))
    table = measures.summary(rows)
    text = measures.markdown(table, arch, accuracy, settings)
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.md").write_text(text)
        write_json(out / "metrics.json", {"data": args.data, "model": name, "accuracy": accuracy,
                                          "sentences": count, "settings": vars(settings),
                                          "methods": table})
        with open(out / "per_sentence.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(strict_json(r) for r in rows)
        examples(model, arch, chosen, indices[:4], out / "examples.html", settings.seed)
    print(text)
    print(f"wrote metrics.md, metrics.json, per_sentence.csv and examples.html to {out}/")
    return 0


def examples(model, arch, methods, indices, path, seed: int = 0) -> None:
    """examples.html: the first sentences, their deciding words underlined, and every method's
    coloured words."""
    import html

    from ..text import TextExplainer
    sentences = [synthetic_text.sentence(i, seed) for i in indices]
    ids, _ = synthetic_text.encode(sentences, arch)
    tokenizer = synthetic_text.tokenizer()
    parts = ["<!doctype html><meta charset='utf-8'><title>relprop: synthetic text</title>",
             f"<h2>{synthetic_text.NAME}, {arch}: the deciding words of each sentence</h2><ol>"]
    parts += [f"<li>{html.escape(' '.join(s.words))} &rarr; "
              f"<b>{html.escape(' '.join(s.words[d] for d in s.deciding))}</b> "
              f"({synthetic_text.LABELS[s.label]})</li>" for s in sentences]
    parts.append("</ol>")
    for method in methods:
        e = TextExplainer(model, method, tokenizer=tokenizer).explain(ids)
        parts.append(f"<h3>{html.escape(method)}</h3>{e.html(len(indices))}")
    path.write_text("\n".join(parts), encoding="utf-8")
