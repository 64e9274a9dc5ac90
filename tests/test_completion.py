"""Matrix completion: the ridge (a nuclear-norm penalty), folding rows in under it, and
choosing it by cross-validation over hidden entries."""

import warnings

import numpy as np
import pytest
import sklearn
from sklearn.base import clone
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

from sklearn_wsvd import WeightedTruncatedSVD, _estimator, model_selection
from sklearn_wsvd.model_selection import HiddenEntryScorer, _fold_in, alpha_path


def soft_thresholded_svd(M, alpha):
    U, s, Vt = np.linalg.svd(M, full_matrices=False)
    return (U * np.maximum(s - alpha, 0.0)) @ Vt


def noisy_completion(seed=0, m=80, n=40, rank=3, observed=0.4, noise=1.0):
    """A rank-3 truth, 40% of it observed under unit noise: NaN elsewhere."""
    rng = np.random.default_rng(seed)
    truth = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
    W = (rng.uniform(size=truth.shape) < observed).astype(float)
    X = np.where(W > 0, truth + noise * rng.normal(size=truth.shape), np.nan)
    return X, W, truth


def hidden_rmse(est, X, W, truth):
    L = est.inverse_transform(est.transform(X, sample_weight=W))
    return float(np.sqrt(np.mean((L - truth)[W == 0] ** 2)))


@pytest.mark.parametrize("solver", ["svd", "als", "als-cg"])
def test_ridge_under_uniform_weights_is_the_soft_thresholded_svd(rng, solver):
    # The ridge alpha (|A|^2 + |B|^2) is the nuclear-norm penalty 2 alpha |L|_*
    # (SoftImpute's, with nothing missing): the optimum soft-thresholds the
    # singular values, and components below the threshold vanish.
    X = rng.normal(size=(30, 20))
    s = np.linalg.svd(X, compute_uv=False)
    alpha = float(s[3] + s[4]) / 2  # four singular values survive, k = 8 leaves room
    est = WeightedTruncatedSVD(
        8, solver=solver, alpha=alpha, dtype="float64", tol=1e-12, max_iter=1000
    )
    init = "random" if solver != "svd" else None  # the rank1 start is already exact here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # the dying components crawl
        est.set_params(init=init, random_state=0)
        L = est.fit_transform(X, sample_weight=np.ones(X.shape)) @ est.components_
    expected = soft_thresholded_svd(X, alpha)
    atol = 1e-10 if solver == "svd" else 1e-4
    np.testing.assert_allclose(L, expected, atol=atol * np.abs(X).max())
    np.testing.assert_allclose(est.singular_values_, np.maximum(s[:8] - alpha, 0), atol=atol)
    penalty = 2 * alpha * np.linalg.svd(expected, compute_uv=False).sum()
    nuclear = np.sum((X - expected) ** 2) + penalty
    assert est.history_["objective"][-1] == pytest.approx(nuclear, rel=10 * atol)


@pytest.mark.parametrize("solver", ["als", "ncg"])
@pytest.mark.parametrize(("m", "n", "alpha", "rank"), [(40, 25, 6.0, 7), (300, 150, 22.0, 6)])
def test_ridge_completion_is_a_soft_impute_fixed_point(solver, m, n, alpha, rank):
    # With missing entries the optimum L of the ridge with enough components is
    # the nuclear-norm-penalised completion: L = S_alpha(W * X + (1 - W) * L),
    # the fixed point that SoftImpute iterates to (Mazumder, Hastie, Tibshirani 2010).
    # Components that the ridge zeroes on the way are revived where the objective
    # can still fall: without that, ALS stopped at rank 5 where the optimum has 7.
    # From a side of 128 a revival first tries a randomized SVD's direction.
    X, W, _ = noisy_completion(m=m, n=n, observed=0.6)
    est = WeightedTruncatedSVD(12, solver=solver, alpha=alpha, dtype="float64", tol=1e-14)
    L = est.set_params(max_iter=5000).fit_transform(X, sample_weight=W) @ est.components_
    filled = np.where(W > 0, X, L)
    assert np.sum(est.singular_values_ > 1e-6) == rank  # the penalty chose the rank
    np.testing.assert_allclose(soft_thresholded_svd(filled, alpha), L, atol=1e-5)


