"""Is a text map right? Measured on the synthetic negation task, where the deciding words are
known (:mod:`relprop.evaluate.synthetic_text`), per method and sentence, over the ten words (the
constant [CLS] and [SEP] are left out), explaining the model's own prediction:

- ``on_deciding``: the share of the positive relevance on the deciding words;
- ``top_hit``: 1 where the most relevant word is a deciding word;
- ``top_k``: the share of deciding words among the k most relevant words, k the number of
  deciding words (1 or 2);
- ``aopc``: token deletion, most relevant word first (MoRF; a deleted word becomes [PAD] and is
  masked out), the mean fall of the explained logit over the steps, step 0 included;
- ``abpc``: the mean gap between the least-relevant-first curve (LeRF: ascending relevance, the
  most negative word first) and the MoRF curve, as AttnLRP reports it (higher: the ranking
  separates what the logit needs from what it does not);
- ``stability``: the Pearson correlation between a sentence's word map and the map of its
  embeddings plus Gaussian noise of ``sigma`` times the embedding table's standard deviation (a
  change no prediction notices), averaged over the noise draws;
- ``delta``: |Σ R − logit| / max(1, |logit|), relative where the logit exceeds 1.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import synthetic_text as task
from .localisation import localisation
from .stability import stability

METRICS = ("on_deciding", "top_hit", "top_k", "aopc", "abpc", "stability")
WORDS_AT = slice(1, 1 + task.LENGTH)  # the words' places in an encoded sentence


@dataclass(frozen=True)
class Settings:
    steps: int = task.LENGTH  # words deleted, one more per step
    sigma: float = 1e-3  # embedding noise, in standard deviations of the embeddings
    samples: int = 3  # noise draws per sentence
    seed: int = 0


def measure(model, arch: str, method: str, explainer, indices: list[int],
            settings: Settings) -> list[dict]:
    """One row per sentence ``indices`` (of the task's seed-``settings.seed`` stream), explained
    by ``explainer`` (a :class:`relprop.text.TextExplainer` of ``model``) for its prediction."""
    sentences = [task.sentence(i, settings.seed) for i in indices]
    ids, labels = task.encode(sentences, arch)
    e = explainer.explain(ids)
    heat = e.heatmap[:, WORDS_AT].double()
    deciding = torch.zeros(heat.shape, dtype=torch.bool)
    for row, s in enumerate(sentences):
        deciding[row, s.deciding] = True
    found = localisation(heat, deciding)
    count = deciding.sum(1)
    top = heat.sort(dim=1, descending=True, stable=True).indices
    top_k = torch.tensor([float(deciding[r, top[r, :int(k)]].double().mean())
                          for r, k in enumerate(count)])
    morf = deletion_curve(model, ids, e.target, top + WORDS_AT.start, settings.steps)
    lerf = deletion_curve(model, ids, e.target, top.flip(1) + WORDS_AT.start, settings.steps)
    x = e.inputs  # noise scaled by the embedding table's spread: the same for every batch
    sigma = settings.sigma * float(model.get_input_embeddings().weight.double().std())
    noisy = stability(lambda inputs: explainer.explain(ids, e.target, embeddings=inputs)
                      .heatmap[:, WORDS_AT], x, heat, indices, (sigma,), settings.samples,
                      settings.seed)[sigma]
    predicted = [_predicted(int(t), arch) for t in e.target]
    return [{"sentence": index, "method": method, "text": " ".join(s.words), "label": s.label,
             "predicted": predicted[r], "correct": predicted[r] == s.label,
             "deciding": " ".join(s.words[d] for d in s.deciding),
             "on_deciding": float(found["mass_inside"][r]), "top_hit": float(found["pointing"][r]),
             "top_k": float(top_k[r]), "aopc": float((morf[r, :1] - morf[r]).mean()),
             "abpc": float((lerf[r] - morf[r]).mean()),
             "stability": float(noisy["correlation"][r]),
             "delta": abs(float(e.delta[r])) / max(1.0, abs(float(e.score[r])))}
            for r, (index, s) in enumerate(zip(indices, sentences))]


def _predicted(target: int, arch: str) -> int:
    return target - task.VOCAB[task.LABELS[0]] if arch == "lm" else target


@torch.no_grad()
def deletion_curve(model, ids: torch.Tensor, target: torch.Tensor, order: torch.Tensor,
                   steps: int) -> torch.Tensor:
    """(N, steps + 1) float64: the target's logit as the words at ``order`` (N, L), first
    first, are deleted one more per step ([PAD], masked out); step 0 is the sentence."""
    n, length = ids.shape
    k = torch.arange(steps + 1)
    rank = torch.full((n, length), length, dtype=torch.long)  # never deleted: [CLS], [SEP]
    rank.scatter_(1, order, torch.arange(order.shape[1]).expand_as(order))
    removed = rank[:, None, :] < k[None, :, None]  # (N, steps + 1, T)
    pad = task.VOCAB["[PAD]"]
    perturbed = torch.where(removed, pad, ids[:, None, :]).flatten(0, 1)
    mask = (~removed).long().flatten(0, 1)
    scores = task.logits(model, perturbed, mask).double()
    return scores.gather(1, target.repeat_interleave(steps + 1)[:, None]).reshape(n, steps + 1)


def summary(rows: list[dict]) -> dict:
    """method -> mean of each metric over the sentences (a map with no positive relevance is
    left out of ``on_deciding`` and counted), the worst conservation delta, and the count."""
    table = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        entry = {m: float(np.nanmean([r[m] for r in mine]))
                 if any(not np.isnan(r[m]) for r in mine) else float("nan") for m in METRICS}
        entry["no_positive"] = sum(1 for r in mine if np.isnan(r["on_deciding"]))
        entry["max_delta"] = max(r["delta"] for r in mine)
        entry["sentences"] = len(mine)
        table[method] = entry
    return table


def markdown(table: dict, arch: str, accuracy: float, settings: Settings) -> str:
    model = {"classifier": "BERT-style classifier", "lm": "Llama-style causal LM"}[arch]
    count = next(iter(table.values()))["sentences"]
    lines = [f"Synthetic negation task ({task.NAME}): {model} (2 layers, width 64), held-out "
             f"accuracy {accuracy:.3f}; {count} sentences explained in float64; deletion over "
             f"{settings.steps} words, noise σ = {settings.sigma:g} of the embedding table's "
             "std.", "",
             "| method | on deciding words | top word deciding | top-k deciding | AOPC | ABPC "
             "| stability | max abs(ΣR − logit) / max(1, abs(logit)) |", "|---|---|---|---|---|---|---|---|"]
    for method, e in table.items():
        lines.append(f"| {method} | {e['on_deciding']:.3f} | {e['top_hit']:.2f} | "
                     f"{e['top_k']:.2f} | {e['aopc']:.3f} | {e['abpc']:.3f} | "
                     f"{e['stability']:.4f} | {e['max_delta']:.1e} |")
    empty = [f"{method} {e['no_positive']}" for method, e in table.items() if e["no_positive"]]
    if empty:
        lines += ["", f"Maps with no positive relevance, left out of the shares: "
                      f"{', '.join(empty)}."]
    return "\n".join(lines) + "\n"
