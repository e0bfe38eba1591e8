"""A detection set whose evidence is known by construction, and a small detector trained on it.

``shapes-detection``: 128x128 pictures with two to four shapes of :data:`synthetic.CLASSES`
(disc, square, triangle, cross) of random size, place and colour on the textured background of
the classification sets, apart from each other. Each shape comes with its box and its mask, the
pixels drawn in its colour: the evidence for its detection, while the other shapes are where
that detection's positive relevance should not be.

The detector is torchvision's Faster R-CNN (unmodified: its RPN, NMS, RoIAlign and box head)
on a small residual backbone, trained here on fresh images in a few minutes on two cores and
kept in the cache of :func:`synthetic.cache_dir`: 250 steps, 70 s with two threads, 100 s with
one, to mAP@0.5 0.99 on the test pictures.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from . import synthetic

NAME = "shapes-detection"
SIZE = 128
SIDES = (20, 41)  # a shape's side, [low, high)
COUNT = (2, 5)  # shapes per picture, [low, high)
PER_EPOCH, EPOCHS, BATCH = 1000, 2, 8  # mAP@0.5 0.988 (1 thread), 0.992 (2); 6x2000: 1.0
TEST_START, TEST = 1_000_000, 200  # test pictures, never trained on
EVALUATE_START = TEST_START + TEST  # the pictures `relprop evaluate` explains
RECIPE_VERSION = 2


@dataclass(frozen=True)
class Picture:
    image: Image.Image  # RGB, SIZE x SIZE
    labels: tuple  # a class index per shape
    boxes: tuple  # (x0, y0, x1, y1) per shape, right and bottom exclusive
    masks: np.ndarray  # (shapes, SIZE, SIZE) bool


def sample(index: int, seed: int = 0) -> Picture:
    """Picture ``index`` under ``seed``: the same on every machine."""
    rng = np.random.default_rng([seed, index, 7])
    image = synthetic.background(rng, SIZE)
    labels, boxes, masks = [], [], []
    for _ in range(int(rng.integers(*COUNT))):
        label = int(rng.integers(len(synthetic.CLASSES)))
        box = synthetic.place(rng, int(rng.integers(*SIDES)), boxes, SIZE)
        mask = synthetic.shape_mask(synthetic.CLASSES[label], box, SIZE)
        synthetic.paint(image, mask, rng)
        labels.append(label)
        boxes.append(box)
        masks.append(mask)
    return Picture(Image.fromarray(image), tuple(labels), tuple(boxes), np.stack(masks))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """A picture as the detector takes it: (3, H, W) in [0, 1] (it normalises inside)."""
    return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).float() / 255


def build() -> nn.Module:
    """The untrained detector: torchvision's FasterRCNN on a residual backbone of stride 8
    (torchvision's BasicBlock), one feature map, square anchors of 16-48 pixels. Its classes:
    0 is the background, 1 + i is ``synthetic.CLASSES[i]``."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
    from torchvision.models.detection.rpn import AnchorGenerator
    from torchvision.models.resnet import BasicBlock
    from torchvision.ops import MultiScaleRoIAlign

    def stage(cin, cout):
        down = nn.Sequential(nn.Conv2d(cin, cout, 1, 2, bias=False), nn.BatchNorm2d(cout))
        return BasicBlock(cin, cout, stride=2, downsample=down)

    backbone = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32),
                             nn.ReLU(inplace=True), stage(32, 32), stage(32, 64), stage(64, 64))
    backbone.out_channels = 64
    return FasterRCNN(
        backbone, min_size=SIZE, max_size=SIZE,
        image_mean=[0.5] * 3, image_std=[0.25] * 3,
        rpn_anchor_generator=AnchorGenerator(((16, 24, 32, 48),), ((1.0,),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2),
        box_head=TwoMLPHead(64 * 7 * 7, 256),
        box_predictor=FastRCNNPredictor(256, 1 + len(synthetic.CLASSES)),
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=100,
        rpn_pre_nms_top_n_test=150, rpn_post_nms_top_n_test=50,
        rpn_batch_size_per_image=64, box_batch_size_per_image=64, box_detections_per_img=10)


def _targets(pictures: list[Picture]) -> list[dict]:
    return [{"boxes": torch.tensor(p.boxes, dtype=torch.float32),
             "labels": torch.tensor(p.labels) + 1} for p in pictures]


def train(seed: int = 0, progress: bool = False):
    """SGD with momentum on fresh pictures every epoch, the rate falling linearly to 0 (a fixed
    end point). Returns (model in eval mode, mAP@0.5 on the test pictures)."""
    from tqdm import trange
    steps = EPOCHS * (PER_EPOCH // BATCH)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = build()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9,
                                    weight_decay=1e-4)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimiser, lambda s: min((s + 1) / 100, (steps - s) / steps))
        model.train()
        for epoch in trange(EPOCHS, desc=f"training the synthetic detector on {NAME}",
                            unit="epoch", file=sys.stderr, disable=not progress):
            pictures = [sample(epoch * PER_EPOCH + i, seed) for i in range(PER_EPOCH)]
            order = torch.randperm(PER_EPOCH).tolist()
            for i in range(0, PER_EPOCH - BATCH + 1, BATCH):
                batch = [pictures[j] for j in order[i:i + BATCH]]
                losses = model([to_tensor(p.image) for p in batch], _targets(batch))
                optimiser.zero_grad()
                sum(losses.values()).backward()
                optimiser.step()
                schedule.step()
    model.eval()
    return model, mean_average_precision(model, seed)


def mean_average_precision(model, seed: int = 0, iou: float = 0.5) -> float:
    """mAP at IoU ``iou`` over the classes, on the test pictures (VOC's all-point area)."""
    from ..detection import iou as overlap
    pictures = [sample(TEST_START + i, seed) for i in range(TEST)]
    with torch.no_grad():
        found = [model([to_tensor(p.image)])[0] for p in pictures]
    precisions = []
    for c in range(len(synthetic.CLASSES)):
        scored, total = [], 0
        for p, out in zip(pictures, found):
            truth = [b for b, label in zip(p.boxes, p.labels) if label == c]
            total += len(truth)
            used = set()
            keep = out["labels"] == c + 1
            for box, score in zip(out["boxes"][keep].tolist(), out["scores"][keep].tolist()):
                best = max(range(len(truth)), key=lambda k: overlap(box, truth[k]), default=None)
                hit = best is not None and best not in used and \
                    overlap(box, truth[best]) >= iou
                if hit:
                    used.add(best)
                scored.append((score, hit))
        scored.sort(key=lambda s: -s[0])
        hits = np.cumsum([h for _, h in scored])
        recall = hits / max(total, 1)
        precision = hits / np.arange(1, len(scored) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1] if len(scored) else precision
        steps = np.diff(np.concatenate([[0.0], recall]))
        precisions.append(float((steps * envelope).sum()))
    return float(np.mean(precisions))


def trained(seed: int = 0, log=None):
    """The detector trained by :func:`train`: once, then from the cache. Returns (model in eval
    mode, mAP@0.5 on the test pictures)."""
    path = synthetic.cache_dir() / f"synthetic-{NAME}-recipe{RECIPE_VERSION}-seed{seed}.pt"
    return synthetic.cached(path, build(), lambda: train(seed, progress=True),
                            f"the synthetic detector on {NAME} once (1-2 minutes on two cores)",
                            log)
