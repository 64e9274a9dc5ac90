"""Metrics on the features and the samples: exact optima, reductions, robustness, errors."""

import warnings

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
import torch
from sklearn.model_selection import GridSearchCV

from sklearn_wsvd import WeightedTruncatedSVD, weighted_low_rank


def gram(rng, n, tokens=None, rank=None):
    """A Gram matrix of ``tokens`` random inputs (of rank ``rank``, when given)."""
    tokens = tokens or 3 * n
    Xa = rng.normal(size=(n, rank or n)) @ rng.normal(size=(rank or n, tokens))
    return Xa @ Xa.T


def metric_error(X, L, C=None, R=None, W=None):
    """``sum W (R^{1/2} (X - L) C^{1/2})**2`` with symmetric roots (scipy)."""
    D = X - L
    if R is not None:
        D = np.real(scipy.linalg.sqrtm(R)) @ D
    if C is not None:
        D = D @ np.real(scipy.linalg.sqrtm(C))
    return float(np.sum((1.0 if W is None else W) * D**2))


def fit(X, k, **kw):
    sample_weight = kw.pop("sample_weight", None)
    sample_metric = kw.pop("sample_metric", None)
    est = WeightedTruncatedSVD(k, dtype="float64", device="cpu", **kw)
    Z = est.fit_transform(X, sample_weight=sample_weight, sample_metric=sample_metric)
    return est, Z @ est.components_


@pytest.fixture
def problem(rng):
    X = rng.normal(size=(12, 9))
    return X, gram(rng, 9), gram(rng, 12)


def test_output_error_closed_form_is_svd_llm_and_optimal(problem, rng):
    X, C, _ = problem
    k = 3
    est, L = fit(X, k, feature_metric=C)
    assert est.solver_ == "svd" and est.n_iter_ == 1
    # SVD-LLM's recipe with a Cholesky factor: SVD_k(X S) S^{-1}, S S^T = C.
    S = np.linalg.cholesky(C)
    U, s, Vt = np.linalg.svd(X @ S)
    L_svdllm = (U[:, :k] * s[:k]) @ Vt[:k] @ np.linalg.inv(S)
    np.testing.assert_allclose(L, L_svdllm, atol=1e-9)
    # The optimum's error is the tail of the spectrum of X C X^T.
    tail = np.sort(np.linalg.eigvalsh(X @ C @ X.T))[: X.shape[0] - k].sum()
    assert metric_error(X, L, C) == pytest.approx(tail, rel=1e-9)
    assert est.reconstruction_err_**2 == pytest.approx(tail, rel=1e-9)
    # A generic optimiser from random starts never finds anything lower.
    m, n = X.shape
    Ch = np.real(scipy.linalg.sqrtm(C))

    def f(theta):
        A, B = theta[: m * k].reshape(m, k), theta[m * k :].reshape(k, n)
        return np.sum(((X - A @ B) @ Ch) ** 2)

    for seed in range(3):
        start = np.random.default_rng(seed).normal(size=(m + n) * k)
        best = scipy.optimize.minimize(f, start, method="L-BFGS-B", options={"maxiter": 5000})
        assert best.fun >= tail * (1 - 1e-6)


def test_kfac_closed_form_with_both_metrics(problem):
    X, C, R = problem
    k = 4
    est, L = fit(X, k, feature_metric=C, sample_metric=R)
    Lr, Lc = np.linalg.cholesky(R), np.linalg.cholesky(C)
    s = np.linalg.svd(Lr.T @ X @ Lc, compute_uv=False)
    assert metric_error(X, L, C, R) == pytest.approx(np.sum(s[k:] ** 2), rel=1e-8)
    assert est.reconstruction_err_**2 == pytest.approx(np.sum(s[k:] ** 2), rel=1e-8)
    assert np.linalg.matrix_rank(L, tol=1e-8) == k


@pytest.mark.parametrize("damping", [0.0, 1e-3])
def test_full_rank_reproduces_x(problem, damping):
    X, C, R = problem
    _, L = fit(X, 9, feature_metric=C, sample_metric=R, metric_damping=damping)
    np.testing.assert_allclose(L, X, atol=1e-8)


def test_singular_metric_with_damping_still_reproduces_x_at_full_rank(rng):
    X = rng.normal(size=(10, 8))
    C = gram(rng, 8, rank=3)
    _, L = fit(X, 8, feature_metric=C, metric_damping=1e-6)
    np.testing.assert_allclose(L, X, atol=1e-6)


