"""Properties of every solver on random problems (hypothesis)."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sklearn_wsvd._solvers import objective, solve

SOLVERS = ["svd", "fwsvd", "rank1", "ncg", "als", "als-cg", "em", "adam"]
SETTINGS = settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _problem(seed, m=12, n=9):
    rng = np.random.default_rng(seed)
    X = torch.tensor(rng.normal(size=(m, n)))
    W = torch.tensor(rng.lognormal(sigma=1.0, size=(m, n)))
    return X, W


@pytest.mark.parametrize("solver", SOLVERS)
@SETTINGS
@given(exponent=st.floats(-12.0, 12.0), seed=st.integers(0, 2**16))
def test_weights_times_c_give_the_same_solution(solver, exponent, seed):
    X, W = _problem(seed)
    c = 10.0**exponent
    ref = solve(X, W, 2, solver=solver, max_iter=15)
    scaled = solve(X, W * c, 2, solver=solver, max_iter=15)
    L, L_c = ref.A @ ref.B, scaled.A @ scaled.B
    assert float((L_c - L).norm()) <= 1e-8 * float(L.norm())
    # c is no power of two: W * c / max(W * c) rounds apart from W / max(W), by 1e-16,
    # which 15 iterations of adam amplified to 1e-9 of the objective (seed 393, c = 1e3)
    np.testing.assert_allclose(np.array(scaled.objective) / c, ref.objective, rtol=1e-8)


@pytest.mark.parametrize("solver", SOLVERS)
@SETTINGS
@given(
    data=st.data(),
    m=st.integers(3, 10),
    n=st.integers(3, 10),
    dtype=st.sampled_from([torch.float32, torch.float64]),
)
def test_zero_weight_rows_and_columns_never_give_nan(solver, data, m, n, dtype):
    k = data.draw(st.integers(1, min(m, n)), label="k")
    rows = data.draw(st.lists(st.booleans(), min_size=m, max_size=m), label="zero rows")
    cols = data.draw(st.lists(st.booleans(), min_size=n, max_size=n), label="zero columns")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**16), label="seed"))
    W = rng.uniform(size=(m, n)) * (rng.uniform(size=(m, n)) < 0.8)
    W[np.array(rows)] = 0.0
    W[:, np.array(cols)] = 0.0
    X = np.where(W > 0, rng.normal(size=(m, n)), 0.0)  # as the estimator fills NaN
    fit = solve(
        torch.tensor(X, dtype=dtype), torch.tensor(W, dtype=dtype), k, solver=solver, max_iter=20
    )
    assert torch.isfinite(fit.A).all() and torch.isfinite(fit.B).all()
    assert np.isfinite(fit.objective).all()
    # the best iterate is returned, and it is never worse than the start
    returned = objective(torch.tensor(X), torch.tensor(W), fit.A.double(), fit.B.double())
    assert returned == pytest.approx(min(fit.objective), rel=1e-4, abs=1e-9)
    assert min(fit.objective) <= fit.objective[0]
