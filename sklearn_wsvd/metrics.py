"""Weighted reconstruction error and the SVD-risk metric."""

from __future__ import annotations

import numpy as np

from ._estimator import WeightedTruncatedSVD


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


def svd_risk(weight, importance, rank: int) -> float:
    """Predicted increase of the loss when plain SVD replaces ``weight`` by its rank-``rank`` part.

    ``0.5 * sum_ij F_ij (W_ij - SVD_k(W)_ij)**2``: the second-order Taylor estimate
    of the loss change with the diagonal empirical Fisher ``F`` (the mean squared
    gradient, as :func:`~sklearn_wsvd.compress.fisher_importance` returns) in
    place of the Hessian. Unlike the plain relative error it weighs what the
    truncation throws away by how much the loss cares, so it is comparable across
    layers and models: a large value says that plain SVD will cost accuracy in
    this layer and that a weighted solver (or a larger rank) is needed there.

    Parameters
    ----------
    weight : array-like of shape (m, n)
        A layer's weight matrix.
    importance : array-like of shape (m, n)
        Its diagonal Fisher information (non-negative).
    rank : int
        Rank of the truncated SVD.

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
    est = WeightedTruncatedSVD(rank, solver="svd", dtype="float64", device="cpu")
    est.fit(weight, sample_weight=importance)
    return 0.5 * est.reconstruction_err_**2
