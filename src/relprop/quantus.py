"""relprop as Quantus's explanation function: ``quantus.Faithfulness...(... )(model, x, y,
explain_func=relprop.quantus.explain_func, explain_func_kwargs={"method": "rap"})``.

Quantus hands over numpy batches and expects numpy back; this is that function for every relprop
method. It needs no Quantus import: Quantus calls it.
"""
from __future__ import annotations

import numpy as np
import torch

from .api import DEFAULT_METHOD, explainer


def explain_func(model, inputs, targets, method: str = DEFAULT_METHOD, device=None,
                 reduce_axes=(1,), keepdims: bool = True, **options) -> np.ndarray:
    """The relevance of ``inputs`` (numpy or tensor, channels first) for ``targets`` (one class
    per example) under ``method``, as a float32 numpy array.

    As Quantus's own Captum wrapper: the channels are summed (``reduce_axes=(1,)``, kept as a
    size-1 axis), so most of its metrics take the result as it is; ``reduce_axes=()`` gives the
    full relevance. ``device`` (which Quantus passes along): only for a model without parameters; otherwise
    relprop runs where the model is, and never moves it.
    ``options``: the method's (e.g. ``epsilon=`` for ``rap-stable``). ``softmax`` and
    ``channel_first``, which Quantus may pass along, are accepted: relprop always explains the
    model's logits, channels first.
    """
    options.pop("softmax", None)
    options.pop("channel_first", None)
    parameter = next(model.parameters(), None)  # the model stays where it is: the inputs go there
    device = parameter.device if parameter is not None else torch.device(device or "cpu")
    x = torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs,
                        dtype=torch.float32, device=device)
    target = torch.as_tensor(np.asarray(targets).reshape(-1) if not torch.is_tensor(targets)
                             else targets.reshape(-1), dtype=torch.long, device=device)
    relevance = explainer(model, method).attribute(x, target, **options)
    if reduce_axes and relevance.dim() >= 3:  # as Quantus: features of tabular data stay
        if 0 in reduce_axes:
            raise ValueError("reduce_axes must not include the batch axis 0")
        relevance = relevance.sum(dim=tuple(reduce_axes), keepdim=keepdims)
    return relevance.detach().float().cpu().numpy()


__all__ = ["explain_func"]
