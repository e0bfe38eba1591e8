"""Rebuild docs/detection.png from a real run of ``relprop explain`` on relprop's synthetic
detector (trained on the spot once, then cached; offline):

    python docs/make_detection.py OUT_DIR

Two pictures of the shapes-detection set that the detector never saw are written to OUT_DIR,
explained with ``relprop explain --model synthetic-detector --detections 3``, and per picture
its explained boxes and the rap-stable overlay of each detection are put in one row.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image

from relprop import cli
from relprop.evaluate import synthetic_detection

PICTURES = (3, 5)  # offsets from the set's evaluation start: three shapes or more each
SCALE = 2  # 128-pixel pictures, drawn larger


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for offset in PICTURES:
        path = out / f"shapes-{offset}.png"
        synthetic_detection.sample(synthetic_detection.EVALUATE_START + offset).image.save(path)
        files.append(path)
    explained = out / "explained"
    code = cli.main(["explain", "--model", "synthetic-detector", "--detections", "3",
                     "--out", str(explained), *map(str, files)])
    if code != 0:
        raise SystemExit(code)
    rows = []
    for path in files:
        stem = path.stem
        panels = [explained / f"{stem}_detections.png",
                  *sorted(explained.glob(f"{stem}_det*_overlay.png"))]
        rows.append([Image.open(p).convert("RGB") for p in panels])
    side = 128 * SCALE
    width = max(len(r) for r in rows) * side
    figure = Image.new("RGB", (width, len(rows) * side), "white")
    for y, row in enumerate(rows):
        for x, panel in enumerate(row):
            figure.paste(panel.resize((side, side), Image.NEAREST), (x * side, y * side))
    target = Path(__file__).parent / "detection.png"
    figure.save(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "relprop-detection"))
