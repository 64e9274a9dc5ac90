"""How many weights each layer keeps: uniform fractions, or a budget spread by a currency."""

from __future__ import annotations

import math
import warnings
from numbers import Integral, Real

import torch

from .._solvers.closed_form import rank_one_approximation
from .._validation import is_positive_int
from .._whitening import metric_root
from .calibration import KINDS, LayerStatistics, statistics_from_importance
from .methods import DEFAULT_DAMPING, OUTPUT_DAMPING, shrink

# The kinds of statistics that know the loss: with one of them a budget follows it.
LOSS_KINDS = ("output_gradients", "fisher")


def max_saving_rank(m: int, n: int, min_saving: float = 0.0) -> int:
    """Largest rank whose factors, ``k (m + n)`` weights, save ``min_saving`` of the dense ``m n``.

    With ``min_saving=0`` the largest rank with fewer weights than the dense layer.
    """
    return max(0, math.ceil((1.0 - min_saving) * m * n / (m + n)) - 1)


def rank_gains(weight, stats, damping, output_damping=OUTPUT_DAMPING):
    """Gains of each rank of a layer, in units comparable across layers.

    With input and output-gradient statistics, the K-FAC loss estimate (exact for
    the "kfac" method): ``0.5 s_i**2`` of ``G^{1/2} W C^{1/2}``. With a diagonal
    Fisher, ``0.5 s_i**2`` of the weight scaled by the Fisher's rank-one model
    (exact when it has rank one). Without statistics the relative Frobenius
    error. A layer the loss never reaches gains nothing from any rank.
    """
    X = weight.detach().to(torch.float64)
    nothing = torch.zeros(min(X.shape), dtype=X.dtype)
    if stats is not None and stats.has("inputs") and stats.has("output_gradients"):
        G = stats.output_gradient_moment.to(X.device)
        if not (G != 0).any():
            return nothing
        # Any square roots give these singular values: the fast Cholesky factors.
        C, _ = metric_root(
            stats.input_second_moment.to(X.device), damping, "C", symmetric=False, inverse=False
        )
        R, _ = metric_root(shrink(G, output_damping), damping, "G", symmetric=False, inverse=False)
        return 0.5 * torch.linalg.svdvals(R.T @ X @ C).square()
    if stats is not None and stats.has("fisher"):
        F = stats.fisher.to(X.device)
        if not (F > 0).any():
            return nothing
        a, b = rank_one_approximation(F)
        return 0.5 * torch.linalg.svdvals(a.sqrt()[:, None] * X * b.sqrt()).square()
    s2 = torch.linalg.svdvals(X).square()
    return s2 / s2.sum().clamp_min(torch.finfo(s2.dtype).tiny)


def allocate_ranks(
    weights,
    statistics=None,
    budget: int | None = None,
    *,
    min_saving: float = 0.0,
    metric_damping: float = DEFAULT_DAMPING,
    output_damping: float = OUTPUT_DAMPING,
) -> dict[str, int]:
    """Spread ``budget`` weights over the layers where they lower the predicted damage most.

    Each layer's damage as a function of its rank is read off one SVD (see the
    currencies below): rank ``k + 1`` removes the ``k + 1``-th gain at the cost of
    ``m + n`` weights. Taking the best gains per weight first is optimal for these
    separable, convex curves. Every layer keeps rank 1 or more and at most the
    largest rank that still saves ``min_saving`` of its weights.

    The currency follows the statistics: with inputs and output gradients the
    K-FAC loss estimate of the Kronecker closed form; with a diagonal Fisher (a
    dict of arrays, as :func:`fisher_importance` returns, or statistics) its
    rank-one model's loss estimate; with none the relative Frobenius error. With
    inputs only, nothing says how the loss weighs one layer's output error against
    another's, and spreading by relative output error measured worse than a
    uniform fraction: every layer then keeps the same fraction of its weights.

    Parameters
    ----------
    weights : dict of str to array-like of shape (m, n)
        Layer weights in ``nn.Linear`` orientation.
    statistics : dict of str to LayerStatistics or to arrays, optional
        Calibration statistics, or diagonal Fisher importance.
    budget : int
        Total number of weights of the factorised layers.
    min_saving : float, default=0.0
        Each layer's rank saves at least this fraction of its weights.
    metric_damping : float, default=0.01
        Damping of the metrics, as in the methods.

    Returns
    -------
    ranks : dict of str to int
    """
    weights = {n: torch.as_tensor(w) for n, w in weights.items()}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    if statistics is not None and not all(
        isinstance(s, LayerStatistics) for s in statistics.values()
    ):
        statistics = statistics_from_importance(statistics, shapes)
    _check_budget(budget, shapes)
    if statistics is not None and not any(
        s.has(kind) for s in statistics.values() for kind in LOSS_KINDS
    ):
        # Inputs alone say nothing of how the loss weighs one layer's output error
        # against another's; spreading by relative output error measured worse than a
        # uniform fraction (benchmarks/results/exploration-bbc.md), so: uniform.
        return uniform_budget_ranks(shapes, budget, min_saving)
    curves = {}
    for name, W in weights.items():
        stats = None if statistics is None else statistics.get(name)
        curves[name] = rank_gains(W, stats, metric_damping, output_damping)
    return spend_budget(curves, shapes, budget, min_saving)


