"""Weighted reconstruction error, output error, loss estimates and the SVD-risk metric."""

from __future__ import annotations

import math

import numpy as np
import torch

from ._validation import check_rank


def weighted_error(X, X_hat, sample_weight=None, *, relative: bool = False) -> float:
    """``sum W (X - X_hat)**2``, over ``sum W X**2`` when ``relative``.

    Entries of zero weight are ignored (``X`` may hold NaN there). ``sample_weight``
    is None (uniform), one weight per row, or one per entry.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd.metrics import weighted_error
    >>> weighted_error(np.ones((2, 2)), np.zeros((2, 2)), np.array([1.0, 3.0]))
    8.0
    """
    X, X_hat = np.asarray(X, dtype=float), np.asarray(X_hat, dtype=float)
    W = np.ones_like(X) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    W = np.broadcast_to(W[:, None] if W.ndim == 1 else W, X.shape)
    observed = W > 0
    sse = float(np.sum(W[observed] * (X[observed] - X_hat[observed]) ** 2))
    if not relative:
        return sse
    return sse / float(np.sum(W[observed] * X[observed] ** 2))


def _float64(x):
    return torch.as_tensor(x).detach().to(torch.float64)


def _difference(weight, approximation):
    """``W`` and ``W - W'`` in float64, checked to be matrices of one shape."""
    W, A = _float64(weight), _float64(approximation)
    if W.ndim != 2 or A.shape != W.shape:
        raise ValueError(
            f"weight and approximation must be matrices of one shape, got {tuple(W.shape)} "
            f"and {tuple(A.shape)}."
        )
    return W, W - A.to(W.device)


def _moment(M, n, name, W):
    """A second moment ``M`` (n x n) for the weight ``W``, in float64 on its device."""
    M = _float64(M).to(W.device)
    if M.shape != (n, n):
        raise ValueError(
            f"{name} must be ({n}, {n}) for a weight of shape {tuple(W.shape)}, got "
            f"{tuple(M.shape)}."
        )
    return M


def output_error(weight, approximation, input_moment) -> float:
    """Relative output error ``|(W - W') X| / |W X|`` from the inputs' second moment ``X X^T / t``.

    Parameters
    ----------
    weight, approximation : array-like of shape (m, n)
        A layer's weight ``W`` (``nn.Linear`` orientation) and its replacement ``W'``.
    input_moment : array-like of shape (n, n)
        Second moment of the layer's inputs, ``E[x x^T]``
        (:attr:`~sklearn_wsvd.compress.LayerStatistics.input_second_moment`).

    Returns
    -------
    error : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd.metrics import output_error
    >>> output_error(np.eye(2), np.diag([1.0, 0.0]), np.diag([3.0, 1.0]))  # sqrt(1 / 4)
    0.5
    """
    W, dW = _difference(weight, approximation)
    C = _moment(input_moment, W.shape[1], "input_moment", W)
    energy, error = float((W @ C * W).sum()), max(float((dW @ C * dW).sum()), 0.0)
    if energy <= 0:  # a zero layer or zero inputs: exact when the error is zero too
        return 0.0 if error == 0 else math.inf
    return error**0.5 / energy**0.5


def loss_estimate(
    weight, approximation, *, importance=None, input_moment=None, output_gradient_moment=None
) -> float:
    """Predicted increase of the loss when ``approximation`` replaces ``weight``.

    The second-order Taylor estimate ``0.5 vec(dW)^T F vec(dW)`` with the Fisher
    information ``F`` in place of the Hessian: Kronecker-factored,
    ``0.5 tr(dW C dW^T G)``, when the input moment ``C`` and the output-gradient
    moment ``G`` are given (K-FAC), else diagonal, ``0.5 sum F_ij dW_ij**2``,
    with the mean squared gradients ``importance``.

    Parameters
    ----------
    weight, approximation : array-like of shape (m, n)
        A layer's weight ``W`` (``nn.Linear`` orientation) and its replacement.
    importance : array-like of shape (m, n), optional
        Diagonal empirical Fisher (:func:`~sklearn_wsvd.compress.fisher_importance`).
    input_moment : array-like of shape (n, n), optional
        ``C``, the second moment of the layer's inputs.
    output_gradient_moment : array-like of shape (m, m), optional
        ``G``, the second moment of the gradients w.r.t. the layer's outputs.

    Returns
    -------
    increase : float
        In units of the loss.
    """
    W, dW = _difference(weight, approximation)
    if input_moment is not None and output_gradient_moment is not None:
        C = _moment(input_moment, W.shape[1], "input_moment", W)
        G = _moment(output_gradient_moment, W.shape[0], "output_gradient_moment", W)
        return float(0.5 * ((G @ dW @ C) * dW).sum())
    if importance is None:
        raise ValueError(
            "give importance (a diagonal Fisher), or both input_moment and "
            "output_gradient_moment (K-FAC)."
        )
    F = _float64(importance).to(W.device)
    if F.shape != W.shape:
        raise ValueError(
            f"importance must have the weight's shape {tuple(W.shape)}, got {tuple(F.shape)}."
        )
    if bool((F < 0).any()):
        raise ValueError("importance (a diagonal Fisher) must be non-negative.")
    return float(0.5 * (F * dW.square()).sum())


def truncated(weight, rank: int) -> torch.Tensor:
    """The best rank-``rank`` approximation of ``weight`` (plain truncated SVD), float64."""
    rank = check_rank(rank)
    U, S, Vt = torch.linalg.svd(_float64(weight), full_matrices=False)
    return (U[:, :rank] * S[:rank]) @ Vt[:rank]


def svd_risk(
    weight,
    importance=None,
    rank: int | None = None,
    *,
    input_moment=None,
    output_gradient_moment=None,
) -> float:
    """Predicted increase of the loss when plain SVD replaces ``weight`` by its rank-``rank`` part.

    :func:`loss_estimate` of the truncated SVD: in the Kronecker-factored
    currency ``0.5 tr(dW C dW^T G)`` when the input moment ``C`` and the
    output-gradient moment ``G`` are given, else with the diagonal Fisher
    ``importance``. Unlike the plain relative error it weighs what the truncation
    throws away by how much the loss cares, so it is comparable across layers
    and models: a large value says that plain SVD will cost accuracy in this
    layer and that a calibrated method (or a larger rank) is needed there.

    Parameters
    ----------
    weight : array-like of shape (m, n)
        A layer's weight matrix.
    importance : array-like of shape (m, n), optional
        Its diagonal Fisher information (non-negative).
    rank : int
        Rank of the truncated SVD.
    input_moment, output_gradient_moment : array-like, optional
        The K-FAC factors, as in :func:`loss_estimate`.

    Returns
    -------
    risk : float
        In units of the loss.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd.metrics import svd_risk
    >>> W = np.diag([3.0, 2.0, 1.0])
    >>> svd_risk(W, np.ones((3, 3)), rank=2)  # the dropped singular value, squared, halved
    0.5
    """
    if rank is None:
        raise ValueError("svd_risk needs the rank of the truncated SVD.")
    return loss_estimate(
        weight,
        truncated(weight, rank),
        importance=importance,
        input_moment=input_moment,
        output_gradient_moment=output_gradient_moment,
    )
