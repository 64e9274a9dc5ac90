"""Choosing the ridge of a matrix completion by cross-validation over hidden entries.

Two ways, both of which hide observed entries, predict them, and score the
prediction, and neither of which lets a hidden entry reach a fit:

- :func:`alpha_path` splits the observed entries themselves into folds: each fit
  sees every row with one fold of its entries hidden, the way a completion sees
  its missing entries, along a warm-started path of decreasing penalties. The
  recommended way: on the completion benchmark it chose better than a grid
  search over the same penalties in five cases of eight and worse in two, in 20
  to 120 times less time; with ``select_rank=True`` it chooses the rank too.
- :class:`HiddenEntryScorer` works with scikit-learn's own searches
  (:class:`~sklearn.model_selection.GridSearchCV`, metadata routing), whose
  splitters split rows: it takes the rows of a test fold (which the model never
  saw), hides a share of their observed entries, folds each row in from the rest
  (``transform`` under the fitted ridge) and scores the hidden ones. The model is
  fitted to fewer rows than the final one, so the penalty it prefers is not
  quite the final model's.
"""

from __future__ import annotations

import time
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler, MinMaxScaler, RobustScaler, StandardScaler
from sklearn.utils import check_array, check_scalar
from sklearn.utils.metadata_routing import MetadataRequest

from ._backend import to_numpy, to_tensor
from ._estimator import WeightedTruncatedSVD, _check_missing_entries, _check_sample_weight
from ._solvers import (
    CLOSED_FORM,
    balance,
    live_components,
    pad_components,
    product_svd,
    resolve_solver,
)

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
    A column that no row of the pipeline's fit observes has no mean there; the
    scorer raises, naming it, where the scored rows observe it.

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
    ...     est = WeightedTruncatedSVD(3).set_fit_request(sample_weight=True)
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
        W = _dense(X, sample_weight)
        rng = np.random.default_rng(self.random_state)
        hide = (W > 0) & (rng.random(X.shape) < self.fraction)
        if not hide.any():
            raise ValueError(
                f"No entry of these {X.shape[0]} rows was hidden (fraction="
                f"{self.fraction}): use larger test folds or a larger fraction."
            )
        return np.where(hide, 0.0, W), np.where(hide, W, 0.0)

    def __call__(self, estimator, X, y=None, sample_weight=None) -> float:
        _check_no_metric(estimator, type(self).__name__)
        X_in, X = X, check_array(X, ensure_all_finite="allow-nan", dtype=np.float64)
        kept, hidden = self.split(X, sample_weight)
        # Hidden entries become NaN of zero weight: nothing of them can reach the model.
        X_hat = np.asarray(_fold_in(estimator, _like(np.where(kept > 0, X, np.nan), X_in), kept))
        if isinstance(estimator, Pipeline):  # a step's NaN mean reaches the hidden entries too
            _check_mapped((hidden > 0) & ~np.isfinite(X_hat))
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
        _check_mapped((W > 0) & np.isfinite(np.asarray(X)) & ~np.isfinite(np.asarray(Xt)))
        return head.inverse_transform(last.inverse_transform(last.transform(Xt, sample_weight=W)))
    return estimator.inverse_transform(estimator.transform(X, sample_weight=W))


def _like(values, X):
    """``values`` as a pandas DataFrame with the columns of ``X`` where ``X`` is one.

    So that an estimator fitted with feature names is given them (and does not warn).
    """
    if type(X).__module__.startswith("pandas") and hasattr(X, "columns"):
        return type(X)(values, columns=X.columns, index=X.index)
    return values


def _check_no_metric(estimator, name):
    """Raise where the estimator has a feature metric: it cannot leave an entry out."""
    if getattr(_last_step(estimator), "feature_metric", None) is not None:
        raise ValueError(
            f"{name} hides observed entries as missing ones, which an estimator with a "
            "feature_metric cannot have: the metric mixes every entry into the error. "
            "Cross-validate it over rows (GridSearchCV with its default scoring) instead."
        )


