"""Rebuild docs/vit-digits.png: the ViT of tests/digits.py (trained on the spot, about 20 s on
two cores) explained by the transformer methods and two gradient methods on four test digits.

    python docs/make_vit_grid.py
"""
import sys
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import relprop  # noqa: E402
from relprop import plot  # noqa: E402
from tests.digits import train_digits_vit  # noqa: E402

METHODS = ["rap", "rap-stable", "lrp-attn", "attention-rollout", "attention-rollout-grad",
           "gradient-x-input", "integrated-gradients"]

model, accuracy, images = train_digits_vit()
x = images[:4]
heat = {m: relprop.explain(model, x, method=m).heatmap for m in METHODS}
target = relprop.explain(model, x, method="gradient").target
rows = []
for i in range(len(x)):
    picture = ((x[i].permute(1, 2, 0).numpy() + 1) * 127.5).clip(0, 255).astype(np.uint8)
    rows.append((f"predicted {int(target[i])}", Image.fromarray(picture).resize((96, 96)),
                 {m: heat[m][i] for m in METHODS}))
plot.grid(rows, METHODS, ROOT / "docs" / "vit-digits.png")
print(f"test accuracy {accuracy:.3f}; wrote docs/vit-digits.png")
