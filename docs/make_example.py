"""Rebuild docs/example.png from a default run: ``relprop explain --out /tmp/ex`` then
``python docs/make_example.py /tmp/ex``: per image the photo as the model saw it, the heat map
and the overlay that run wrote."""
import json
import sys

import skimage.data
from PIL import Image, ImageDraw

from relprop import plot

out = sys.argv[1] if len(sys.argv) > 1 else "relprop-out"
summary = json.load(open(f"{out}/summary.json"))
side, gap, title = 224, 6, 18
canvas = Image.new("RGB", (3 * side + 2 * gap, len(summary["images"]) * (side + title + gap)),
                   "white")
draw = ImageDraw.Draw(canvas)
for r, row in enumerate(summary["images"]):
    view = plot.input_view(Image.fromarray(getattr(skimage.data, row["image"])()), 256, 224)
    y = r * (side + title + gap)
    draw.text((2, y + 3), f"{row['image']}: {row['explained']} (logit {row['logit']:.2f})",
              fill="black")
    for c, picture in enumerate([view, Image.open(row["heatmap"]), Image.open(row["overlay"])]):
        canvas.paste(picture.convert("RGB"), (c * (side + gap), y + title))
canvas.save("docs/example.png")
