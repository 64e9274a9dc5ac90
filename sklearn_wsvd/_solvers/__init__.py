"""Solvers: pure functions on torch tensors, dispatched by name in :func:`solve` only."""

from __future__ import annotations

import time

import torch

from ._common import Factors, objective
from .als import als, als_cg, weighted_row_solve
from .closed_form import fwsvd, rank1, rank_one_approximation, svd
from .em import em
from .gradient import adam

CLOSED_FORM = {"svd": svd, "fwsvd": fwsvd, "rank1": rank1}
ITERATIVE = {"als": als, "als-cg": als_cg, "em": em, "adam": adam}
SOLVERS = ("auto", *CLOSED_FORM, *ITERATIVE)
INITS = ("svd", "fwsvd", "rank1", "random")
DEFAULT_MAX_ITER = {"als": 100, "als-cg": 200, "em": 500, "adam": 300}
# The iterative solver "auto" picks when no closed form is exact; see
# benchmarks/bench_solvers.py for the measurements behind the choice.
AUTO_ITERATIVE = "als-cg"

__all__ = [
    "Factors",
    "SOLVERS",
    "INITS",
    "objective",
    "resolve_solver",
    "solve",
    "weighted_row_solve",
]


def resolve_solver(solver: str, W, alpha: float) -> str:
    """Resolve ``"auto"``: the exact closed form the weights allow, else the iterative default."""
    if solver != "auto":
        return solver
    if bool((W == W.reshape(-1)[0]).all()):
        return "svd"
    if alpha == 0:
        a, b = rank_one_approximation(W)
        if torch.allclose(torch.outer(a, b), W, rtol=1e-5, atol=1e-6 * float(W.max())):
            return "rank1"
    return AUTO_ITERATIVE


def _random_init(X, k, generator):
    scale = (X.square().mean().sqrt() / k**0.5).sqrt()
    m, n = X.shape
    A = torch.randn(m, k, generator=generator, dtype=torch.float64)
    B = torch.randn(k, n, generator=generator, dtype=torch.float64)
    return (A.to(X) * scale, B.to(X) * scale)


def solve(
    X,
    W,
    k: int,
    *,
    solver: str,
    init="rank1",
    alpha: float = 0.0,
    max_iter: int | None = None,
    tol: float = 1e-5,
    seed: int = 0,
    callback=None,
    verbose: bool = False,
    **options,
) -> Factors:
    """Fit ``X ~ A @ B`` (``A``: m x k, ``B``: k x n) under the weights ``W``.

    ``X`` must be finite (missing entries filled with anything, their weight zero)
    and ``W`` dense, both on the same device and dtype. ``solver`` must already be
    resolved (not ``"auto"``). ``init`` is a name of :data:`INITS` or a pair
    ``(A0, B0)``; ``options`` go to the solver function.
    """
    start = time.perf_counter()
    if solver in CLOSED_FORM:
        A, B = CLOSED_FORM[solver](X, W, k, alpha)
        f = objective(X, W, A, B, alpha)
        return Factors(A, B, 1, [f], [time.perf_counter() - start])
    if isinstance(init, tuple):
        A, B = init
    elif init == "random":
        A, B = _random_init(X, k, torch.Generator().manual_seed(seed))
    else:  # a starting point need not be exact: large matrices get a randomized SVD
        A, B = CLOSED_FORM[init](X, W, k, alpha, exact=False)
    max_iter = DEFAULT_MAX_ITER[solver] if max_iter is None else max_iter
    return ITERATIVE[solver](
        X,
        W,
        A,
        B,
        alpha=alpha,
        max_iter=max_iter,
        tol=tol,
        init_seconds=time.perf_counter() - start,
        callback=callback,
        verbose=verbose,
        **options,
    )
