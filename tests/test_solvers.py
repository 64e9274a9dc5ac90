"""Solvers reach the known optima, decrease their objective, and keep the best point."""

import importlib
import math
import os
import warnings

import numpy as np
import pytest
import torch
from conftest import DEVICES, low_rank_plus_noise, tail_energy, weighted_objective
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD, _solvers
from sklearn_wsvd._solvers import _common, closed_form, complete_rank, ncg, solve

ITERATIVE = ["ncg", "als", "als-cg", "em", "adam"]
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


@pytest.mark.parametrize("solver", ["ncg", "als", "als-cg", "em"])
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


@pytest.mark.parametrize("solver", ["ncg", "als", "als-cg", "em"])
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
    for solver in ["ncg", "als", "als-cg", "em"]:
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


@pytest.mark.parametrize("solver", ["ncg", "als", "als-cg", "em"])
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
        warnings.filterwarnings("ignore", "1 of 20 rows and 1 of 15 columns", UserWarning)
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


def test_ncg_refines_a_given_start_without_its_sweeps(rng):
    # A start given as factors is a fit to refine: ncg's first iteration is then a
    # joint step, not one of the alternating sweeps it takes from a closed form.
    X = torch.tensor(rng.normal(size=(25, 15)))
    W = torch.tensor(rng.uniform(size=X.shape))
    A, B = solve(X, W, 3, solver="rank1")[:2]
    warm = solve(X, W, 3, solver="ncg", init=(A, B), max_iter=1)
    joint = solve(X, W, 3, solver="ncg", init=(A, B), max_iter=1, sweeps=0)
    swept = solve(X, W, 3, solver="ncg", init=(A, B), max_iter=1, sweeps=3)
    assert warm.objective == joint.objective != swept.objective
    assert solve(X, W, 3, solver="ncg", max_iter=1).objective == swept.objective  # rank1 start


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_ncg_carried_residual_matches_a_fresh_one(rng, monkeypatch, alpha):
    # ncg carries A B - X from step to step (E + t E1 + t^2 E2) and recomputes it
    # every REFRESH steps: the path must be the one that recomputes it at each step,
    # and every objective it reports the objective of its factors.
    ncg = importlib.import_module("sklearn_wsvd._solvers.ncg")  # the module, not the function
    X = torch.tensor(rng.normal(size=(30, 20)))
    W = torch.tensor(rng.lognormal(size=X.shape))
    seen = []

    def record(n_iter, A, B, f):
        seen.append(f - _common.objective(X, W, A, B, alpha))

    carried = solve(X, W, 4, solver="ncg", alpha=alpha, tol=0.0, max_iter=60, callback=record)
    monkeypatch.setattr(ncg, "REFRESH", 1)
    fresh = solve(X, W, 4, solver="ncg", alpha=alpha, tol=0.0, max_iter=60)
    np.testing.assert_allclose(carried.objective, fresh.objective, rtol=1e-10)
    assert carried.objective[-1] < 0.99 * carried.objective[3]  # the joint steps did move
    assert np.max(np.abs(seen)) <= 1e-10 * carried.objective[-1]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_ncg_lagged_preconditioner_reaches_the_exact_ones_optimum(rng, monkeypatch, alpha):
    # ncg recomputes its preconditioner's eigenvectors every EIGEN_EVERY steps only:
    # the fit must end where the one that recomputes them at every step does.
    ncg = importlib.import_module("sklearn_wsvd._solvers.ncg")
    X = torch.tensor(rng.normal(size=(30, 20)))
    W = torch.tensor(rng.lognormal(size=X.shape))
    kw = dict(solver="ncg", alpha=alpha, tol=1e-13, max_iter=3000)
    lagged = solve(X, W, 4, **kw)
    monkeypatch.setattr(ncg, "EIGEN_EVERY", 1)
    exact = solve(X, W, 4, **kw)
    assert ncg.EIGEN_EVERY == 1 and lagged.converged and exact.converged
    assert min(lagged.objective) == pytest.approx(min(exact.objective), rel=1e-9)
    torch.testing.assert_close(lagged.A @ lagged.B, exact.A @ exact.B, rtol=0, atol=1e-5)


