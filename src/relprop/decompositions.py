"""Calls that torch.fx keeps whole, written out in relprop's vocabulary so that the trace enters
them: attention above all (rap-spec §8.5), so that a rule can see its softmax and its two
products.

``nn.MultiheadAttention`` is a module fx does not enter, ``F.scaled_dot_product_attention`` one
fused call, and torchvision's ``shifted_window_attention`` a function it marks to keep whole.
Each is traced as the function below instead: the same arithmetic in plain ops (linear, reshape,
matmul, softmax), read from the module's own parameters. Nothing of the user's model or of torch
is patched; the decomposition only exists in relprop's graph.

A decomposition is ``fn(module, *args, **kwargs)`` for a module class and ``fn(*args, **kwargs)``
for a function; it is called with the traced values and must compute what the original computes
(up to rounding), without data-dependent Python control flow: decisions that depend on a size are
made by a helper recorded as one node (:func:`record`), which runs at every forward pass.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.fx as fx
import torch.nn as nn
import torch.nn.functional as F

from .errors import UnsupportedOperation

_MODULES: dict[type, Callable] = {}
_FUNCTIONS: dict[Callable, Callable] = {}
_VERSION = [0]


def register_decomposition(target, fn: Callable) -> None:
    """Trace calls of ``target`` (a module class or a function) as ``fn`` instead."""
    if isinstance(target, type) and issubclass(target, nn.Module):
        _MODULES[target] = fn
    elif callable(target):
        _FUNCTIONS[target] = fn
    else:
        raise TypeError(f"register_decomposition expects a module class or a function, got "
                        f"{target!r}")
    _VERSION[0] += 1


def version() -> int:
    """Changes with every registration, so that graphs traced before one are traced again."""
    return _VERSION[0]


def of_module(m: nn.Module) -> Callable | None:
    return _MODULES.get(type(m))


def of_function(target) -> Callable | None:
    try:
        return _FUNCTIONS.get(target)
    except TypeError:  # an unhashable target
        return None


def record(anchor: fx.Proxy, fn: Callable, *args):
    """``fn(*args)`` as one node of the trace (a size decision, a mask), run at every forward
    pass; ``anchor`` is any traced value, for its tracer. Parameters among ``args`` are read
    from the model when the node runs."""
    return anchor.tracer.create_proxy("call_function", fn, args, {})


def _refuse(what: str, why: str):
    raise UnsupportedOperation(what, "(decomposition)", None, reason=why)


# --------------------------------------------------------------------------- attention

def attend(q, k, v, scale, bias=None):
    """``softmax(q·kᵀ·scale + bias)·v``: the one form every attention below is written in."""
    scores = (q @ k.transpose(-2, -1)) * scale
    if bias is not None:
        scores = scores + bias
    weights = scores.softmax(dim=-1)
    return weights @ v, weights


def multihead_attention(m: nn.MultiheadAttention, query, key, value, key_padding_mask=None,
                        need_weights=True, attn_mask=None, average_attn_weights=True,
                        is_causal=False):
    """``nn.MultiheadAttention`` as self-attention with packed input projection (torchvision's
    ViT): one linear for q, k and v, the heads, and the output projection."""
    if not (query is key and key is value):
        _refuse("module MultiheadAttention", "cross-attention (query, key and value differ); "
                "relprop explains self-attention")
    if key_padding_mask is not None or attn_mask is not None or is_causal:
        _refuse("module MultiheadAttention", "an attention or padding mask")
    if not m._qkv_same_embed_dim or m.bias_k is not None or m.add_zero_attn:
        _refuse("module MultiheadAttention", "separate q/k/v projections, bias_k or "
                "add_zero_attn")
    x = query if m.batch_first else query.transpose(0, 1)
    qkv = F.linear(x, m.in_proj_weight, m.in_proj_bias)
    q, k, v = qkv.unflatten(-1, (3, m.num_heads, m.head_dim)).permute(2, 0, 3, 1, 4).unbind(0)
    out, weights = attend(q, k, v, m.head_dim ** -0.5)
    out = F.linear(out.transpose(1, 2).flatten(2), m.out_proj.weight, m.out_proj.bias)
    if not m.batch_first:
        out = out.transpose(0, 1)
    if not need_weights:
        return out, None
    return out, weights.mean(dim=1) if average_attn_weights else weights


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p=0.0,
                                 is_causal=False, scale=None, enable_gqa=False):
    """``F.scaled_dot_product_attention`` in eval (no dropout), with an additive mask."""
    if is_causal or enable_gqa or not isinstance(dropout_p, (int, float)) or dropout_p != 0:
        _refuse("function torch.nn.functional.scaled_dot_product_attention",
                "is_causal, enable_gqa or dropout_p other than 0")
    if attn_mask is not None:
        attn_mask = record(query, additive_mask, attn_mask, query.dtype)
    if scale is None:
        scale = query.size(-1) ** -0.5
    return attend(query, key, value, scale, attn_mask)[0]


def additive_mask(mask, dtype):
    """A boolean mask (True: attend) as the additive mask it means; a float mask as it is.
    A query that may attend to nothing (a padding position of a left-padded batch under a
    causal mask) attends to everything instead, as the model's own kernels give it finite
    values there; no real position reads them, and a row of -inf would be NaN, which the
    product with the values then spreads to every position."""
    if mask.dtype == torch.bool:
        mask = mask | ~mask.any(-1, keepdim=True)
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(
            ~mask, float("-inf"))
    return mask


register_decomposition(nn.MultiheadAttention, multihead_attention)
register_decomposition(F.scaled_dot_product_attention, scaled_dot_product_attention)


# --------------------------------------------------------------------------- Swin

def _window_shift(window: list, shift: list, height, width) -> list:
    """torchvision's rule: no shift along a side that one window covers."""
    return [0 if window[0] >= height else shift[0], 0 if window[1] >= width else shift[1]]


