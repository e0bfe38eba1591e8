"""Random small networks drawn from a grammar of the ops relprop claims, for the property test of
conservation on architectures nobody wrote down (``tests/test_random_networks.py``).

A network is a stem convolution, a seeded sequence of blocks on an (N, C, H, W) tensor, and a
head. Every layer has a random bias and every BatchNorm random statistics, so that no rule can
lean on a zero bias or an identity normalisation.
"""
from __future__ import annotations

import random

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish,
               "leaky": nn.LeakyReLU, "tanh": nn.Tanh, "none": nn.Identity}


def _randomise(module: nn.Module, g: torch.Generator) -> None:
    """Random biases, BatchNorm statistics and affine parameters (biases are zero at init)."""
    with torch.no_grad():
        for m in module.modules():
            if getattr(m, "bias", None) is not None and isinstance(m.bias, torch.Tensor):
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.2)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)


class ChannelsLastNorm(nn.Module):
    """LayerNorm over the channels of ``x.permute(0, 2, 3, 1)`` (ConvNeXt's way)."""

    def __init__(self, c):
        super().__init__()
        self.norm = nn.LayerNorm(c)

    def forward(self, x):
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvUnit(nn.Module):
    def __init__(self, c_in, c_out, act, bn, kernel=3):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(c_out) if bn else nn.Identity()
        self.act = ACTIVATIONS[act]()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))


class Residual(nn.Module):
    """``x + body(x)``, optionally followed by a ReLU (ResNet) or not (ConvNeXt)."""

    def __init__(self, body, relu_after):
        super().__init__()
        self.body, self.relu_after = body, relu_after

    def forward(self, x):
        y = x + self.body(x)
        return F.relu(y) if self.relu_after else y


class Difference(nn.Module):
    """``x - body(x)`` (rap-spec §9.3: the sum of x and -body(x))."""

    def __init__(self, body):
        super().__init__()
        self.body = body

    def forward(self, x):
        return x - self.body(x)


class StackSum(nn.Module):
    """``stack([x, unit(x)]).sum(0)``: a sum written as a reduction."""

    def __init__(self, unit):
        super().__init__()
        self.unit = unit

    def forward(self, x):
        return torch.stack([x, self.unit(x)]).sum(0)


class Resample(nn.Module):
    """Up by 2 (nearest or bilinear), then an average pool back down (a segmenter's decoder)."""

    def __init__(self, mode):
        super().__init__()
        self.mode = mode

    def forward(self, x):
        return F.avg_pool2d(F.interpolate(x, scale_factor=2, mode=self.mode), 2)


class WrittenOutNorm(nn.Module):
    """An RMS norm over the channels written out, ``x / sqrt(mean(x²) + ε)`` (a quotient of two
    signals), scaled by a learned weight."""

    def __init__(self, c):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(1, c, 1, 1) + 0.5)

    def forward(self, x):
        return self.weight * x / torch.sqrt(x.pow(2).mean(1, keepdim=True) + 1e-3)


class SqueezeExcite(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(2, c // 2), 1), nn.Conv2d(max(2, c // 2), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(s))))


class Concat(nn.Module):
    """``cat([x, unit(x)])`` along the channels (DenseNet, Inception)."""

    def __init__(self, unit):
        super().__init__()
        self.unit = unit

    def forward(self, x):
        return torch.cat([x, self.unit(x)], 1)


class Network(nn.Module):
    def __init__(self, stem, blocks, head):
        super().__init__()
        self.stem, self.blocks, self.head = stem, nn.Sequential(*blocks), head

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)))


