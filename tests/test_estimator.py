"""The scikit-learn face: attributes, round trips, input handling, errors, model selection."""

import pickle
import re
import warnings
from itertools import product

import numpy as np
import pytest
import scipy.sparse as sp
import sklearn
import torch
from conftest import weighted_objective
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_wsvd import WeightedTruncatedSVD, weighted_low_rank


@pytest.fixture
def data(rng):
    X = rng.normal(size=(30, 12))
    W = rng.lognormal(size=X.shape)
    return X, W


def test_fitted_attributes(data):
    X, W = data
    est = WeightedTruncatedSVD(4, dtype="float64")
    Z = est.fit_transform(X, sample_weight=W)
    C = est.components_
    assert Z.shape == (30, 4) and C.shape == (4, 12)
    np.testing.assert_allclose(C @ C.T, np.eye(4), atol=1e-12)
    L = Z @ C
    sse = weighted_objective(X, W, L)
    assert est.reconstruction_err_ == pytest.approx(np.sqrt(sse), rel=1e-10)
    ratio = 1 - sse / np.sum(W * X**2)
    assert est.explained_weighted_variance_ratio_ == pytest.approx(ratio, rel=1e-10)
    # singular values of the row-scaled fitted matrix, in decreasing order
    scaled = np.sqrt(W.mean(axis=1))[:, None] * L
    np.testing.assert_allclose(
        est.singular_values_, np.linalg.svd(scaled, compute_uv=False)[:4], rtol=1e-8
    )
    assert np.all(np.diff(est.singular_values_) <= 0)
    assert est.solver_ == "ncg" and est.n_iter_ >= 1
    for value in vars(est).values():  # pickles load anywhere: no tensors are kept
        assert not isinstance(value, torch.Tensor)


def test_transform_round_trips(data):
    X, W = data
    est = WeightedTruncatedSVD(4, solver="als", dtype="float64", tol=1e-12, max_iter=1000)
    Z_fit = est.fit_transform(X, sample_weight=W)
    # At the optimum the scores are the per-row weighted least-squares fits.
    np.testing.assert_allclose(est.transform(X, sample_weight=W), Z_fit, atol=1e-4)
    # Without element-wise weights transform is the orthogonal projection.
    np.testing.assert_allclose(est.transform(X), X @ est.components_.T)
    Z = est.transform(X)
    np.testing.assert_allclose(est.inverse_transform(Z), Z @ est.components_)
    # At full rank the round trip is exact.
    full = WeightedTruncatedSVD(12, dtype="float64").fit(X, sample_weight=W)
    np.testing.assert_allclose(full.inverse_transform(full.transform(X)), X, atol=1e-10)


def test_zero_weight_entries_have_no_influence(data):
    X, W = data
    X_missing = X.copy()
    W_missing = W.copy()
    X_missing[::3, ::2] = np.nan
    W_missing[::3, ::2] = 0.0
    est = WeightedTruncatedSVD(3, dtype="float64").fit(X_missing, sample_weight=W_missing)
    X_garbage = np.where(np.isnan(X_missing), 1e6, X_missing)
    other = WeightedTruncatedSVD(3, dtype="float64").fit(X_garbage, sample_weight=W_missing)
    np.testing.assert_array_equal(est.components_, other.components_)
    Z = est.transform(X_missing, sample_weight=W_missing)
    X_other = np.where(np.isnan(X_missing), 1e6, X_missing)
    np.testing.assert_allclose(est.transform(X_other, sample_weight=W_missing), Z, atol=1e-8)


def test_score_is_negative_weighted_mse(data):
    X, W = data
    est = WeightedTruncatedSVD(4, dtype="float64").fit(X, sample_weight=W)
    L = est.inverse_transform(est.transform(X, sample_weight=W))
    assert est.score(X, sample_weight=W) == pytest.approx(
        -weighted_objective(X, W, L) / W.sum(), rel=1e-10
    )
    L = est.inverse_transform(est.transform(X))
    assert est.score(X) == pytest.approx(-np.mean((X - L) ** 2), rel=1e-10)


