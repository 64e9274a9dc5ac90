"""Measuring what compression cost: perplexity of language models, accuracy of classifiers.

Every function runs the model in eval mode without gradients (its mode is
restored afterwards), moves each batch to the device of the model's first
parameter, and weighs every token or sample once, whatever the size of its
batch: the mean of per-batch losses would count the samples of a short last
batch more.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from tqdm.auto import tqdm

from .calibration import input_device, to_device, token_batch

IGNORE_INDEX = -100  # the label that Hugging Face losses skip


def perplexity(model: nn.Module, batches: Iterable, *, progress: bool = False) -> float:
    """Perplexity of a causal language model: ``exp`` of its mean next-token loss.

    The loss is the cross-entropy of each token given the tokens before it,
    averaged over all predicted tokens of all batches (token-weighted), which is
    what a Hugging Face causal LM's ``loss`` is within one batch.

    Parameters
    ----------
    model : nn.Module
        A causal language model whose output has ``.logits`` of shape
        (batch, length, vocabulary), as transformers' ``*ForCausalLM`` models.
    batches : iterable of dict or tensor
        Keyword inputs of the model (``input_ids``, ``attention_mask``...), or
        tensors of token ids (``input_ids``). ``labels``, if present, are the
        tokens to predict (``-100`` skips a position, as for a prompt); else
        ``input_ids``. Positions where ``attention_mask`` is 0 (padding) are
        skipped either way.
    progress : bool, default=False
        Show a progress bar over the batches.

    Returns
    -------
    perplexity : float

    Examples
    --------
    A randomly initialised model predicts about uniformly over its 50 tokens:

    >>> import torch, transformers
    >>> from sklearn_wsvd.compress.evaluation import perplexity
    >>> config = transformers.GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2)
    >>> _ = torch.manual_seed(0)
    >>> model = transformers.GPT2LMHeadModel(config)
    >>> ids = torch.randint(0, 50, (4, 12))
    >>> mask = torch.ones_like(ids)
    >>> mask[0, 6:] = 0  # the first text is shorter: its padding is not scored
    >>> ppl = perplexity(model, [{"input_ids": ids, "attention_mask": mask}])
    >>> 40 < ppl < 60
    True
    """
    total, count = 0.0, 0
    with _evaluating(model) as device:
        for batch in tqdm(batches, desc="perplexity", disable=not progress, leave=False):
            batch = to_device(_as_dict(batch, "perplexity"), device)
            labels = batch.pop("labels", None)
            if labels is None:
                labels = batch["input_ids"]
            mask = batch.get("attention_mask")
            if mask is not None:
                labels = labels.masked_fill(mask == 0, IGNORE_INDEX)
            logits = _logits(model(**batch))
            target = labels[:, 1:]
            total += float(
                nn.functional.cross_entropy(
                    logits[:, :-1].flatten(0, 1).float(),
                    target.flatten(),
                    ignore_index=IGNORE_INDEX,
                    reduction="sum",
                )
            )
            count += int((target != IGNORE_INDEX).sum())
    if count == 0:
        raise ValueError("the batches hold no token to predict (each needs two or more tokens).")
    mean = total / count
    return math.exp(mean) if mean < 700 else math.inf  # exp overflows a float past ~709


def accuracy(model: nn.Module, batches: Iterable, *, progress: bool = False) -> tuple[float, float]:
    """Accuracy and mean loss of a classifier over labelled batches.

    Parameters
    ----------
    model : nn.Module
        A classifier whose output is logits, or has ``.logits`` (transformers'
        ``*ForSequenceClassification``): shape (n_samples, n_classes) for a
        softmax (cross-entropy loss), or (n_samples,) or (n_samples, 1) for a
        binary classifier with a sigmoid (positive when the logit is above 0).
    batches : iterable
        Dicts of keyword inputs with ``labels`` (Hugging Face style), or
        ``(inputs, targets)`` pairs, the model called as ``model(inputs)``.
    progress : bool, default=False
        Show a progress bar over the batches.

    Returns
    -------
    accuracy : float
        Fraction of samples whose predicted class is their label.
    loss : float
        Mean cross-entropy over the samples.

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress.evaluation import accuracy
    >>> model = torch.nn.Linear(2, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.eye(2))  # predicts the larger coordinate
    >>> X = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 1.0], [1.0, 2.0]])
    >>> y = torch.tensor([0, 1, 1, 1])
    >>> acc, loss = accuracy(model, [(X[:3], y[:3]), (X[3:], y[3:])])
    >>> acc, round(loss, 3)
    (0.75, 0.72)
    """
    correct, total_loss, n = 0, 0.0, 0
    with _evaluating(model) as device:
        for batch in tqdm(batches, desc="accuracy", disable=not progress, leave=False):
            if isinstance(batch, Mapping):
                batch = to_device(dict(batch), device)
                if "labels" not in batch:
                    raise ValueError("accuracy needs labelled batches: dicts with 'labels'.")
                labels = batch.pop("labels")
                logits = _logits(model(**batch))
            elif isinstance(batch, (tuple, list)) and len(batch) == 2:
                inputs, labels = to_device(batch[0], device), batch[1].to(device)
                logits = _logits(model(inputs))
            else:
                raise ValueError(
                    "accuracy takes dicts with 'labels' or (inputs, targets) pairs, got "
                    f"{type(batch).__name__}."
                )
            logits = logits.float()
            if logits.ndim == 2 and logits.shape[1] == 1:
                logits = logits[:, 0]
            if logits.ndim == 1:
                predicted = (logits > 0).long()
                loss = nn.functional.binary_cross_entropy_with_logits(
                    logits, labels.float(), reduction="sum"
                )
            else:
                predicted = logits.argmax(-1)
                loss = nn.functional.cross_entropy(logits, labels, reduction="sum")
            correct += int((predicted == labels).sum())
            total_loss += float(loss)
            n += len(labels)
    if n == 0:
        raise ValueError("batches is empty: nothing was evaluated.")
    return correct / n, total_loss / n


def embeddings(model: nn.Module, batches: Iterable, *, progress: bool = False) -> torch.Tensor:
    """Mean-pooled last hidden states of an encoder, one row per text (padding left out).

    Comparing them before and after compression (their cosine similarity) shows
    how far a sentence encoder moved, where no task defines a loss.

    Parameters
    ----------
    model : nn.Module
        An encoder whose output has ``.last_hidden_state`` (transformers'
        ``AutoModel`` classes) or is that tensor, (batch, length, hidden); of a
        transformers model with a head, the last of its ``hidden_states``.
    batches : iterable of dict
        Keyword inputs with ``input_ids`` and, for padded batches,
        ``attention_mask``.
    progress : bool, default=False
        Show a progress bar over the batches.

    Returns
    -------
    embeddings : torch.Tensor of shape (n_texts, hidden), float32, on the CPU

    Examples
    --------
    >>> import torch, transformers
    >>> from sklearn_wsvd.compress.evaluation import embeddings
    >>> config = transformers.BertConfig(
    ...     vocab_size=30, hidden_size=16, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=32,
    ... )
    >>> model = transformers.BertModel(config)
    >>> ids = torch.randint(0, 30, (3, 7))
    >>> mask = torch.ones_like(ids)
    >>> mask[2, 4:] = 0
    >>> embeddings(model, [{"input_ids": ids, "attention_mask": mask}]).shape
    torch.Size([3, 16])
    """
    rows = []
    ask = {}  # a model with a head (token classification, say): its body's hidden states
    with _evaluating(model) as device:
        for batch in tqdm(batches, desc="embed", disable=not progress, leave=False):
            batch = to_device(_as_dict(batch, "embeddings"), device)
            batch.pop("labels", None)
            out = model(**batch, **ask)
            hidden = (
                out if isinstance(out, torch.Tensor) else getattr(out, "last_hidden_state", None)
            )
            if hidden is None:  # asked for from the first batch on: one extra pass in all
                ask = {"output_hidden_states": True}
                if getattr(out, "hidden_states", None) is None:
                    out = model(**batch, **ask)
                hidden = out.hidden_states[-1]
            mask = batch.get("attention_mask")
            if mask is None:
                mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = mask.unsqueeze(-1).to(torch.float32)
            pooled = (hidden.float() * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            rows.append(pooled.cpu())
    if not rows:
        raise ValueError("batches is empty: nothing was evaluated.")
    return torch.cat(rows)


@contextlib.contextmanager
def _evaluating(model):
    """Eval mode and no gradients for the duration; yields the device of the model's weights."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield input_device(model)
    finally:
        model.train(was_training)


def _as_dict(batch, name):
    batch = token_batch(batch)  # token ids alone, as calibration takes them
    if not isinstance(batch, Mapping):
        raise ValueError(
            f"{name} takes dicts of keyword inputs (input_ids, ...) or tensors of token ids, "
            f"got {type(batch).__name__}."
        )
    return dict(batch)


def _logits(output):
    return getattr(output, "logits", output)
