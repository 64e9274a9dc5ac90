"""Choosing the ridge of a matrix completion by cross-validation over hidden entries.

scikit-learn's splitters split rows, so the entries that a completion is judged on
are hidden by the scorer: :class:`HiddenEntryScorer` takes the rows of a test fold
(which the model never saw), hides a share of their observed entries, folds each
row in from the entries it keeps (``transform`` with the remaining weights, under
the fitted ridge) and measures the error on the hidden ones. Every
:class:`~sklearn.model_selection.GridSearchCV` candidate is judged on the same
hidden entries, and none of them ever reaches ``fit`` or the fold-in.
:func:`alpha_path` runs the same cross-validation over a grid of penalties, each
fit warm-started from the one before it.
"""

from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import check_cv
from sklearn.pipeline import Pipeline
from sklearn.utils import check_array
from sklearn.utils.metadata_routing import MetadataRequest

__all__ = ["HiddenEntryScorer", "alpha_path"]


class HiddenEntryScorer:
    """Score a fitted low-rank model on observed entries hidden from it.

    Called as ``scorer(estimator, X, y=None, sample_weight=None)`` on rows the
    estimator was not fitted on (a test fold), it hides a random ``fraction`` of
    the entries of positive weight, folds every row in from the entries it keeps
    (``estimator.transform(X_kept, sample_weight=W_kept)``, the hidden entries set
    to NaN and their weight to zero), reconstructs it (``inverse_transform``) and
    returns the negative weighted mean squared error on the hidden entries,
    ``-sum W_h (X - X_hat)**2 / sum W_h`` (higher is better). This is the
    element-wise cross-validation of component models (Wold 1978; Bro et al.
    2008): what it measures is how well the model predicts entries it has not
    seen, which is what a completion is for.

    The estimator is a :class:`~sklearn_wsvd.WeightedTruncatedSVD` or a
    :class:`~sklearn.pipeline.Pipeline` that ends with one (for example after a
    ``StandardScaler(with_std=False)`` that centres the columns; it ignores NaN):
    the steps before it transform and inverse-transform the rows as they are.

    With metadata routing enabled, the scorer requests ``sample_weight``, so that
    :class:`~sklearn.model_selection.GridSearchCV` passes each test fold its
    weights; without weights, the entries of ``X`` that are NaN are missing and
    the others have weight one.

    Parameters
    ----------
    fraction : float, default=0.2
        Share of the observed entries of each test row that is hidden.
    random_state : int, default=0
        Seed of the hidden entries. A fixed seed hides the same entries from every
        candidate of a search, so that they are compared on the same entries.

    Examples
    --------
    >>> import numpy as np
    >>> import sklearn
    >>> from sklearn.model_selection import GridSearchCV, KFold
    >>> from sklearn_wsvd import WeightedTruncatedSVD
    >>> from sklearn_wsvd.model_selection import HiddenEntryScorer
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 20))
    >>> W = (rng.uniform(size=truth.shape) < 0.5).astype(float)
    >>> X = np.where(W > 0, truth + 0.5 * rng.normal(size=truth.shape), np.nan)
    >>> with sklearn.config_context(enable_metadata_routing=True):
    ...     est = WeightedTruncatedSVD(6).set_fit_request(sample_weight=True)
    ...     grid = GridSearchCV(
    ...         est, {"alpha": [0.0, 1.0, 3.0]}, scoring=HiddenEntryScorer(),
    ...         cv=KFold(3, shuffle=True, random_state=0),
    ...     ).fit(X, sample_weight=W)
    >>> float(grid.best_params_["alpha"]) > 0
    True
    """

    def __init__(self, fraction: float = 0.2, random_state: int = 0):
        self.fraction = fraction
        self.random_state = random_state

    def __repr__(self) -> str:
        return f"HiddenEntryScorer(fraction={self.fraction}, random_state={self.random_state})"

    def split(self, X, sample_weight=None):
        """The weights of the entries kept and of the entries hidden.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The rows to score; NaN where an entry is missing.
        sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
                default=None
            Their weights; None means one where ``X`` is finite, zero elsewhere.

        Returns
        -------
        kept, hidden : ndarray of shape (n_samples, n_features)
            Element-wise weights that add up to ``sample_weight`` and never both
            hold a positive weight for the same entry.
        """
        if not (isinstance(self.fraction, Real) and 0 < self.fraction < 1):
            raise ValueError(f"fraction must be in (0, 1), got {self.fraction!r}.")
        if not isinstance(self.random_state, Integral):
            raise ValueError(
                "random_state must be an int, so that every candidate is scored on the "
                f"same hidden entries; got {self.random_state!r}."
            )
        X = check_array(X, ensure_all_finite="allow-nan", dtype=np.float64)
        if sample_weight is None:
            W = np.isfinite(X).astype(np.float64)
        else:
            W = check_array(sample_weight, ensure_2d=False, dtype=np.float64)
            W = np.broadcast_to(W[:, None] if W.ndim == 1 else W, X.shape)
        rng = np.random.default_rng(self.random_state)
        hide = (W > 0) & (rng.random(X.shape) < self.fraction)
        if not hide.any():
            raise ValueError(
                f"No entry of these {X.shape[0]} rows was hidden (fraction="
                f"{self.fraction}): use larger test folds or a larger fraction."
            )
        return np.where(hide, 0.0, W), np.where(hide, W, 0.0)

    def __call__(self, estimator, X, y=None, sample_weight=None) -> float:
        X = check_array(X, ensure_all_finite="allow-nan", dtype=np.float64)
        kept, hidden = self.split(X, sample_weight)
        # Hidden entries become NaN of zero weight: nothing of them can reach the model.
        X_hat = _fold_in(estimator, np.where(kept > 0, X, np.nan), kept)
        error = hidden * np.square(np.where(hidden > 0, X - X_hat, 0.0))
        return -float(error.sum() / hidden.sum())

    def get_metadata_routing(self) -> MetadataRequest:
        """The scorer requests ``sample_weight`` (used when metadata routing is enabled)."""
        request = MetadataRequest(owner=type(self).__name__)
        request.score.add_request(param="sample_weight", alias=True)
        return request