def test_ncg_line_search_finds_the_quartics_lowest_point(rng):
    # ncg minimises f(t) = c4 t^4 + c3 t^3 + c2 t^2 + c1 t along each direction by
    # Cardano's formulas: its t must be as low as the best real root of f' found
    # by numpy (eigenvalues of the companion matrix), over coefficients of every
    # scale, with one, two or three real critical points, and a parabola (c4 = 0).
    ncg = importlib.import_module("sklearn_wsvd._solvers.ncg")

    def value(c, t):
        return ((c[0] * t + c[1]) * t + c[2]) * t * t + c[3] * t

    for _ in range(3000):
        c4, c3, c2, c1 = rng.normal(size=4) * 10.0 ** rng.uniform(-6, 6, size=4)
        c4 = abs(c4) if rng.uniform() > 0.1 else 0.0
        c3 = c3 if c4 > 0 else 0.0  # c4 = sum W E2^2 = 0 makes c3 = 2 sum W E1 E2 = 0
        coefficients = [4 * c4, 3 * c3, 2 * c2, c1] if c4 > 0 else [2 * c2, c1]
        roots = [r.real for r in np.roots(coefficients) if abs(r.imag) <= 1e-9 * abs(r)]
        best = min([0.0] + [value((c4, c3, c2, c1), r) for r in roots])
        found = value((c4, c3, c2, c1), ncg._minimise_quartic(c4, c3, c2, c1))
        assert found <= best + 1e-9 * abs(best)
    assert ncg._minimise_quartic(1.0, 0.0, -2.0, 0.0) in (-1.0, 1.0)  # f' = 4t(t^2 - 1)
    assert ncg._minimise_quartic(1.0, 0.0, 1.0, 0.0) == 0.0  # nothing below f(0)
    assert ncg._minimise_quartic(0.0, 0.0, 2.0, -4.0) == 1.0  # a parabola


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


def test_large_matrices_use_a_deterministic_randomized_svd(rng, monkeypatch):
    X = torch.tensor(low_rank_plus_noise(rng, m=600, n=520, rank=8))
    calls = []
    lowrank = torch.svd_lowrank
    monkeypatch.setattr(torch, "svd_lowrank", lambda *a, **kw: calls.append(1) or lowrank(*a, **kw))
    fits = [closed_form.truncated_svd(X, 8, svd_solver="auto") for _ in range(2)]
    assert len(calls) == 2
    torch.testing.assert_close(fits[0], fits[1], rtol=0, atol=0)
    A, B = fits[0]
    err = float((X - A @ B).square().sum())
    assert err == pytest.approx(tail_energy(X.numpy(), 8), rel=1e-6)
    closed_form.truncated_svd(X, 8, svd_solver="full")  # exact on request
    closed_form.truncated_svd(X, 200, svd_solver="auto")  # and for large ranks
    closed_form.truncated_svd(X[:400], 8, svd_solver="auto")  # and small matrices
    assert len(calls) == 2
    closed_form.truncated_svd(X[:400], 8, svd_solver="randomized")
    assert len(calls) == 3
    # the estimator's closed forms and starts follow svd_solver
    WeightedTruncatedSVD(8, solver="svd").fit(X.numpy())
    WeightedTruncatedSVD(8, solver="als-cg", max_iter=1).fit(
        X.numpy(), sample_weight=np.ones(X.shape)
    )
    assert len(calls) == 5
    WeightedTruncatedSVD(8, solver="svd", svd_solver="full").fit(X.numpy())
    assert len(calls) == 5


def test_the_svd_solver_is_as_good_as_scikit_learns_truncated_svd(rng):
    from sklearn.decomposition import TruncatedSVD

    X = rng.normal(size=(600, 520))  # pure noise: the hardest case for a randomized SVD
    k = 20
    optimum = tail_energy(X, k)
    sk = TruncatedSVD(k, random_state=0).fit(X)
    sk_err = np.sum((X - sk.transform(X) @ sk.components_) ** 2)
    est = WeightedTruncatedSVD(k, solver="svd", dtype="float64").fit(X)
    assert est.reconstruction_err_**2 <= sk_err * (1 + 5e-3)
    assert est.reconstruction_err_**2 < 1.02 * optimum
    full = WeightedTruncatedSVD(k, solver="svd", svd_solver="full", dtype="float64").fit(X)
    assert full.reconstruction_err_**2 == pytest.approx(optimum, rel=1e-10)


def _solve(X, W, k, solver, **kw):
    return solve(torch.as_tensor(X), torch.as_tensor(W), k, solver=solver, **kw)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("solver", ALL)
def test_weight_scale_does_not_change_the_solution(rng, solver, dtype):
    # Before the weights were normalised: adam returned its start at x1e-8, em
    # stopped at once 37% worse at x1e30, float32 als stopped 24% worse at x1e-20
    # and crashed in torch at x1e30, float32 als-cg and adam overflowed.
    X = torch.tensor(rng.normal(size=(30, 20)), dtype=dtype)
    W = torch.tensor(rng.lognormal(sigma=1.5, size=X.shape), dtype=dtype)
    ref = _solve(X, W, 3, solver, max_iter=50)
    L = ref.A @ ref.B
    f_tol, L_tol = (
        (1e-10, 1e-8) if dtype == torch.float64 else (2e-5, 3e-2 if solver == "adam" else 3e-4)
    )
    for c in [1e-30, 1e-20, 1e-8, 1e8, 1e20, 1e30]:
        scaled = _solve(X, W * c, 3, solver, max_iter=50)
        assert scaled.objective[0] / c == pytest.approx(ref.objective[0], rel=f_tol)
        assert scaled.objective[-1] / c == pytest.approx(ref.objective[-1], rel=f_tol)
        assert float((scaled.A @ scaled.B - L).norm() / L.norm()) < L_tol
        assert scaled.converged == ref.converged


