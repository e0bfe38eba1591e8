"""docs/segmentation.png: a segmenter explained for a class over its predicted pixels.

    python docs/make_segmentation.py

No segmentation weights can be had offline, so the segmenter is trained here on relprop's
synthetic shapes-distractor set, where every pixel's class is known: an FCN of torchvision's
shape (a ResNet-10 trunk of BasicBlocks at 1/8 resolution, a 1x1 classifier, bilinear upsampling
to the input, the map returned as ``{"out": ...}``), five classes (background and the four
shapes), seeded, about two minutes on two CPU cores. Each row: the image with the explained
region outlined, and rap-stable's map for the large shape's class and for the distractor's.
Prints the pixel accuracy on held-out images and each map's conservation.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.models.resnet import BasicBlock, ResNet

import relprop
from relprop import plot
from relprop.evaluate import synthetic
from relprop.targets import ClassRegion

OUT = Path(__file__).resolve().parent / "segmentation.png"
CLASSES = ("background",) + synthetic.CLASSES


class FCN(nn.Module):
    def __init__(self, classes=len(CLASSES)):
        super().__init__()
        trunk = ResNet(BasicBlock, [1, 1, 1, 1])
        self.backbone = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.layer1,
                                      trunk.layer2, trunk.layer3)
        self.classifier = nn.Sequential(nn.Conv2d(256, 64, 3, padding=1), nn.BatchNorm2d(64),
                                        nn.ReLU(), nn.Conv2d(64, classes, 1))

    def forward(self, x):
        y = self.classifier(self.backbone(x))
        return {"out": F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def labels(samples) -> torch.Tensor:
    maps = np.zeros((len(samples), synthetic.SIZE, synthetic.SIZE), dtype=np.int64)
    for i, s in enumerate(samples):
        maps[i][s.mask] = s.label + 1
        if s.distractor_mask is not None:
            maps[i][s.distractor_mask] = s.distractor_label + 1
    return torch.from_numpy(maps)


def train(epochs=4, per_epoch=2000, batch=32) -> nn.Module:
    torch.manual_seed(0)
    model = FCN()
    optimiser = torch.optim.AdamW(model.parameters(), lr=2e-3)
    steps = epochs * len(range(0, per_epoch, batch))
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 2e-3, total_steps=steps)
    weight = torch.tensor([0.2, 1, 1, 1, 1])  # the background covers most pixels
    model.train()
    for epoch in range(epochs):
        for start in range(0, per_epoch, batch):
            samples = synthetic.dataset("shapes-distractor", batch, seed=1,
                                        start=epoch * per_epoch + start)
            x, _ = synthetic.tensors(samples)
            loss = F.cross_entropy(model(x)["out"], labels(samples), weight=weight)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            schedule.step()
        print(f"epoch {epoch + 1}: loss {loss.item():.3f}", file=sys.stderr)
    return model.eval()


def main() -> None:
    model = train()
    held_out = synthetic.dataset("shapes-distractor", 200, seed=1, start=10 ** 6)
    x, _ = synthetic.tensors(held_out)
    with torch.no_grad():
        predicted = model(x)["out"].argmax(1)
    truth = labels(held_out)
    shapes = truth > 0
    print(f"pixel accuracy {(predicted == truth).float().mean():.3f}, on the shapes "
          f"{(predicted[shapes] == truth[shapes]).float().mean():.3f} (200 held-out images)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    shown = held_out[:4]
    xs, _ = synthetic.tensors(shown)
    fig, axes = plt.subplots(len(shown), 4, figsize=(8, 2.1 * len(shown)))
    for row, sample in enumerate(shown):
        xi = xs[row:row + 1]
        for col, (label, name) in enumerate(((sample.label, "object"),
                                             (sample.distractor_label, "distractor"))):
            target = ClassRegion(label + 1)
            e = relprop.explain(model, xi, target=target, method="rap-stable")
            region = target.mask(e.logits)[0].numpy()
            print(f"image {row}, {CLASSES[label + 1]} ({name}): score {e.score.item():.2f}, "
                  f"sum R {e.relevance.sum().item():.2f}, {int(region.sum())} pixels")
            axes[row][2 * col].imshow(plot.outline(sample.image, region))
            axes[row][2 * col].set_title(f"{CLASSES[label + 1]} ({name})", fontsize=8)
            axes[row][2 * col + 1].imshow(plot.colorize(e.heatmap[0]))
            axes[row][2 * col + 1].set_title("rap-stable", fontsize=8)
        for ax in axes[row]:
            ax.axis("off")
    fig.tight_layout()
    fig.savefig(OUT, dpi=100)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
