"""Choosing layers by name, as peft does: a regex, or exact names and dotted suffixes."""

from __future__ import annotations

import re

from torch import nn

from .layers import LowRankLinear, is_factorisable


def _matches(name: str, spec) -> bool:
    if isinstance(spec, str):
        return re.fullmatch(spec, name) is not None
    return any(name == s or name.endswith("." + s) for s in spec)


def find_targets(
    model: nn.Module,
    target_modules=None,
    exclude_modules=None,
    *,
    include_output_head: bool = False,
    filter_fn=None,
) -> list[str]:
    """Names of the factorisable layers (``nn.Linear``, GPT-2 ``Conv1D``) to compress.

    ``target_modules`` and ``exclude_modules`` are each None, a regex matched
    against the whole name, or a list of exact names or dotted suffixes. Exclusions
    win; the output head (``get_output_embeddings()``: a language model's
    vocabulary projection; a classifier's head is a layer like the others) is
    skipped unless ``include_output_head``; ``filter_fn(module, name)`` must
    return True to keep a layer. The two factors of a layer compressed already
    (:class:`LowRankLinear`) are not targets, nor is the output projection of an
    ``nn.MultiheadAttention`` (its forward reads the weight and bias directly, as
    SigLIP's pooling head and torch's ``nn.Transformer*Layer`` use it). An empty
    result is an error naming what was searched for.
    """
    head = None
    if not include_output_head and hasattr(model, "get_output_embeddings"):
        head = model.get_output_embeddings()
    low_rank = [n for n, m in model.named_modules() if isinstance(m, LowRankLinear)]
    attention = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    available = [
        (name, module)
        for name, module in model.named_modules()
        if is_factorisable(module)
        and id(module) not in attention
        and not any(name.startswith(f"{p}.") for p in low_rank)
    ]
    names = []
    for name, module in available:
        if module is head:
            continue
        if target_modules is not None and not _matches(name, target_modules):
            continue
        if exclude_modules is not None and _matches(name, exclude_modules):
            continue
        if filter_fn is not None and not filter_fn(module, name):
            continue
        names.append(name)
    if not names:
        shown = ", ".join(n for n, _ in available[:8]) + (" ..." if len(available) > 8 else "")
        raise ValueError(
            f"No linear layer matches target_modules={target_modules!r} "
            f"(exclude_modules={exclude_modules!r}); the model's linear layers are: "
            f"{shown or 'none'}."
        )
    return names
