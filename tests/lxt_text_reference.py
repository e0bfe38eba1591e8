"""LXT's input relevance for a small random Hugging Face language model, computed in a process of
its own: LXT patches the family's transformers classes globally (``lxt.efficient.monkey_patch``),
which must not leak into the test process, and it needs transformers 4.x. Usage:
``python -m tests.lxt_text_reference FAMILY MODE SEED OUT`` from the repository root, MODE
``cp_LRP`` or ``attnLRP`` (the patch map of ``lxt.efficient.models.FAMILY``); writes the model's
weights, the ids, the targets and LXT's relevance at the input embeddings to OUT (torch.save)."""
import importlib
import sys

import torch
from lxt.efficient import monkey_patch

from tests.text_models import build

_MODULES = {"gpt2": "gpt2", "llama": "llama", "qwen2": "qwen2", "bert": "bert"}


def main(family: str, mode: str, seed: int, out: str) -> None:
    patches = importlib.import_module(f"lxt.efficient.models.{_MODULES[family]}")
    modeling = importlib.import_module(f"transformers.models.{family}.modeling_{family}")
    monkey_patch(modeling, getattr(patches, mode))
    kind = "classifier" if family == "bert" else "causal"
    model = build(family, kind, seed=seed).double().eval()
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(4, 29, (2, 9), generator=g)
    x = model.get_input_embeddings()(ids).detach().requires_grad_()
    logits = model(inputs_embeds=x, attention_mask=torch.ones_like(ids)).logits
    if kind == "causal":
        logits = logits[:, -1]
    target = logits.argmax(-1)
    logits.gather(1, target[:, None]).sum().backward()
    torch.save({"state": model.state_dict(), "ids": ids, "target": target,
                "relevance": (x * x.grad).detach()}, out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4])
