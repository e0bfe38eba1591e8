"""Rebuild docs/text.png from a real run of ``relprop explain --text`` on a model saved with
``save_pretrained`` (offline):

    python docs/make_text.py OUT_DIR

The synthetic sentiment classifier of ``relprop evaluate --data synthetic:text-negation``
(:mod:`relprop.evaluate.synthetic_text`: its label decided by "good" or "bad", flipped by a
"not" before it, among filler words) is trained here, saved with its tokenizer to OUT_DIR/model,
and explained on three sentences with ``rap-stable``; their pictures are stacked into
docs/text.png.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from PIL import Image

from relprop import cli
from relprop.evaluate import synthetic_text

ROOT = Path(__file__).resolve().parents[1]

SENTENCES = ("the movie was very good and i sat on the mat",
             "it was not good but the cat is very",
             "a dog sat on the mat and it was bad")


def main(out: Path) -> None:
    torch.set_num_threads(2)
    model, accuracy = synthetic_text.train("classifier")
    print(f"trained: accuracy {accuracy:.3f}")
    folder = out / "model"
    model.save_pretrained(folder)
    synthetic_text.tokenizer().save_pretrained(folder)
    args = ["explain", "--model", f"hf:{folder}", "--out", str(out / "explained")]
    for sentence in SENTENCES:
        args += ["--text", sentence]
    if cli.main(args) != 0:
        raise SystemExit("relprop explain failed")
    pictures = [Image.open(out / "explained" / f"text{i}.png").convert("RGB")
                for i in range(1, len(SENTENCES) + 1)]
    width = max(p.width for p in pictures)
    sheet = Image.new("RGB", (width, sum(p.height for p in pictures)), "white")
    y = 0
    for picture in pictures:
        sheet.paste(picture, (0, y))
        y += picture.height
    sheet.save(ROOT / "docs" / "text.png")
    print(f"wrote {ROOT / 'docs' / 'text.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "text-out"))
