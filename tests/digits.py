"""A small residual network that shows RAP's instability, trained on the spot: scikit-learn ships
the data, so the tests and ``benchmarks/stability.py`` need no download."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def train_digits_resnet(test_images: int = 32):
    """A ResNet-10 (torchvision's BasicBlock, one per stage, 3x3 stem, no max pooling) trained on
    scikit-learn's digits upsampled to 32x32: seed 0, the first 1500 of a permutation, SGD lr 0.05,
    momentum 0.9, weight decay 5e-4, batch 64, three epochs with the rate falling linearly to 0
    (about 45 s on two cores). Issue 11's recipe with a smaller network. Returns (model in eval mode, test accuracy, the first
    ``test_images`` test images, normalised as the network takes them)."""
    from sklearn.datasets import load_digits
    from torchvision.models.resnet import BasicBlock, ResNet
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    x, y = (x - 0.5) / 0.5, torch.tensor(digits.target)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        order = torch.randperm(len(x))
        train, test = order[:1500], order[1500:]
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        optimiser = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
        steps = 3 * -(-len(train) // 64)
        # The rate falls linearly to 0: the last steps settle the weights, so the accuracy does
        # not hang on the rounding of the last few updates (at a constant rate it came out at
        # 0.90-0.98 with other thread counts and CPU kernels).
        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / steps)
        for _ in range(3):
            batches = train[torch.randperm(len(train))]
            for i in range(0, len(batches), 64):
                b = batches[i:i + 64]
                optimiser.zero_grad()
                F.cross_entropy(model(x[b]), y[b]).backward()
                optimiser.step()
                schedule.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, accuracy, x[test[:test_images]]
