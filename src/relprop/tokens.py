"""Where a transformer's tokens lie on the image: a sequence of patch tokens after up to a few
prefix tokens (ViT's class token, DeiT's distillation token, register tokens), or a channels-last
grid (Swin). Rollout and ``layer=`` on a transformer show token relevance as a patch map."""
from __future__ import annotations

import math

import torch


def patch_grid(tokens: int, height: int, width: int) -> tuple[int, int, int] | None:
    """(prefix tokens, rows, cols): rows·cols patches in the image's aspect after the prefix
    tokens (up to 8), or None."""
    for prefix in range(0, 9):
        patches = tokens - prefix
        if patches <= 0:
            break
        rows = round(math.sqrt(patches * height / width))
        if rows and patches % rows == 0:
            cols = patches // rows
            if abs(rows / cols - height / width) < 1e-6:
                return prefix, rows, cols
    return None


def token_map(relevance: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """A layer's token relevance as a patch map (N, rows, cols), summed over the channels: a
    sequence (N, T, C) loses its prefix tokens; a channels-last grid (N, rows, cols, C) in the
    image's aspect is summed over C. Anything else is returned as it is."""
    if relevance.dim() == 3:
        grid = patch_grid(relevance.shape[1], height, width)
        if grid is not None:
            prefix, rows, cols = grid
            return relevance[:, prefix:].sum(-1).reshape(-1, rows, cols)
    if relevance.dim() == 4 and relevance.shape[1] * width == relevance.shape[2] * height \
            and relevance.shape[3] != relevance.shape[1]:
        return relevance.sum(-1)
    return relevance