def draw(seed: int, size: int = 16) -> tuple[nn.Module, torch.Tensor, str]:
    """A random network (float64, eval), an input batch of two for it, and its recipe in words:
    the same for the same seed on every machine. A draw whose head sees only zeros (every
    hidden unit of the head dead, so that the score is a bias that no input entry can carry) is
    drawn again from the next seed."""
    for attempt in range(100):
        with torch.random.fork_rng():
            torch.manual_seed(seed * 1000 + attempt)
            model, x, recipe = _draw(seed * 1000 + attempt, size)
        with torch.no_grad():
            features = model.head[:-1](model.blocks(model.stem(x))).flatten(1)
        if (features.abs().sum(1) > 0).all():
            return model, x, recipe
    raise RuntimeError(f"no live network drawn for seed {seed}")


def _draw(seed: int, size: int) -> tuple[nn.Module, torch.Tensor, str]:
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    c = rng.choice([4, 6, 8])
    recipe = [f"stem conv3x3->{c} {'+relu' if rng.random() < 0.8 else ''}"]
    stem = ConvUnit(3, c, "relu" if "relu" in recipe[0] else "none", rng.random() < 0.5)
    blocks, h = [], size
    for _ in range(rng.randint(2, 5)):
        kind = rng.choice(["conv", "pool", "residual", "residual-ln", "se", "cat", "difference",
                           "stack-sum", "resample", "norm"])
        act = rng.choice(list(ACTIVATIONS))
        if kind == "pool" and h >= 4:
            pool = rng.choice([nn.AvgPool2d(2), nn.MaxPool2d(2), nn.AvgPool2d(3, 1, 1)])
            blocks.append(pool)
            h = h // 2 if pool.stride == 2 else h
            recipe.append(type(pool).__name__ + f"({pool.kernel_size}, {pool.stride})")
        elif kind == "conv":
            c_out = rng.choice([4, 6, 8])
            blocks.append(ConvUnit(c, c_out, act, rng.random() < 0.5))
            recipe.append(f"conv->{c_out} {act}")
            c = c_out
        elif kind == "residual":
            body = nn.Sequential(ConvUnit(c, c, act, True), ConvUnit(c, c, "none", True))
            relu_after = rng.random() < 0.5
            blocks.append(Residual(body, relu_after))
            recipe.append(f"residual(conv-bn-{act}-conv-bn){'+relu' if relu_after else ''}")
        elif kind == "residual-ln":
            body = nn.Sequential(ChannelsLastNorm(c), nn.Conv2d(c, c, 1), nn.GELU())
            blocks.append(Residual(body, False))
            recipe.append("residual(layernorm-conv1x1-gelu)")
        elif kind == "difference":
            blocks.append(Difference(ConvUnit(c, c, act, rng.random() < 0.5, kernel=1)))
            recipe.append(f"difference(x - conv1x1 {act})")
        elif kind == "stack-sum":
            blocks.append(StackSum(ConvUnit(c, c, act, rng.random() < 0.5)))
            recipe.append(f"stack-sum(x, conv {act})")
        elif kind == "resample":
            mode = rng.choice(["nearest", "bilinear"])
            blocks.append(Resample(mode))
            recipe.append(f"resample({mode} x2, avgpool 2)")
        elif kind == "norm":
            blocks.append(WrittenOutNorm(c))
            recipe.append("written-out rms norm")
        elif kind == "se":
            blocks.append(SqueezeExcite(c))
            recipe.append("squeeze-excite")
        elif kind == "cat":
            c_add = rng.choice([2, 4])
            blocks.append(Concat(ConvUnit(c, c_add, act, rng.random() < 0.5, kernel=1)))
            recipe.append(f"cat(x, conv1x1->{c_add} {act})")
            c += c_add
    hidden = rng.random() < 0.5
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         *( [nn.Linear(c, 8), nn.ReLU(), nn.Linear(8, 5)] if hidden
                            else [nn.Linear(c, 5)]))
    recipe.append("head avgpool-linear" + ("-relu-linear" if hidden else ""))
    model = Network(stem, blocks, head)
    _randomise(model, g)
    x = torch.randn(2, 3, size, size, generator=g, dtype=torch.float64)
    return model.double().eval(), x, " -> ".join(recipe)