def _check_mapped(lost):
    """Raise where a pipeline's steps map observed entries (``lost``, a mask) to NaN."""
    if lost.any():
        columns = np.flatnonzero(lost.any(axis=0))
        raise ValueError(
            f"The pipeline's steps map {int(lost.sum())} observed entries to NaN, in columns "
            f"{columns[:10].tolist()}: fitted to rows without an observed entry in a column, "
            "a step such as StandardScaler has no mean for it. Fit the pipeline to rows that "
            "observe every column (with GridSearchCV, fewer folds), or choose alpha by "
            "alpha_path, whose folds keep an entry of every column."
        )


def alpha_path(
    estimator,
    X,
    sample_weight=None,
    *,
    alphas=None,
    n_alphas: int = 16,
    eps: float = 1e-3,
    n_folds: int = 5,
    max_folds: int | None = 1,
    patience: int | None = 2,
    select_rank: bool = False,
    refit: bool = False,
    tol: float | None = 3e-4,
    random_state: int = 0,
) -> dict:
    """Cross-validated error of a completion along decreasing ridge penalties, over entries.

    The observed entries (positive weight) are dealt at random into ``n_folds``
    folds (where all of a row's or a column's fall in one fold, one of them is
    in none, so that every fit sees something of every row and column, as the
    final fit does). For each of the first ``max_folds`` folds, the estimator
    is fitted to every row with that fold's entries hidden (NaN, zero weight)
    at each ``alpha`` from the largest down, each fit starting from the factors
    of the one before (the solution moves little from one penalty to the next,
    so a fit takes a fraction of the iterations it takes from scratch; the
    first, under a penalty, starts from zero factors, to which the solver adds
    the directions that lower the objective, rather than from the estimator's
    ``init``), and scored on the hidden entries by the negative weighted mean
    squared error,
    ``-sum W_h (X - L)**2 / sum W_h``.

    With ``select_rank=True`` the rank is chosen too. Each fit ``L = U S V^T``
    of rank ``k = n_components`` is also scored truncated to every rank
    ``r < k`` (its ``r`` largest components), standing in for the rank-``r``
    fit under the same penalty (under uniform weights the two are equal: both
    soft-threshold the same singular values). Where a lower rank scores better
    than the fit itself, a second path at that rank, on the same folds, settles
    it: the rank whose path scores better is ``best_rank``. (Down to the first
    penalty at which a fit keeps more than that rank's components, the ridge
    having removed the others, the two paths make the same fits: the second
    takes those as they are and goes on from there.) A lower rank with a
    smaller penalty shrinks what it keeps less, which predicts better where the
    data are a low-rank matrix plus noise; on the completion benchmark it
    lowered the error on the missing entries in five cases of eight, by 0.40%
    to 39%, and left it in three, for 1.2 to 1.6 times the time (on fourteen
    other completions, ``benchmarks/bench_rank_selection.py``, lowered it in
    eight, by up to 17%, and raised it in three, by 1.0% to 2.3%).

    Parameters
    ----------
    estimator : WeightedTruncatedSVD or Pipeline
        The model to cross-validate; its ``alpha`` and ``init`` are replaced (and
        ``n_components`` by the second path of ``select_rank``). A
        :class:`~sklearn.pipeline.Pipeline` ending with the estimator (after a
        ``StandardScaler(with_std=False)`` that centres the columns, say) has
        its steps before the estimator fitted to each fold once (they do not
        depend on the penalty), the weights going to its last step, and its
        prediction is mapped back through every step. Each fold's problem is
        validated once and every penalty runs the estimator's solver on it
        (not ``fit``, whose checks and conversions cost as much as the few
        iterations of a warm start on small problems).
    X : array-like of shape (n_samples, n_features)
        Data, NaN where an entry is missing (of zero weight).
    sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
            default=None
        Weights; None means one where ``X`` is finite and zero elsewhere.
    alphas : array-like or None, default=None
        Penalties to try. None: ``n_alphas`` values from ``alpha_max`` down to
        ``eps * alpha_max``, evenly spaced in log scale, where
        ``alpha_max = |W * X|_2`` (the largest singular value; of ``X`` as the
        pipeline's steps before the estimator transform it) is the penalty above
        which the best fit is zero.
    n_alphas : int, default=16
        Number of penalties when ``alphas`` is None.
    eps : float, default=1e-3
        Ratio of the smallest to the largest penalty when ``alphas`` is None.
    n_folds : int, default=5
        Number of folds of the observed entries.
    max_folds : int or None, default=1
        How many of the folds are hidden in turn; None hides every one (full
        ``n_folds``-fold cross-validation). The default, one, holds out a
        ``1 / n_folds`` share of the entries once: on the eight problems of
        ``benchmarks/bench_completion.py`` it chose the penalty that five folds
        chose in seven and, in the other, one whose error on the truly missing
        entries was 0.38% higher, in 0.21 to 0.27 times the time.
    patience : int or None, default=2
        Stop the path once the mean score has not improved on its best for this
        many penalties in a row (the error rises again as the penalty falls past
        its best); None computes every penalty. The fits past the best are the
        costliest of a path (the most components, the most iterations). On the
        22 completions of ``benchmarks/bench_completion.py`` and
        ``benchmarks/bench_rank_selection.py`` stopping two or three penalties
        past the best chose the penalty, rank and centring of the full path in
        every case, and one in all but one (with ``select_rank``); every full
        path's score fell at each penalty past its best.
    select_rank : bool, default=False
        Choose the rank as well as the penalty (see above).
    refit : bool, default=False
        Also fit a clone of ``estimator`` with ``best_alpha`` and ``best_rank`` to
        every observed entry of ``X``, to the estimator's own ``tol``, returned
        as ``"estimator"``. The fit starts from the first fold's fit at that
        penalty and rank (on the completion benchmark it took 0.28 to 1.4 times
        the iterations of a fit from the estimator's ``init``, errors -0.04% to
        +0.22% apart); the clone's ``init`` is the estimator's again once it is
        fitted.
    tol : float or None, default=3e-4
        The ``tol`` of the path's fits; None uses the estimator's. Each stops
        at its first iteration that improves the objective by less than that,
        relative to it, without the estimator's wait for the trend of the
        decreases and without its search at the stall for components to revive
        (the next penalty's start revives them): they only have to rank the
        penalties. On the 22 completions of ``benchmarks/bench_rank_selection.py``
        (``select_rank=True``) 3e-4 chose what 1e-4 with that search chose in
        17 and, in the other five, choices whose errors on the missing entries
        were -1.13% to +0.01% apart, in a median 0.77 times the time; 1e-3
        took 0.68 times and moved the errors by -0.64% to +0.69%.
    random_state : int, default=0
        Seed of the folds.

    Returns
    -------
    path : dict
        ``"alphas"`` (decreasing; those computed),
        ``"test_scores"`` of shape (n_alphas, folds fitted),
        ``"mean_test_score"``, ``"std_test_score"``, ``"best_alpha"`` (the
        penalty of the largest mean score at ``best_rank``), ``"best_rank"``
        (``n_components`` unless ``select_rank``), ``"best_score"`` and
        ``"seconds"`` (wall time, the refit included). With ``refit``, the
        fitted ``"estimator"``. With ``select_rank``, also
        ``"rank_scores"`` of shape (n_alphas, n_components), the mean score of
        each fit truncated to each rank, and, where a second path ran,
        ``"rank_path"``: its ``"rank"`` and its own ``"alphas"``,
        ``"test_scores"`` and ``"mean_test_score"`` (the fits it shares with
        the first path included).

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd import WeightedTruncatedSVD, alpha_path
    >>> rng = np.random.default_rng(0)
    >>> truth = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 20))
    >>> W = (rng.uniform(size=truth.shape) < 0.5).astype(float)
    >>> X = np.where(W > 0, truth + 0.5 * rng.normal(size=truth.shape), np.nan)
    >>> path = alpha_path(WeightedTruncatedSVD(5), X, W, n_alphas=8, n_folds=3, max_folds=None)
    >>> path["test_scores"].shape[1]
    3
    >>> bool(path["best_alpha"] > 0)
    True
    >>> chosen = alpha_path(WeightedTruncatedSVD(8), X, W, select_rank=True, refit=True)
    >>> chosen["best_rank"], chosen["estimator"].n_components
    (3, 3)
    """
    start = time.perf_counter()
    X_in, X = X, check_array(X, ensure_all_finite="allow-nan", dtype=np.float64)
    W = _dense(X, sample_weight)
    check_scalar(n_folds, "n_folds", Integral, min_val=2)
    for name, value in {"max_folds": max_folds, "patience": patience}.items():
        if value is not None:
            check_scalar(value, name, Integral, min_val=1)
    if tol is not None:
        check_scalar(tol, "tol", Real, min_val=0)
    for name, value in {"select_rank": select_rank, "refit": refit}.items():
        check_scalar(value, name, (bool, np.bool_))
    if alphas is None:
        check_scalar(n_alphas, "n_alphas", Integral, min_val=1)
        check_scalar(eps, "eps", Real, min_val=0, max_val=1, include_boundaries="neither")
    else:
        alphas = np.asarray(alphas, dtype=np.float64)
        if alphas.ndim != 1 or alphas.size == 0 or not np.all(np.isfinite(alphas) & (alphas >= 0)):
            raise ValueError(
                "alphas must be a non-empty 1-D list of finite non-negative penalties, "
                f"got {alphas!r}."
            )
    if not isinstance(_last_step(estimator), WeightedTruncatedSVD):
        raise TypeError(
            "alpha_path needs a WeightedTruncatedSVD or a Pipeline ending with one, got "
            f"{type(_last_step(estimator)).__name__}."
        )
    _check_no_metric(estimator, "alpha_path")
    if (solver := _last_step(estimator).solver) in CLOSED_FORM:
        raise ValueError(
            f"alpha_path hides entries by their weights, which solver={solver!r} does not "
            "fit exactly (it ignores or simplifies them): use an iterative solver or 'auto'."
        )
    prefix = f"{estimator.steps[-1][0]}__" if isinstance(estimator, Pipeline) else ""
    if alphas is None:  # alpha_max of the data as the last step sees it (centred, say)
        Xt = clone(estimator[:-1]).fit_transform(X) if prefix else X
        alpha_max = _spectral_norm(W * np.where(W > 0, Xt, 0.0))
        alphas = alpha_max * np.logspace(0, np.log10(eps), n_alphas)
    alphas = np.sort(np.asarray(alphas, dtype=np.float64))[::-1]
    fold = _entry_folds(W > 0, n_folds, random_state)
    if any(not np.any(fold == f) for f in range(n_folds)):
        raise ValueError(f"Too few observed entries for n_folds={n_folds}: a fold is empty.")
    folds = [
        _Fold(estimator, X, W, fold == f, tol) for f in range(min(n_folds, max_folds or n_folds))
    ]
    seeds, k = {}, _last_step(estimator).n_components
    path = _path(folds, k, alphas, patience, select_rank, seeds)
    path["best_rank"] = k
    if select_rank:
        by_rank = path["rank_scores"].max(axis=0)
        rank = int(np.argmax(by_rank)) + 1
        # Settled by a path at that rank, unless its truncation only ties the fit (a
        # rank-k fit that leaves components unused equals its truncation, up to rounding).
        if by_rank[rank - 1] - path["best_score"] > 1e-9 * abs(path["best_score"]):
            other = _path(folds, rank, alphas, patience, False, seeds, rank)
            path["rank_path"] = {"rank": rank} | {
                key: other[key] for key in ("alphas", "test_scores", "mean_test_score")
            }
            if other["best_score"] > path["best_score"]:
                path.update(
                    best_rank=rank,
                    best_alpha=other["best_alpha"],
                    best_score=other["best_score"],
                    best_fit=other["best_fit"],
                )
    best_fit = path.pop("best_fit")
    if refit:
        rank, init = path["best_rank"], f"{prefix}init"
        best = {f"{prefix}alpha": path["best_alpha"], f"{prefix}n_components": rank}
        model = path["estimator"] = clone(estimator).set_params(**best)
        if best_fit is not None:  # balanced, as the ridge's optimum is
            U, V = best_fit
            model.set_params(**{init: pad_components(*balance(U, V.T), rank)})
        model.fit(X_in, **{f"{prefix}sample_weight": W})  # the user's: its feature names
        model.set_params(**{init: estimator.get_params()[init]})
    path["seconds"] = time.perf_counter() - start
    return path


