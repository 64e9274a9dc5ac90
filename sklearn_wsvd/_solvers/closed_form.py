"""Closed-form solvers: exact for uniform, row and rank-one weights."""

from __future__ import annotations

import torch

from ._common import tiny


def truncated_svd(X, k: int, alpha: float = 0.0):
    """Best rank-``k`` factors of ``X`` (Eckart-Young), balanced as ``U sqrt(S)``, ``sqrt(S) Vt``.

    With a ridge ``alpha * (|A|^2 + |B|^2)`` the optimum soft-thresholds the
    singular values by ``alpha``.
    """
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
    b = W.sum(dim=0) / a.sum()
    return a, b


def scaled_svd(X, a, b, k: int, alpha: float = 0.0):
    """Exact optimum for the weights ``a b^T``: SVD of ``diag(sqrt a) X diag(sqrt b)``, unscaled.

    Rows or columns of zero weight can take any value; they get zero.
    """
    sa, sb = a.sqrt(), b.sqrt()
    A, B = truncated_svd(sa[:, None] * X * sb, k, alpha)
    return A * _safe_reciprocal(sa)[:, None], B * _safe_reciprocal(sb)


def _safe_reciprocal(v):
    return torch.where(v > tiny(v.dtype), 1.0 / v.clamp_min(tiny(v.dtype)), 0.0)


def svd(X, W, k: int, alpha: float = 0.0):
    """Plain truncated SVD: ignores the weights (the baseline)."""
    return truncated_svd(X, k, alpha)


def fwsvd(X, W, k: int, alpha: float = 0.0):
    """FWSVD (Hsu et al., 2022): one weight per row, the row sums of ``W``."""
    return scaled_svd(X, W.sum(dim=1), torch.ones_like(W[0]), k, alpha)


def rank1(X, W, k: int, alpha: float = 0.0):
    """Closed form for the best rank-one model of the weights, ``W ~ a b^T``."""
    a, b = rank_one_approximation(W)
    return scaled_svd(X, a, b, k, alpha)