def test_integer_row_weights_equal_repeated_rows(rng):
    X = rng.normal(size=(12, 8))
    sw = rng.integers(0, 4, size=12)
    kw = dict(dtype="float64")
    repeated = WeightedTruncatedSVD(3, **kw).fit(np.repeat(X, sw, axis=0))
    weighted = WeightedTruncatedSVD(3, **kw).fit(X, sample_weight=sw)
    np.testing.assert_allclose(weighted.components_, repeated.components_, atol=1e-10)
    np.testing.assert_allclose(weighted.singular_values_, repeated.singular_values_, rtol=1e-10)


def test_inputs_are_never_modified(data):
    X, W = data
    X = X.copy()
    X[0, 0] = np.nan
    W = W.copy()
    W[0, 0] = 0.0
    X_before, W_before = X.copy(), W.copy()
    Xt, Wt = torch.tensor(X), torch.tensor(W)
    solvers = ["rank1", "ncg", "als", "als-cg", "em", "adam"]
    for solver, dtype in product(solvers, ["float32", "float64"]):
        # ncg's joint steps, which write into buffers, start after its three sweeps
        est = WeightedTruncatedSVD(3, solver=solver, max_iter=6, dtype=dtype)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            est.fit(X, sample_weight=W)
            est.transform(X, sample_weight=W)
            est.score(X, sample_weight=W)
            est.fit(Xt, sample_weight=Wt)
    np.testing.assert_array_equal(X, X_before)
    np.testing.assert_array_equal(W, W_before)
    np.testing.assert_array_equal(Xt.numpy(), X_before)
    np.testing.assert_array_equal(Wt.numpy(), W_before)


def test_torch_input_gives_torch_output(data):
    X, W = data
    Xt = torch.tensor(X, dtype=torch.float32)
    est = WeightedTruncatedSVD(3)
    Z = est.fit_transform(Xt, sample_weight=torch.tensor(W))
    assert isinstance(Z, torch.Tensor) and Z.dtype == torch.float32 and Z.device == Xt.device
    assert isinstance(est.transform(Xt), torch.Tensor)
    assert isinstance(est.inverse_transform(Z), torch.Tensor)
    ref = WeightedTruncatedSVD(3).fit(X.astype(np.float32), sample_weight=W)
    np.testing.assert_allclose(est.components_, ref.components_, atol=1e-5)
    # half precision is upcast for the solve and comes back in half precision
    Zh = WeightedTruncatedSVD(3).fit_transform(Xt.half(), sample_weight=W)
    assert Zh.dtype == torch.float16 and torch.isfinite(Zh).all()


def test_output_dtype_follows_input(data):
    X, W = data
    for dtype in (np.float32, np.float64):
        est = WeightedTruncatedSVD(3).fit(X.astype(dtype), sample_weight=W)
        assert est.transform(X.astype(dtype)).dtype == dtype
        assert est.components_.dtype == dtype
    assert WeightedTruncatedSVD(3).fit_transform(X.astype(int)).dtype == np.float64


def test_sparse_input_is_densified(data):
    X, W = data
    X = np.where(np.abs(X) > 1, X, 0.0)
    dense = WeightedTruncatedSVD(3, dtype="float64").fit(X, sample_weight=W)
    for fmt in (sp.csr_matrix, sp.csc_array, sp.coo_matrix):
        est = WeightedTruncatedSVD(3, dtype="float64").fit(fmt(X), sample_weight=W)
        np.testing.assert_allclose(est.components_, dense.components_, atol=1e-10)
        np.testing.assert_allclose(est.transform(fmt(X)), dense.transform(X), atol=1e-10)


def test_functional_form_matches_estimator(data):
    X, W = data
    A, B = weighted_low_rank(X, W, n_components=3, solver="als", dtype="float64")
    est = WeightedTruncatedSVD(3, solver="als", dtype="float64")
    np.testing.assert_allclose(A, est.fit_transform(X, sample_weight=W))
    np.testing.assert_allclose(B, est.components_)
    At, Bt = weighted_low_rank(torch.tensor(X), torch.tensor(W), n_components=3)
    assert isinstance(At, torch.Tensor) and isinstance(Bt, torch.Tensor)
    assert At.dtype == Bt.dtype == torch.float64


