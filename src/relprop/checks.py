"""What is wrong with a batch for a model, or with a model's output, said in words before
anything is explained: the checks every explainer runs."""
from __future__ import annotations

import torch
import torch.nn as nn


def check_batch(model: nn.Module, x, rank: int | None = None,
                channels: int | None = None) -> None:
    """Raise a ValueError that says what is wrong with ``x`` as a batch for ``model``: its type,
    dtype, rank (``rank`` where known) and size, channel count (``channels`` where known), finite
    values and device."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ValueError(f"inputs must be floating point, got {x.dtype}; convert with "
                         "inputs.float() and normalise as the model expects")
    if rank and x.dim() != rank:
        hint = " (add the batch dimension: inputs.unsqueeze(0))" if x.dim() == rank - 1 else ""
        shape = {3: "(N, C, L)", 4: "(N, C, H, W)", 5: "(N, C, D, H, W)"}.get(rank, f"{rank}-D")
        raise ValueError(f"inputs must be a batch of shape {shape}; got shape "
                         f"{tuple(x.shape)}{hint}")
    if x.dim() < 2:
        raise ValueError(f"inputs must be a batch (N, ...) of at least two dimensions; got "
                         f"shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError("inputs is an empty batch (N = 0); pass at least one image")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"the model expects {channels} input channels, but inputs have "
                         f"{x.shape[1]} (shape {tuple(x.shape)})")
    bad = ~torch.isfinite(x)
    if bad.any():
        raise ValueError(f"inputs contain {int(bad.sum())} NaN or Inf values; relevance "
                         "needs finite inputs")
    param = next(model.parameters(), None)
    if param is not None and (param.device != x.device or param.dtype != x.dtype):
        raise ValueError(f"inputs are {x.dtype} on {x.device} but the model is {param.dtype} "
                         f"on {param.device}; move one to the other, e.g. "
                         f"model.to(inputs.device, inputs.dtype)")


def check_finite(logits: torch.Tensor) -> None:
    bad = ~torch.isfinite(logits.flatten(1)).all(1)
    if bad.any():
        images = bad.nonzero().flatten().tolist()
        raise ValueError(
            f"the model's output is not finite (NaN or Inf) for image(s) {images[:10]} of the "
            "batch: no score to explain. Check the model's weights and buffers for NaN/Inf "
            "(e.g. torch.isfinite(p).all() for p in model.parameters()) and the inputs' scale.")