def _check_budget(budget, shapes):
    least = sum(m + n for m, n in shapes.values())
    if budget is None or least > budget:
        raise ValueError(
            f"param_budget={budget} is below {least}, the cost of rank 1 in every target layer."
        )


def uniform_budget_ranks(shapes, budget: int, min_saving: float) -> dict[str, int]:
    """Every layer keeps the same fraction of its weights, ``budget`` in all (checked)."""
    return _uniform_ranks(shapes, budget / sum(m * n for m, n in shapes.values()), min_saving)


def spend_budget(curves, shapes, budget: int, min_saving: float) -> dict[str, int]:
    """The ranks that buy the largest gains of the layers' ``curves`` for ``budget`` weights.

    ``curves[name][k]`` is what rank ``k + 1`` of the layer gains (:func:`rank_gains`);
    ``budget`` is checked (:func:`parse_budget`).
    """
    curves = {name: torch.as_tensor(curves[name]).cpu().tolist() for name in shapes}
    gains = []
    ranks = {}
    for name, (m, n) in shapes.items():
        curve = curves[name]
        ranks[name] = 1
        top = max(1, max_saving_rank(m, n, min_saving))
        gains.extend((curve[k] / (m + n), name, m + n) for k in range(1, min(top, len(curve))))
    spent = sum(m + n for m, n in shapes.values())
    for gain, name, cost in sorted(gains, key=lambda g: -g[0]):
        if gain <= 0:  # ranks that buy nothing (a layer the loss never reaches) are not spent
            break
        if spent + cost > budget:
            continue
        ranks[name] += 1
        spent += cost
    # What is left can keep whole layers dense, the ones whose rest of the curve is worth most.
    capped = []
    for name, (m, n) in shapes.items():
        if ranks[name] == max(1, max_saving_rank(m, n, min_saving)):
            rest = sum(curves[name][ranks[name] :])
            capped.append((rest / (m * n - ranks[name] * (m + n)), name))
    for _, name in sorted(capped, reverse=True):
        m, n = shapes[name]
        extra = m * n - ranks[name] * (m + n)
        if spent + extra <= budget:
            ranks[name] = min(m, n)
            spent += extra
    return ranks


def allocation_name(rank, ratio, kinds):
    """How the ranks were chosen, in words, for the report; ``kinds``: the statistics there."""
    if rank is not None:
        return "given"
    if ratio is not None:
        return "uniform"
    if "output_gradients" in kinds and "inputs" in kinds:
        return "global (K-FAC loss)"
    if "fisher" in kinds:
        return "global (Fisher loss)"
    return "uniform" if "inputs" in kinds else "global (weight energy)"


def statistics_kinds(statistics) -> set[str]:
    """The kinds of statistics that the layers of ``statistics`` have (none for None)."""
    return {k for s in (statistics or {}).values() for k in KINDS if s.has(k)}


def _uniform_ranks(shapes, ratio, min_saving):
    """Every layer keeps the fraction ``ratio`` of its weights (dense if that saves too little)."""
    if ratio >= 1 - min_saving:
        return {name: min(shape) for name, shape in shapes.items()}
    return {name: max(1, int(ratio * m * n / (m + n))) for name, (m, n) in shapes.items()}


def check_rank(name, k, shape, min_saving):
    """The rank to factorise at, or None to leave the layer dense."""
    m, n = shape
    if k < 1:
        raise ValueError(f"rank {k} for layer {name!r} must be at least 1.")
    return None if k > max_saving_rank(m, n, min_saving) else k


def resolve_ranks(rank, ratio, param_budget, weights, statistics, shapes, min_saving, **damping):
    if rank is not None:
        if isinstance(rank, dict):
            missing = [n for n in shapes if n not in rank]
            if missing:
                raise ValueError(f"rank has no entry for the target layers {missing}.")
            unknown = [n for n in rank if n not in shapes]
            if unknown:
                warnings.warn(
                    f"rank names layers that are not targets, left as they are: {unknown}.",
                    UserWarning,
                    stacklevel=3,
                )
            bad = {
                n: r for n, r in rank.items() if isinstance(r, bool) or not isinstance(r, Integral)
            }
            if bad:
                raise ValueError(f"rank's values must be integers, got {bad}.")
            return {n: int(rank[n]) for n in shapes}
        if not is_positive_int(rank):
            raise ValueError(f"rank must be a positive integer or a dict, got {rank!r}.")
        return dict.fromkeys(shapes, int(rank))
    if ratio is not None:
        return _uniform_ranks(shapes, ratio, min_saving)
    budget = parse_budget(param_budget, shapes)
    return allocate_ranks(weights, statistics, budget, min_saving=min_saving, **damping)


def parse_budget(param_budget, shapes) -> int:
    """``param_budget`` as a count of weights (a count itself, or a fraction of the layers'),
    checked to pay for rank 1 in every layer."""
    if is_positive_int(param_budget):
        budget = int(param_budget)
    elif (
        isinstance(param_budget, Real)
        and not isinstance(param_budget, bool)
        and 0 < param_budget <= 1
    ):
        budget = int(param_budget * sum(m * n for m, n in shapes.values()))
    else:
        raise ValueError(
            "param_budget must be a count of weights (an int) or a fraction of the target "
            f"layers' weights (a float in (0, 1]), got {param_budget!r}."
        )
    _check_budget(budget, shapes)
    return budget