def test_pipeline_clone_pickle_and_feature_names(data):
    pd = pytest.importorskip("pandas")
    X, W = data
    y = X @ np.arange(12.0)
    pipe = make_pipeline(StandardScaler(), WeightedTruncatedSVD(5), Ridge())
    assert pipe.fit(X, y).score(X, y) > 0.3
    est = WeightedTruncatedSVD(3).fit(X, sample_weight=W)
    names = est.get_feature_names_out()
    assert list(names) == [f"weightedtruncatedsvd{i}" for i in range(3)]
    clone(est).fit(X)
    loaded = pickle.loads(pickle.dumps(est))
    np.testing.assert_array_equal(loaded.transform(X), est.transform(X))
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(12)])
    out = WeightedTruncatedSVD(3).set_output(transform="pandas").fit(frame).transform(frame)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == list(names)


def test_grid_search_over_solvers_with_routed_weights(rng):
    # A rank-4 signal under noise of known per-entry variance: inverse-variance weights.
    sigma = rng.lognormal(sigma=1.0, size=(90, 20))
    X = rng.normal(size=(90, 4)) @ rng.normal(size=(4, 20)) + sigma * rng.normal(size=sigma.shape)
    W = 1.0 / sigma**2
    with sklearn.config_context(enable_metadata_routing=True):
        est = WeightedTruncatedSVD().set_fit_request(sample_weight=True)
        est = est.set_score_request(sample_weight=True)
        grid = GridSearchCV(
            est, {"solver": ["svd", "rank1", "als-cg"], "n_components": [2, 4]}, cv=3
        )
        grid.fit(X, sample_weight=W)
    results = grid.cv_results_
    scores = {
        (p["solver"], p["n_components"]): score
        for p, score in zip(results["params"], results["mean_test_score"], strict=True)
    }
    assert all(score < 0 for score in scores.values())
    # Under the weighted score the weighted solver wins, and the larger rank wins.
    assert grid.best_params_ == {"solver": "als-cg", "n_components": 4}
    assert scores[("als-cg", 4)] > scores[("svd", 4)]
    assert scores[("als-cg", 4)] > scores[("als-cg", 2)]


# Bad input gets a clear error -------------------------------------------------


def bad_inputs(X, W):
    X_nan = X.copy()
    X_nan[1, 2] = np.nan
    X_inf = X.copy()
    X_inf[0, 0] = np.inf
    W_neg, W_nan, W_inf = W.copy(), W.copy(), W.copy()
    W_neg[3, 3] = -1.0
    W_nan[0, 1] = np.nan
    W_inf[0, 1] = np.inf
    return [
        (X, W_neg, {}, ValueError, "non-negative; it has 1 negative"),
        (X, W_nan, {}, ValueError, "sample_weight contains NaN or infinite"),
        (X, W_inf, {}, ValueError, "sample_weight contains NaN or infinite"),
        (X_nan, W, {}, ValueError, "X contains 1 NaN or infinite entries where sample_weight"),
        (
            np.full_like(X, np.nan),
            None,
            {},
            ValueError,
            "X is NaN everywhere: nothing to fit or score",
        ),
        (X_nan, None, {"feature_metric": np.ones(12)}, ValueError, "no entry can be missing"),
        (X_inf, W, {}, ValueError, "Input X contains infinity"),
        (X, W[:, :5], {}, ValueError, r"sample_weight has shape \(30, 5\), but X has shape"),
        (X, W[:7, 0], {}, ValueError, r"sample_weight has shape \(7,\)"),
        (X, np.zeros_like(W), {}, ValueError, "sample_weight is zero everywhere"),
        (X, W, {"n_components": 0}, ValueError, "'n_components' parameter"),
        (X, W, {"n_components": True}, ValueError, "n_components must be a positive integer"),
        (X, W, {"n_components": 13}, ValueError, r"n_components=13 must be <= min\(n_samples"),
        (X[:0], None, {}, ValueError, "0 sample"),
        (X[:, 0], None, {}, ValueError, "Expected 2D array"),
        (np.full((3, 2), "a"), None, {}, ValueError, "could not convert string to float"),
        (X, W, {"solver": "qr"}, ValueError, "'solver' parameter"),
        (X, W, {"init": "nope"}, ValueError, "'init' parameter"),
        (X, W, {"init": (W, W)}, ValueError, r"init=\(A0, B0\) must have shapes"),
        (X, W, {"dtype": "float16"}, ValueError, "'dtype' parameter"),
        (X, W, {"device": "tpu"}, ValueError, "not a valid torch device"),
        (torch.zeros(3), None, {}, ValueError, "Expected a 2D tensor"),
        (torch.zeros(3, 2, device="meta"), None, {}, ValueError, "'meta' device, which holds"),
        (torch.zeros(3, 2, dtype=torch.complex64), None, {}, TypeError, "real numbers"),
        # finite in float64, beyond float32's range: named, not an overflow deep in a solve
        (X * 1e39, None, {}, ValueError, "X has entries beyond the range of dtype='float32'"),
        (X, W * 1e300, {}, ValueError, "sample_weight's largest entry, .* is beyond the range"),
        (X, W * 1e-300, {}, ValueError, "sample_weight's largest entry, .* is beyond the range"),
        (X, W, {"feature_metric": np.full(12, 1e80)}, ValueError, "feature_metric's square root"),
        (X, W, {"init": (1j * W[:, :2], W[:2])}, TypeError, r"init=\(A0, B0\) must hold real"),
    ]


