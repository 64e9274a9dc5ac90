"""Closed-form solvers: exact for uniform, row and rank-one weights."""

from __future__ import annotations

import torch

from ._common import tiny

# svd_solver="auto" takes a randomized SVD, O(mnk) instead of O(mn min(m, n)), when
# the smaller side is at least this and k at most a quarter of it (below, or for
# larger ranks, the full SVD is as fast); like scikit-learn's TruncatedSVD, it
# takes 5 power iterations and 10 extra vectors.
RANDOMIZED_MIN_SIDE = 500
# A revival (_common.revive) needs only the few singular pairs above the ridge and
# has exact pairs (from a Gram matrix) to fall back on: there the randomized SVD is
# tried first from this smaller side on, where it starts to cost less than the Gram
# matrix's eigendecomposition.
REVIVE_RANDOMIZED_MIN_SIDE = 1024
SVD_SOLVERS = ("auto", "full", "randomized")


def randomized(shape, k: int, svd_solver: str) -> bool:
    """Whether ``svd_solver`` means a randomized SVD for a rank-``k`` fit of this shape.

    Never for ranks above a quarter of the smaller side, where the full SVD costs
    no more.
    """
    side = min(shape)
    if svd_solver == "auto":
        return side >= RANDOMIZED_MIN_SIDE and 4 * k <= side
    return svd_solver == "randomized" and 4 * k <= side


def truncated_svd(X, k: int, alpha: float = 0.0, svd_solver: str = "full"):
    """Best rank-``k`` factors of ``X`` (Eckart-Young), balanced as ``U sqrt(S)``, ``sqrt(S) Vt``.

    With a ridge ``alpha * (|A|^2 + |B|^2)`` the optimum soft-thresholds the
    singular values by ``alpha``. ``svd_solver`` is ``"full"`` (LAPACK: exact),
    ``"randomized"`` (Halko et al. 2011, with a fixed seed, so deterministic:
    within rounding of the optimum where the spectrum decays, about 1% above it
    on a matrix of pure noise) or ``"auto"`` (see :func:`randomized`).
    """
    if randomized(X.shape, k, svd_solver):
        cuda = X.device.type == "cuda"
        with torch.random.fork_rng(devices=[X.device] if cuda else []):
            if cuda:
                torch.manual_seed(0)
            else:  # torch.manual_seed would wake CUDA's lazy seeding too (0.1 ms a call)
                torch.default_generator.manual_seed(0)
            U, S, V = torch.svd_lowrank(X, q=min(k + 10, *X.shape), niter=5)
        Vt = V.T
    else:
        U, S, Vt = torch.linalg.svd(X, full_matrices=False)
    S = (S[:k] - alpha).clamp_min(0.0).sqrt()
    return U[:, :k] * S, S[:, None] * Vt[:k]


def rank_one_approximation(W):
    """Row and column factors ``a, b`` with ``W ~ a b^T``, exact when ``W`` has rank one.

    ``a`` holds the row sums and ``b`` the column sums over the total (the
    independence model), which reproduces ``W`` exactly when it is rank one, uniform
    or constant along rows or columns.
    """
    a = W.sum(dim=1)
    b = W.sum(dim=0) / a.sum().clamp_min(tiny(W.dtype))  # all-zero W: zeros, not NaN
    return a, b


def scaled_svd(X, a, b, k: int, alpha: float = 0.0, svd_solver: str = "full"):
    """Exact optimum for the weights ``a b^T``: SVD of ``diag(sqrt a) X diag(sqrt b)``, unscaled.

    Rows or columns of zero weight can take any value; they get zero. With a ridge
    the singular values of the scaled matrix are soft-thresholded by
    ``alpha / sqrt(mean(a) mean(b))``: exact for uniform weights ``w`` (the
    singular values of ``X`` shrink by ``alpha / w``), an approximation otherwise,
    and in every case unchanged when the weights and ``alpha`` scale together.
    """
    sa, sb = a.sqrt(), b.sqrt()
    if alpha:
        alpha = alpha / max(float(a.mean() * b.mean()) ** 0.5, tiny(a.dtype))
    A, B = truncated_svd(sa[:, None] * X * sb, k, alpha, svd_solver)
    return A * _safe_reciprocal(sa)[:, None], B * _safe_reciprocal(sb)


def _safe_reciprocal(v):
    return torch.where(v > tiny(v.dtype), 1.0 / v.clamp_min(tiny(v.dtype)), 0.0)


def svd(X, W, k: int, alpha: float = 0.0, svd_solver: str = "full"):
    """Plain truncated SVD: ignores the weights (the baseline).

    A ridge acts as it would under uniform weights of the same mean, so the result
    is exact for uniform weights.
    """
    if alpha:
        alpha = alpha / max(float(W.mean()), tiny(W.dtype))
    return truncated_svd(X, k, alpha, svd_solver)


def fwsvd(X, W, k: int, alpha: float = 0.0, svd_solver: str = "full"):
    """FWSVD (Hsu et al., 2022): one weight per row, the row sums of ``W``.

    The row means, in fact, which give the same factors and keep a ridge in the
    units of ``W``.
    """
    return scaled_svd(X, W.mean(dim=1), torch.ones_like(W[0]), k, alpha, svd_solver)


def rank1(X, W, k: int, alpha: float = 0.0, svd_solver: str = "full"):
    """Closed form for the best rank-one model of the weights, ``W ~ a b^T``."""
    a, b = rank_one_approximation(W)
    return scaled_svd(X, a, b, k, alpha, svd_solver)