@pytest.mark.parametrize("solver", ["svd", "fwsvd", "rank1", "als"])
def test_ridge_is_exact_for_uniform_weights_of_any_scale(rng, solver):
    # w |X - L|^2 + alpha (|A|^2 + |B|^2) soft-thresholds the singular values by alpha / w;
    # the closed forms used to threshold by alpha, alpha / sqrt(w) or alpha / sqrt(n w).
    X = low_rank_plus_noise(rng)
    s = np.linalg.svd(X, compute_uv=False)[:4]
    for w in (0.2, 1.0, 50.0):  # thresholds 10, 2 and 0.04
        est = WeightedTruncatedSVD(4, solver=solver, alpha=2.0, dtype="float64", tol=1e-12)
        L = fitted_matrix(est, X, np.full(X.shape, w))
        np.testing.assert_allclose(np.linalg.svd(L, compute_uv=False)[:4], s - 2.0 / w, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_widely_spread_weights_never_end_silently_far_from_the_best(rng, dtype):
    # Log-normal weights with sigma=10 (about 1e-9..1e9), k=10: the default used
    # to stop after 7 iterations at 842x the best objective, converged and silent.
    X = rng.normal(size=(60, 40))
    W = rng.lognormal(sigma=10.0, size=X.shape)
    best = _solve(X, W, 10, "als", tol=0.0, max_iter=300).objective[-1]
    fit = _solve(torch.tensor(X, dtype=dtype), torch.tensor(W, dtype=dtype), 10, "als-cg")
    assert fit.objective[-1] > 10 * best  # a hard case: 200 iterations are not enough
    assert not fit.converged or fit.rounding_limited
    if dtype == torch.float32:  # the float32 fit is at float32's resolution
        assert fit.converged and fit.rounding_limited
        assert fit.objective[-1] < 1e-7 * float((W * X**2).sum())


def test_ordinary_fits_are_not_rounding_limited(rng):
    X, W = rng.normal(size=(40, 25)), rng.lognormal(size=(40, 25))
    for dtype in (torch.float32, torch.float64):
        X_, W_ = torch.tensor(X, dtype=dtype), torch.tensor(W, dtype=dtype)
        for solver in ITERATIVE:
            fit = _solve(X_, W_, 4, solver, max_iter=1000)
            assert fit.converged and not fit.rounding_limited


def test_a_rise_is_not_convergence():
    from sklearn_wsvd._solvers._common import iterate

    X, W = torch.ones(3, 2, dtype=torch.float64), torch.ones(3, 2, dtype=torch.float64)
    A0, B0 = torch.zeros(3, 1, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)

    def oscillate(A, B, it):  # the product alternates between 0 and 3 (objective 6 and 24)
        return A, torch.full_like(B, 3.0 * (it % 2)) if it > 0 else B

    fit = iterate(
        lambda A, B, it: (torch.ones_like(A), oscillate(A, B, it)[1]),
        X,
        W,
        A0,
        B0,
        alpha=0.0,
        max_iter=20,
        tol=1e-5,
        name="test",
    )
    assert not fit.converged and fit.n_iter == 20
    assert fit.objective[:3] == [6.0, 24.0, 6.0]


def _sqnormal_problem(m, n):
    rng = np.random.default_rng(0)
    X = torch.tensor(rng.standard_normal((m, n)), dtype=torch.float32)
    return X, torch.tensor(rng.standard_normal((m, n)) ** 2, dtype=torch.float32)


def test_adam_never_raises_its_objective_and_reaches_als_cg():
    # The recipe's fixed step raised the objective in its first steps: 3% here;
    # 528x on 200 x 600 with the weights times 1e3 (then it returned its start as
    # converged), 69x on 768 x 3072 with log-normal weights at k=32.
    X, W = _sqnormal_problem(120, 360)
    fit = _solve(X, W, 12, "adam")
    history = np.array(fit.objective)
    assert np.all(np.diff(history) <= 0)
    reference = _solve(X, W, 12, "als-cg", max_iter=300).objective[-1]
    assert history[-1] < 1.001 * reference < 0.7 * history[0]


def test_adam_recovers_from_a_step_size_far_too_large():
    from sklearn_wsvd._solvers import balance, rank1
    from sklearn_wsvd._solvers.gradient import adam

    X, W = _sqnormal_problem(60, 120)
    A, B = balance(*rank1(X, W, 8))
    fit = adam(X, W, A, B, lr=100.0, max_iter=40)
    history = np.array(fit.objective)
    assert np.all(np.diff(history) <= 0)
    assert history[-1] < 0.9 * history[0]


@pytest.mark.parametrize("solver", ITERATIVE)
def test_degenerate_starting_points_are_completed(rng, solver):
    # From (0, 0) every solver used to stay at zero and report convergence.
    X = rng.normal(size=(40, 25))
    W = rng.lognormal(size=X.shape)
    kw = dict(solver=solver, dtype="float64", max_iter=300)
    default = WeightedTruncatedSVD(4, **kw).fit(X, sample_weight=W).reconstruction_err_ ** 2
    rank_two = np.c_[rng.normal(size=(40, 2)), np.zeros((40, 2))]
    for init in [(np.zeros((40, 4)), np.zeros((4, 25))), (rank_two, rng.normal(size=(4, 25)))]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est = WeightedTruncatedSVD(4, init=init, **kw).fit(X, sample_weight=W)
        assert est.singular_values_.min() > 1.0
        assert est.reconstruction_err_**2 < 1.01 * default
        assert est.history_["objective"][0] <= weighted_objective(X, W, init[0] @ init[1])


def test_complete_rank_keeps_full_rank_starts_and_the_product_of_deficient_ones(rng):
    X = torch.tensor(rng.normal(size=(20, 15)))
    W = torch.tensor(rng.uniform(size=X.shape))
    A, B = torch.tensor(rng.normal(size=(20, 3))), torch.tensor(rng.normal(size=(3, 15)))
    assert all(a is b for a, b in zip(complete_rank(X, W, A, B), (A, B), strict=True))
    A[:, 2] = 0.0
    A2, B2 = complete_rank(X, W, A, B)
    assert torch.linalg.matrix_rank(A2 @ B2) == 3
    # the added direction is the rank-one start fitted to the residual, so the fit improves
    L = A @ B
    assert weighted_objective(X.numpy(), W.numpy(), (A2 @ B2).numpy()) < weighted_objective(
        X.numpy(), W.numpy(), L.numpy()
    )


def test_complete_rank_under_a_ridge_adds_only_the_directions_that_lower_the_objective(rng):
    # A warm start along a path of penalties: the ridge zeroed some components.
    # Under uniform weights the directions that lower the objective are the
    # singular pairs of the residual above alpha; the others stay zero.
    X = torch.as_tensor(rng.normal(size=(30, 20)))
    W = torch.ones_like(X)
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[3] + s[4]) / 2  # four singular values above it
    A = torch.zeros(30, 8, dtype=X.dtype)
    B = torch.zeros(8, 20, dtype=X.dtype)
    A[:, 0], B[0] = U[:, 0] * (s[0] - alpha).sqrt(), (s[0] - alpha).sqrt() * Vt[0]
    A2, B2 = complete_rank(X, W, A, B, alpha)
    torch.testing.assert_close(A2 @ B2, (U * (s - alpha).clamp_min(0)) @ Vt, rtol=0, atol=1e-10)
    assert int((torch.linalg.vector_norm(A2, dim=0) > 0).sum()) == 4
    # The fit rotated in its first seven components (A Q, Q^T B: the same product and
    # penalty) has one zero column, though its product has rank 1: it is reduced to
    # that rank and completed all the same.
    Q = torch.eye(8, dtype=X.dtype)
    Q[:7, :7] = torch.linalg.qr(torch.as_tensor(rng.normal(size=(7, 7)))).Q
    A4, B4 = complete_rank(X, W, A @ Q, Q.T @ B, alpha)
    torch.testing.assert_close(A4 @ B4, A2 @ B2, rtol=0, atol=1e-10)
    # above every singular value of the residual nothing is added
    A3, B3 = complete_rank(X, W, A, B, float(s[0]) * 1.01)
    torch.testing.assert_close(A3 @ B3, A @ B, rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(30, 50), (50, 30)])
