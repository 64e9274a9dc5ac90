"""What every solver shares: the objective and the iteration driver."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import NamedTuple

import torch
from tqdm.auto import tqdm


class Factors(NamedTuple):
    """A fitted factorisation ``X ~ A @ B`` and how the solver got there."""

    A: torch.Tensor
    B: torch.Tensor
    n_iter: int
    objective: list[float]
    seconds: list[float]
    converged: bool = True


def objective_tensor(X, W, A, B, alpha: float = 0.0) -> torch.Tensor:
    """``sum W * (X - A B)**2 + alpha * (|A|_F**2 + |B|_F**2)``, differentiable."""
    R = torch.addmm(X, A, B, alpha=-1.0)
    value = torch.sum(W * R.square())
    if alpha:
        value = value + alpha * (A.square().sum() + B.square().sum())
    return value


def objective(X, W, A, B, alpha: float = 0.0) -> float:
    """:func:`objective_tensor` as a Python float."""
    return float(objective_tensor(X, W, A, B, alpha))


def tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


def iterate(
    step: Callable,
    X,
    W,
    A,
    B,
    *,
    alpha: float,
    max_iter: int,
    tol: float,
    name: str,
    init_seconds: float = 0.0,
    callback: Callable | None = None,
    verbose: bool = False,
    patience: int = 1,
):
    """Run ``A, B = step(A, B, it)`` until the objective stalls; keep the best iterate.

    Converged means that ``patience`` iterations in a row each improved the best
    objective by less than ``tol`` relative to it (``patience > 1`` suits solvers
    whose objective is not monotone). ``max_iter`` ending the run first sets
    ``converged=False`` (the caller warns, so the warning points at user code).
    ``callback(n_iter, A, B, objective)`` returning True stops the run early
    (that is not a convergence failure). The history holds the
    initial point first, with the time the initialisation took.
    """
    f = objective(X, W, A, B, alpha)
    best = (f, A, B)
    history, seconds = [f], [init_seconds]
    start = time.perf_counter() - init_seconds
    converged = stopped = False
    it = stalls = 0
    with tqdm(total=max_iter, desc=name, disable=not verbose, leave=False) as bar:
        for it in range(1, max_iter + 1):
            A, B = step(A, B, it)
            f = objective(X, W, A, B, alpha)
            history.append(f)
            seconds.append(time.perf_counter() - start)
            bar.update()
            bar.set_postfix(objective=f"{f:.6g}")
            improvement = best[0] - f
            if f < best[0]:
                best = (f, A, B)
            if not math.isfinite(f):
                raise FloatingPointError(
                    f"solver {name!r} diverged (objective {f}) at iteration {it}; "
                    "try dtype='float64', another solver or a smaller learning rate."
                )
            if callback is not None and callback(it, A, B, f):
                stopped = True
                break
            stalls = stalls + 1 if improvement <= tol * abs(best[0]) else 0
            if stalls >= patience:
                converged = True
                break
    converged = converged or stopped or max_iter == 0
    return Factors(best[1], best[2], it, history, seconds, converged)
