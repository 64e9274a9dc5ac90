"""Solvers reach the known optima, decrease their objective, and keep the best point."""

import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, low_rank_plus_noise, tail_energy, weighted_objective
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

ITERATIVE = ["als", "als-cg", "em", "adam"]
ALL = ["svd", "fwsvd", "rank1", *ITERATIVE]


def fitted_matrix(est, X, W=None):
    return est.fit_transform(X, sample_weight=W) @ est.components_


@pytest.mark.parametrize("solver", ALL)
def test_uniform_weights_reach_truncated_svd(rng, solver):
    X = low_rank_plus_noise(rng)
    W = np.full(X.shape, 2.0)
    est = WeightedTruncatedSVD(4, solver=solver, dtype="float64")
    L = fitted_matrix(est, X, W)
    assert weighted_objective(X, W, L) == pytest.approx(2.0 * tail_energy(X, 4), rel=1e-9)


@pytest.mark.parametrize("solver", ["als", "als-cg", "em"])
def test_iterative_solvers_find_the_svd_from_a_random_start(rng, solver):
    X = low_rank_plus_noise(rng)
    est = WeightedTruncatedSVD(
        4, solver=solver, init="random", dtype="float64", tol=1e-12, max_iter=2000, random_state=0
    )
    L = fitted_matrix(est, X, np.ones_like(X))
    assert weighted_objective(X, 1.0, L) == pytest.approx(tail_energy(X, 4), rel=1e-6)