@pytest.mark.parametrize("dtype, atol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_top_singular_pairs_are_the_exact_ones_above_the_threshold(rng, shape, dtype, atol):
    G = torch.as_tensor(rng.normal(size=shape))
    U, s, Vt = torch.linalg.svd(G, full_matrices=False)
    above = float(s[4] + s[5]) / 2
    for r, n in ((8, 5), (3, 3)):
        Up, Vp = _common._top_singular_pairs(G.to(dtype), r, above)
        assert Up.shape == (shape[0], n) and Vp.shape == (n, shape[1]) and Up.dtype == dtype
        # unit singular vectors up to sign (float32's eigenvectors, to its rounding)
        signs = torch.sign((Up.double() * U[:, :n]).sum(0))
        torch.testing.assert_close(Up.double() * signs, U[:, :n], rtol=0, atol=atol)
        torch.testing.assert_close(Vp.double() * signs[:, None], Vt[:n], rtol=0, atol=atol)
    Up, Vp = _common._top_singular_pairs(G, 8, float(s[0]) * 1.01)
    assert Up.shape == (shape[0], 0) and Vp.shape == (0, shape[1])


def test_negative_eigenvalues_are_counted_from_the_ldl_inertia(rng):
    # Indefinite matrices, some with a zero diagonal so that Bunch-Kaufman takes
    # 2 x 2 pivots, and a shifted Gram matrix as revive builds it.
    for n in (1, 2, 7, 40, 120):
        for zero_diagonal in (False, True):
            S = torch.as_tensor(rng.normal(size=(n, n)))
            S = S + S.T
            if zero_diagonal:
                S.fill_diagonal_(0.0)
            expected = int((torch.linalg.eigvalsh(S) < 0).sum())
            assert _common._count_negative(S) == expected
    M = torch.as_tensor(rng.normal(size=(60, 90)))
    gram = M @ M.T
    values = torch.linalg.eigvalsh(gram)
    for level in (float(values[0]) / 2, float(values[30] + values[31]) / 2, 2 * float(values[-1])):
        shifted = level * torch.eye(60, dtype=gram.dtype) - gram
        assert _common._count_negative(shifted) == int((values > level).sum())


def test_top_singular_pairs_of_a_large_side_come_from_a_subspace_iteration(rng):
    # 200 x 300, three values above the threshold: a subspace iteration of 3 + 8
    # vectors, not the eigendecomposition. Its pairs are unit, exceed the
    # threshold, and are the top ones where the spectrum decays.
    U, _ = torch.linalg.qr(torch.as_tensor(rng.normal(size=(200, 200))))
    V, _ = torch.linalg.qr(torch.as_tensor(rng.normal(size=(300, 200))))
    s = torch.cat([torch.tensor([100.0, 50.0, 25.0]), torch.linspace(10.0, 1.0, 197)])
    s = s.double()
    G = (U * s) @ V.T
    eigh = torch.linalg.eigh
    with pytest.MonkeyPatch.context() as patch:  # only k x k ones: no 200 x 200 one
        patch.setattr(torch.linalg, "eigh", lambda S: eigh(S) if len(S) <= 11 else 1 / 0)
        Up, Vp = _common._top_singular_pairs(G, 8, above=12.0)
    assert Up.shape == (200, 3) and Vp.shape == (3, 300)
    torch.testing.assert_close(torch.linalg.vector_norm(Up, dim=0), torch.ones(3).double())
    torch.testing.assert_close(torch.linalg.vector_norm(Vp, dim=1), torch.ones(3).double())
    # near the exact pairs (three products: errors of about 2e-3), their values
    # u^T G v below the singular values and nearer to them (errors of the square)
    signs = torch.sign((Up * U[:, :3]).sum(0))
    torch.testing.assert_close(Up * signs, U[:, :3], rtol=0, atol=5e-3)
    torch.testing.assert_close(Vp * signs[:, None], V[:, :3].T, rtol=0, atol=5e-3)
    values = (Up * (G @ Vp.T)).sum(0)
    torch.testing.assert_close(values, s[:3], rtol=1e-4, atol=0)
    assert bool((values <= s[:3] * (1 + 1e-12)).all())
    # at most r of them
    assert _common._top_singular_pairs(G, 2, above=12.0)[0].shape == (200, 2)


def _hidden_digits(fraction=0.9, rows=600):
    from sklearn.datasets import load_digits

    X = load_digits().data[:rows]
    observed = np.random.default_rng(0).uniform(size=X.shape) >= fraction
    return X, observed


@pytest.mark.parametrize("solver", ["auto", *ITERATIVE])
def test_underdetermined_completion_stays_bounded_and_below_its_start(solver):
    # Digits with 90% of the entries hidden, k=10: about 6 observed entries per row
    # for 10 unknowns. The default used to end 188x above its start, with
    # hidden-entry RMSE 3e8 (factors of 1e10).
    X, observed = _hidden_digits()
    est = WeightedTruncatedSVD(10, solver=solver, max_iter=30)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with pytest.warns(UserWarning, match="547 of 600 rows and 0 of 64 columns"):
            Z = est.fit_transform(np.where(observed, X, np.nan), sample_weight=observed * 1.0)
    L = Z @ est.components_
    history = est.history_["objective"]
    assert est.reconstruction_err_**2 == pytest.approx(history.min(), rel=1e-3)
    assert history.max() <= history[0] * (1 + 1e-6)  # never above the start, at any point
    assert est.reconstruction_err_**2 < 0.01 * history[0]
    assert np.sqrt(np.mean((L - X)[~observed] ** 2)) < 10 * X.max()
    assert np.abs(L).max() < 1000 * X.max()


def test_count_underdetermined():
    from sklearn_wsvd._solvers import count_underdetermined

    W = np.ones((6, 5))
    W[0, :3] = 0.0  # 2 observed entries in row 0
    W[1:, 4] = 0.0  # 1 in column 4
    assert count_underdetermined(W, 3) == (1, 1)
    assert count_underdetermined(torch.tensor(W), 2) == (0, 1)
    assert count_underdetermined(W, 1) == (0, 0)


def _rss_mib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key)) / 1024