@pytest.mark.parametrize("case", range(29))
def test_bad_input_raises_a_clear_error(data, case):
    X, W = data
    X_in, W_in, params, exc, match = bad_inputs(X, W)[case]
    copies = [np.array(a, copy=True) if isinstance(a, np.ndarray) else a for a in (X_in, W_in)]
    with pytest.raises(exc, match=match):
        WeightedTruncatedSVD(**{"n_components": 2, **params}).fit(X_in, sample_weight=W_in)
    for before, after in zip(copies, (X_in, W_in), strict=True):
        if isinstance(before, np.ndarray):
            np.testing.assert_array_equal(before, after)


def test_arrays_of_any_strides_and_byte_order_give_the_same_fit(data):
    # np.flip and x[::-1] give negative strides, which torch does not take as they are.
    X, W = data
    est = WeightedTruncatedSVD(3, solver="ncg", random_state=0)
    expected = est.fit(X[::-1].copy(), sample_weight=W[::-1].copy()).transform(X[::-1].copy())
    got = clone(est).fit(X[::-1], sample_weight=W[::-1]).transform(X[::-1])
    np.testing.assert_array_equal(got, expected)
    swapped = X.astype(X.dtype.newbyteorder())  # big-endian on this machine
    np.testing.assert_array_equal(
        clone(est).fit(np.flip(swapped, 1), sample_weight=np.flip(W, 1)).components_,
        clone(est).fit(np.flip(X, 1).copy(), sample_weight=np.flip(W, 1).copy()).components_,
    )


def test_nan_without_weights_is_missing(data):
    # Without sample_weight, NaN entries are missing and the others weigh one: the
    # same fit and fold-in as with those weights given (it was an error, whose message,
    # scikit-learn's, recommended HistGradientBoosting).
    X, _ = data
    X = X.copy()
    X[np.random.default_rng(0).uniform(size=X.shape) < 0.3] = np.nan
    W = np.isfinite(X).astype(float)
    implicit = WeightedTruncatedSVD(3, random_state=0).fit(X)
    explicit = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=W)
    np.testing.assert_array_equal(implicit.components_, explicit.components_)
    np.testing.assert_array_equal(implicit.transform(X), explicit.transform(X, sample_weight=W))
    assert implicit.score(X) == explicit.score(X, sample_weight=W)
    assert np.isfinite(implicit.transform(np.full((1, X.shape[1]), np.nan))).all()
    # and the warning about rows with fewer observed entries than k fires without weights too
    X[0, 1:] = np.nan
    for weights in (None, np.isfinite(X).astype(float)):
        with pytest.warns(UserWarning, match="1 of 30 rows and 0 of 12 columns have fewer"):
            WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=weights)
    for bad in (np.inf, -np.inf):  # infinity is never a missing entry
        X_bad = X.copy()
        X_bad[0, 0] = bad
        with pytest.raises(ValueError, match="infinity"):
            WeightedTruncatedSVD(3).fit(X_bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised without CUDA")
def test_cuda_requested_without_cuda(data):
    X, W = data
    with pytest.raises(ValueError, match="CUDA is not available"):
        WeightedTruncatedSVD(device="cuda").fit(X, sample_weight=W)


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the error without mps")
def test_unusable_device_is_named_before_any_work(data):
    X, W = data
    with pytest.raises(ValueError, match="device='mps' is not usable here"):
        WeightedTruncatedSVD(device="mps").fit(X, sample_weight=W)


def test_sparse_weights_are_the_dense_ones(data):
    # A completion's observed entries often come as a sparse matrix, and their mask too.
    X, W = data
    mask = sp.random(*X.shape, density=0.5, random_state=0, format="csr")
    dense = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=mask.toarray())
    sparse = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=mask)
    np.testing.assert_array_equal(sparse.components_, dense.components_)


