"""k detections of one image: one call (one recorded forward pass, a reverse sweep per
detection) against k separate calls, in one process and one run.

    python benchmarks/detection.py                          # Faster R-CNN R50-FPN, k = 1, 10, 50
    python benchmarks/detection.py --model retinanet_resnet50_fpn --ks 1 10 --size 320

Random weights with the score threshold at 0, so that any k detections exist (time does not
depend on the weights); a real photograph (scikit-image's astronaut). Time in seconds; memory is
the peak RSS above what the model and the image hold (Linux), counting everything the user
pays: the recording, the kept forward values, the sweeps. Writes JSON and a markdown table to
benchmarks/results/ and prints the table.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision

sys.path.insert(0, str(Path(__file__).parent))
from bench import peak_rss  # noqa: E402

import relprop  # noqa: E402
from relprop.detection import Detections  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="fasterrcnn_resnet50_fpn")
    p.add_argument("--method", default="rap-stable")
    p.add_argument("--ks", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument("--size", type=int, default=320, help="the detector's min_size")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    device = torch.device(args.device)
    torch.manual_seed(0)
    kw = dict(min_size=args.size, max_size=args.size * 4 // 3)
    kw.update(box_score_thresh=0.0, box_detections_per_img=max(args.ks)) \
        if "rcnn" in args.model else kw.update(score_thresh=0.0,
                                               detections_per_img=max(args.ks))
    model = getattr(torchvision.models.detection, args.model)(
        weights=None, weights_backbone=None, **kw).eval().to(device)
    from skimage import data
    image = torchvision.transforms.functional.to_tensor(data.astronaut())[None].to(device)
    image = torch.nn.functional.interpolate(image, size=(args.size, args.size))
    explainer = relprop.explainer(model, args.method)
    explainer.explain(image, Detections(top=1))  # warm up

    rows = []
    for k in args.ks:
        def together():
            return explainer.explain(image, Detections(top=k))

        def separately():
            return [explainer.explain(image, j) for j in range(k)]
        row = {"k": k}
        for name, fn in (("one call", together), ("k calls", separately)):
            start = time.perf_counter()
            memory = peak_rss(fn)
            row[f"{name} s"] = time.perf_counter() - start
            row[f"{name} peak MiB"] = None if memory is None else memory / 2 ** 20
        rows.append(row)
        print(row, file=sys.stderr)

    lines = [f"{args.model}, {args.method}, image {args.size} px, {device} "
             f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} "
             "threads), torch " + torch.__version__, "",
             "| k | one call (s) | k calls (s) | speed-up | one call peak (MiB) | "
             "k calls peak (MiB) |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['k']} | {r['one call s']:.1f} | {r['k calls s']:.1f} | "
                     f"{r['k calls s'] / r['one call s']:.1f}x | "
                     f"{r['one call peak MiB']:.0f} | {r['k calls peak MiB']:.0f} |")
    text = "\n".join(lines) + "\n"
    out = Path(__file__).parent / "results"
    stem = f"detection-{args.model}-{device.type}"
    (out / f"{stem}.json").write_text(json.dumps({"settings": vars(args), "rows": rows},
                                                 indent=2))
    (out / f"{stem}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