@pytest.mark.skipif(
    not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's resettable VmHWM"
)
def test_row_solve_stays_within_its_memory_budget():
    # The weighted right-hand sides were one m x n temporary: 64 MiB here against
    # a budget of 16 (the peak is measured in this process, after resetting it;
    # the allocator and the kernels' own workspaces add a few MiB, 20.2 at most
    # in five runs).
    from sklearn_wsvd._solvers.als import weighted_row_solve

    g = torch.Generator().manual_seed(0)
    X, W = torch.randn(4096, 4096, generator=g), torch.rand(4096, 4096, generator=g)
    B, A0 = torch.randn(16, 4096, generator=g), torch.zeros(4096, 16)
    weighted_row_solve(X[:64, :64], W[:64, :64], B[:, :64], A0[:64])  # load the kernels
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_mib("VmRSS")
    A = weighted_row_solve(X, W, B, A0, memory_budget=16 * 2**20)
    assert _rss_mib("VmHWM") - before < 28
    i = 7
    sw = W[i].sqrt()
    expected = torch.linalg.lstsq((B * sw).T, X[i] * sw).solution
    torch.testing.assert_close(A[i], expected, rtol=1e-3, atol=1e-4)


def test_row_solve_ignores_the_weights_scale(rng):
    # A weighted transform with weights times 1e-30 used to return zeros (float32).
    from sklearn_wsvd._solvers.als import weighted_row_solve

    X, W, B = (
        torch.tensor(a, dtype=torch.float32)
        for a in (rng.normal(size=(30, 12)), rng.lognormal(size=(30, 12)), rng.normal(size=(3, 12)))
    )
    A0 = torch.zeros(30, 3)
    ref = weighted_row_solve(X, W, B, A0)
    assert float(ref.abs().max()) > 0.1
    for c in (1e-30, 1e-12, 1e12, 1e30):
        torch.testing.assert_close(weighted_row_solve(X, W * c, B, A0), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("above", [False, True])
def test_a_revival_is_certified_by_the_exact_svd(rng, above, monkeypatch):
    # On pure noise (a flat spectrum) the randomized SVD that a revival tries
    # first on large matrices (here on this one) finds u^T X v about 1% below the
    # top singular value. Between the two, only the exact pairs see that a new
    # component lowers the objective; above the top, nothing may be revived.
    monkeypatch.setattr(closed_form, "REVIVE_RANDOMIZED_MIN_SIDE", 100)
    X = torch.as_tensor(rng.normal(size=(400, 300)))
    W = torch.ones_like(X)
    A, B = torch.zeros(400, 2, dtype=X.dtype), torch.zeros(2, 300, dtype=X.dtype)
    u, v = closed_form.truncated_svd(X, 1, svd_solver="randomized")
    found = float((u.T @ X @ v.T).squeeze() / (u.norm() * v.norm()))
    top = float(torch.linalg.matrix_norm(X, ord=2))
    assert found < 0.995 * top
    alpha = 1.001 * top if above else (found + top) / 2
    f = float(_common.objective(X, W, A, B, alpha))
    revived = _common.revive(X, W, A, B, alpha, f, tol=0.0)
    if above:
        assert revived is None
    else:
        assert revived is not None
        assert float(_common.objective(X, W, *revived, alpha)) < f


def test_a_revival_from_zero_is_the_soft_thresholded_svd_under_uniform_weights(rng):
    # Every component vanished (a ridge above the data's scale zeroed the start):
    # one revival gives them all the top singular pairs above alpha, each shrunk
    # by alpha, which under uniform weights is the nuclear-norm optimum itself.
    X = torch.as_tensor(rng.normal(size=(30, 20)))
    W = torch.ones_like(X)
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[3] + s[4]) / 2  # four singular values above it, eight components
    A, B = torch.zeros(30, 8, dtype=X.dtype), torch.zeros(8, 20, dtype=X.dtype)
    f = float(_common.objective(X, W, A, B, alpha))
    A, B = _common.revive(X, W, A, B, alpha, f, tol=0.0)
    expected = (U * (s - alpha).clamp_min(0)) @ Vt
    torch.testing.assert_close(A @ B, expected, rtol=0, atol=1e-10)
    # the live components alone: the four new ones, none of the eight zero ones
    assert A.shape == (30, 4) and B.shape == (4, 20)
    assert bool((torch.linalg.vector_norm(A, dim=0) > 0).all())


