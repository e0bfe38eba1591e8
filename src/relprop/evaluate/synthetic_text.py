"""Text where the evidence is known by construction: sentiment decided by two known tokens among
fillers, and the two small transformers relprop trains on it.

A sentence is ten filler words with one key word ("good" or "bad") at a random place, preceded
by "not" half of the time; its label is the key's sentiment, flipped by the "not". The deciding
words are the key and, where present, the "not" before it; every other word is a distractor.

- ``classifier``: a BERT-style sequence classifier (2 layers, width 64) reads ``[CLS] words``
  and gives "negative" or "positive";
- ``lm``: a Llama-style causal language model (2 layers, width 64: RMSNorm, rotary positions,
  a SiLU-gated MLP) reads ``[CLS] words [SEP]`` and predicts the next token, "negative" or
  "positive" (trained on that token only: the fillers are random and cannot be predicted).

Both are trained on the spot (seeded, on fresh sentences) and cached as the image sets' networks
are. Sentences are generated per (seed, index): the same on every machine, no download.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from . import synthetic

NAME = "text-negation"
ARCHITECTURES = ("classifier", "lm")
FILLERS = ("the", "a", "movie", "was", "and", "it", "i", "on", "mat", "cat", "dog", "sat", "of",
           "is", "very", "but")
KEYS = {"good": 1, "bad": 0}
LABELS = ("negative", "positive")
WORDS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "not", *KEYS, *FILLERS, *LABELS)
VOCAB = {w: i for i, w in enumerate(WORDS)}
LENGTH = 10  # words per sentence
STEPS, BATCH = 600, 64  # training: fresh sentences every step
TEST_START, TEST = 1_000_000, 1000  # held-out sentences for the accuracy
EVALUATE_START = TEST_START + TEST  # the sentences `relprop evaluate` explains
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Sentence:
    words: list  # the ten words
    label: int  # 1: positive
    deciding: list  # the deciding words' places among the ten


def sentence(index: int, seed: int = 0) -> Sentence:
    rng = random.Random(seed * 1_000_003 + index)
    words = [rng.choice(FILLERS) for _ in range(LENGTH)]
    key = rng.choice(list(KEYS))
    at = rng.randint(1, LENGTH - 1)
    negated = rng.random() < 0.5
    words[at] = key
    deciding = [at - 1, at] if negated else [at]
    if negated:
        words[at - 1] = "not"
    return Sentence(words, KEYS[key] ^ int(negated), deciding)


def encode(sentences: list, arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, labels)``: ``[CLS] words`` for the classifier, ``[CLS] words [SEP]`` for
    the language model, whose label is the id of the token it should predict."""
    end = ["[SEP]"] if arch == "lm" else []
    ids = torch.tensor([[VOCAB[w] for w in ["[CLS]", *s.words, *end]] for s in sentences])
    labels = torch.tensor([s.label for s in sentences])
    return ids, (labels + VOCAB[LABELS[0]] if arch == "lm" else labels)


def tokenizer():
    """The task's word-level tokenizer as a transformers fast tokenizer (``save_pretrained``
    writes it and ``AutoTokenizer`` reads it back offline); it puts [CLS] in front."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    core = Tokenizer(models.WordLevel(VOCAB, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(
        single="[CLS] $A", special_tokens=[("[CLS]", VOCAB["[CLS]"])])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]",
                                                unk_token="[UNK]", cls_token="[CLS]",
                                                sep_token="[SEP]")


def build(arch: str):
    """The untrained network (random init under the caller's seed)."""
    import transformers
    common = dict(vocab_size=len(WORDS), hidden_size=64, num_hidden_layers=2,
                  num_attention_heads=4, intermediate_size=128, pad_token_id=0)
    if arch == "classifier":
        config = transformers.BertConfig(**common, max_position_embeddings=16, num_labels=2,
                                         hidden_dropout_prob=0.0,
                                         attention_probs_dropout_prob=0.0,
                                         id2label=dict(enumerate(LABELS)),
                                         label2id={n: i for i, n in enumerate(LABELS)})
        return transformers.BertForSequenceClassification(config).eval()
    if arch == "lm":
        config = transformers.LlamaConfig(**common, num_key_value_heads=4,
                                          max_position_embeddings=16, tie_word_embeddings=False)
        return transformers.LlamaForCausalLM(config).eval()
    raise ValueError(f"unknown architecture '{arch}'; available: {', '.join(ARCHITECTURES)}")


def logits(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The logits the task reads: the classifier's (N, 2), the LM's next-token logits after the
    last position (N, V)."""
    y = model(input_ids=ids, attention_mask=mask).logits
    return y[:, -1] if y.dim() == 3 else y


def train(arch: str, seed: int = 0, steps: int | None = None):
    """AdamW (rate 1e-3, batch 64) on fresh sentences; returns (model in eval mode, accuracy on
    the held-out sentences)."""
    import torch.nn.functional as F
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build(arch).train()
        optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(STEPS if steps is None else steps):
            ids, labels = encode([sentence(step * BATCH + i, seed) for i in range(BATCH)], arch)
            loss = F.cross_entropy(logits(model, ids), labels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    model.eval()
    return model, accuracy(model, arch, seed)


def accuracy(model, arch: str, seed: int = 0) -> float:
    ids, labels = encode([sentence(TEST_START + i, seed) for i in range(TEST)], arch)
    with torch.no_grad():
        return float((logits(model, ids).argmax(1) == labels).float().mean())


def trained(arch: str, seed: int = 0, log=None):
    """The ``arch`` network trained by :func:`train`: trained once, then loaded from relprop's
    cache. Returns (model in eval mode, held-out accuracy)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{arch}'; available: {', '.join(ARCHITECTURES)}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build(arch)
    path = synthetic.cache_dir() / f"synthetic-{NAME}-{arch}-recipe{RECIPE_VERSION}-seed{seed}.pt"
    return synthetic.cached(path, model, lambda: train(arch, seed),
                            f"the synthetic text {arch} once (about half a minute)", log)
