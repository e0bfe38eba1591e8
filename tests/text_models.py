"""Small random Hugging Face language models of each text family relprop explains, for the tests
and the benchmarks: the families' own classes and configs, at sizes that run in a second."""
from __future__ import annotations

import torch

from tests.hf_models import draw_bias

VOCAB = 64
_DECODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
_ENCODER = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, max_position_embeddings=64)


def families():
    """name -> (config class, causal LM class, sequence classifier class, config kwargs)."""
    import transformers as T
    return {
        "gpt2": (T.GPT2Config, T.GPT2LMHeadModel, T.GPT2ForSequenceClassification,
                 dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                      bos_token_id=1, eos_token_id=1)),
        "llama": (T.LlamaConfig, T.LlamaForCausalLM, T.LlamaForSequenceClassification, _DECODER),
        "qwen2": (T.Qwen2Config, T.Qwen2ForCausalLM, T.Qwen2ForSequenceClassification, _DECODER),
        "gemma": (T.GemmaConfig, T.GemmaForCausalLM, T.GemmaForSequenceClassification,
                  {**_DECODER, "head_dim": 8}),
        "mistral": (T.MistralConfig, T.MistralForCausalLM, T.MistralForSequenceClassification,
                    _DECODER),
        "phi3": (T.Phi3Config, T.Phi3ForCausalLM, T.Phi3ForSequenceClassification,
                 {**_DECODER, "pad_token_id": 0}),
        "bert": (T.BertConfig, None, T.BertForSequenceClassification, _ENCODER),
        "roberta": (T.RobertaConfig, None, T.RobertaForSequenceClassification,
                    {**_ENCODER, "max_position_embeddings": 70}),
        "distilbert": (T.DistilBertConfig, None, T.DistilBertForSequenceClassification,
                       dict(vocab_size=VOCAB, dim=32, hidden_dim=48, n_layers=2, n_heads=4,
                            max_position_embeddings=64)),
    }


def build(name: str, kind: str = "causal", labels: int = 3, seed: int = 0):
    """The family's model with random weights (biases and norm weights drawn too, so that no
    rule meets an all-zero parameter), in eval mode. ``kind``: "causal" or "classifier"."""
    config_class, causal, classifier, kwargs = families()[name]
    model_class = causal if kind == "causal" else classifier
    if model_class is None:
        raise ValueError(f"{name} has no {kind} model here")
    torch.manual_seed(seed)
    config = config_class(num_labels=labels, pad_token_id=0, **{k: v for k, v in kwargs.items()
                                                                if k != "pad_token_id"})
    model = model_class(config).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            draw_bias(module, g)
            weight = getattr(module, "weight", None)
            if "Norm" in type(module).__name__ and isinstance(weight, torch.Tensor):
                weight.copy_(1 + torch.randn(weight.shape, generator=g) * 0.1)
    return model


def causal_families():
    return [n for n, f in families().items() if f[1] is not None]


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "a", "cat", "dog", "sat", "on", "mat", "is",
         "not", "good", "bad", "very", "movie", "was", "and", "but", "it", "i", "liked",
         "hated", "Paris", "capital", "of", "France", "."]


def tokenizer():
    """A word-level tokenizer over :data:`WORDS` (ids below :data:`VOCAB`), as a transformers
    fast tokenizer that ``save_pretrained`` writes and ``AutoTokenizer`` reads back offline."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers
    vocab = {w: i for i, w in enumerate(WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]",
                                                unk_token="[UNK]")
