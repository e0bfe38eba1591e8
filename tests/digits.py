"""A small residual network that shows RAP's instability, trained on the spot: scikit-learn ships
the data, so the tests and ``benchmarks/stability.py`` need no download."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def _digits():
    """scikit-learn's digits upsampled to 32x32, three channels, normalised to [-1, 1]."""
    from sklearn.datasets import load_digits
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    return (x - 0.5) / 0.5, torch.tensor(digits.target)


def _sgd(parameters):
    return torch.optim.SGD(parameters, lr=0.05, momentum=0.9, weight_decay=5e-4)


def _train(model, x, y, train, epochs=3, optimiser_of=_sgd):
    """SGD lr 0.05, momentum 0.9, weight decay 5e-4 (or ``optimiser_of``'s), batch 64; the rate
    falls linearly to 0, so that the last steps settle the weights and the accuracy does not
    hang on the rounding of the last few updates (at a constant rate it came out at 0.90-0.98
    with other thread counts and CPU kernels)."""
    optimiser = optimiser_of(model.parameters())
    steps = epochs * -(-len(train) // 64)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1 - step / steps)
    for _ in range(epochs):
        batches = train[torch.randperm(len(train))]
        for i in range(0, len(batches), 64):
            b = batches[i:i + 64]
            optimiser.zero_grad()
            F.cross_entropy(model(x[b]), y[b]).backward()
            optimiser.step()
            schedule.step()
    return model.eval()


def train_digits_mbconv(test_images: int = 32):
    """An EfficientNet in miniature on the same digits: torchvision's own MBConv blocks (SiLU,
    squeeze-and-excitation sigmoid gates, stochastic depth, residual additions), three stages
    (16, 24, 40 channels), trained as :func:`train_digits_resnet`'s network. Returns (model in
    eval mode, test accuracy, the first ``test_images`` test images)."""
    from functools import partial

    from torchvision.models.efficientnet import EfficientNet, MBConvConfig
    x, y = _digits()
    config = partial(MBConvConfig, width_mult=1.0, depth_mult=1.0)
    stages = [config(1, 3, 1, 16, 16, 1), config(4, 3, 2, 16, 24, 2), config(4, 3, 2, 24, 40, 2)]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        order = torch.randperm(len(x))
        train, test = order[:1500], order[1500:]
        model = EfficientNet(stages, dropout=0.1, stochastic_depth_prob=0.1, num_classes=10,
                             last_channel=128)
        model.features[0][0].stride = (1, 1)  # 32x32 digits: keep the stem's resolution
        model = _train(model, x, y, train, epochs=4)
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, accuracy, x[test[:test_images]]


def train_digits_resnet(test_images: int = 32):
    """A ResNet-10 (torchvision's BasicBlock, one per stage, 3x3 stem, no max pooling) trained on
    scikit-learn's digits upsampled to 32x32: seed 0, the first 1500 of a permutation, SGD lr 0.05,
    momentum 0.9, weight decay 5e-4, batch 64, three epochs with the rate falling linearly to 0
    (about 45 s on two cores). Issue 11's recipe with a smaller network. Returns (model in eval mode, test accuracy, the first
    ``test_images`` test images, normalised as the network takes them)."""
    from torchvision.models.resnet import BasicBlock, ResNet
    x, y = _digits()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        order = torch.randperm(len(x))
        train, test = order[:1500], order[1500:]
        model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=10)
        model.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
        _train(model, x, y, train)
    model.eval()
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, accuracy, x[test[:test_images]]


def train_digits_vit(test_images: int = 32):
    """A small vision transformer trained on the same digits: torchvision's VisionTransformer
    (4x4 patches, so an 8x8 token grid and a class token; 4 layers, 4 heads, width 64), AdamW
    lr 2e-3, weight decay 0.05, batch 64, 12 epochs with the rate falling linearly to 0.
    Returns (model in eval mode, test accuracy, the first ``test_images`` test images)."""
    from torchvision.models import VisionTransformer
    x, y = _digits()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        order = torch.randperm(len(x))
        train, test = order[:1500], order[1500:]
        model = VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4,
                                  hidden_dim=64, mlp_dim=128, num_classes=10)
        _train(model, x, y, train, epochs=12, optimiser_of=lambda p: torch.optim.AdamW(
            p, lr=2e-3, weight_decay=0.05))
    with torch.no_grad():
        accuracy = float((model(x[test]).argmax(1) == y[test]).float().mean())
    return model, accuracy, x[test[:test_images]]