def _fold_in(estimator, X, W):
    """Reconstruct the rows of ``X`` from their weighted entries ``W`` (0 where hidden)."""
    if isinstance(estimator, Pipeline):
        head, last = estimator[:-1], estimator[-1]
        Xt = head.transform(X)
        return head.inverse_transform(last.inverse_transform(last.transform(Xt, sample_weight=W)))
    return estimator.inverse_transform(estimator.transform(X, sample_weight=W))


def alpha_path(
    estimator,
    X,
    sample_weight=None,
    *,
    alphas=None,
    n_alphas: int = 10,
    eps: float = 1e-3,
    cv=5,
    scoring=None,
) -> dict:
    """Cross-validated error of a completion along decreasing ridge penalties, warm-started.

    For every split of ``cv`` (rows), the estimator is fitted to the training rows
    at each ``alpha`` from the largest to the smallest, each fit starting from
    the factors of the one before (the solution moves little from one penalty to
    the next, so it takes a fraction of the iterations of a fit from scratch),
    and scored on the test rows by ``scoring``. It computes what
    ``GridSearchCV(estimator, {"alpha": alphas}, cv=cv, scoring=scoring)`` does,
    up to where the solvers stop, in less time.

    Parameters
    ----------
    estimator : WeightedTruncatedSVD
        The model to cross-validate; its ``alpha`` and ``init`` are replaced.
    X : array-like of shape (n_samples, n_features)
        Data, NaN where an entry is missing (of zero weight).
    sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
            default=None
        Weights; None means one where ``X`` is finite and zero elsewhere.
    alphas : array-like or None, default=None
        Penalties to try. None: ``n_alphas`` values from ``alpha_max`` down to
        ``eps * alpha_max``, evenly spaced in log scale, where
        ``alpha_max = |W * X|_2`` (the largest singular value) is the penalty
        above which the best fit is zero.
    n_alphas : int, default=10
        Number of penalties when ``alphas`` is None.
    eps : float, default=1e-3
        Ratio of the smallest to the largest penalty when ``alphas`` is None.
    cv : int, cross-validation generator or iterable, default=5
        Splits of the rows, as in scikit-learn (an int means ``KFold``).
    scoring : callable or None, default=None
        ``scoring(estimator, X_test, sample_weight=W_test)``; None means
        :class:`HiddenEntryScorer()`.

    Returns
    -------
    path : dict
        ``"alphas"`` (decreasing), ``"test_scores"`` of shape (n_alphas,
        n_splits), ``"mean_test_score"``, ``"std_test_score"``, ``"best_alpha"``
        (the largest mean score) and ``"seconds"`` (wall time of the whole path).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd import WeightedTruncatedSVD
    >>> from sklearn_wsvd.model_selection import alpha_path
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 20))
    >>> W = (rng.uniform(size=truth.shape) < 0.5).astype(float)
    >>> X = np.where(W > 0, truth + 0.5 * rng.normal(size=truth.shape), np.nan)
    >>> path = alpha_path(WeightedTruncatedSVD(6), X, W, n_alphas=6, cv=3)
    >>> path["test_scores"].shape
    (6, 3)
    >>> bool(path["best_alpha"] > 0)
    True
    """
    start = time.perf_counter()
    X = check_array(X, ensure_all_finite="allow-nan", dtype=np.float64)
    if sample_weight is None:
        W = np.isfinite(X).astype(np.float64)
    else:
        W = check_array(sample_weight, ensure_2d=False, dtype=np.float64)
        W = np.broadcast_to(W[:, None] if W.ndim == 1 else W, X.shape)
    if alphas is None:
        alpha_max = float(np.linalg.norm(W * np.where(W > 0, X, 0.0), ord=2))
        alphas = alpha_max * np.logspace(0, np.log10(eps), n_alphas)
    alphas = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]
    scoring = HiddenEntryScorer() if scoring is None else scoring
    splits = list(check_cv(cv).split(X))
    scores = np.empty((len(alphas), len(splits)))
    for s, (train, test) in enumerate(splits):
        init = estimator.init
        for a, alpha in enumerate(alphas):
            model = clone(estimator).set_params(alpha=alpha, init=init)
            Z = model.fit_transform(X[train], sample_weight=W[train])
            init = (Z, model.components_)
            scores[a, s] = scoring(model, X[test], sample_weight=W[test])
    mean = scores.mean(axis=1)
    return {
        "alphas": alphas,
        "test_scores": scores,
        "mean_test_score": mean,
        "std_test_score": scores.std(axis=1),
        "best_alpha": float(alphas[int(np.argmax(mean))]),
        "seconds": time.perf_counter() - start,
    }