@pytest.mark.parametrize("margin", [1.002, 1.02])
def test_a_revival_that_could_not_pass_its_tolerance_is_not_searched_for(rng, margin, monkeypatch):
    # With the top singular value of the weighted residual a factor ``margin``
    # above alpha, no new component can lower the objective by more than
    # (1 - 1 / margin)^2 of it: at tol = 1e-4 a revival is ruled out at 1.002
    # (< 1 / (1 - 0.01)) by the Cholesky certificate alone, and at 1.02 it is
    # searched for. What tol=0 finds confirms the bound.
    X = torch.as_tensor(rng.normal(size=(60, 40)))
    W = torch.as_tensor((rng.uniform(size=(60, 40)) < 0.5).astype(float))
    A, B = torch.zeros(60, 3, dtype=X.dtype), torch.zeros(3, 40, dtype=X.dtype)
    alpha = float(torch.linalg.matrix_norm(W * X, ord=2)) / margin
    f = float(_common.objective(X, W, A, B, alpha))
    best = _common.revive(X, W, A, B, alpha, f, tol=0.0)
    fall = (f - float(_common.objective(X, W, *best, alpha))) / f
    assert 0 < fall <= (1 - 1 / margin) ** 2
    counted = []
    count_negative = _common._count_negative
    monkeypatch.setattr(
        _common, "_count_negative", lambda S: counted.append(1) or count_negative(S)
    )
    revived = _common.revive(X, W, A, B, alpha, f, tol=1e-4)
    assert (revived is None) == (fall <= 1e-4)
    assert counted == ([] if margin < 1 / 0.99 else [1])