def test_the_meta_device_is_refused(data):
    X, W = data
    with pytest.raises(ValueError, match="device='meta' holds no data"):
        WeightedTruncatedSVD(device="meta").fit(X, sample_weight=W)


def test_unfitted_and_mismatched_transform(data):
    X, W = data
    with pytest.raises(NotFittedError):
        WeightedTruncatedSVD().transform(X)
    est = WeightedTruncatedSVD(3).fit(X)
    with pytest.raises(ValueError, match="X has 5 features"):
        est.transform(X[:, :5])
    with pytest.raises(ValueError, match=re.escape("expects n_components = 3")):
        est.inverse_transform(np.ones((2, 4)))
    for bad in (torch.ones(3), torch.ones(2, 4)):  # 1-D, wrong width: named, not a torch error
        with pytest.raises(ValueError, match=re.escape("expects (n_samples, n_components = 3)")):
            est.inverse_transform(bad)
    with pytest.raises(ValueError, match="NaN or infinity"):
        est.inverse_transform(torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(TypeError, match="X must hold real numbers"):  # not cast to real
        est.inverse_transform(torch.ones(2, 3, dtype=torch.complex64))


def test_rows_of_zero_weight_transform_to_zero_alone_or_in_a_batch(data):
    X, W = data
    est = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=W)
    zero = np.zeros_like(W[:1])
    np.testing.assert_array_equal(est.transform(X[:1], sample_weight=zero), 0.0)
    batch = est.transform(X[:2], sample_weight=np.vstack([zero, W[1:2]]))
    np.testing.assert_array_equal(batch[0], 0.0)
    alone = est.transform(X[1:2], sample_weight=W[1:2])[0]
    np.testing.assert_allclose(batch[1], alone, rtol=1e-5)
    with pytest.raises(ValueError, match="nothing to fit or score"):
        est.score(X[:1], sample_weight=zero)


@pytest.mark.parametrize("solver", ["ncg", "als-cg", "em"])
def test_a_float64_objective_beyond_its_range_stops_where_it_would(data, solver):
    # At 1e160 the objective (~1e320) overflows float64 in the caller's units, in
    # which the history is reported: the stopping rule reads the solver's own.
    X, W = data
    ref, est = (
        WeightedTruncatedSVD(3, solver=solver, dtype="float64", random_state=0).fit(
            X * s, sample_weight=W
        )
        for s in (1.0, 1e160)
    )
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.singular_values_ / 1e160, ref.singular_values_, rtol=1e-10)


