"""Solvers: pure functions on torch tensors, dispatched by name in :func:`solve` only."""

from __future__ import annotations

import time

import torch

from ._common import (
    Factors,
    energy,
    independent_components,
    live_components,
    objective,
    pad_components,
    product_svd,
    revive,
    svd_components,
    uniform_weight,
    value_scale,
    weight_scale,
    weights_in_range,
)
from .als import als, als_cg, weighted_row_solve
from .closed_form import SVD_SOLVERS, fwsvd, rank1, rank_one_approximation, svd
from .em import em
from .gradient import adam
from .ncg import ncg

CLOSED_FORM = {"svd": svd, "fwsvd": fwsvd, "rank1": rank1}
ITERATIVE = {"als": als, "als-cg": als_cg, "ncg": ncg, "em": em, "adam": adam}
SOLVERS = ("auto", *CLOSED_FORM, *ITERATIVE)
INITS = ("svd", "fwsvd", "rank1", "random")
# Starting points take a randomized SVD (when k is at most a quarter of the smaller
# side) from this side on, where the closed forms' "auto" still takes the exact one:
# there it already costs less than LAPACK's for ranks well below a quarter of the
# side, and the solvers refine the start anyway.
RANDOMIZED_START_MIN_SIDE = 100
DEFAULT_MAX_ITER = {"als": 100, "als-cg": 200, "ncg": 2000, "em": 500, "adam": 300}
# Options for a start given as factors, a fit to refine (a warm start along a path
# of penalties, say): ncg's alternating sweeps fit each row under its own weights
# from a closed form, which such a start has done already.
WARM_START_OPTIONS = {"ncg": {"sweeps": 0}}
# The iterative solver "auto" picks when no closed form is exact; see
# benchmarks/bench_solvers.py for the measurements behind the choice.
AUTO_ITERATIVE = "ncg"

__all__ = [
    "Factors",
    "SOLVERS",
    "SVD_SOLVERS",
    "balance",
    "complete_rank",
    "CLOSED_FORM",
    "count_underdetermined",
    "energy",
    "INITS",
    "live_components",
    "objective",
    "pad_components",
    "product_svd",
    "resolve_solver",
    "solve",
    "uniform_weight",
    "value_scale",
    "weights_in_range",
    "weighted_row_solve",
]


def resolve_solver(solver: str, W, alpha: float) -> str:
    """Resolve ``"auto"``: the exact closed form the weights allow, else the iterative default."""
    if solver != "auto":
        return solver
    if uniform_weight(W) is not None or bool((W == W[0, 0]).all()):
        return "svd"
    if alpha == 0:
        a, b = rank_one_approximation(W)
        if torch.allclose(torch.outer(a, b), W, rtol=1e-5, atol=1e-6 * float(W.max())):
            return "rank1"
    return AUTO_ITERATIVE


def count_underdetermined(W, k: int) -> tuple[int, int]:
    """Rows and columns of ``W`` (m x n) with fewer than ``k`` positive weights.

    Such a row (column) has fewer observed entries than its ``k`` unknown
    coordinates: without a ridge (``alpha > 0``) the fit interpolates its
    observed entries and says nothing reliable about its other entries, which
    the solvers keep finite only through their rounding-level ridge.
    """
    observed = W > 0
    return int((observed.sum(1) < k).sum()), int((observed.sum(0) < k).sum())


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
    svd_solver: str = "auto",
    start: float | None = None,
    **options,
) -> Factors:
    """Fit ``X ~ A @ B`` (``A``: m x k, ``B``: k x n) under the weights ``W``.

    ``X`` must be finite (missing entries filled with anything, their weight zero)
    and ``W`` dense, both on the same device and dtype. ``solver`` must already be
    resolved (not ``"auto"``). ``init`` is a name of :data:`INITS` or a pair
    ``(A0, B0)``; ``options`` go to the solver function. ``svd_solver`` is the
    truncated SVD of the closed forms and of the starting points
    (:func:`~sklearn_wsvd._solvers.closed_form.truncated_svd`).

    The solvers see ``W / max(W)`` and ``alpha / max(W)``, the same problem in
    units where the largest weight is one, so that weights of any scale give the
    same factors (and float32 neither overflows nor underflows on them); data far
    from unit size (:func:`~sklearn_wsvd._solvers._common.value_scale`: ``s``) is
    divided by ``s``, exactly, with ``alpha / s`` and factors ``sqrt(s)`` times
    smaller. The objectives reported, the factors returned and those the
    ``callback`` sees are in the caller's units. A starting pair whose product
    has rank below ``k`` (zeros, say) is a saddle point from which no solver can
    move: its missing directions are filled by the ``"rank1"`` start fitted to the
    residual (:func:`complete_rank`). The history's seconds count from ``start``
    (a :func:`time.perf_counter` reading; None: now), so that a caller's own
    preparation of the problem can be counted too.
    """
    start = time.perf_counter() if start is None else start
    w_scale, x_scale = weight_scale(W), value_scale(X)
    if w_scale != 1.0:
        W, alpha = W / w_scale, alpha / w_scale
    if x_scale != 1.0:
        root = x_scale**0.5  # a power of two: every rescaling is exact
        X, alpha = X / x_scale, alpha / x_scale
        if isinstance(init, tuple):
            init = (init[0] / root, init[1] / root)
        if callback is not None:
            user_callback = callback

            def callback(n_iter, A, B, f):
                return user_callback(n_iter, A * root, B * root, f)

    scale = w_scale * x_scale * x_scale  # of the objectives, back to the caller's units
    if solver in CLOSED_FORM:
        A, B = CLOSED_FORM[solver](X, W, k, alpha, svd_solver)
        f = objective(X, W, A, B, alpha) * scale
        factors = Factors(A, B, 1, [f], [time.perf_counter() - start])
    else:
        if svd_solver == "auto" and min(X.shape) >= RANDOMIZED_START_MIN_SIDE:
            svd_solver = "randomized"  # a start need not be exact (randomized where 4k <= side)
        if isinstance(init, tuple):
            options = {**WARM_START_OPTIONS.get(solver, {}), **options}
            A, B = complete_rank(X, W, *init, alpha, svd_solver)
        elif init == "random":
            A, B = _random_init(X, k, torch.Generator().manual_seed(seed))
        else:
            A, B = CLOSED_FORM[init](X, W, k, alpha, svd_solver)
        factors = ITERATIVE[solver](
            X,
            W,
            *balance(A, B),
            alpha=alpha,
            max_iter=DEFAULT_MAX_ITER[solver] if max_iter is None else max_iter,
            tol=tol,
            init_seconds=time.perf_counter() - start,
            callback=callback,
            verbose=verbose,
            scale=scale,
            **options,
        )
    if x_scale != 1.0:
        factors = factors._replace(A=factors.A * root, B=factors.B * root)
    return factors