def _entry_folds(observed, n_folds: int, random_state: int):
    """The fold of each observed entry (0 to ``n_folds - 1``), -1 elsewhere, at random.

    Where every observed entry of a row or a column falls in the same fold, one
    of them, drawn at random, is in none (-2: never hidden). Hidden together,
    they would leave the fit nothing of that row or column to go on (a
    centring step's mean of the column would be NaN), which the completion of
    the missing entries, fitted to every observed one, never meets.
    """
    rng = np.random.default_rng(random_state)
    fold = np.where(observed, rng.integers(n_folds, size=observed.shape), -1)
    keys = np.where(observed, rng.random(observed.shape), -1.0)
    for axis in (1, 0):  # rows, then columns: an entry out of every fold spares both
        low = np.where(observed, fold, n_folds).min(axis=axis)
        high = fold.max(axis=axis)
        lone = np.flatnonzero((low == high) & (high >= 0))
        spared = keys.argmax(axis=axis)[lone]
        fold[(lone, spared) if axis == 1 else (spared, lone)] = -2
    return fold


class _Fold:
    """One fold of a path: the estimator's problem with the fold's entries hidden, and its scoring.

    The problem is validated and moved to the estimator's device and dtype once,
    and every penalty solves it as it is (the estimator's core,
    :meth:`~sklearn_wsvd.WeightedTruncatedSVD._solve`, not its ``fit``, whose
    validation and conversions cost as much as the few iterations of a warm
    start on small problems). The pipeline's steps before the estimator do not
    depend on the penalty either: they are fitted once, to the fold.
    """

    def __init__(self, estimator, X, W, hidden, tol=None):
        X_f, W_f = np.where(hidden, np.nan, X), np.where(hidden, 0.0, W)
        pipeline = isinstance(estimator, Pipeline)
        self.head = clone(estimator[:-1]) if pipeline else None
        if self.head is not None:
            X_f = self.head.fit_transform(X_f)
        self.model = clone(_last_step(estimator))
        if tol is not None:
            self.model.tol = tol
        self.model._validate_params()
        _, self.X, self.W = self.model._validate_input(X_f, W_f, reset=True)  # W_f: 2-D
        self.solver, self.solvers = self.model.solver, {}
        # The hidden entries: rows, columns, data and weights.
        self.rows, self.cols = np.nonzero(hidden)
        self.x, self.w = X[self.rows, self.cols], W[self.rows, self.cols]
        steps = [] if self.head is None else [step for _, step in self.head.steps]
        self.affine = all(
            step in (None, "passthrough") or isinstance(step, _AFFINE_STEPS) for step in steps
        )
        if self.affine:  # x -> c x + s per column, read off by mapping back zeros and ones
            shift = self._back(np.zeros((1, X.shape[1])))[0]
            scale = self._back(np.ones((1, X.shape[1])))[0] - shift
            c, e = torch.from_numpy(scale[self.cols]), torch.from_numpy(self.x - shift[self.cols])
            w = torch.from_numpy(self.w)
            self.c, self.e, self.w_t = c, e, w
            self.wce, self.wcc = w * c * e, w * c * c
            self.residual = float((w * e.square()).sum())
            self.index = torch.from_numpy(self.rows), torch.from_numpy(self.cols)
            self.buffers = None

    def _back(self, L):
        return L if self.head is None else self.head.inverse_transform(L)

    def fit(self, alpha, k, init):
        """Factors ``(A, B)`` of the fit at ``alpha`` and rank ``k`` from ``init`` (or None)."""
        # Set directly: set_params inspects the signature, 0.2 ms a fit. The solver
        # is resolved once ("auto" reads the weights, and only alpha == 0 matters).
        model = self.model
        model.alpha, model.n_components = alpha, k
        if (alpha == 0) not in self.solvers:
            self.solvers[alpha == 0] = resolve_solver(self.solver, self.W, alpha)
        model.solver = self.solvers[alpha == 0]
        m, n = self.X.shape
        model._check_rank(m, n)
        if init is None and alpha > 0:  # from zero: the revival adds what lowers the objective
            init = (self.X.new_zeros(m, k), self.X.new_zeros(k, n))
        elif init is None:
            init = model._check_init(m, n, self.X)
        # No trend and no revival at the stall (see iterate): the path's fits only rank
        # penalties, and each one's start revives what the stall before would have.
        options = {"trend": False, "revive_at_stall": False}
        factors = model._solve(self.X, self.W, init, stacklevel=5, **options)
        return factors.A, factors.B

    def _buffers(self, k):
        """Two (hidden entries x ``k``) float64 tensors, allocated once per fold.

        Fresh ones at every fit would cost five times the products done in them
        (0.5 against 2.5 ms at 6848 x 40): the allocator gives blocks that size
        back to the system when freed, and every new one faults its pages in.
        """
        size = len(self.rows) * k
        if self.buffers is None or len(self.buffers[0]) < size:
            self.buffers = [torch.empty(size, dtype=torch.float64) for _ in range(2)]
        return [buffer[:size].view(-1, k) for buffer in self.buffers]

    def score(self, U, V, truncations=False):
        """Score of the fit ``L = U V^T`` on the hidden entries, and of its truncations.

        ``-sum w (x - L)**2 / sum w``, with ``L`` mapped back through the head.
        With ``truncations``, ``U, V`` are the fit's singular components (in
        decreasing order, :func:`_components`) and its truncations ``L_r`` to
        the ``r`` largest are scored too (the last, ``L_k``, is the fit itself):
        at the hidden entries alone where every step of the head is a scaler
        (``x -> c x + s`` per column), and whole otherwise. At the hidden
        entries, with ``T_hl = U_il V_jl`` for entry ``h = (i, j)`` and ``e = x
        - s``, the error of ``L_r`` is ``sum w e^2 - 2 sum_{l<=r} d_l +
        sum_{l,l'<=r} Q_ll'``, with ``d = T^T (w c e)`` and ``Q = T^T diag(w
        c^2) T``: one product for every rank, by torch (not numpy's BLAS: see
        :func:`_spectral_norm`).
        """
        weight = self.w.sum()
        if not self.affine:  # the products by torch, as below
            scores = []
            for r in range(1, U.shape[1] + 1) if truncations else [U.shape[1]]:
                L = (U[:, :r] @ V[:, :r].T).numpy()
                error = self.x - self._back(L)[self.rows, self.cols]
                scores.append(-float((self.w * np.square(error)).sum() / weight))
            return scores[-1], np.asarray(scores) if truncations else None
        rows, cols = self.index
        T, scratch = self._buffers(U.shape[1])
        torch.index_select(U, 0, rows, out=T).mul_(torch.index_select(V, 0, cols, out=scratch))
        if not truncations:
            error = self.e - self.c * T.sum(1)
            return -float((self.w_t * error.square()).sum()) / weight, None
        d, Q = self.wce @ T, T.T @ torch.mul(T, self.wcc[:, None], out=scratch)
        squares = self.residual - 2 * d.cumsum(0) + Q.cumsum(0).cumsum(1).diagonal()
        scores = -squares.numpy() / weight
        return float(scores[-1]), scores