@pytest.mark.parametrize("solver", ["ncg", "als", "em"])
def test_a_stall_revives_components_unless_told_not_to(rng, solver):
    # Under uniform weights the nuclear-norm optimum keeps four components. From
    # the top two, shrunk (optimal on their own), with room for six more, a run
    # without revive_at_stall (alpha_path's fits) ends at its first stall with
    # two; the default revives the other two there and reaches the optimum.
    X = torch.as_tensor(rng.normal(size=(30, 20)))
    W = torch.ones_like(X)
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[3] + s[4]) / 2
    A = torch.cat([U[:, :2] * (s[:2] - alpha), torch.zeros(30, 6, dtype=X.dtype)], dim=1)
    B = torch.cat([Vt[:2], torch.zeros(6, 20, dtype=X.dtype)])
    fits = {
        revive: _solvers.ITERATIVE[solver](
            X, W, A, B, alpha=alpha, max_iter=500, tol=1e-12, revive_at_stall=revive
        )
        for revive in (False, True)
    }
    optimum = (U * (s - alpha).clamp_min(0)) @ Vt
    assert torch.linalg.matrix_rank(fits[False].A @ fits[False].B) == 2
    assert fits[False].objective[-1] > fits[True].objective[-1]
    torch.testing.assert_close(fits[True].A @ fits[True].B, optimum, rtol=0, atol=1e-5)


def test_a_revival_keeps_the_live_components_and_fills_only_the_room_left(rng):
    X = torch.as_tensor(rng.normal(size=(30, 20)))
    W = torch.ones_like(X)
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[5])  # five singular values above it
    # two live components (the top two, shrunk) and three vanished ones
    A = torch.cat([U[:, :2] * (s[:2] - alpha), torch.zeros(30, 3, dtype=X.dtype)], dim=1)
    B = torch.cat([Vt[:2], torch.full((3, 20), 1e-12, dtype=X.dtype)])
    f = float(_common.objective(X, W, A, B, alpha))
    A2, B2 = _common.revive(X, W, A, B, alpha, f, tol=0.0)
    assert A2.shape == (30, 5)
    torch.testing.assert_close(A2[:, :2], A[:, :2], rtol=0, atol=0)
    torch.testing.assert_close(A2 @ B2, (U[:, :5] * (s[:5] - alpha)) @ Vt[:5], rtol=0, atol=1e-10)
    # room for one more component only: the next singular pair
    A3, B3 = _common.revive(X, W, A, B, alpha, f, tol=0.0, rank=3)
    torch.testing.assert_close(A3 @ B3, (U[:, :3] * (s[:3] - alpha)) @ Vt[:3], rtol=0, atol=1e-10)
    # no room at all, nothing to revive
    assert _common.revive(X, W, A[:, :2], B[:2], alpha, f, tol=0.0) is None


