"""Diagonal empirical Fisher information of a model's linear weights."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from ._targets import find_targets
from .layers import is_conv1d


def _loss(model, batch, loss_fn):
    if loss_fn is not None:
        inputs, targets = batch
        return loss_fn(model(inputs), targets)
    out = model(**batch) if isinstance(batch, Mapping) else model(*batch)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ValueError(
            "The model's output has no .loss: pass labels in the batch (Hugging Face "
            "models) or a loss_fn(output, target) with (input, target) batches."
        )
    return loss


def _split(batch):
    """The samples of a batch, one at a time, each still a batch of one."""
    if isinstance(batch, Mapping):
        n = len(next(iter(batch.values())))
        return ({k: v[i : i + 1] for k, v in batch.items()} for i in range(n))
    n = len(batch[0])
    return (tuple(t[i : i + 1] for t in batch) for i in range(n))


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
    per-batch squares are cheaper and biased towards zero). Dropout is off during
    the passes; the model's training mode, ``requires_grad`` flags and existing
    gradients are restored afterwards.

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
    """
    names = find_targets(model, target_modules, exclude_modules)
    modules = dict(model.named_modules())
    weights = {name: modules[name].weight for name in names}
    was_training = model.training
    flags = {p: p.requires_grad for p in model.parameters()}
    saved_grads = {p: p.grad for p in model.parameters()}
    sums = {name: torch.zeros_like(w, dtype=torch.float32) for name, w in weights.items()}
    count = 0
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
            p.grad = None
        for w in weights.values():
            w.requires_grad_(True)
        for batch in tqdm(batches, desc="fisher", disable=not progress, leave=False):
            for sample in _split(batch) if per_sample else (batch,):
                loss = _loss(model, sample, loss_fn)
                grads = torch.autograd.grad(loss, list(weights.values()), allow_unused=True)
                for name, g in zip(weights, grads, strict=True):
                    if g is not None:  # None: the layer does not reach this loss
                        sums[name] += g.detach().float().square()
                count += 1
    finally:
        model.train(was_training)
        for p, flag in flags.items():
            p.requires_grad_(flag)
            p.grad = saved_grads[p]
    if count == 0:
        raise ValueError("batches is empty: no gradient was computed.")
    # Conv1D stores its weight (in, out): report every layer in nn.Linear's (out, in).
    return {
        name: (s.T.contiguous() if is_conv1d(modules[name]) else s).div(count).cpu()
        for name, s in sums.items()
    }