def _window_mask(window: list, shift: list, height, width, dtype, device):
    """Swin's attention mask (num_windows, T, T): 0 within a region, -100 across regions of the
    shifted map; all 0 without a shift, which leaves the scores as they are."""
    mask = torch.zeros((height, width), dtype=dtype, device=device)
    if sum(shift) > 0:
        h_slices = ((0, -window[0]), (-window[0], -shift[0]), (-shift[0], None))
        w_slices = ((0, -window[1]), (-window[1], -shift[1]), (-shift[1], None))
        count = 0
        for h in h_slices:
            for w in w_slices:
                mask[h[0]:h[1], w[0]:w[1]] = count
                count += 1
    mask = mask.view(height // window[0], window[0], width // window[1], window[1])
    mask = mask.permute(0, 2, 1, 3).reshape(-1, window[0] * window[1])
    mask = mask.unsqueeze(1) - mask.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0)


def _without_key_bias(bias):
    """Swin v2 adds no bias to the keys."""
    length = bias.numel() // 3
    return torch.cat([bias[:length], torch.zeros_like(bias[length:2 * length]),
                      bias[2 * length:]])


def _cosine_scale(logit_scale):
    return torch.clamp(logit_scale, max=math.log(100.0)).exp()


def shifted_window_attention(input, qkv_weight, proj_weight, relative_position_bias,
                             window_size, num_heads, shift_size, attention_dropout=0.0,
                             dropout=0.0, qkv_bias=None, proj_bias=None, logit_scale=None,
                             training=True):
    """torchvision's Swin v1/v2 window attention (eval), step for step; the shift and the mask
    are recorded nodes, so one graph serves every input size."""
    B, H, W, C = input.shape
    pad_r = (window_size[1] - W % window_size[1]) % window_size[1]
    pad_b = (window_size[0] - H % window_size[0]) % window_size[0]
    x = F.pad(input, (0, 0, 0, pad_r, 0, pad_b))
    pad_h, pad_w = x.shape[1], x.shape[2]
    shift = record(input, _window_shift, list(window_size), list(shift_size), pad_h, pad_w)
    x = torch.roll(x, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    num_windows = (pad_h // window_size[0]) * (pad_w // window_size[1])
    tokens = window_size[0] * window_size[1]
    x = x.view(B, pad_h // window_size[0], window_size[0], pad_w // window_size[1],
               window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B * num_windows, tokens, C)
    if logit_scale is not None and qkv_bias is not None:
        qkv_bias = record(input, _without_key_bias, qkv_bias)
    qkv = F.linear(x, qkv_weight, qkv_bias)
    q, k, v = qkv.reshape(x.size(0), tokens, 3, num_heads, C // num_heads
                          ).permute(2, 0, 3, 1, 4).unbind(0)
    if logit_scale is not None:  # cosine attention
        scores = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        scores = scores * record(input, _cosine_scale, logit_scale)
    else:
        scores = (q * (C // num_heads) ** -0.5) @ k.transpose(-2, -1)
    scores = scores + relative_position_bias
    mask = record(input, _window_mask, list(window_size), shift, pad_h, pad_w, x.dtype, x.device)
    scores = (scores.view(-1, num_windows, num_heads, tokens, tokens)
              + mask.unsqueeze(1).unsqueeze(0)).view(-1, num_heads, tokens, tokens)
    out = scores.softmax(dim=-1) @ v
    x = F.linear(out.transpose(1, 2).reshape(x.size(0), tokens, C), proj_weight, proj_bias)
    x = x.view(B, pad_h // window_size[0], pad_w // window_size[1], window_size[0],
               window_size[1], C)
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(B, pad_h, pad_w, C)
    x = torch.roll(x, shifts=(shift[0], shift[1]), dims=(1, 2))
    return x[:, :H, :W, :].contiguous()


# --------------------------------------------------------------------------- fused arithmetic
def addcmul(input, tensor1, tensor2, *, value=1):
    """``input + value · tensor1 · tensor2`` (ConvNeXt-V2's and CSATv2's response norm, fused
    for speed): the sum and the products the rules know."""
    return input + tensor1 * tensor2 * value


def addcdiv(input, tensor1, tensor2, *, value=1):
    """``input + value · tensor1 / tensor2``."""
    return input + tensor1 / tensor2 * value


register_decomposition(torch.addcmul, addcmul)
register_decomposition(torch.addcdiv, addcdiv)


try:
    from torchvision.models import swin_transformer as _swin
    register_decomposition(_swin.shifted_window_attention, shifted_window_attention)
except ImportError:  # torchvision is a dependency; this only keeps the module importable
    pass