def test_adam_recipe_approaches_the_svd_from_a_random_start(rng):
    X = low_rank_plus_noise(rng)
    est = WeightedTruncatedSVD(
        4, solver="adam", init="random", dtype="float64", max_iter=300, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        L = fitted_matrix(est, X, np.ones_like(X))
    assert weighted_objective(X, 1.0, L) < 1.05 * tail_energy(X, 4)


@pytest.mark.parametrize("solver", ["fwsvd", "rank1", "auto"])
def test_row_weights_are_exact(rng, solver):
    X = low_rank_plus_noise(rng)
    r = rng.uniform(0.1, 5.0, size=X.shape[0])
    r[3] = 0.0
    for W in (r, np.repeat(r[:, None], X.shape[1], axis=1)):
        est = WeightedTruncatedSVD(3, solver=solver, dtype="float64")
        L = fitted_matrix(est, X, W)
        expected = tail_energy(np.sqrt(r)[:, None] * X, 3)
        assert weighted_objective(X, r[:, None], L) == pytest.approx(expected, rel=1e-9)
        assert est.solver_ == ("rank1" if solver == "auto" else solver)


@pytest.mark.parametrize("solver", ["rank1", "auto"])
def test_rank_one_weights_are_exact(rng, solver):
    X = low_rank_plus_noise(rng)
    a = rng.lognormal(size=X.shape[0])
    b = rng.lognormal(size=X.shape[1])
    W = np.outer(a, b)
    est = WeightedTruncatedSVD(3, solver=solver, dtype="float64")
    L = fitted_matrix(est, X, W)
    expected = tail_energy(np.sqrt(a)[:, None] * X * np.sqrt(b), 3)
    assert weighted_objective(X, W, L) == pytest.approx(expected, rel=1e-9)
    assert est.solver_ == "rank1"
    # FWSVD collapses the column weights away and misses the optimum.
    L_fw = fitted_matrix(WeightedTruncatedSVD(3, solver="fwsvd", dtype="float64"), X, W)
    assert weighted_objective(X, W, L_fw) > 1.01 * expected


@pytest.mark.parametrize("solver", ITERATIVE)
def test_iterative_solvers_improve_on_their_start(rng, solver):
    X = rng.normal(size=(50, 30))
    W = rng.normal(size=X.shape) ** 2
    est = WeightedTruncatedSVD(5, solver=solver, dtype="float64", max_iter=50)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    history = est.history_["objective"]
    assert est.reconstruction_err_**2 == pytest.approx(min(history), rel=1e-9)
    assert history.min() < 0.9 * history[0]
    assert np.all(np.diff(est.history_["seconds"]) >= 0)
    assert len(history) == est.n_iter_ + 1


@pytest.mark.parametrize("solver", ["als", "als-cg", "em"])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_monotone_history(rng, solver, alpha):
    X = rng.normal(size=(40, 25))
    W = rng.lognormal(sigma=2.0, size=X.shape)
    est = WeightedTruncatedSVD(4, solver=solver, alpha=alpha, dtype="float64", max_iter=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    history = est.history_["objective"]
    assert np.all(np.diff(history) <= 1e-10 * history[:-1])


def test_element_wise_solvers_agree_on_the_optimum(rng):
    X = rng.normal(size=(40, 25))
    W = rng.normal(size=X.shape) ** 2
    errors = {}
    for solver in ["als", "als-cg", "em"]:
        est = WeightedTruncatedSVD(4, solver=solver, dtype="float64", tol=1e-10, max_iter=3000)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, sample_weight=W)
        errors[solver] = est.reconstruction_err_**2
    best = min(errors.values())
    assert all(e < best * 1.01 for e in errors.values()), errors
    rank1 = WeightedTruncatedSVD(4, solver="rank1").fit(X, sample_weight=W)
    assert best < 0.9 * rank1.reconstruction_err_**2


def test_ridge_soft_thresholds_the_singular_values(rng):
    X = low_rank_plus_noise(rng)
    alpha = 1.5
    closed = WeightedTruncatedSVD(4, solver="svd", alpha=alpha, dtype="float64").fit(X)
    s = np.linalg.svd(X, compute_uv=False)[:4]
    np.testing.assert_allclose(closed.singular_values_, s - alpha, rtol=1e-10)
    als = WeightedTruncatedSVD(
        4, solver="als", alpha=alpha, init="random", tol=1e-13, max_iter=3000, dtype="float64"
    )
    als.fit(X, sample_weight=np.ones_like(X))
    np.testing.assert_allclose(als.singular_values_, s - alpha, rtol=1e-5)


@pytest.mark.parametrize("solver", ["als", "als-cg", "em"])
def test_matrix_completion_recovers_missing_entries(rng, solver):
    truth = rng.normal(size=(60, 3)) @ rng.normal(size=(3, 40))
    observed = rng.uniform(size=truth.shape) < 0.6
    X = np.where(observed, truth, np.nan)
    est = WeightedTruncatedSVD(
        3, solver=solver, dtype="float64", tol=1e-14, max_iter=5000, random_state=0
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        L = fitted_matrix(est, X, observed.astype(float))
    err = np.abs(L - truth)[~observed].max()
    assert err < 1e-4 * np.abs(truth).max()


@pytest.mark.parametrize("solver", ALL)
def test_zero_weight_rows_and_columns_give_finite_results(rng, solver):
    X = rng.normal(size=(20, 15))
    W = rng.uniform(size=X.shape)
    W[2] = 0.0
    W[:, 4] = 0.0
    X[2, :] = np.nan
    X[:, 4] = np.nan
    est = WeightedTruncatedSVD(3, solver=solver, max_iter=20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = est.fit_transform(X, sample_weight=W)
    assert np.isfinite(Z).all()
    assert np.isfinite(est.components_).all()
    assert np.isfinite(est.transform(X, sample_weight=W)).all()


def test_callback_sees_every_iteration_and_can_stop(rng):
    X = rng.normal(size=(30, 20))
    W = rng.lognormal(size=X.shape)
    seen = []

    def callback(n_iter, A, B, objective):
        seen.append((n_iter, tuple(A.shape), tuple(B.shape), objective))
        return n_iter == 3

    est = WeightedTruncatedSVD(4, solver="als-cg", callback=callback)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)  # stopping early is not a failure
        est.fit(X, sample_weight=W)
    assert [s[0] for s in seen] == [1, 2, 3]
    assert seen[0][1:3] == ((30, 4), (4, 20))
    assert est.n_iter_ == 3
    np.testing.assert_allclose([s[3] for s in seen], est.history_["objective"][1:], rtol=1e-6)


@pytest.mark.parametrize("solver", ITERATIVE)
def test_random_init_is_reproducible(rng, solver):
    X = rng.normal(size=(25, 15))
    W = rng.uniform(size=X.shape)
    fits = [
        WeightedTruncatedSVD(3, solver=solver, init="random", max_iter=5, random_state=7)
        for _ in range(2)
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = [est.fit_transform(X, sample_weight=W) for est in fits]
    np.testing.assert_array_equal(Z[0], Z[1])


def test_warm_start_from_arrays(rng):
    X = rng.normal(size=(25, 15))
    W = rng.uniform(size=X.shape)
    first = WeightedTruncatedSVD(3, solver="als", dtype="float64", max_iter=500, tol=1e-12)
    A = first.fit_transform(X, sample_weight=W)
    again = WeightedTruncatedSVD(3, solver="als", dtype="float64", init=(A, first.components_))
    again.fit(X, sample_weight=W)
    assert again.n_iter_ <= 2
    assert again.history_["objective"][0] == pytest.approx(first.reconstruction_err_**2)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("solver", ALL)
def test_cpu_and_device_agree(rng, device, solver):
    X = rng.normal(size=(40, 30))
    W = rng.lognormal(size=X.shape)
    kw = dict(solver=solver, dtype="float64", max_iter=30, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        on_cpu = WeightedTruncatedSVD(4, device="cpu", **kw).fit(X, sample_weight=W)
        on_dev = WeightedTruncatedSVD(4, device=device, **kw).fit(X, sample_weight=W)
    assert on_dev.reconstruction_err_ == pytest.approx(on_cpu.reconstruction_err_, rel=1e-6)
    np.testing.assert_allclose(on_dev.singular_values_, on_cpu.singular_values_, rtol=1e-5)


def test_verbose_shows_a_progress_bar_with_the_objective(rng, capsys):
    X = rng.normal(size=(20, 10))
    W = rng.uniform(size=X.shape)
    with pytest.warns(ConvergenceWarning):
        WeightedTruncatedSVD(2, solver="als", verbose=True, max_iter=3, tol=0.0).fit(
            X, sample_weight=W
        )
    err = capsys.readouterr().err
    assert "als" in err and "objective=" in err


def _failing_cholesky_on_last_row(cholesky_ex):
    def wrapped(G, *, out):
        cholesky_ex(G, out=out)
        out[0][-1] = float("nan")  # what a failed factorisation may leave behind
        out[1][-1] = 1

    return wrapped


@pytest.mark.parametrize("budget", [None, 3 * 5 * 5 * 8])  # None: one chunk; else 1 row/column
@pytest.mark.parametrize("cholesky_fails", [False, True])
def test_exact_row_solve_is_the_weighted_least_squares_solution(
    rng, budget, cholesky_fails, monkeypatch
):
    from sklearn_wsvd._solvers.als import DEFAULT_MEMORY_BUDGET, weighted_row_solve

    if cholesky_fails:  # the least-squares fallback must give the same rows
        patched = _failing_cholesky_on_last_row(torch.linalg.cholesky_ex)
        monkeypatch.setattr(torch.linalg, "cholesky_ex", patched)
    X = rng.normal(size=(7, 9))
    W = rng.lognormal(size=X.shape)
    B = rng.normal(size=(5, 9))
    A = weighted_row_solve(
        *(torch.tensor(a) for a in (X, W, B, np.zeros((7, 5)))),
        memory_budget=budget or DEFAULT_MEMORY_BUDGET,
    ).numpy()
    for i in range(7):
        sw = np.sqrt(W[i])
        expected = np.linalg.lstsq((B * sw).T, X[i] * sw, rcond=None)[0]
        np.testing.assert_allclose(A[i], expected, rtol=1e-8, atol=1e-10)


def test_large_starting_points_use_a_deterministic_randomized_svd(rng, monkeypatch):
    from sklearn_wsvd._solvers import closed_form

    X = torch.tensor(low_rank_plus_noise(rng, m=1100, n=1000, rank=8))
    calls = []
    lowrank = torch.svd_lowrank
    monkeypatch.setattr(torch, "svd_lowrank", lambda *a, **kw: calls.append(1) or lowrank(*a, **kw))
    fits = [closed_form.truncated_svd(X, 8, exact=False) for _ in range(2)]
    assert len(calls) == 2
    torch.testing.assert_close(fits[0], fits[1], rtol=0, atol=0)
    A, B = fits[0]
    err = float((X - A @ B).square().sum())
    assert err == pytest.approx(tail_energy(X.numpy(), 8), rel=1e-6)
    closed_form.truncated_svd(X, 8)  # the closed forms stay exact
    closed_form.truncated_svd(X, 300, exact=False)  # and so do large ranks
    assert len(calls) == 2