@pytest.mark.parametrize("solver", ["svd", "rank1", "als", "als-cg", "em"])
def test_identity_metrics_reduce_to_the_plain_problem(rng, solver):
    X = rng.normal(size=(15, 10))
    W = rng.lognormal(size=X.shape)
    kw = dict(solver=solver, random_state=0, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, plain = fit(X, 3, sample_weight=W, **kw)
        _, ident = fit(
            X, 3, sample_weight=W, feature_metric=np.eye(10), sample_metric=np.eye(15), **kw
        )
    np.testing.assert_allclose(ident, plain, atol=1e-8)


def test_diagonal_metrics_are_column_and_row_weights(rng):
    X = rng.normal(size=(14, 9))
    c, r = rng.lognormal(size=9), rng.lognormal(size=14)
    _, L_metric = fit(X, 3, feature_metric=c, sample_metric=r)
    _, L_weights = fit(X, 3, sample_weight=np.outer(r, c))
    np.testing.assert_allclose(L_metric, L_weights, atol=1e-9)
    _, L_full = fit(X, 3, feature_metric=np.diag(c), sample_metric=np.diag(r))
    np.testing.assert_allclose(L_full, L_weights, atol=1e-9)


def test_element_wise_weights_are_solved_on_the_whitened_problem(problem, rng):
    X, C, R = problem
    W = rng.lognormal(sigma=1.0, size=X.shape)
    closed, L0 = fit(X, 3, sample_weight=W, feature_metric=C, sample_metric=R, solver="rank1")
    est, L = fit(
        X,
        3,
        sample_weight=W,
        feature_metric=C,
        sample_metric=R,
        solver="als",
        tol=1e-10,
        max_iter=500,
    )
    f = metric_error(X, L, C, R, W)
    assert est.reconstruction_err_**2 == pytest.approx(f, rel=1e-8)
    assert f < 0.99 * metric_error(X, L0, C, R, W)  # the iterative solver improves the start
    assert np.all(np.diff(est.history_["objective"]) <= 1e-9 * est.history_["objective"][0])


def test_singular_and_indefinite_metrics_give_finite_factors(rng):
    X = rng.normal(size=(20, 16))
    C = gram(rng, 16, rank=4)  # singular: 12 directions never seen
    for damping in (0.0, 1e-4):
        est, L = fit(X, 3, feature_metric=C, metric_damping=damping)
        assert np.isfinite(L).all() and np.isfinite(est.components_).all()
    # Exactly singular, no damping: the unseen directions are left at zero.
    _, L = fit(X, 3, feature_metric=C)
    null = scipy.linalg.null_space(C)
    np.testing.assert_allclose(L @ null, 0.0, atol=1e-8)
    # Slightly indefinite (float32 rounding) passes silently; clearly indefinite warns.
    C32 = gram(rng, 16, rank=4).astype(np.float32).astype(np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(X, 3, feature_metric=C32, metric_damping=1e-3)
    vals, vecs = np.linalg.eigh(gram(rng, 16))
    vals[0] = -0.01 * vals[-1]
    with pytest.warns(UserWarning, match="not positive semi-definite"):
        est, L = fit(X, 3, feature_metric=(vecs * vals) @ vecs.T)
    assert np.isfinite(L).all()


def test_float32_metric_solve_matches_float64(problem):
    X, C, R = problem
    Z32 = WeightedTruncatedSVD(3, feature_metric=C, metric_damping=1e-6).fit_transform(
        X.astype(np.float32), sample_metric=R
    )
    est = WeightedTruncatedSVD(3, feature_metric=C, metric_damping=1e-6, dtype="float64")
    Z64 = est.fit_transform(X, sample_metric=R)
    assert Z32.dtype == np.float32
    np.testing.assert_allclose(Z32 @ Z32.T, Z64 @ Z64.T, rtol=1e-3, atol=1e-3)


def test_transform_score_and_functional_form_agree_with_fit(problem, rng):
    X, C, R = problem
    est = WeightedTruncatedSVD(3, feature_metric=C, dtype="float64")
    Z = est.fit_transform(X, sample_metric=R)
    # Without element-wise weights, transform is the projection in the feature metric.
    np.testing.assert_allclose(est.transform(X), Z, atol=1e-9)
    np.testing.assert_allclose(est.transform(X, sample_metric=R), Z, atol=1e-9)
    sse = metric_error(X, Z @ est.components_, C, R)
    assert est.score(X, sample_metric=R) == pytest.approx(-sse / X.size, rel=1e-9)
    A, B = weighted_low_rank(X, n_components=3, sample_metric=R, feature_metric=C, dtype="float64")
    np.testing.assert_allclose(A @ B, Z @ est.components_, atol=1e-9)
    # With element-wise weights, transform at the optimum returns the fitted scores.
    W = rng.lognormal(size=X.shape)
    est = WeightedTruncatedSVD(
        3, feature_metric=C, dtype="float64", solver="als", tol=1e-13, max_iter=3000
    )
    Z = est.fit_transform(X, sample_weight=W, sample_metric=R)
    np.testing.assert_allclose(est.transform(X, sample_weight=W, sample_metric=R), Z, atol=1e-5)
    sse = metric_error(X, Z @ est.components_, C, R, W)
    assert -est.score(X, sample_weight=W, sample_metric=R) * W.sum() == pytest.approx(sse, 1e-6)


def test_torch_metrics_and_inputs_are_never_modified(problem):
    X, C, R = problem
    copies = [a.copy() for a in (X, C, R)]
    est = WeightedTruncatedSVD(3, feature_metric=C, dtype="float64")
    est.fit(X, sample_metric=R)
    est.transform(X)
    for a, b in zip((X, C, R), copies, strict=True):
        np.testing.assert_array_equal(a, b)
    Ct, Rt, Xt = (torch.tensor(a) for a in (C, R, X))
    est_t = WeightedTruncatedSVD(3, feature_metric=Ct, dtype="float64")
    Z = est_t.fit_transform(Xt, sample_metric=Rt)
    assert isinstance(Z, torch.Tensor)
    np.testing.assert_allclose(est_t.components_, est.components_, atol=1e-10)
    for value in vars(est_t).values():
        assert not isinstance(value, torch.Tensor) or value is Ct


def test_grid_search_keeps_the_feature_metric_whole(rng):
    X = rng.normal(size=(40, 6)) @ rng.normal(size=(6, 6))
    C = gram(rng, 6)
    search = GridSearchCV(
        WeightedTruncatedSVD(feature_metric=C, dtype="float64"),
        {"n_components": [1, 3, 5]},
        cv=3,
    )
    search.fit(X)
    assert search.best_params_ == {"n_components": 5}


@pytest.mark.parametrize(
    "kwargs, fit_kw, message",
    [
        (
            {"feature_metric": np.eye(5)},
            {},
            r"feature_metric has shape \(5, 5\), expected \(8, 8\)",
        ),
        ({"feature_metric": np.triu(np.ones((8, 8)))}, {}, "feature_metric must be symmetric"),
        ({"feature_metric": np.full((8, 8), np.nan)}, {}, "feature_metric contains NaN"),
        ({"feature_metric": -np.ones(8)}, {}, "diagonal metric and must be non-negative"),
        ({"feature_metric": np.zeros((8, 8))}, {}, "feature_metric is zero everywhere"),
        ({"feature_metric": -np.eye(8)}, {}, "no positive eigenvalue"),
        ({}, {"sample_metric": np.eye(10)[:7]}, r"sample_metric has shape \(7, 10\)"),
        ({}, {"sample_metric": np.ones((10, 10), dtype=complex)}, "Complex data"),
    ],
)
def test_bad_metrics_raise_a_clear_error(rng, kwargs, fit_kw, message):
    X = rng.normal(size=(10, 8))
    with pytest.raises((ValueError, TypeError), match=message):
        WeightedTruncatedSVD(2, **kwargs).fit(X, **fit_kw)


def test_missing_entries_are_refused_with_a_metric(rng):
    X = rng.normal(size=(10, 8))
    W = np.ones_like(X)
    X[0, 0], W[0, 0] = np.nan, 0.0
    WeightedTruncatedSVD(2).fit(X, sample_weight=W)  # fine without a metric
    with pytest.raises(ValueError, match="no entry can be missing"):
        WeightedTruncatedSVD(2, feature_metric=np.eye(8)).fit(X, sample_weight=W)


@pytest.mark.parametrize("metric", ["feature", "sample"])
def test_an_entry_of_zero_weight_counts_under_a_metric(problem, rng, metric):
    # A metric mixes the entries: one of zero weight enters the whitened errors that
    # weigh, with its value, and the fit minimises the stated objective with it.
    X, C, R = problem
    W = rng.uniform(0.5, 1.0, size=X.shape)
    W[0, 0] = 0.0
    X_far = X.copy()
    X_far[0, 0] = 50.0
    kw = {"feature_metric": C} if metric == "feature" else {"sample_metric": R}
    est, L = fit(X_far, 3, sample_weight=W, tol=1e-10, **kw)
    stated = metric_error(X_far, L, W=W, **({"C": C} if metric == "feature" else {"R": R}))
    assert est.reconstruction_err_**2 == pytest.approx(stated, rel=1e-8)
    _, L_near = fit(X, 3, sample_weight=W, tol=1e-10, **kw)
    assert np.abs(L - L_near).max() > 1.0


def test_an_entry_of_zero_weight_never_counts_under_a_diagonal_metric(problem, rng):
    # A diagonal metric scales columns: it mixes nothing, and the entry is ignored.
    X, _, _ = problem
    W = rng.uniform(0.5, 1.0, size=X.shape)
    W[0, 0] = 0.0
    X_far = X.copy()
    X_far[0, 0] = 50.0
    c = rng.uniform(0.5, 2.0, size=X.shape[1])
    _, L = fit(X_far, 3, sample_weight=W, feature_metric=c, random_state=0)
    _, L_near = fit(X, 3, sample_weight=W, feature_metric=c, random_state=0)
    np.testing.assert_allclose(L, L_near, atol=1e-12)


def test_metric_root_cholesky_factor_and_inverse():
    from sklearn_wsvd._whitening import metric_root

    rng = np.random.default_rng(0)
    A = torch.as_tensor(rng.standard_normal((6, 20)))
    M = A @ A.T
    root, inverse = metric_root(M, 0.0, "M", symmetric=False)
    torch.testing.assert_close(root @ root.T, M)
    torch.testing.assert_close(inverse @ root, torch.eye(6, dtype=M.dtype))
    alone, none = metric_root(M, 0.0, "M", symmetric=False, inverse=False)
    assert none is None
    torch.testing.assert_close(alone, root)