@pytest.mark.parametrize("weights", ["none", "rows", "entries"])
@pytest.mark.parametrize("metric", [False, True])
def test_transform_folds_the_training_rows_back_to_their_fit(rng, weights, metric):
    # With a ridge, transform solves each row's problem under the same ridge, so
    # transform(X) == fit_transform(X) on the training rows (it used to project
    # orthogonally, ignoring the penalty).
    X = rng.normal(size=(40, 15))
    W = {
        "none": None,
        "rows": rng.uniform(0.5, 2.0, size=40),
        "entries": rng.uniform(0.5, 2.0, size=X.shape),
    }[weights]
    C = np.diag(rng.uniform(0.5, 2.0, size=15)) if metric else None
    est = WeightedTruncatedSVD(
        4, solver="als", alpha=3.0, feature_metric=C, dtype="float64", tol=1e-14, max_iter=5000
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = est.fit_transform(X, sample_weight=W)
    np.testing.assert_allclose(est.transform(X, sample_weight=W), Z, atol=1e-6)
    assert est.score(X, sample_weight=W) < 0


def test_hidden_entries_split_the_observed_ones(rng):
    X, W, _ = noisy_completion()
    scorer = HiddenEntryScorer(fraction=0.3, random_state=1)
    kept, hidden = scorer.split(X, W)
    np.testing.assert_array_equal(kept + hidden, W)
    assert not np.any((kept > 0) & (hidden > 0))
    assert hidden.sum() / W.sum() == pytest.approx(0.3, abs=0.05)
    np.testing.assert_array_equal(scorer.split(X, W)[1], hidden)  # the same for every candidate
    _, by_nan = scorer.split(X)  # no weights: NaN is missing
    np.testing.assert_array_equal(by_nan, hidden)
    for bad, match in [({"fraction": 1.0}, "fraction"), ({"random_state": None}, "an int")]:
        with pytest.raises(ValueError, match=match):
            HiddenEntryScorer(**bad).split(X, W)


class _Spy(WeightedTruncatedSVD):
    """Records what every fit and transform sees (clones share the class's list)."""

    calls: list = []

    def fit(self, X, y=None, sample_weight=None, sample_metric=None):
        self.calls.append(("fit", np.array(X), np.array(sample_weight)))
        return super().fit(X, y, sample_weight=sample_weight, sample_metric=sample_metric)

    def fit_transform(self, X, y=None, sample_weight=None, sample_metric=None):
        self.calls.append(("fit", np.array(X), np.array(sample_weight)))
        return super().fit_transform(X, y, sample_weight=sample_weight, sample_metric=sample_metric)

    def transform(self, X, sample_weight=None, sample_metric=None):
        self.calls.append(("transform", np.array(X), np.array(sample_weight)))
        return super().transform(X, sample_weight=sample_weight, sample_metric=sample_metric)


def test_no_hidden_entry_ever_reaches_fit_or_the_fold_in():
    X, W, _ = noisy_completion()
    X = X + 1e-3 * np.arange(X.shape[0])[:, None]  # rows told apart by their values
    scorer = HiddenEntryScorer(fraction=0.25)
    _Spy.calls = []
    with sklearn.config_context(enable_metadata_routing=True):
        est = _Spy(6, alpha=2.0).set_fit_request(sample_weight=True)
        est.set_transform_request(sample_weight=True)
        GridSearchCV(
            est, {"alpha": [1.0, 3.0]}, scoring=scorer, cv=KFold(4, shuffle=True, random_state=0)
        ).fit(X, sample_weight=W)
    calls = _Spy.calls[:-1]  # the last one is the refit on every row
    assert [c[0] for c in calls] == ["fit", "transform"] * 8
    for (_, X_fit, _), (_, X_in, W_in) in zip(calls[::2], calls[1::2], strict=True):
        fitted_rows = {tuple(np.nan_to_num(r, nan=np.inf)) for r in X_fit}
        test_rows = _rows_of(X, X_in)
        assert not any(tuple(np.nan_to_num(X[i], nan=np.inf)) in fitted_rows for i in test_rows)
        # the fold-in sees the test rows with the hidden entries removed, value and weight
        kept, hidden = scorer.split(X[test_rows], W[test_rows])
        assert hidden.sum() > 0
        assert np.all(np.isnan(X_in[hidden > 0])) and np.all(W_in[hidden > 0] == 0)
        np.testing.assert_array_equal(W_in, kept)


def _rows_of(X, X_in):
    """Indices of the rows of ``X`` that ``X_in`` holds (NaN-tolerant, in order)."""
    out = []
    for row in X_in:
        same = np.all((X == row) | np.isnan(row), axis=1)
        out.append(int(np.flatnonzero(same)[0]))
    return out


def test_grid_search_picks_a_penalty_that_lowers_the_hidden_error():
    X, W, truth = noisy_completion()
    alphas = [0.0, 1.0, 3.0, 10.0, 30.0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", ".*fewer entries of non-zero weight", UserWarning)
        with sklearn.config_context(enable_metadata_routing=True):
            est = WeightedTruncatedSVD(8, random_state=0).set_fit_request(sample_weight=True)
            grid = GridSearchCV(
                est,
                {"alpha": alphas},
                scoring=HiddenEntryScorer(),
                cv=KFold(5, shuffle=True, random_state=0),
            ).fit(X, sample_weight=W)
        unpenalised = WeightedTruncatedSVD(8, random_state=0).fit(X, sample_weight=W)
    assert grid.best_params_["alpha"] > 0
    chosen = hidden_rmse(grid.best_estimator_, X, W, truth)
    assert chosen < 0.3 * hidden_rmse(unpenalised, X, W, truth)
    # within 10% of the best penalty of the grid (which needs the truth to find)
    best = min(
        hidden_rmse(
            WeightedTruncatedSVD(8, alpha=a, random_state=0).fit(X, sample_weight=W), X, W, truth
        )
        for a in alphas[1:]
    )
    assert chosen < 1.1 * best
    # Without routing (and weights), NaN marks the missing entries for the estimator
    # and the scorer alike: the same search, score for score.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", ".*fewer entries of non-zero weight", UserWarning)
        plain = GridSearchCV(
            WeightedTruncatedSVD(8, random_state=0),
            {"alpha": alphas},
            scoring=HiddenEntryScorer(),
            cv=KFold(5, shuffle=True, random_state=0),
        ).fit(X)
    np.testing.assert_array_equal(
        plain.cv_results_["mean_test_score"], grid.cv_results_["mean_test_score"]
    )


def _entry_folds(W, n_folds, seed=0):
    fold = model_selection._entry_folds(W > 0, n_folds, seed)
    # no row or column of these problems has all its entries in one fold
    np.testing.assert_array_equal(
        fold, np.where(W > 0, np.random.default_rng(seed).integers(n_folds, size=W.shape), -1)
    )
    return fold


def test_every_fold_leaves_every_row_and_column_an_entry_to_fit():
    rng = np.random.default_rng(0)
    W = (rng.uniform(size=(40, 30)) < 0.1).astype(float)  # 3 or 4 entries a row
    W[:, 0], W[:3, 0] = 0.0, 1.0  # a column of three
    W[:, 1], W[5, 1] = 0.0, 1.0  # and one of one
    fold = model_selection._entry_folds(W > 0, 3, random_state=0)
    deal = np.where(W > 0, np.random.default_rng(0).integers(3, size=W.shape), -1)
    spared = fold == -2
    np.testing.assert_array_equal(fold[~spared], deal[~spared])
    # at most one entry of each row and column all of whose entries the deal put together
    lone = [np.sum([len(set(d[d >= 0])) == 1 for d in M]) for M in (deal, deal.T)]
    assert spared[5, 1] and 0 < spared.sum() <= sum(lone)
    for f in range(3):
        fitted = (W > 0) & (fold != f)
        for axis in (0, 1):
            assert np.all(fitted.any(axis=axis) == (W > 0).any(axis=axis))


def test_a_centred_path_scores_columns_of_few_entries():
    # Hidden together, a column's only entries left its mean NaN, and every score.
    X, W, _ = noisy_completion()
    W[:, :2], W[:2, 0], W[0, 1] = 0.0, 1.0, 1.0  # columns of two entries and of one
    X = np.where(W > 0, np.nan_to_num(X, nan=1.0), np.nan)
    model = make_pipeline(StandardScaler(with_std=False), WeightedTruncatedSVD(6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        path = alpha_path(model, X, W, n_folds=2, max_folds=None, select_rank=True)
    assert np.all(np.isfinite(path["test_scores"])) and path["best_alpha"] > 0


@pytest.mark.parametrize("seed", range(6))
def test_sparse_centred_paths_score_every_penalty(seed):
    # Random small completions with few entries a row and column (each observed
    # at least once), centred, two or three folds: the deals that hid whole
    # columns and gave NaN scores in 13 of 120 such runs.
    rng = np.random.default_rng(seed)
    m, n = rng.integers(8, 40, size=2)
    X = rng.normal(size=(m, 2)) @ rng.normal(size=(2, n)) + 0.3 * rng.normal(size=(m, n))
    W = (rng.uniform(size=(m, n)) < 0.15).astype(float)
    W[rng.integers(m, size=n), np.arange(n)] = 1.0
    X = np.where(W > 0, X, np.nan)
    model = make_pipeline(StandardScaler(with_std=False), WeightedTruncatedSVD(3))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        path = alpha_path(model, X, W, n_folds=int(rng.integers(2, 4)), select_rank=True)
    assert np.all(np.isfinite(path["test_scores"]))


def test_the_path_cross_validates_over_entries_warm_as_cold():
    X, W, _ = noisy_completion(seed=1)
    alphas = [20.0, 8.0]  # the optimum's rank (1, 5) stays below k: convex, one optimum
    est = WeightedTruncatedSVD(8, tol=1e-10, max_iter=3000, random_state=0, dtype="float64")
    path = alpha_path(est, X, W, alphas=alphas, n_folds=3, max_folds=None, patience=None, tol=None)
    fold = _entry_folds(W, 3)
    for a, alpha in enumerate(alphas):
        for f in range(3):  # each fold fitted from scratch: the same optimum
            hidden = fold == f
            cold = clone(est).set_params(alpha=alpha)
            L = cold.fit_transform(np.where(hidden, np.nan, X), sample_weight=W * ~hidden)
            L = L @ cold.components_
            expected = -np.mean((X - L)[hidden] ** 2)
            assert path["test_scores"][a, f] == pytest.approx(expected, rel=1e-4)
    np.testing.assert_allclose(path["mean_test_score"], path["test_scores"].mean(axis=1))
    assert path["best_alpha"] == alphas[int(np.argmax(path["mean_test_score"]))]


def test_the_path_never_lets_a_hidden_entry_reach_a_fit(monkeypatch):
    # What the solver is given, at every penalty of every fold: the path solves each
    # fold's problem directly, not through the estimator's fit.
    X, W, _ = noisy_completion()
    calls, solve = [], _estimator.solve

    def spy(Y, weights, k, **kwargs):
        calls.append((Y.numpy().copy(), weights.numpy().copy(), kwargs["tol"]))
        return solve(Y, weights, k, **kwargs)

    monkeypatch.setattr(_estimator, "solve", spy)
    est = WeightedTruncatedSVD(6)
    alpha_path(est, X, W, n_alphas=3, n_folds=4, max_folds=None, patience=None, refit=True)
    fold = _entry_folds(W, 4)
    assert len(calls) == 3 * 4 + 1
    # the path's fits to its own tol, the refit on every entry to the estimator's
    assert [c[2] for c in calls] == [3e-4] * 12 + [est.tol] and est.tol == 1e-5
    np.testing.assert_array_equal(calls.pop()[1], W)
    for n, (X_fit, W_fit, _) in enumerate(calls):
        hidden = fold == n % 4
        assert hidden.sum() > 0 and np.all(W_fit[hidden] == 0) and np.all(X_fit[hidden] == 0)
        np.testing.assert_array_equal(W_fit[~hidden], W[~hidden])
        np.testing.assert_array_equal(X_fit[~hidden & (W > 0)], X[~hidden & (W > 0)].astype("f4"))


def test_the_path_warns_about_its_fits_at_the_caller_s_line():
    X, W, _ = noisy_completion()
    with pytest.warns(ConvergenceWarning, match="reached max_iter=1") as record:
        alpha_path(WeightedTruncatedSVD(6, max_iter=1), X, W, n_alphas=3, patience=None)
    assert {r.filename for r in record} == {__file__}


def test_the_path_finds_the_penalty_the_truth_would_choose():
    X, W, truth = noisy_completion()
    path = alpha_path(WeightedTruncatedSVD(8, random_state=0), X, W)
    # stopped once the score had fallen below its best for two penalties (patience=2)
    assert len(path["alphas"]) == np.argmax(path["mean_test_score"]) + 3 < 16
    alpha_max = np.linalg.svd(np.where(W > 0, X, 0.0), compute_uv=False)[0]
    np.testing.assert_allclose(
        path["alphas"], alpha_max * np.logspace(0, -3, 16)[: len(path["alphas"])]
    )
    errors = {
        alpha: hidden_rmse(
            WeightedTruncatedSVD(8, alpha=alpha, random_state=0).fit(X, sample_weight=W),
            X,
            W,
            truth,
        )
        for alpha in path["alphas"]
    }
    assert errors[path["best_alpha"]] == pytest.approx(min(errors.values()), rel=0.05)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unpenalised = WeightedTruncatedSVD(8, random_state=0).fit(X, sample_weight=W)
    assert errors[path["best_alpha"]] < 0.3 * hidden_rmse(unpenalised, X, W, truth)


def test_a_holdout_is_the_first_fold_of_the_cross_validation():
    X, W, _ = noisy_completion()
    est = WeightedTruncatedSVD(8, random_state=0)
    kw = dict(n_alphas=6, patience=None)
    holdout = alpha_path(est, X, W, **kw)  # max_folds=1: one fold of five hidden
    full = alpha_path(est, X, W, max_folds=None, **kw)
    assert holdout["test_scores"].shape == (6, 1) and full["test_scores"].shape == (6, 5)
    np.testing.assert_allclose(holdout["test_scores"][:, 0], full["test_scores"][:, 0])
    with pytest.raises(ValueError, match="max_folds == 0, must be >= 1"):
        alpha_path(est, X, W, max_folds=0)


def _truncated_scores(est, X, W, hidden, alpha, head=None):
    """The hidden-entry score of a fit at ``alpha`` truncated to each rank, by hand."""
    model = clone(est).set_params(alpha=alpha)
    X_fit = np.where(hidden, np.nan, X)
    if head is not None:
        head = clone(head).fit(X_fit)
        X_fit = head.transform(X_fit)
    Z = model.fit_transform(X_fit, sample_weight=np.where(hidden, 0.0, W))
    U, s, Vt = np.linalg.svd(Z @ model.components_, full_matrices=False)
    scores = []
    for r in range(1, model.n_components + 1):
        L = (U[:, :r] * s[:r]) @ Vt[:r]
        L = head.inverse_transform(L) if head is not None else L
        scores.append(-np.mean((X - L)[hidden] ** 2))
    return np.array(scores)


class _CountingScaler(StandardScaler):
    """Counts the matrices mapped back through it, and its fits."""

    calls = fits = 0

    def fit(self, X, y=None, sample_weight=None):
        type(self).fits += 1
        return super().fit(X, y, sample_weight)

    def inverse_transform(self, X, copy=None):
        type(self).calls += 1
        return super().inverse_transform(X, copy=copy)


@pytest.mark.parametrize(
    "head, max_folds",
    [
        (None, None),  # every fold: the truncations' scores are averaged
        (_CountingScaler(with_std=False), 1),  # scored at the hidden entries alone
        (FunctionTransformer(np.cbrt, inverse_func=lambda Y: Y**3, check_inverse=False), 1),
    ],
)
def test_the_path_scores_every_fit_truncated_to_every_rank(head, max_folds):
    X, W, _ = noisy_completion(seed=1)
    X = X + 3.0  # positive, mostly, so that the cube root's inverse is far from affine
    est = WeightedTruncatedSVD(8, tol=1e-10, max_iter=3000, random_state=0, dtype="float64")
    model = est if head is None else make_pipeline(head, est)
    alphas = [20.0, 12.0]  # optima of rank 2 to 5, below k: one optimum, warm or cold
    _CountingScaler.calls = _CountingScaler.fits = 0
    path = alpha_path(
        model, X, W, alphas=alphas, patience=None, max_folds=max_folds, select_rank=True, tol=None
    )
    if isinstance(head, _CountingScaler):
        # the steps before the estimator are fitted once per fold, for every penalty and
        # rank, and map back zeros and ones once (their shifts and scales)
        assert _CountingScaler.fits == 1 and _CountingScaler.calls == 2
    folds = [_entry_folds(W, 5) == f for f in range(path["test_scores"].shape[1])]
    assert path["rank_scores"].shape == (2, 8)
    for a, alpha in enumerate(alphas):
        expected = np.mean([_truncated_scores(est, X, W, h, alpha, head) for h in folds], axis=0)
        np.testing.assert_allclose(path["rank_scores"][a], expected, rtol=1e-4)
    # truncated to its own rank, a fit is the fit itself
    np.testing.assert_allclose(path["rank_scores"][:, -1], path["mean_test_score"], rtol=1e-10)


def test_choosing_the_rank_finds_the_truth_s_and_predicts_better():
    X, W, truth = noisy_completion(observed=0.5, noise=0.5)
    est = WeightedTruncatedSVD(12, random_state=0)
    fixed = alpha_path(est, X, W)
    chosen = alpha_path(est, X, W, select_rank=True)
    assert fixed["best_rank"] == 12 and "rank_scores" not in fixed
    assert chosen["best_rank"] == 3  # the truth's
    # the second path, at rank 3 on the same folds, is what chose it
    rank_path = chosen["rank_path"]
    assert chosen["best_score"] == rank_path["mean_test_score"].max() > fixed["best_score"]
    assert chosen["best_alpha"] == rank_path["alphas"][np.argmax(rank_path["mean_test_score"])]
    errors = [
        hidden_rmse(
            WeightedTruncatedSVD(p["best_rank"], alpha=p["best_alpha"], random_state=0).fit(
                X, sample_weight=W
            ),
            X,
            W,
            truth,
        )
        for p in (fixed, chosen)
    ]
    assert errors[1] < 0.9 * errors[0]


def test_the_rank_path_goes_on_from_the_fits_that_had_room_for_their_components():
    # Along the rank-12 path the first fits keep at most 3 components: a rank-3 path
    # makes the same fits there, so the second path of select_rank takes them as they
    # are and goes on from the last; from there on it is the rank-3 path itself.
    X, W, _ = noisy_completion(observed=0.5, noise=0.5)
    est = WeightedTruncatedSVD(12, tol=1e-10, max_iter=3000, random_state=0, dtype="float64")
    chosen = alpha_path(est, X, W, patience=None, select_rank=True, tol=None)
    rank_path = chosen["rank_path"]
    assert rank_path["rank"] == 3
    full = alpha_path(clone(est).set_params(n_components=3), X, W, patience=None, tol=None)
    taken = np.all(rank_path["test_scores"] == chosen["test_scores"], axis=1)
    shared = int(np.argmin(taken))  # the leading penalties whose scores are copied
    assert shared >= 2 and not taken[shared:].any()
    # the same fits, to the solvers' accuracy on these slowly converging ridge problems
    np.testing.assert_allclose(rank_path["test_scores"], full["test_scores"], rtol=1e-5)


def test_choosing_the_rank_keeps_the_full_rank_where_it_predicts_best():
    # A matrix of full rank with a slowly decaying spectrum: nothing to cut.
    rng = np.random.default_rng(3)
    U, _ = np.linalg.qr(rng.normal(size=(80, 10)))
    V, _ = np.linalg.qr(rng.normal(size=(40, 10)))
    X = (U * np.linspace(10.0, 8.0, 10)) @ V.T
    W = (rng.uniform(size=X.shape) < 0.8).astype(float)
    X = np.where(W > 0, X, np.nan)
    path = alpha_path(WeightedTruncatedSVD(10, random_state=0), X, W, select_rank=True)
    assert path["best_rank"] == 10 and "rank_path" not in path
    assert path["best_alpha"] == path["alphas"][np.argmax(path["mean_test_score"])]


def test_a_fit_leaving_components_unused_is_not_refitted_at_a_lower_rank():
    # At this penalty the rank-8 fit uses two components: its truncations to ranks
    # 2 to 8 are the fit itself, and a second path at rank 2 would only repeat it.
    X, W, _ = noisy_completion(seed=1)
    path = alpha_path(
        WeightedTruncatedSVD(8, random_state=0), X, W, alphas=[20.0], select_rank=True
    )
    np.testing.assert_allclose(path["rank_scores"][0, 1:], path["best_score"], rtol=1e-9)
    assert path["rank_scores"][0, 0] < path["best_score"]
    assert path["best_rank"] == 8 and "rank_path" not in path


@pytest.mark.parametrize("centred", [False, True])
def test_refit_fits_the_chosen_model_to_every_observed_entry(centred):
    X, W, _ = noisy_completion(observed=0.5, noise=0.5)
    est = WeightedTruncatedSVD(12, random_state=0)
    model = make_pipeline(StandardScaler(with_std=False), est) if centred else est
    prefix = "weightedtruncatedsvd__" if centred else ""
    X_given = X.copy()
    path = alpha_path(model, X, W, select_rank=True, refit=True)
    np.testing.assert_array_equal(X, X_given)  # nothing the user passed is changed
    assert "estimator" not in alpha_path(model, X, W, select_rank=True)
    refitted = path["estimator"]
    assert refitted is not model and path["best_rank"] < 12  # a clone, at the chosen rank
    chosen = {f"{prefix}alpha": path["best_alpha"], f"{prefix}n_components": path["best_rank"]}
    assert {key: refitted.get_params()[key] for key in chosen} == chosen
    assert refitted.get_params()[f"{prefix}init"] is None  # the estimator's again
    by_hand = clone(model).set_params(**chosen).fit(X, **{f"{prefix}sample_weight": W})
    last, expected = (refitted[-1], by_hand[-1]) if centred else (refitted, by_hand)
    # From the first fold's fit: the same optimum (the penalty leaves the fits below
    # rank 12, where the problem is convex), to the estimator's tol, in fewer steps.
    assert last.tol == 1e-5 and last.n_iter_ < 0.7 * expected.n_iter_
    assert last.history_["objective"].min() == pytest.approx(
        expected.history_["objective"].min(), rel=1e-4
    )
    completed = [_fold_in(m, X, W) for m in (refitted, by_hand)]
    np.testing.assert_allclose(*completed, atol=1e-2 * np.nanstd(X))


def _bad_completions():
    X, W, _ = noisy_completion(m=30, n=8)
    return (
        [
            (
                {"sample_weight": np.ones_like(W)},
                ValueError,
                "NaN or infinite entries where sample_weight is",
            ),
            ({"sample_weight": W[:, :5]}, ValueError, r"sample_weight has shape \(30, 5\)"),
            ({"sample_weight": np.ones(5)}, ValueError, r"sample_weight has shape \(5,\)"),
            ({"sample_weight": -W}, ValueError, "sample_weight must be non-negative"),
            ({"alphas": 1.0}, ValueError, "alphas must be a non-empty 1-D list"),
            ({"alphas": []}, ValueError, "alphas must be a non-empty 1-D list"),
            ({"alphas": [1.0, np.nan]}, ValueError, "alphas must be a non-empty 1-D list"),
            ({"n_alphas": 0}, ValueError, "n_alphas == 0, must be >= 1"),
            ({"eps": 0.0}, ValueError, "eps == 0.0, must be > 0"),
            ({"n_folds": 1}, ValueError, "n_folds == 1, must be >= 2"),
            ({"n_folds": 2.5}, TypeError, "n_folds must be an instance of int"),
            ({"patience": 0}, ValueError, "patience == 0, must be >= 1"),
            (
                {"select_rank": 1},
                TypeError,
                "select_rank must be an instance of {bool, numpy.bool}",
            ),
            ({"refit": "yes"}, TypeError, "refit must be an instance of {bool, numpy.bool}"),
            ({"tol": -1e-4}, ValueError, "tol == -0.0001, must be >= 0"),
            ({"tol": "1e-4"}, TypeError, "tol must be an instance of float"),
        ],
        X,
        W,
    )


@pytest.mark.parametrize("case", range(16))
def test_alpha_path_names_bad_input(case):
    cases, X, W = _bad_completions()
    kwargs, exc, match = cases[case]
    with pytest.raises(exc, match=match):
        alpha_path(WeightedTruncatedSVD(3), X, **{"sample_weight": W, "n_alphas": 3, **kwargs})


def test_alpha_path_names_an_estimator_it_cannot_path():
    X, W, _ = noisy_completion(m=30, n=8)
    for model in (TruncatedSVD(2), make_pipeline(StandardScaler(), TruncatedSVD(2))):
        with pytest.raises(TypeError, match="a WeightedTruncatedSVD or a Pipeline ending with one"):
            alpha_path(model, X, W)


def test_hiding_entries_names_an_estimator_with_a_feature_metric():
    # A metric mixes every entry into the error: none can be hidden as missing.
    X, _, _ = noisy_completion(m=30, n=8)
    X = np.nan_to_num(X)
    model = WeightedTruncatedSVD(2, feature_metric=np.ones(8))
    with pytest.raises(ValueError, match="alpha_path hides observed entries"):
        alpha_path(model, X)
    with pytest.raises(ValueError, match="HiddenEntryScorer hides observed entries"):
        HiddenEntryScorer()(clone(model).fit(X), X)


@pytest.mark.parametrize("solver", ["svd", "fwsvd", "rank1"])
def test_the_path_names_a_closed_form_that_cannot_hide_entries(solver):
    X, W, _ = noisy_completion(m=30, n=8)
    with pytest.raises(ValueError, match=f"solver='{solver}' does not fit exactly"):
        alpha_path(WeightedTruncatedSVD(2, solver=solver), X, W)


@pytest.mark.parametrize("centred", [False, True])
def test_feature_names_reach_the_scored_and_the_refitted_models(centred):
    pd = pytest.importorskip("pandas")
    X, W, _ = noisy_completion(m=30, n=8)
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(8)])
    model = WeightedTruncatedSVD(2)
    if centred:
        model = make_pipeline(StandardScaler(with_std=False), model)
    alpha = "weightedtruncatedsvd__alpha" if centred else "alpha"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "X does not have valid feature names"
        search = GridSearchCV(
            model, {alpha: [0.5, 2.0]}, scoring=HiddenEntryScorer(), cv=3, error_score="raise"
        )
        search.fit(frame)
        refitted = alpha_path(model, frame, n_alphas=3, refit=True)["estimator"]
        refitted.transform(frame)
    assert list(refitted.feature_names_in_) == list(frame.columns)


def test_the_scorer_names_bad_weights_and_scores_rows_left_with_nothing():
    X, W, _ = noisy_completion(m=30, n=8)
    est = WeightedTruncatedSVD(3, alpha=1.0, random_state=0).fit(X, sample_weight=W)
    scorer = HiddenEntryScorer()
    with pytest.raises(ValueError, match=r"sample_weight has shape \(30, 3\)"):
        scorer(est, X, sample_weight=W[:, :3])
    with pytest.raises(ValueError, match="sample_weight must be non-negative"):
        scorer(est, X, sample_weight=-W)
    # A row whose one observed entry is hidden is folded in from nothing: zero, not an error.
    row = np.full((1, 8), np.nan)
    row[0, 2] = 1.5
    score = HiddenEntryScorer(fraction=0.5, random_state=1)(est, row)
    assert score == pytest.approx(-(1.5**2))


def test_the_scorer_folds_in_through_a_pipeline():
    # Columns centred by their observed means (StandardScaler ignores NaN), the
    # model fitted to the rest: the scorer folds in and maps back through every step.
    X, W, _ = noisy_completion()
    X = X + 5.0 * np.arange(X.shape[1])
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(
            StandardScaler(with_std=False).set_fit_request(sample_weight=False),
            WeightedTruncatedSVD(6, alpha=3.0).set_fit_request(sample_weight=True),
        )
        pipe.fit(X[:60], sample_weight=W[:60])
    scorer = HiddenEntryScorer()
    kept, hidden = scorer.split(X[60:], W[60:])
    mean, est = pipe[0].mean_, pipe[-1]
    X_in = np.where(kept > 0, X[60:], np.nan) - mean
    X_hat = est.inverse_transform(est.transform(X_in, sample_weight=kept)) + mean
    expected = -np.sum(hidden * np.nan_to_num(X[60:] - X_hat) ** 2) / hidden.sum()
    assert scorer(pipe, X[60:], sample_weight=W[60:]) == pytest.approx(expected, rel=1e-10)
    assert expected > -3.0  # about the noise variance, 1
    # A column that the fitted rows never observe has no mean: named, not a NaN deep down.
    W_fit = W[:60].copy()
    W_fit[:, [3, 7]] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # numpy's mean of nothing
        pipe.fit(np.where(W_fit > 0, X[:60], np.nan), weightedtruncatedsvd__sample_weight=W_fit)
    with pytest.raises(ValueError, match=r"to NaN, in columns \[3, 7\].*alpha_path"):
        scorer(pipe, X[60:], sample_weight=W[60:])
    # ... and so are those whose only observed entries are hidden (their prediction is NaN).
    scorer = HiddenEntryScorer(fraction=0.5)
    W_test = W[60:].copy()
    W_test[:, [3, 7]] = 0.0
    W_test[:, 3] = scorer.split(X[60:], W[60:])[1][:, 3]  # entries the scorer hides
    hidden = scorer.split(X[60:], W_test)[1]
    assert hidden[:, 3].sum() == W_test[:, 3].sum() > 0
    with pytest.raises(ValueError, match=r"to NaN, in columns \[3\]"):
        scorer(pipe, X[60:], sample_weight=W_test)
