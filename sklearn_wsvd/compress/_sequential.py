"""Sequential calibration: each block is fitted to the inputs that the compressed blocks give it.

Compressing layer by layer from statistics of the original model ignores that
every layer downstream of a compressed one sees perturbed inputs ``X~`` instead
of ``X``. Fitting block by block, as GPTQ and SVD-LLM's update do, lets later
layers correct earlier errors: a layer's replacement minimises
``|W X - W' X~|`` (through the metrics of the method), whose solution is the
method applied to the least-squares target ``W* = W M C~^{-1}`` in the metric
``C~`` of the perturbed inputs (``M = sum x x~^T``), because
``|W X - W' X~|^2 = |W X - W* X~|^2 + |(W* - W') C~^{1/2}|^2``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from .calibration import InputStatistics, LayerStatistics, _forward, _rows, _token_mask
from .layers import linear_shape


class _StageDone(Exception):
    """Raised by a hook once every layer of the stage has seen its input: the rest is not needed."""


def stages(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Target layers grouped by block (an element of the outermost ``nn.ModuleList``), in order.

    Layers outside any ``nn.ModuleList`` (a pooler, say) form a stage each. Stages
    come in the order of the model's modules, which for transformer stacks is the
    order of the forward pass.
    """
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        key = name
        for i in range(1, len(parts)):
            if isinstance(model.get_submodule(".".join(parts[:i])), nn.ModuleList):
                key = ".".join(parts[: i + 1])
                break
        groups.setdefault(key, []).append(name)
    return list(groups.values())


class PairedInputs:
    """Sums over the calibration tokens of ``x x^T``, ``x x~^T`` and ``x~ x~^T`` for one layer."""

    def __init__(self, n: int, device):
        def zeros():
            return torch.zeros((n, n), dtype=torch.float64, device=device)

        self.original, self.cross = zeros(), zeros()
        self.perturbed = InputStatistics.empty(n, device)

    def add(self, x, x_tilde):
        x, x_tilde = x.float(), x_tilde.float()
        self.original += (x.T @ x).double()
        self.cross += (x.T @ x_tilde).double()
        self.perturbed.update(x_tilde)


def paired_inputs(model, stage, swap, batches, loss_fn=None) -> dict[str, PairedInputs]:
    """Run every batch through the original and the compressed model up to ``stage``.

    ``swap(original: bool)`` puts the original or the compressed version of the
    layers done so far into the model. Each pass stops as soon as every layer of
    the stage has read its input.
    """
    modules = dict(model.named_modules())
    sums: dict[str, PairedInputs] = {}
    captured: dict[str, torch.Tensor] = {}
    done: set[str] = set()
    state = {"original": True, "mask": None}

    def observe(name):
        in_features = linear_shape(modules[name])[1]

        def hook(module, args):
            rows = _rows(args[0].detach(), in_features, state["mask"])
            if state["original"]:
                captured.setdefault(name, rows)
                fired = captured
            else:
                if name not in done and name in captured:
                    if name not in sums:
                        sums[name] = PairedInputs(in_features, rows.device)
                    sums[name].add(captured[name], rows)
                    done.add(name)
                fired = done
            if all(n in fired for n in stage):
                raise _StageDone

        return hook

    handles = [modules[name].register_forward_pre_hook(observe(name)) for name in stage]
    try:
        with torch.no_grad():
            for batch in batches:
                captured.clear()
                done.clear()
                state["mask"] = _token_mask(batch)
                for original in (True, False):
                    state["original"] = original
                    swap(original)
                    try:
                        _run(model, batch, loss_fn)
                    except _StageDone:
                        pass
    finally:
        for handle in handles:
            handle.remove()
        swap(False)
    missing = [name for name in stage if name not in sums]
    if missing:
        raise ValueError(f"the calibration batches never ran the layers {missing}.")
    return sums


def _run(model, batch, loss_fn):
    """The forward pass of a calibration batch, without its labels: no loss is needed."""
    if loss_fn is not None:
        return model(batch[0])
    if isinstance(batch, Mapping):
        return model(**{k: v for k, v in batch.items() if k != "labels"})
    return _forward(model, batch, None)


def corrected(weight, paired: PairedInputs, damping: float):
    """The least-squares target ``W*`` for perturbed inputs, and its statistics.

    ``W* = (W M + lam W)(C~ + lam I)^{-1}``: the ridge pulls towards ``W`` itself
    in directions the perturbed inputs barely reach, so ``W* = W`` whenever
    ``X~ = X``. ``lam`` is ``damping`` times the mean eigenvalue of ``C~``.
    """
    W = weight.detach().to(torch.float64)
    C_tilde = paired.perturbed.gram
    n = C_tilde.shape[0]
    lam = damping * float(C_tilde.diagonal().mean()) + torch.finfo(torch.float64).tiny
    system = C_tilde + lam * torch.eye(n, dtype=C_tilde.dtype, device=C_tilde.device)
    rhs = W @ paired.cross + lam * W
    target = torch.linalg.solve(system, rhs.T).T  # system is symmetric
    return target


def paired_errors(W, W_hat, paired: PairedInputs, G=None):
    """Output error ``|W X - W' X~| / |W X|`` and, with ``G``, the K-FAC loss estimate."""
    W, W_hat = W.to(torch.float64), W_hat.to(torch.float64)
    C, M, C_tilde = paired.original, paired.cross, paired.perturbed.gram
    n_tokens = max(paired.perturbed.n_tokens, 1)
    if G is None:
        G = torch.eye(W.shape[0], dtype=W.dtype, device=W.device)
    energy = ((G @ W @ C) * W).sum()
    residual = energy - 2 * ((G @ W @ M) * W_hat).sum() + ((G @ W_hat @ C_tilde) * W_hat).sum()
    return float(residual.clamp_min(0)), float(energy), n_tokens


def layer_statistics(stats: LayerStatistics | None, paired: PairedInputs, shape):
    """The method's statistics with the inputs replaced by the perturbed ones."""
    if stats is None:
        return LayerStatistics(tuple(shape), paired.perturbed)
    return LayerStatistics(
        stats.shape,
        paired.perturbed,
        stats.fisher_sum,
        stats.output_gradient_gram,
        stats.n_losses,
    )