def test_components_that_vanished_in_combination_leave_room_for_a_revival(rng):
    # A ridge's fit rotated (A Q, Q^T B: the same product and penalty) has no zero
    # column, though only its top two components are live: the six others vanished
    # in combination, to the rounding of a fit. Merged, they leave room for a revival.
    X = torch.as_tensor(rng.normal(size=(30, 20)))
    W = torch.ones_like(X)
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[5])  # five singular values above it
    root = (s[:2] - alpha).sqrt()
    A = torch.cat([U[:, :2] * root, 1e-13 * torch.as_tensor(rng.normal(size=(30, 6)))], 1)
    B = torch.cat([root[:, None] * Vt[:2], 1e-13 * torch.as_tensor(rng.normal(size=(6, 20)))])
    Q = torch.linalg.qr(torch.as_tensor(rng.normal(size=(8, 8)))).Q
    A, B = A @ Q, Q.T @ B
    assert float(torch.linalg.vector_norm(A, dim=0).min()) > 1e-3  # no column vanished
    A2, B2 = _common.independent_components(A, B)
    assert A2.shape == (30, 2) and B2.shape == (2, 20)
    torch.testing.assert_close(A2 @ B2, A @ B, rtol=0, atol=1e-10)
    f = float(_common.objective(X, W, A, B, alpha))
    assert _common.revive(X, W, A, B, alpha, f, tol=0.0) is None  # it counts columns: none
    A3, B3 = _common.revive(X, W, A2, B2, alpha, f, tol=0.0, rank=8)
    torch.testing.assert_close(A3 @ B3, (U[:, :5] * (s[:5] - alpha)) @ Vt[:5], rtol=0, atol=1e-10)
    # a warm start merges them before it revives
    A4, B4 = complete_rank(X, W, A, B, alpha)
    torch.testing.assert_close(A4 @ B4, A3 @ B3, rtol=0, atol=1e-10)
    # and a solver that stalls there merges them and revives: the optimum
    fit = ncg(X, W, A, B, alpha=alpha, tol=1e-12, sweeps=0)
    torch.testing.assert_close(fit.A @ fit.B, A3 @ B3, rtol=0, atol=1e-6)
    # components whose product has full rank come back as they are
    A5, B5 = _common.independent_components(A3, B3)
    assert A5 is A3 and B5 is B3


def test_steps_see_the_live_components_and_the_fit_has_every_column(rng, monkeypatch):
    # A ridge that keeps about four components of eight: the steps work on the
    # live ones alone (those of the start and those a revival adds), while the
    # callback and the factors returned have all eight columns, the others zero.
    X = torch.as_tensor(rng.normal(size=(40, 30)))
    W = torch.as_tensor(rng.uniform(0.5, 1.5, size=(40, 30)))
    U, s, Vt = torch.linalg.svd(X, full_matrices=False)
    alpha = float(s[3] + s[4]) / 2
    A0 = torch.cat([U[:, :2] * s[:2].sqrt(), torch.zeros(40, 6, dtype=X.dtype)], dim=1)
    B0 = torch.cat([s[:2].sqrt()[:, None] * Vt[:2], torch.zeros(6, 30, dtype=X.dtype)])
    widths, seen = [], []
    ncg = importlib.import_module("sklearn_wsvd._solvers.ncg")
    original = ncg.cg_sweep

    def sweep(X, W, A, B, *args):
        widths.append(A.shape[1])
        return original(X, W, A, B, *args)

    def record(n_iter, A, B, objective):
        seen.append(A.shape[1])

    monkeypatch.setattr(ncg, "cg_sweep", sweep)
    fit = solve(X, W, 8, solver="ncg", init=(A0, B0), alpha=alpha, sweeps=3, callback=record)
    assert len(widths) == 3 and 2 < widths[0] < 8
    assert set(seen) == {8} and fit.A.shape == (40, 8) and fit.B.shape == (8, 30)
    zero = (fit.A.abs().amax(0) == 0) & (fit.B.abs().amax(1) == 0)
    assert int(zero.sum()) >= 8 - widths[0]


def test_remaining_decrease_of_a_geometric_history_is_exact():
    # f_t = 5 + 3 r^t falls by 3 r^T more after f_T, whatever the window.
    from sklearn_wsvd._solvers._common import remaining_decrease

    r = 0.9
    history = [5.0 + 3.0 * r**t for t in range(40)]
    assert remaining_decrease(history) == pytest.approx(3.0 * r**39, rel=1e-9)
    assert remaining_decrease(history, window=1) == pytest.approx(3.0 * r**39, rel=1e-9)
    assert remaining_decrease(history[:6]) == pytest.approx(3.0 * r**5, rel=1e-9)  # window 2
    assert remaining_decrease(history[:2]) == 0.0  # one step: nothing to tell the trend from
    assert remaining_decrease([3.0, 2.0, 1.0, 1.0, 1.0]) == 0.0  # the last two lowered nothing
    assert remaining_decrease([3.0, 2.9, 2.8, 2.6, 2.2]) == math.inf  # falling faster


@pytest.mark.parametrize("solver", ["ncg", "als-cg"])
def test_a_slow_fit_runs_until_the_trend_says_it_is_done(solver):
    # A random matrix under squared-normal weights converges linearly, slowly:
    # ncg's last step at the default tol=1e-5 was that small 0.074% above the
    # optimum (80 iterations of 500 in all), when one step's decrease ended it.
    rng = np.random.default_rng(0)
    X, W = rng.normal(size=(96, 96)), rng.normal(size=(96, 96)) ** 2

    def fit(**params):
        est = WeightedTruncatedSVD(24, solver=solver, dtype="float64", random_state=0, **params)
        return est.fit(X, sample_weight=W)

    est = fit(max_iter=5000)
    best = fit(tol=1e-12, max_iter=20000).reconstruction_err_ ** 2
    assert est.reconstruction_err_**2 <= (1 + 1e-4) * best
    history = est.history_["objective"]
    assert history[-2] - history[-1] <= 1e-5 * history[-1]  # its last step was small too
