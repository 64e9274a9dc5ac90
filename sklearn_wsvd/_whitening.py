"""Metrics on the rows and the columns: validation and the square roots that whiten a problem.

The objective ``sum W * (R^{1/2} (X - L) C^{1/2})**2`` becomes the plain weighted
problem on ``Y = R^{1/2} X C^{1/2}``; a fit ``L_Y`` of ``Y`` maps back as
``L = R^{-1/2} L_Y C^{-1/2}``. The roots are symmetric (with element-wise weights the
choice of root matters, and the symmetric one is the one the objective names) and
come from an eigendecomposition in float64, which never fails where a Cholesky
factorisation of a singular or slightly indefinite Gram matrix does.
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.utils import check_array

from ._backend import is_tensor, to_tensor

# Relative asymmetry tolerated (and symmetrised away): float32 Gram matrices
# accumulated in a different order on each side differ at this level.
_SYMMETRY_RTOL = 1e-5
# Negative eigenvalues beyond this fraction of the largest one are not rounding.
_NEGATIVE_RTOL = 1e-6


def check_metric(metric, size: int, name: str, *, device) -> torch.Tensor:
    """Validate a metric: a (size, size) symmetric matrix or a (size,) diagonal, finite, float64.

    Returns a fresh float64 tensor (the caller's array is never aliased); an
    asymmetry within float32 rounding is symmetrised away.
    """
    if is_tensor(metric):
        if metric.is_complex() or metric.dtype == torch.bool:
            raise TypeError(f"{name} must hold real numbers, got a tensor of dtype {metric.dtype}.")
        M = to_tensor(metric, device=device, dtype=torch.float64)
    else:
        if sp.issparse(metric):
            metric = metric.toarray()
        M = check_array(
            metric,
            ensure_2d=False,
            dtype=np.float64,
            ensure_all_finite=False,
            input_name=name,
        )
        M = to_tensor(M, device=device, dtype=torch.float64)
    if tuple(M.shape) not in ((size,), (size, size)):
        raise ValueError(
            f"{name} has shape {tuple(M.shape)}, expected ({size}, {size}) for a matrix or "
            f"({size},) for a diagonal."
        )
    if not torch.isfinite(M).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    if M.ndim == 1:
        if (M < 0).any():
            raise ValueError(
                f"{name} is a diagonal metric and must be non-negative; its smallest entry "
                f"is {float(M.min()):g}."
            )
    else:
        scale = float(M.abs().max())
        asymmetry = float((M - M.T).abs().max())
        if asymmetry > _SYMMETRY_RTOL * scale:
            raise ValueError(
                f"{name} must be symmetric: max |M - M.T| is {asymmetry:.3g}, "
                f"{asymmetry / scale:.2g} of its largest entry."
            )
        M = (M + M.T) / 2
    if not (M != 0).any():
        raise ValueError(f"{name} is zero everywhere: it gives every error zero weight.")
    return M


def metric_root(
    M: torch.Tensor, damping: float, name: str, *, symmetric: bool = True, inverse: bool = True
):
    """A square root ``S`` (``S S^T = M + damping * mean_eigenvalue * I``) and its pseudo-inverse.

    The symmetric root, from an eigendecomposition: negative eigenvalues (a Gram
    matrix is PSD; rounding makes it slightly indefinite) are set to zero, which
    gives the nearest PSD matrix, with a warning when they are more than
    rounding; eigenvalues below ``n * eps`` of the largest count as zero in the
    inverse (directions the metric ignores), so the result is always finite.
    With ``symmetric=False`` (for objectives that any root gives alike) the
    Cholesky factor, an order of magnitude faster, when the damped metric is
    positive definite; the eigendecomposition otherwise. A diagonal metric (1-D)
    gives 1-D roots. Float64. ``inverse=False`` skips the pseudo-inverse
    (returned as None), a third of the cost of a Cholesky root.
    """
    if M.ndim == 1:
        values = M + damping * M.mean()
        return values.sqrt(), _inverse_sqrt(values)
    if not symmetric:
        eye = torch.eye(M.shape[0], dtype=M.dtype, device=M.device)
        factor, info = torch.linalg.cholesky_ex(M + damping * (M.trace() / M.shape[0]) * eye)
        if int(info) == 0:
            if not inverse:
                return factor, None
            return factor, torch.linalg.solve_triangular(factor, eye, upper=False)
    values, vectors = torch.linalg.eigh(M)
    top = float(values.max())
    if top <= 0:
        raise ValueError(f"{name} has no positive eigenvalue: it is not a metric.")
    lowest = float(values.min())
    if lowest < -_NEGATIVE_RTOL * top:
        warnings.warn(
            f"{name} is not positive semi-definite (smallest eigenvalue {lowest:.3g}, "
            f"largest {top:.3g}); its negative eigenvalues are set to zero.",
            UserWarning,
            stacklevel=2,
        )
    values = values.clamp_min(0.0)
    values = values + damping * values.mean()
    root = (vectors * values.sqrt()) @ vectors.T
    inverse = (vectors * _inverse_sqrt(values)) @ vectors.T
    return root, inverse


def _inverse_sqrt(values):
    cutoff = values.numel() * torch.finfo(values.dtype).eps * float(values.max())
    return torch.where(values > cutoff, values.clamp_min(cutoff).rsqrt(), 0.0)


def left(M, X):
    """``M @ X`` for a metric root ``M`` (a vector: a diagonal); ``X`` itself when ``M`` is None."""
    if M is None:
        return X
    M = M.to(X.dtype)
    return M[:, None] * X if M.ndim == 1 else M @ X


def right(X, M):
    """``X @ M`` for a metric root ``M`` (a vector: a diagonal); ``X`` itself when ``M`` is None."""
    if M is None:
        return X
    M = M.to(X.dtype)
    return X * M if M.ndim == 1 else X @ M
