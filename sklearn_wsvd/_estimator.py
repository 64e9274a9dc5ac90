"""WeightedTruncatedSVD: the scikit-learn face of the package."""

from __future__ import annotations

import math
import time
import warnings
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_array, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from ._backend import (
    is_tensor,
    numpy_dtype_like,
    output_like,
    resolve_device,
    resolve_dtype,
    to_numpy,
    to_tensor,
)
from ._compat import _fit_context
from ._solvers import (
    CLOSED_FORM,
    INITS,
    SOLVERS,
    SVD_SOLVERS,
    count_underdetermined,
    energy,
    objective,
    product_svd,
    resolve_solver,
    solve,
    uniform_weight,
    value_scale,
    weighted_row_solve,
    weights_in_range,
)
from ._validation import check_rank
from ._whitening import check_metric, left, metric_root, right


class WeightedTruncatedSVD(ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Weighted low-rank approximation, in the form of scikit-learn's TruncatedSVD.

    Finds ``A`` (n_samples x k) and ``B`` (k x n_features) minimising

    ``sum_ij W_ij (X_ij - (A B)_ij)**2 + alpha * (|A|_F**2 + |B|_F**2)``

    for an importance matrix ``W >= 0`` given as ``sample_weight``. Uniform, row
    and rank-one weights have exact closed forms; general element-wise weights are
    solved iteratively, starting from the closed form. Zero weights mark entries
    that do not matter, where ``X`` may hold NaN (matrix completion); without
    ``sample_weight``, NaN entries are missing and the others weigh one. Like
    TruncatedSVD, the data are not centred.

    Metrics on the features (``feature_metric``, ``C``) and on the samples
    (``sample_metric`` of :meth:`fit`, ``R``) generalise the error to
    ``sum_ij W_ij ((R^{1/2} (X - A B) C^{1/2})_ij)**2``. With ``X`` a layer's
    weight and ``C`` the Gram matrix of its inputs this is the layer's output
    error (SVD-LLM); with ``R`` the second moment of the output gradients too,
    the Kronecker-factored curvature (K-FAC). Without element-wise weights the
    optimum is exact: one SVD of the whitened matrix ``R^{1/2} X C^{1/2}``.

    Read more in the :ref:`User Guide <user_guide>`.

    Parameters
    ----------
    n_components : int, default=2
        Rank ``k`` of the approximation, between 1 and ``min(n_samples, n_features)``.

    solver : {"auto", "svd", "fwsvd", "rank1", "ncg", "als", "als-cg", "em", "adam"}, \
            default="auto"
        - "auto": the exact closed form when the weights allow one ("svd" for
          uniform, "rank1" for row, column or rank-one weights, when
          ``alpha == 0``), else "ncg".
        - "svd": plain truncated SVD, ignores the weights (exact for uniform ones).
        - "fwsvd": FWSVD (Hsu et al., 2022): weights collapsed to their row sums,
          then the exact row-weighted closed form.
        - "rank1": weights replaced by their best rank-one model ``a b^T`` (row
          sums times column sums over the total), then the exact closed form.
          Exact for uniform, row, column and rank-one weights.
        - "ncg": nonlinear conjugate gradient on both factors at once
          (Polak-Ribiere+, exact line search of the quartic objective,
          preconditioned by the Hessian blocks of the rank-one model of the
          weights), after three "als-cg" sweeps; O(mnk) a step.
        - "als": exact alternating least squares, O(mnk^2) a sweep.
        - "als-cg": alternating sweeps of warm-started conjugate-gradient steps,
          O(mnk) a step.
        - "em": Srebro-Jaakkola expectation-maximisation, with restarted Nesterov
          acceleration.
        - "adam": the TFWSVD paper's recipe, Adam then gradient descent.

    init : {"svd", "fwsvd", "rank1", "random"}, tuple of two arrays or None, \
            default=None
        Starting point of the iterative solvers: a closed-form solver's result,
        random factors, or ``(A0, B0)`` of shapes (n_samples, k) and
        (k, n_features), taken as a fit to refine ("ncg" skips its alternating
        sweeps from it). None means "rank1". Ignored by closed-form solvers.

    max_iter : int or None, default=None
        Maximum number of iterations (sweeps for "als", "als-cg" and "em", steps
        for "ncg", blocks of ten optimiser steps for "adam"). None uses the
        solver's default.

    tol : float, default=1e-5
        Stop when an iteration improves the objective by less than ``tol``
        relative to it and, for every iterative solver but "adam", the trend
        of the last decreases (a linear rate read off two windows of four
        iterations) puts what remains within that too: these problems
        converge linearly, slowly where the rate is near one, and one small
        step can leave far more to go. On 25 problems
        (``benchmarks/bench_convergence.py``) the default ended within 0.0033%
        of the best objective known; a single small step ended 0.005% to 1.8%
        above, in 0.20 to 1.03 times the time. ``tol=1e-4`` ended 0.006% to
        1.05% above in a median 0.73 times the default's time.

    alpha : float, default=0.0
        Ridge penalty on both factors, the same as the nuclear-norm penalty
        ``2 * alpha * |A B|_*`` (with components to spare, the iterative solvers
        reach the nuclear-norm-penalised optimum: SoftImpute's, for missing
        entries; the components the ridge removes cost their iterations
        nothing, so ``n_components`` can be generous). The closed forms are
        exact with a ridge only for uniform weights (singular values
        soft-thresholded by ``alpha``). ``transform``
        fits new rows under the same ridge. Matrix completion needs one: choose
        it by cross-validation over hidden entries
        (:class:`~sklearn_wsvd.model_selection.HiddenEntryScorer`,
        :func:`~sklearn_wsvd.model_selection.alpha_path`). With metrics the
        penalty applies to the whitened factors ``R^{1/2} A`` and ``B C^{1/2}``.

    feature_metric : array-like of shape (n_features, n_features) or (n_features,), \
            default=None
        Symmetric positive semi-definite metric ``C`` over the features (a
        vector is a diagonal metric), for example the Gram matrix ``Xa Xa^T`` of a
        layer's inputs when ``X`` is its weight. A property of the feature space,
        so a constructor parameter: ``transform`` and ``score`` of new data use it
        too, and cross-validation never splits it. None means the identity.

    metric_damping : float, default=0.0
        Added to the eigenvalues of both metrics, relative to their mean
        eigenvalue: ``M + metric_damping * trace(M) / n * I``. Zero solves the
        stated problem exactly; directions that a singular metric ignores are then
        left at zero. A small value (1e-4 to 1e-2) keeps those directions close
        to ``X`` and bounds the conditioning, as GPTQ and K-FAC do.

    svd_solver : {"auto", "full", "randomized"}, default="auto"
        The truncated SVD of the closed forms and of the iterative solvers'
        starting points. "full": LAPACK's, exact. "randomized": Halko et al.
        (2011) with 5 power iterations, like scikit-learn's TruncatedSVD, with a
        fixed seed; within rounding of the optimum where the singular values
        decay, about 1% above it on pure noise; never for ``n_components``
        above a quarter of the smaller side, where the full SVD costs no more.
        "auto": "randomized" for the closed forms when the smaller side is 500
        or more, for the starting points (which the solvers refine) from 100.

    random_state : int, RandomState instance or None, default=None
        Seed of ``init="random"``.

    device : {"auto", "cpu", "cuda"}, str or torch.device, default="auto"
        Where the solve runs. "auto" follows a tensor input and otherwise uses
        CUDA when it is available.

    dtype : {"float32", "float64"}, default="float32"
        Precision of the solve. Outputs come back in the input's float dtype.

    verbose : bool, default=False
        Show a progress bar with the objective.

    callback : callable or None, default=None
        Called as ``callback(n_iter, A, B, objective)`` after each iteration of an
        iterative solver, with the current factors as tensors (the solver's
        own: read or copy them, never modify them in place); returning True
        stops the solver.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Orthonormal rows spanning the fitted low-rank matrix's row space.

    singular_values_ : ndarray of shape (n_components,)
        Singular values of the fitted low-rank matrix ``L``, in decreasing order,
        after scaling each row by the square root of its mean weight (so that an
        integer row weight counts as repeating the row; uniform unit weights leave
        ``L`` as it is). ``components_`` are the matching right singular vectors.

    solver_ : str
        The solver that ran (``"auto"`` resolved).

    n_iter_ : int
        Number of iterations run (1 for the closed forms).

    reconstruction_err_ : float
        Weighted Frobenius norm of the residual, ``sqrt(sum W (X - L)**2)``.

    explained_weighted_variance_ratio_ : float
        ``1 - sum W (X - L)**2 / sum W X**2``.

    history_ : dict of ndarray
        ``"objective"`` and ``"seconds"`` (since the start of the fit) for the
        starting point and each iteration.

    n_features_in_ : int
        Number of features seen during fit.

    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of features seen during fit, when ``X`` has string column names.

    See Also
    --------
    sklearn.decomposition.TruncatedSVD : the unweighted estimator.
    weighted_low_rank : the functional form.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd import WeightedTruncatedSVD
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 8))
    >>> W = rng.uniform(size=(30, 8))
    >>> svd = WeightedTruncatedSVD(n_components=3, random_state=0)
    >>> Z = svd.fit_transform(X, sample_weight=W)
    >>> Z.shape, svd.components_.shape
    ((30, 3), (3, 8))
    >>> svd.solver_
    'ncg'
    """

    _parameter_constraints: dict = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "solver": [StrOptions(set(SOLVERS))],
        "init": [StrOptions(set(INITS)), tuple, None],
        "max_iter": [Interval(Integral, 0, None, closed="left"), None],
        "tol": [Interval(Real, 0, None, closed="left")],
        "alpha": [Interval(Real, 0, None, closed="left")],
        "feature_metric": ["array-like", "sparse matrix", torch.Tensor, None],
        "metric_damping": [Interval(Real, 0, None, closed="left")],
        "svd_solver": [StrOptions(set(SVD_SOLVERS))],
        "random_state": ["random_state"],
        "device": [str, torch.device],
        "dtype": [StrOptions({"float32", "float64"})],
        "verbose": ["verbose"],
        "callback": [callable, None],
    }

    def __init__(
        self,
        n_components=2,
        *,
        solver="auto",
        init=None,
        max_iter=None,
        tol=1e-5,
        alpha=0.0,
        feature_metric=None,
        metric_damping=0.0,
        svd_solver="auto",
        random_state=None,
        device="auto",
        dtype="float32",
        verbose=False,
        callback=None,
    ):
        self.n_components = n_components
        self.solver = solver
        self.init = init
        self.max_iter = max_iter
        self.tol = tol
        self.alpha = alpha
        self.feature_metric = feature_metric
        self.metric_damping = metric_damping
        self.svd_solver = svd_solver
        self.random_state = random_state
        self.device = device
        self.dtype = dtype
        self.verbose = verbose
        self.callback = callback

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None, sample_metric=None):
        """Fit the low-rank model to ``X`` under the weights ``sample_weight``.

        Parameters
        ----------
        X : {array-like, sparse matrix, torch.Tensor} of shape (n_samples, n_features)
            Training data. Sparse input is densified: its implicit zeros are
            values, not missing entries (mark those with zero weights).
        y : Ignored
            Not used, present for API consistency.
        sample_weight : {array-like, sparse matrix} of shape (n_samples,) or \
                (n_samples, n_features), default=None
            Non-negative importance of each sample (row) or of each entry (a
            sparse matrix, such as a mask of the observed entries, is made
            dense). None means uniform weights, except that NaN entries of ``X``
            are missing (weight zero).
        sample_metric : array-like of shape (n_samples, n_samples) or (n_samples,), \
                default=None
            Symmetric positive semi-definite metric ``R`` over the samples (a
            vector is a diagonal metric), for example the second moment of the
            output gradients when ``X`` is a layer's weight (K-FAC). Pairwise
            sample metadata: cross-validation cannot split it. None means the
            identity.

        Returns
        -------
        self : object
            Fitted estimator.
        """
        self._fit(X, sample_weight, sample_metric, stacklevel=4)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None, sample_weight=None, sample_metric=None):
        """Fit to ``X`` and return the fitted scores ``Z`` with ``Z @ components_ = L``.

        Parameters
        ----------
        X : {array-like, sparse matrix, torch.Tensor} of shape (n_samples, n_features)
            Training data.
        y : Ignored
            Not used, present for API consistency.
        sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
                default=None
            Non-negative importance of each sample or of each entry, as in
            :meth:`fit` (None: NaN entries are missing).
        sample_metric : array-like of shape (n_samples, n_samples) or (n_samples,), \
                default=None
            Metric over the samples, as in :meth:`fit`.

        Returns
        -------
        Z : ndarray or torch.Tensor of shape (n_samples, n_components)
            Scores of the fitted low-rank matrix ``L`` on ``components_``.
        """
        return self._fit(X, sample_weight, sample_metric, stacklevel=5)

    def _fit(self, X, sample_weight, sample_metric, stacklevel):
        # stacklevel: the frames from here up to the caller of fit or fit_transform
        # (through _fit_context and, for fit_transform, the set_output wrapper).
        start = time.perf_counter()  # history_["seconds"] count the validation too
        X_in, X, W = self._validate_input(X, sample_weight, sample_metric, reset=True)
        m, n = X.shape
        self._check_rank(m, n)
        # Without element-wise weights any square root of a metric gives the same fit:
        # the fast Cholesky factor will do.
        R, R_inv = self._sample_root(sample_metric, X, any_root=W is None)
        C, C_inv = self._feature_root(X, reset=True, any_root=W is None or W.ndim == 1)
        # The whitened problem is a plain weighted one: every solver runs on it as is.
        Y = right(left(R, X), C)
        if (R is not None or C is not None) and not torch.isfinite(Y).all():
            raise ValueError(
                f"X whitened by the metrics overflows dtype={self.dtype!r}; pass "
                "dtype='float64' or rescale X or the metrics."
            )
        weighted = W is not None
        W = _dense_weights(W, Y)
        if weighted and (R is not None or C is not None):
            counted = W > 0  # whitened errors of zero weight count for nothing
            Y = Y if counted.all() else torch.where(counted, Y, 0.0)
        init = self._check_init(m, n, X)
        if isinstance(init, tuple):
            init = (left(R, init[0]), right(init[1], C))
        factors = self._solve(Y, W, init, start=start, stacklevel=stacklevel + 1)
        A, B = left(R_inv, factors.A), right(factors.B, C_inv)
        # in units (exact) where the products below and the row sums of W stay in range
        s, (W_in_range, w) = value_scale(X), weights_in_range(W)
        Z, S, Vt = _svd_of_product(A / s**0.5, B / s**0.5, W_in_range.mean(dim=1))
        Z, S = Z * s, S * (s * w**0.5)
        self._ridge_basis = self._ridge_map = None
        if self.alpha > 0:
            # What transform needs to fold rows in under the same ridge: the fit's
            # factor B in the (whitened) space where the penalty applies, in its
            # balanced form (B B^T diagonal, the smallest penalty for the same
            # product), and the map from its coordinates to the scores on Vt.
            basis = _balanced_right_factor(factors.A, factors.B)
            self._ridge_basis = to_numpy(basis)
            self._ridge_map = to_numpy(right(basis, C_inv) @ Vt.T)
        # The best objective the solver saw is that of these factors: less the ridge,
        # the weighted error (computing it again would cost a product and passes).
        penalty = (
            self.alpha * float(factors.A.square().sum() + factors.B.square().sum())
            if self.alpha
            else 0.0
        )
        sse = max(min(factors.objective) - penalty, 0.0)
        total = energy(Y, W)
        dtype = numpy_dtype_like(X_in)
        self.components_ = to_numpy(Vt, dtype)
        self.singular_values_ = to_numpy(S, dtype)
        self.n_iter_ = factors.n_iter
        self.reconstruction_err_ = sse**0.5
        self.explained_weighted_variance_ratio_ = 1.0 - sse / total if total > 0 else 0.0
        self.history_ = {
            "objective": np.asarray(factors.objective),
            "seconds": np.asarray(factors.seconds),
        }
        return output_like(Z, X_in)

    def _check_rank(self, m, n):
        k = check_rank(self.n_components, "n_components")  # True is an int, not a rank
        if k > min(m, n):
            raise ValueError(
                f"n_components={k} must be <= min(n_samples, n_features) = {min(m, n)} "
                f"(n_samples = {m}, n_features = {n})."
            )

    def _solve(self, Y, W, init, *, start=None, stacklevel=2, **options):
        """Solve the prepared problem (validated, whitened, dense ``W``) from ``init``; warn.

        The fit's core, without the validation and the conversions around it:
        what :func:`~sklearn_wsvd.model_selection.alpha_path` runs at each
        penalty of a path, on data it has validated once. ``options`` go to the
        solver (:func:`~sklearn_wsvd._solvers.solve`). Returns the solver's
        :class:`~sklearn_wsvd._solvers.Factors`.
        """
        self.solver_ = resolve_solver(self.solver, W, self.alpha)
        factors = solve(
            Y,
            W,
            self.n_components,
            solver=self.solver_,
            init=init,
            alpha=self.alpha,
            max_iter=self.max_iter,
            tol=self.tol,
            # only a random start draws (a RandomState costs 0.1 ms to make)
            seed=check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
            if isinstance(init, str) and init == "random"
            else 0,
            callback=self.callback,
            verbose=self.verbose,
            svd_solver=self.svd_solver,
            start=start,
            **options,
        )
        self._warn_about_the_solve(W, factors, stacklevel + 1)
        return factors

    def _warn_about_the_solve(self, W, factors, stacklevel):
        if not factors.converged:
            warnings.warn(
                f"Solver {self.solver_!r} reached max_iter={factors.n_iter} before its "
                f"objective settled to tol={self.tol}. Increase max_iter or tol.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )
        if factors.rounding_limited and self.dtype == "float32":
            # In float64 the fit is as good as the arithmetic can tell: nothing to suggest.
            warnings.warn(
                f"Solver {self.solver_!r} stopped where the rounding error of "
                f"dtype={self.dtype!r} hides its progress (the weights span many orders of "
                "magnitude, or the fit is nearly exact); dtype='float64' may reach a lower "
                "objective.",
                ConvergenceWarning,
                stacklevel=stacklevel,
            )
        # weights given or NaN in X (missing entries), not uniform
        if uniform_weight(W) is not None or self.alpha > 0 or self.solver_ in CLOSED_FORM:
            return
        rows, cols = count_underdetermined(W, self.n_components)
        if rows or cols:
            m, n = W.shape
            warnings.warn(
                f"{rows} of {m} rows and {cols} of {n} columns have fewer entries of non-zero "
                f"weight than n_components={self.n_components}: the fit interpolates their "
                "observed entries and says nothing reliable about the others. Set alpha > 0 "
                "(a ridge; choose it by cross-validation over entries, see "
                "sklearn_wsvd.model_selection) or lower n_components.",
                UserWarning,
                stacklevel=stacklevel,
            )

    def transform(self, X, sample_weight=None, sample_metric=None):
        """Project ``X`` onto the components, weighted per entry when weights are given.

        Without element-wise weights this is the orthogonal projection
        ``X @ components_.T`` (row weights do not change a row's projection), or
        with ``feature_metric`` the projection in that metric. With element-wise
        weights each row is the weighted least-squares fit of the components to
        that row, so entries of zero weight (NaN allowed) are ignored, except
        under a metric, which mixes every entry into the whitened ones that
        weigh (none may be NaN); with a ``sample_metric`` as well, the rows are
        fitted jointly, as in :meth:`fit`.

        Parameters
        ----------
        X : {array-like, sparse matrix, torch.Tensor} of shape (n_samples, n_features)
            Data to transform.
        sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
                default=None
            Non-negative importance of each sample or of each entry, as in
            :meth:`fit` (None: NaN entries are missing).
        sample_metric : array-like of shape (n_samples, n_samples) or (n_samples,), \
                default=None
            Metric over the rows of ``X``, as in :meth:`fit`.

        Returns
        -------
        Z : ndarray or torch.Tensor of shape (n_samples, n_components)
            Scores with ``Z @ components_`` the reconstruction of ``X``.
        """
        check_is_fitted(self)
        X_in, X, W = self._validate_input(
            X, sample_weight, sample_metric, reset=False, zero_weight_ok=True
        )
        R, R_inv = self._sample_root(sample_metric, X)
        return output_like(self._project(X, W, R, R_inv), X_in)

    def inverse_transform(self, X):
        """Map scores back to the data space: ``X @ components_``.

        Parameters
        ----------
        X : array-like or torch.Tensor of shape (n_samples, n_components)
            Scores, as returned by :meth:`transform`.

        Returns
        -------
        X_original : ndarray or torch.Tensor of shape (n_samples, n_features)
            The low-rank reconstruction.
        """
        check_is_fitted(self)
        k = self.components_.shape[0]
        if is_tensor(X):
            if not _holds_reals(X):
                raise TypeError(f"X must hold real numbers, got a tensor of dtype {X.dtype}.")
            if X.ndim != 2 or X.shape[1] != k:
                raise ValueError(
                    f"X has shape {tuple(X.shape)}, but inverse_transform expects "
                    f"(n_samples, n_components = {k})."
                )
            if not torch.isfinite(X).all():
                raise ValueError("X contains NaN or infinity.")
            C = to_tensor(self.components_, device=X.device, dtype=_float_dtype(X))
            return output_like(X.to(C.dtype) @ C, X)
        X = check_array(X, dtype=[np.float64, np.float32], input_name="X")
        if X.shape[1] != k:
            raise ValueError(
                f"X has {X.shape[1]} columns, but inverse_transform expects n_components = {k}."
            )
        # by torch, as every other product here: a numpy matrix product would leave
        # numpy's BLAS threads spinning, which slows the torch operations that follow
        # (a fit in a cross-validation loop) on a machine with few cores
        cpu, dtype = torch.device("cpu"), resolve_dtype(X.dtype)
        Z, V = (to_tensor(a, device=cpu, dtype=dtype) for a in (X, self.components_))
        return to_numpy(Z @ V)

    def score(self, X, y=None, sample_weight=None, sample_metric=None):
        """Negative weighted mean squared reconstruction error (higher is better).

        ``-sum W (X - X_hat)**2 / sum W`` with ``X_hat`` the reconstruction of
        :meth:`transform` under the same weights, so that model selection can
        compare solvers and ranks. With metrics the error is measured in them:
        ``X - X_hat`` becomes ``R^{1/2} (X - X_hat) C^{1/2}``.

        Parameters
        ----------
        X : {array-like, sparse matrix, torch.Tensor} of shape (n_samples, n_features)
            Data to score.
        y : Ignored
            Not used, present for API consistency.
        sample_weight : array-like of shape (n_samples,) or (n_samples, n_features), \
                default=None
            Non-negative importance of each sample or of each entry, as in
            :meth:`fit` (None: NaN entries are missing).
        sample_metric : array-like of shape (n_samples, n_samples) or (n_samples,), \
                default=None
            Metric over the rows of ``X``, as in :meth:`fit`.

        Returns
        -------
        score : float
        """
        check_is_fitted(self)
        _, X, W = self._validate_input(X, sample_weight, sample_metric, reset=False)
        R, R_inv = self._sample_root(sample_metric, X)
        C, _ = self._feature_root(X, symmetric=W is not None and W.ndim == 2)
        Z = self._project(X, W, R, R_inv)
        W = _dense_weights(W, X)
        V = to_tensor(self.components_, device=X.device, dtype=X.dtype)
        Y, L = right(left(R, X), C), left(R, Z)
        # Exact rescalings that keep float32's squares of tiny or huge data, and its
        # products with huge weights, in range (the score is a ratio in the weights).
        s = value_scale(Y)
        if s != 1.0:
            Y, L = Y / s, L / s
        W, _ = weights_in_range(W)
        sse = objective(Y, W, L, right(V, C)) * s * s
        return -sse / float(W.sum())

    def _project(self, X, W, R=None, R_inv=None):
        """Scores of the rows of ``X`` on the components, in the fitted metric.

        Without element-wise weights each row's least-squares fit in the feature
        metric (row weights and a sample metric scale the problem without changing
        its solution); with them, the weighted least squares of the whitened rows,
        mapped back through the sample metric. Rows of zero weight get zero.
        With a ridge (``alpha > 0``) every row is fitted under it, as in ``fit``.
        """
        if getattr(self, "_ridge_basis", None) is not None:
            return self._ridge_project(X, W, R, R_inv)
        C, _ = self._feature_root(X)
        V = to_tensor(self.components_, device=X.device, dtype=X.dtype)
        if W is None or W.ndim == 1:
            if C is None:
                return X @ V.T
            return right(X, C) @ torch.linalg.pinv(right(V, C))
        C, _ = self._feature_root(X, symmetric=True)
        basis = right(V, C)
        Z = weighted_row_solve(right(left(R, X), C), W, basis, torch.zeros_like(X[:, : len(V)]))
        return left(R_inv, Z)

    def _ridge_project(self, X, W, R, R_inv):
        """Row ``i``'s coordinates ``c_i`` on the fit's balanced factor ``B``, under the ridge.

        ``c_i`` minimises ``sum_j W_ij (Y_ij - (c_i B)_j)**2 + alpha |c_i|**2`` for
        the whitened rows ``Y``: the fit's own step for ``A`` with ``B`` fixed, so a
        fitted row folds back in to its fitted scores. ``B B^T`` is diagonal, so
        without element-wise weights this is a division.
        """
        B = to_tensor(self._ridge_basis, device=X.device, dtype=X.dtype)
        M = to_tensor(self._ridge_map, device=X.device, dtype=X.dtype)
        C, _ = self._feature_root(X)  # the root B was fitted in
        Y = right(left(R, X), C)
        # Y = s Y', B = sqrt(s) B' and alpha / s give the coordinates sqrt(s) c' (exact)
        s = value_scale(Y)
        Y, B, alpha = Y / s, B / s**0.5, self.alpha / s
        if W is None or W.ndim == 1:
            r = 1.0 if W is None else W[:, None]
            c = r * (Y @ B.T) / (r * B.square().sum(1) + alpha)
        else:
            c = weighted_row_solve(Y, W, B, torch.zeros_like(Y[:, : len(B)]), alpha=alpha)
        return left(R_inv, c * s**0.5) @ M

    def _feature_root(self, X, *, reset=False, any_root=False, symmetric=False):
        """The feature metric's root (and, at fit, its inverse) as float64 tensors, or None.

        Computed at fit (float64, damped; any root when ``any_root``, see
        :func:`metric_root`) and kept as numpy for ``transform`` and ``score``,
        which ask for the ``symmetric`` root where the objective names it (with
        element-wise weights).
        """
        if reset:
            self._feature_metric_root = None
            if self.feature_metric is None:
                return None, None
            M = check_metric(self.feature_metric, X.shape[1], "feature_metric", device=X.device)
            root, inverse = metric_root(
                M, self.metric_damping, "feature_metric", symmetric=not any_root
            )
            _check_root_range("feature_metric", X.dtype, root, inverse)
            self._feature_metric_root = to_numpy(root)
            return root, inverse
        if getattr(self, "_feature_metric_root", None) is None:
            return None, None
        root = to_tensor(self._feature_metric_root, device=X.device, dtype=torch.float64)
        if symmetric and root.ndim == 2 and not torch.equal(root, root.T):
            root, _ = metric_root(root @ root.T, 0.0, "feature_metric")
        return root, None

    def _sample_root(self, sample_metric, X, any_root=False):
        """``(S^T, S^-T)`` for a root ``S S^T`` of the sample metric, to multiply from the left."""
        if sample_metric is None:
            return None, None
        M = check_metric(sample_metric, X.shape[0], "sample_metric", device=X.device)
        root, inverse = metric_root(M, self.metric_damping, "sample_metric", symmetric=not any_root)
        _check_root_range("sample_metric", X.dtype, root, inverse)
        return (root.T, inverse.T) if root.ndim == 2 else (root, inverse)

    def _validate_input(self, X, sample_weight, sample_metric=None, *, reset, zero_weight_ok=False):
        """Return the user's (validated) X, X as a finite tensor, and the weights tensor.

        Missing entries (NaN where the weight is zero) are filled with zero (there
        are none under a metric, which keeps every value: it mixes them). The
        weights tensor is None (uniform), 1-D (rows) or 2-D (entries); without
        ``sample_weight``, NaN entries are missing and the others weigh one. With a
        metric every entry enters the error, so none may be missing. Weights that
        are zero everywhere are an error unless ``zero_weight_ok`` (``transform``:
        rows of zero weight get zero scores).
        """
        if is_tensor(X):
            X_in = X
            _check_tensor_X(X)
            if reset:
                self.n_features_in_ = X.shape[1]
                self.__dict__.pop("feature_names_in_", None)
            elif X.shape[1] != self.n_features_in_:
                raise ValueError(
                    f"X has {X.shape[1]} features, but {type(self).__name__} is "
                    f"expecting {self.n_features_in_} features as input."
                )
        else:
            X_in = validate_data(
                self,
                X,
                reset=reset,
                accept_sparse=("csr", "csc", "coo"),
                dtype=[np.float64, np.float32],
                ensure_all_finite="allow-nan",  # NaN: a missing entry (of zero weight)
            )
            if sp.issparse(X_in):
                X_in = X_in.toarray()
        device = resolve_device(self.device, like=X_in)
        dtype = resolve_dtype(self.dtype)
        X = to_tensor(X_in, device=device, dtype=dtype)
        W = None
        if sample_weight is not None:
            W = _check_sample_weight(sample_weight, X, zero_weight_ok=zero_weight_ok)
        elif (nan := torch.isnan(X)).any():  # missing entries; the others weigh one
            W = (~nan).to(X.dtype)
            if not (zero_weight_ok or W.any()):
                raise ValueError("X is NaN everywhere: nothing to fit or score.")
        observed = None if W is None else _observed(W)
        # X is finite (checked above) where it counts: infinite there means beyond the dtype
        overflow = torch.isinf(X) if W is None else torch.isinf(X) & observed
        if overflow.any():
            raise ValueError(
                f"X has entries beyond the range of dtype={self.dtype!r} (largest "
                f"{torch.finfo(dtype).max:.3g}); pass dtype='float64' or rescale X."
            )
        if W is None:
            return X_in, X, None
        missing = ~torch.isfinite(X)
        if missing.any() and (self.feature_metric is not None or sample_metric is not None):
            raise ValueError(
                f"X contains {int(missing.sum())} NaN or infinite entries; with "
                "feature_metric or sample_metric every entry enters the error, so no entry "
                "can be missing."
            )
        _check_missing_entries(missing, observed)
        if self.feature_metric is None and sample_metric is None:
            # Entries of zero weight never influence the result, whatever they hold (a
            # metric mixes them into the entries of the error that weigh: they stay).
            X = torch.where(observed, X, 0.0)
        return X_in, X, W

    def _check_init(self, m, n, X):
        init = "rank1" if self.init is None else self.init
        if not isinstance(init, tuple):
            return init
        k = self.n_components
        if len(init) != 2:
            raise ValueError(f"init must be a pair (A0, B0), got a tuple of length {len(init)}.")
        if not all(map(_holds_reals, init)):
            dtypes = [str(f.dtype if is_tensor(f) else np.asarray(f).dtype) for f in init]
            raise TypeError(f"init=(A0, B0) must hold real numbers, got dtypes {dtypes}.")
        A, B = (to_tensor(f, device=X.device, dtype=X.dtype) for f in init)
        if A.shape != (m, k) or B.shape != (k, n):
            raise ValueError(
                f"init=(A0, B0) must have shapes {(m, k)} and {(k, n)}, got "
                f"{tuple(A.shape)} and {tuple(B.shape)}."
            )
        if not (torch.isfinite(A).all() and torch.isfinite(B).all()):
            raise ValueError(
                "init=(A0, B0) contains NaN or infinite values (or values beyond the "
                f"range of dtype={self.dtype!r})."
            )
        return A, B

    @property
    def _n_features_out(self):
        return self.components_.shape[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.input_tags.allow_nan = True  # a missing entry
        tags.transformer_tags.preserves_dtype = ["float64", "float32"]
        return tags


def _observed(W):
    """Where element-wise (2-D) or row (1-D) weights are positive, broadcastable to X."""
    return W > 0 if W.ndim == 2 else (W > 0)[:, None]


def _holds_reals(x) -> bool:
    if is_tensor(x):
        return not (x.is_complex() or x.dtype == torch.bool)
    return np.asarray(x).dtype.kind in "iuf"


def _check_root_range(name, dtype, *roots):
    """Name a metric whose square root (or its inverse) ``dtype`` cannot hold."""
    info = torch.finfo(dtype)
    for root in roots:
        top = float(root.abs().max())
        if top > info.max or 0 < top < info.tiny:
            raise ValueError(
                f"{name}'s square root or its inverse has entries of size {top:.3g}, beyond "
                f"the range of {dtype}; pass dtype='float64' or rescale {name}."
            )


def _float_dtype(t):
    return t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32


def _check_tensor_X(X):
    if X.is_meta:
        raise ValueError("X is a tensor on the 'meta' device, which holds no data.")
    if X.ndim != 2:
        raise ValueError(f"Expected a 2D tensor, got a {X.ndim}D tensor of shape {tuple(X.shape)}.")
    if X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(
            f"Found an empty tensor of shape {tuple(X.shape)}; a minimum of 1 is required."
        )
    if X.is_complex() or X.dtype == torch.bool:
        raise TypeError(f"X must hold real numbers, got a tensor of dtype {X.dtype}.")
    if torch.isinf(X).any():
        raise ValueError("Input X contains infinity.")


def _check_missing_entries(missing, observed):
    """Raise unless every missing entry (NaN or infinite in X) has weight zero."""
    bad = missing & observed
    if bad.any():
        raise ValueError(
            f"X contains {int(bad.sum())} NaN or infinite entries where sample_weight "
            "is non-zero; NaN is allowed only where the weight is zero (missing entries)."
        )


def _check_sample_weight(sample_weight, X, *, zero_weight_ok=False):
    """Validate weights against the (tensor) X: shape, sign, range, finiteness, not all zero.

    Sign and range are read from the weights as given, before the cast to
    ``X``'s dtype, so that weights beyond that dtype's range are named as such.
    """
    if is_tensor(sample_weight):
        if sample_weight.is_complex():
            raise TypeError("sample_weight must hold real numbers.")
        source = sample_weight.detach()
    else:
        source = check_array(
            sample_weight,
            accept_sparse=True,
            ensure_2d=False,
            dtype=[np.float64, np.float32],
            ensure_all_finite=False,
            input_name="sample_weight",
        )
        if sp.issparse(source):  # a sparse mask of the observed entries, say
            source = source.toarray()
    m, n = X.shape
    if tuple(source.shape) not in ((m,), (m, n)):
        raise ValueError(
            f"sample_weight has shape {tuple(source.shape)}, but X has shape {(m, n)}: expected "
            f"({m},) for row weights or {(m, n)} for element-wise weights."
        )
    low, top = float(source.min()), float(source.max())  # NaN where any is NaN
    if low < 0:
        raise ValueError(
            f"sample_weight must be non-negative; it has {int((source < 0).sum())} negative "
            f"entries (smallest {low:g})."
        )
    info = torch.finfo(X.dtype)
    if math.isfinite(top) and (top > info.max or 0 < top < info.tiny):
        raise ValueError(
            f"sample_weight's largest entry, {top:.3g}, is beyond the range of {X.dtype} "
            f"({info.tiny:.3g} to {info.max:.3g}); pass dtype='float64' or rescale the "
            "weights (alpha with them)."
        )
    W = to_tensor(source, device=X.device, dtype=X.dtype)
    if not torch.isfinite(W).all():
        raise ValueError("sample_weight contains NaN or infinite values.")
    if top == 0 and not zero_weight_ok:
        raise ValueError("sample_weight is zero everywhere: there is nothing to fit or score.")
    return W


def _dense_weights(W, X):
    if W is None:  # a view of one number, not a matrix of ones
        return X.new_ones(1, 1).expand_as(X)
    return W[:, None].expand_as(X) if W.ndim == 1 else W


def _balanced_right_factor(A, B):
    """``sqrt(S) Q^T`` for the thin SVD ``P S Q^T`` of ``A @ B``, in O((m + n) k^2).

    Of all factorisations of ``A @ B`` with k rows it has the smallest
    ``|A|^2 + |B|^2``, which a stationary point of the ridge problem has too.
    """
    _, _, S, vt, Qb = product_svd(A, B)
    return S.sqrt()[:, None] * (vt @ Qb.T)


def _svd_of_product(A, B, row_weight):
    """Scores ``Z`` and the SVD ``S, Vt`` of ``diag(sqrt(row_weight)) A B``, with ``Z Vt = A B``.

    The rows of the fitted matrix are scaled by the square root of their weight, so
    that integer row weights give the same components as repeated rows (the
    sample_weight contract). The thin QRs of the factors make it O((m + n) k^2).
    Signs follow scikit-learn's ``svd_flip(u_based_decision=False)``: the entry of
    largest magnitude in each row of ``Vt`` is positive.
    """
    _, _, S, vt, Qb = product_svd(row_weight.sqrt()[:, None] * A, B)
    Vt = vt @ Qb.T
    rows = torch.arange(Vt.shape[0], device=Vt.device)
    signs = torch.sign(Vt[rows, Vt.abs().argmax(dim=1)])
    Vt = Vt * torch.where(signs == 0, 1.0, signs)[:, None]
    return A @ (B @ Vt.T), S, Vt


def weighted_low_rank(X, sample_weight=None, n_components=2, *, sample_metric=None, **params):
    """Functional form of :class:`WeightedTruncatedSVD`: factors ``A``, ``B`` with ``X ~ A @ B``.

    Runs exactly the estimator's fit. ``B`` has orthonormal rows (the
    ``components_``) and ``A = fit_transform(X)``.

    Parameters
    ----------
    X : {array-like, sparse matrix, torch.Tensor} of shape (m, n)
        Target matrix.
    sample_weight : array-like of shape (m,) or (m, n), default=None
        Non-negative importance of each row or entry (None: uniform, NaN entries
        of ``X`` missing).
    n_components : int, default=2
        Rank ``k``.
    sample_metric : array-like of shape (m, m) or (m,), default=None
        Metric over the rows, as in :meth:`WeightedTruncatedSVD.fit`.
    **params
        Any other parameter of :class:`WeightedTruncatedSVD` (``solver``,
        ``init``, ``max_iter``, ``device``...).

    Returns
    -------
    A : ndarray or torch.Tensor of shape (m, k)
    B : ndarray or torch.Tensor of shape (k, n)
        Tensors on the input's device when ``X`` is a tensor.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_wsvd import weighted_low_rank
    >>> X = np.arange(12.0).reshape(4, 3)
    >>> A, B = weighted_low_rank(X, np.ones(4), n_components=2)
    >>> bool(np.allclose(A @ B, X, atol=1e-4))
    True
    """
    est = WeightedTruncatedSVD(n_components=n_components, **params)
    A = est.fit_transform(X, sample_weight=sample_weight, sample_metric=sample_metric)
    B = est.components_
    if is_tensor(A):
        B = torch.from_numpy(B).to(device=A.device, dtype=A.dtype)
    return A, B