@pytest.mark.parametrize("solver", ["ncg", "als-cg", "rank1"])
@pytest.mark.parametrize("scale", [2.0**-60, 1e-25, 1e25, 1e36])
@pytest.mark.parametrize("alpha", [0.0, 0.5])
@pytest.mark.filterwarnings("ignore:Solver .* reached max_iter")
def test_data_of_any_magnitude_gives_the_same_fit(data, solver, scale, alpha):
    # In float32 the squares of data of size 1e-15 underflow and those of 1e19
    # overflow: ncg stopped after two iterations 6% above the optimum at 1e-15
    # (2^-50), and the error and explained variance came out 0, inf or NaN. The
    # problem scaled by s (alpha by s too) has the solution scaled by s.
    X, W = data
    seen = []

    def record(n_iter, A, B, objective):
        seen.append(((A @ B).numpy(), objective))

    def fit(s, init=None, **params):
        est = WeightedTruncatedSVD(
            3, solver=solver, alpha=alpha * s, init=init, random_state=0, callback=record, **params
        )
        return est.fit(X * s, sample_weight=W)

    # The stopping rule is scale-free, but its trend (ratios of the last decreases,
    # remaining_decrease) feels float32's rounding: one iteration more or less.
    ref, est = fit(1.0), fit(scale)
    assert abs(est.n_iter_ - ref.n_iter_) <= 1
    # The same number of iterations gives the same fit.
    seen.clear()
    ref, est = fit(1.0, max_iter=ref.n_iter_, tol=0), fit(scale, max_iter=ref.n_iter_, tol=0)
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.reconstruction_err_ / scale, ref.reconstruction_err_, rtol=1e-4)
    np.testing.assert_allclose(
        est.explained_weighted_variance_ratio_, ref.explained_weighted_variance_ratio_, rtol=1e-4
    )
    np.testing.assert_allclose(est.components_, ref.components_, atol=1e-4)
    np.testing.assert_allclose(est.singular_values_ / scale, ref.singular_values_, rtol=1e-4)
    score = est.score(X * scale, sample_weight=W) / scale**2
    np.testing.assert_allclose(score, ref.score(X, sample_weight=W), rtol=1e-4)
    Z = est.transform(X * scale, sample_weight=W) / scale  # under the ridge where alpha > 0
    np.testing.assert_allclose(Z, ref.transform(X, sample_weight=W), rtol=1e-3, atol=1e-4)
    if solver == "rank1":
        return
    # the callback sees factors and objectives in the caller's units
    (L_ref, f_ref), (L, f) = seen[ref.n_iter_ - 1], seen[-1]
    np.testing.assert_allclose(L / scale, L_ref, rtol=1e-3, atol=1e-5)
    assert f / scale**2 == pytest.approx(f_ref, rel=1e-4)
    # a start given in the caller's units
    rng = np.random.default_rng(1)
    A0, B0 = rng.normal(size=(30, 3)), rng.normal(size=(3, 12))
    ref, est = fit(1.0, (A0, B0)), fit(scale, (A0 * scale**0.5, B0 * scale**0.5))
    assert est.n_iter_ == ref.n_iter_
    np.testing.assert_allclose(est.reconstruction_err_ / scale, ref.reconstruction_err_, rtol=1e-4)


def test_weights_near_the_top_of_float32_give_the_same_fit(data):
    X, W = data
    ref = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=W)
    est = WeightedTruncatedSVD(3, random_state=0).fit(X, sample_weight=W * 1e37)
    np.testing.assert_allclose(est.components_, ref.components_, atol=1e-4)
    np.testing.assert_allclose(
        est.explained_weighted_variance_ratio_, ref.explained_weighted_variance_ratio_, rtol=1e-4
    )
    np.testing.assert_allclose(
        est.score(X, sample_weight=W * 1e37), ref.score(X, sample_weight=W), rtol=1e-4
    )


def test_metrics_beyond_float32_are_named(data):
    X, W = data
    with pytest.raises(ValueError, match="sample_metric's square root"):
        WeightedTruncatedSVD(2).fit(X, sample_metric=np.full(30, 1e-80))
    with pytest.raises(ValueError, match="X whitened by the metrics overflows dtype='float32'"):
        WeightedTruncatedSVD(2, feature_metric=np.full(12, 1e38)).fit(X * 1e20)
    # float64 holds them
    WeightedTruncatedSVD(2, dtype="float64").fit(X, sample_metric=np.full(30, 1e-80))


# Property tests ---------------------------------------------------------------

