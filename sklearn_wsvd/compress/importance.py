"""Diagonal empirical Fisher information of a model's linear weights (one use of calibration)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from .calibration import collect_statistics


def fisher_importance(
    model: nn.Module,
    batches: Iterable,
    loss_fn: Callable | None = None,
    target_modules=None,
    exclude_modules=None,
    per_sample: bool = False,
    progress: bool = False,
) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the loss for every targeted linear weight.

    The diagonal of the empirical Fisher information: for each weight, the squared
    gradient of the task loss, averaged over the batches (or over the samples,
    with ``per_sample=True``: the faithful estimate, one backward pass a sample;
    per-batch squares are cheaper and biased towards zero). A thin wrapper of
    :func:`collect_statistics` with ``collect=("fisher",)``.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (batches are dicts with ``labels``; the output's
        ``.loss`` is used) or any module with ``loss_fn``.
    batches : iterable
        Dicts of tensors, or ``(inputs, targets)`` pairs when ``loss_fn`` is given.
    loss_fn : callable, optional
        ``loss_fn(model(inputs), targets)``.
    target_modules, exclude_modules : str, list of str or None
        Layers to score, as in :func:`compress_model`.
    per_sample : bool, default=False
        Square per-sample gradients instead of per-batch ones.
    progress : bool, default=False
        Show a progress bar over the batches.

    Returns
    -------
    importance : dict of str to torch.Tensor
        For each layer name, a float32 CPU tensor shaped like the layer's weight in
        ``nn.Linear`` orientation (out_features, in_features).

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress import fisher_importance
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    >>> batches = [(torch.randn(8, 4), torch.randint(0, 2, (8,)))]
    >>> F = fisher_importance(model, batches, loss_fn=torch.nn.CrossEntropyLoss())
    >>> {name: tuple(f.shape) for name, f in F.items()}
    {'0': (3, 4), '2': (2, 3)}
    """
    stats = collect_statistics(
        model,
        batches,
        collect=("fisher",),
        loss_fn=loss_fn,
        target_modules=target_modules,
        exclude_modules=exclude_modules,
        per_sample=per_sample,
        progress=progress,
    )
    return {name: s.fisher.float().cpu() for name, s in stats.items()}