def balance(A, B):
    """Rescale each pair (column of ``A``, row of ``B``) to equal norms; ``A @ B`` is unchanged.

    Factors that differ in scale by many orders of magnitude (a closed form
    unscaled by tiny row weights, a user's start) would make the normal equations
    of one side overflow while the other's underflow. A balanced pair also has the
    smallest ridge penalty of all pairs with the same product.
    """
    na, nb = torch.linalg.vector_norm(A, dim=0), torch.linalg.vector_norm(B, dim=1)
    ok = (na > 0) & (nb > 0)
    t = torch.where(ok, (nb / torch.where(ok, na, 1.0)).sqrt(), 1.0)
    return A * t, B / t[:, None]


def complete_rank(X, W, A, B, alpha: float = 0.0, svd_solver: str = "auto"):
    """Give a starting pair whose product has rank ``r < k`` its ``k - r`` missing directions.

    Where ``A @ B`` has rank ``r``, the objective's gradient vanishes in the
    directions the factors lack (a saddle point): zero factors, say, stay zero
    under every solver. The product's rank-``r`` part is kept: without a ridge
    as balanced SVD factors (its rank at the dtype's rounding), with one as its
    live components (:func:`~sklearn_wsvd._solvers._common.independent_components`:
    the vanished ones dropped, those vanished in combination merged). Without a
    ridge, the ``"rank1"`` closed form of rank ``k - r``
    fitted to the residual is added, scaled by the step along it that lowers the
    objective most. With one, the optimum leaves every component zero along
    which the objective does not fall, so the missing components take only the
    directions that lower it (:func:`~sklearn_wsvd._solvers._common.revive`;
    the rest stay zero): a warm start along a path of penalties, whose previous
    fit the larger ridge left with fewer components, then keeps its zeros rather
    than spending iterations shrinking a rank-one fit of them back to zero.
    Full-rank pairs are returned unchanged.
    """
    k = A.shape[1]
    if alpha > 0:
        A0, B0 = independent_components(A, B)
        if A0.shape[1] == k:
            return A, B
        revived = revive(X, W, A0, B0, alpha, objective(X, W, A0, B0, alpha), tol=0.0, rank=k)
        return pad_components(*(revived or (A0, B0)), k)
    A0, B0 = svd_components(A, B, max(X.shape) * torch.finfo(A.dtype).eps)
    if A0.shape[1] == k:
        return A, B
    R = X - A0 @ B0
    A1, B1 = rank1(R, W, k - A0.shape[1], 0.0, svd_solver)
    M = A1 @ B1
    curvature = float((W * M.square()).sum())
    if curvature > 0:  # the best step t along M
        t = max(float((W * R * M).sum()) / curvature, 1e-3)
        A1, B1 = A1 * t**0.5, B1 * t**0.5
    return torch.cat([A0, A1], dim=1), torch.cat([B0, B1], dim=0)