weight_patterns = st.sampled_from(["uniform", "row", "rank1", "elementwise", "mask"])


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(2, 12),
    n=st.integers(2, 12),
    k_frac=st.floats(0.0, 1.0),
    pattern=weight_patterns,
    solver=st.sampled_from(["auto", "rank1", "ncg", "als", "als-cg", "em"]),
    seed=st.integers(0, 2**16),
)
def test_properties(m, n, k_frac, pattern, solver, seed):
    rng = np.random.default_rng(seed)
    k = 1 + int(k_frac * (min(m, n) - 1))
    X = rng.normal(size=(m, n))
    W = {
        "uniform": np.ones((m, n)),
        "row": np.repeat(rng.uniform(0.1, 2, size=(m, 1)), n, axis=1),
        "rank1": np.outer(rng.uniform(0.1, 2, m), rng.uniform(0.1, 2, n)),
        "elementwise": rng.lognormal(size=(m, n)),
        "mask": (rng.uniform(size=(m, n)) < 0.7).astype(float),
    }[pattern]
    if not W.any():
        W[0, 0] = 1.0
    kw = dict(solver=solver, dtype="float64", max_iter=30, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        warnings.filterwarnings("ignore", ".*fewer entries of non-zero weight", UserWarning)
        est = WeightedTruncatedSVD(k, **kw)
        Z = est.fit_transform(X, sample_weight=W)
        again = WeightedTruncatedSVD(k, **kw).fit_transform(X, sample_weight=W)
    assert np.isfinite(Z).all() and np.isfinite(est.components_).all()
    np.testing.assert_array_equal(Z, again)
    err = weighted_objective(X, W, Z @ est.components_)
    if pattern in ("uniform", "row", "rank1"):
        # No solver beats the exact closed form; "auto" and "rank1" reach it.
        exact = WeightedTruncatedSVD(k, solver="rank1", dtype="float64").fit(X, sample_weight=W)
        optimum = exact.reconstruction_err_**2
        assert err >= optimum * (1 - 1e-9) - 1e-12
        if solver in ("auto", "rank1"):
            assert err == pytest.approx(optimum, rel=1e-8, abs=1e-12)


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_convergence_warning_points_at_the_callers_line(data, method):
    X, W = data
    est = WeightedTruncatedSVD(3, solver="em", max_iter=2, tol=0)
    with pytest.warns(ConvergenceWarning, match="'em' reached max_iter=2") as record:
        getattr(est, method)(X, sample_weight=W)
    assert record[0].filename == __file__
    assert est.n_iter_ == 2


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_underdetermined_rows_and_columns_are_named_at_the_callers_line(rng, method):
    X = rng.normal(size=(20, 8))
    W = (rng.uniform(size=X.shape) < 0.8).astype(float)
    W[:, 0] = 1.0
    W[0] = W[1] = 0.0
    W[0, :2] = W[1, :3] = 1.0  # rows 0 and 1: 2 and 3 observed entries for k = 3
    W[2:, 7] = 0.0
    W[2:4, 7] = 1.0  # column 7: 2 observed entries
    X = np.where(W > 0, X, np.nan)
    with pytest.warns(UserWarning, match=r"1 of 20 rows and 1 of 8 columns have fewer") as rec:
        getattr(WeightedTruncatedSVD(3), method)(X, sample_weight=W)
    assert rec[0].filename == __file__
    assert "alpha > 0" in str(rec[0].message) and "lower n_components" in str(rec[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WeightedTruncatedSVD(2).fit(X, sample_weight=W)  # every row and column determined
        WeightedTruncatedSVD(3, alpha=0.1).fit(X, sample_weight=W)  # the ridge decides
        WeightedTruncatedSVD(3, solver="rank1").fit(X, sample_weight=W)  # a closed form


@pytest.mark.parametrize("method", ["fit", "fit_transform"])
def test_rounding_limited_fits_suggest_float64(rng, method):
    # Weights over about 18 orders of magnitude: float32 cannot see the progress.
    X = rng.normal(size=(60, 40))
    W = rng.lognormal(sigma=10.0, size=X.shape)
    est = WeightedTruncatedSVD(10, solver="als-cg")
    with pytest.warns(ConvergenceWarning, match="rounding error of dtype='float32'") as rec:
        getattr(est, method)(X, sample_weight=W)
    assert rec[0].filename == __file__ and "dtype='float64'" in str(rec[0].message)
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        WeightedTruncatedSVD(10, solver="als-cg", dtype="float64").fit(X, sample_weight=W)
    assert not any("rounding" in str(w.message) for w in rec)