def _path(folds, k, alphas, patience, truncations, seeds, rank=None):
    """Scores of every penalty (and, with ``truncations``, of every rank) on the ``folds``.

    With ``truncations``, ``seeds`` is filled for a later path at a lower rank:
    for each rank ``q``, the last penalty up to which no fit had more than ``q``
    components (the others vanished under the ridge), its scores and its fits.
    Up to that penalty a path at a rank ``r >= q`` makes the same fits (each has
    room for all its components): given ``seeds`` and ``rank``, this path takes
    those of the largest ``q <= rank`` as they are and goes on from their fits.
    """
    inits = [None] * len(folds)
    scores, ranked, most, best_fit = [], [], 0, None
    seed = max((q for q in seeds if q <= rank), default=None) if rank else None
    if seed is not None:
        scores, fits = list(seeds[seed][0]), seeds[seed][1]
        inits = [pad_components(A, B, rank) for A, B in fits]
    for alpha in alphas[len(scores) :]:
        row, row_ranked, fits = [], [], []
        for f, fold in enumerate(folds):
            A, B = inits[f] = fold.fit(alpha, k, inits[f])
            U, V = _live(A, B, truncations)
            score, truncated = fold.score(U, V, truncations)
            row.append(score)
            if truncations:  # a truncation to more components than the fit has is the fit
                truncated = np.pad(truncated, (0, k - len(truncated)), mode="edge")
            row_ranked.append(truncated)
            fits.append((U, V))
        scores.append(row)
        if truncations:
            ranked.append(np.mean(row_ranked, axis=0))
            dtype = A.dtype
            most = max(most, *(_rank(U, dtype) for U, _ in fits))
            if most < k:  # in the fit's dtype and place: a start needs no more
                starts = [(U[:, :most].to(A), V[:, :most].T.to(A)) for U, V in fits]
                seeds[most] = (list(scores), starts)
        means = np.mean(scores, axis=1)
        best = int(np.argmax(means))
        if best == len(means) - 1:
            best_fit = fits[0]
        # past a real minimum of the error (not the flat start of zero fits)
        if patience is not None and len(means) - 1 - best >= patience and means[best] > means[0]:
            break
    scores = np.array(scores)
    mean = scores.mean(axis=1)
    path = {
        "alphas": alphas[: len(scores)],
        "test_scores": scores,
        "mean_test_score": mean,
        "std_test_score": scores.std(axis=1),
        "best_alpha": float(alphas[int(np.argmax(mean))]),
        "best_score": float(mean.max()),
        # The first fold's fit there, where this path computed it (None: a seed's).
        "best_fit": best_fit,
    }
    if truncations:  # computed over the rank-k path's penalties: its stop is theirs
        path["rank_scores"] = np.array(ranked)
    return path


