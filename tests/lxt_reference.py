"""LXT's input relevance for a torchvision ViT, computed in a process of its own: LXT patches
GELU, LayerNorm and MultiheadAttention classes globally (``lxt.efficient.monkey_patch``), which
must not leak into the test process. Usage: ``python -m tests.lxt_reference SPEC SEED OUT`` from the repository root; writes the
model's weights, the inputs, the targets and LXT's relevance to OUT (torch.save)."""
import sys

import torch
import torchvision.models.vision_transformer as vision_transformer
from lxt.efficient import monkey_patch

from tests.transformer_models import build_vit


def main(spec: str, seed: int, out: str) -> None:
    monkey_patch(vision_transformer)
    torch.manual_seed(seed)
    model = build_vit(spec).double().eval()
    size = model.image_size
    x = torch.randn(2, 3, size, size, dtype=torch.float64, requires_grad=True)
    logits = model(x)
    target = logits.argmax(1)
    logits.gather(1, target[:, None]).sum().backward()
    torch.save({"state": model.state_dict(), "x": x.detach(), "target": target,
                "relevance": (x * x.grad).detach()}, out)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