def _live(A, B, components: bool):
    """``U, V`` with ``U V^T`` the fit ``A B`` (float64, CPU), of its live components alone.

    The vanished ones (:func:`~sklearn_wsvd._solvers.live_components`; one is
    kept where all have) would cost as much to score and add nothing. With
    ``components``, the singular ones (:func:`_components`).
    """
    live = live_components(A, B)
    A, B = live if live[0].shape[1] else (A[:, :1], B[:1])
    return _components(A, B) if components else (A.double().cpu(), B.double().cpu().T)


def _rank(U, dtype) -> int:
    """Components the ridge left in a fit ``U V^T``: those above the rounding of its dtype."""
    size = torch.linalg.vector_norm(U, dim=0)
    return int((size > torch.finfo(dtype).eps ** 0.5 * size.max()).sum())


# Steps that map each column by ``x -> a x + b``: truncations are scored at the hidden
# entries alone behind them.
_AFFINE_STEPS = (StandardScaler, MinMaxScaler, MaxAbsScaler, RobustScaler)


def _last_step(model):
    """The estimator itself, or the last step of a pipeline."""
    return model[-1] if isinstance(model, Pipeline) else model


def _components(A, B):
    """``U, V`` with ``A @ B = U @ V.T``, columns in decreasing singular value, float64 on CPU.

    ``U`` holds the left singular vectors scaled by the singular values and ``V``
    the right ones, from the thin QRs of the factors in O((m + n) k^2). By
    torch's LAPACK, as :func:`_spectral_norm`.
    """
    Qa, U, s, Vt, Qb = product_svd(A.double().cpu(), B.double().cpu())
    return Qa @ (U * s), Qb @ Vt.T


def _spectral_norm(M) -> float:
    """The largest singular value of a numpy matrix, by torch's LAPACK.

    From the eigenvalues of the Gram matrix of its smaller side, in float64:
    half the time of its singular values or less. Not numpy's: a numpy BLAS
    call leaves its threads spinning for a while, and the small torch
    operations of the fits that follow then wait for the cores
    (``benchmarks/bench_threads.py``).
    """
    M = to_tensor(M, device=torch.device("cpu"), dtype=torch.float64)
    gram = M @ M.T if M.shape[0] <= M.shape[1] else M.T @ M
    return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0.0)) ** 0.5


def _dense(X, sample_weight):
    """Element-wise weights, validated as the estimator's: one where ``X`` is finite when None."""
    if sample_weight is None:
        return np.isfinite(X).astype(np.float64)
    X = torch.from_numpy(X)
    W = _check_sample_weight(sample_weight, X)
    W = W[:, None].expand(X.shape) if W.ndim == 1 else W
    _check_missing_entries(torch.isnan(X), W > 0)
    return to_numpy(W)
