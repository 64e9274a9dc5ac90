"""What every solver shares: the objective and the iteration driver."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

# Iterations per window of the decreases' trend (remaining_decrease).
TREND_WINDOW = 4


class Factors(NamedTuple):
    """A fitted factorisation ``X ~ A @ B`` and how the solver got there."""

    A: torch.Tensor
    B: torch.Tensor
    n_iter: int
    objective: list[float]
    seconds: list[float]
    converged: bool = True
    # Converged where the objective's rounding error exceeds tol relative to it:
    # the fit is as good as the dtype can tell, and a wider dtype may improve it
    # (the caller warns).
    rounding_limited: bool = False


def objective_tensor(X, W, A, B, alpha: float = 0.0) -> torch.Tensor:
    """``sum W * (X - A B)**2 + alpha * (|A|_F**2 + |B|_F**2)``, differentiable."""
    R = torch.addmm(X, A, B, alpha=-1.0)
    value = torch.sum(W * R.square())
    if alpha:
        value = value + alpha * (A.square().sum() + B.square().sum())
    return value


def uniform_weight(W) -> float | None:
    """The weight of a uniform ``W`` given as a view of one number (no matrix), else None."""
    if W.ndim == 2 and W.stride() == (0, 0):
        return float(W[0, 0])
    return None


def objective(X, W, A, B, alpha: float = 0.0, out=None) -> float:
    """:func:`objective_tensor` as a Python float, with one matrix-sized temporary.

    ``out``, a tensor of ``X``'s shape, is used as that temporary instead of a new
    one (see :func:`workspace`).
    """
    with torch.no_grad():
        R = torch.addmm(X, A, B, alpha=-1.0, out=out)
        w = uniform_weight(W)
        value = float(R.square_().sum()) * w if w is not None else float(R.square_().mul_(W).sum())
        if alpha:
            value += alpha * float(A.square().sum() + B.square().sum())
    return value


def workspace(X, count: int) -> list[torch.Tensor]:
    """``count`` uninitialised contiguous tensors of ``X``'s shape, for the solvers to reuse.

    A matrix-sized temporary allocated anew at each step costs more than the
    arithmetic done in it once it is large: the allocator returns large blocks to
    the operating system when they are freed (glibc does above 32 MiB), and the
    next allocation of the same size faults every page in again: at 4096 x 4096
    in float32 an element-wise product into a new tensor took 7.5 times as long as
    into a reused one (22.5 ms against 3.0 ms on 2 cores).
    """
    return [torch.empty(X.shape, dtype=X.dtype, device=X.device) for _ in range(count)]


def weight_scale(W) -> float:
    """The largest weight, the unit in which the solvers measure weights (1 if none is positive)."""
    w = uniform_weight(W)
    scale = w if w is not None else float(W.max()) if W.numel() else 1.0
    return scale if 0.0 < scale < math.inf else 1.0


# Data whose largest magnitude lies between these needs no rescaling: the solvers'
# fourth powers of it (an exact line search's coefficients) stay far inside float32.
_SAFE_MAGNITUDE = (2.0**-16, 2.0**16)


def value_scale(X) -> float:
    """A power of four near ``max |X|`` where that lies outside ``[2^-16, 2^16]``, else 1.

    Dividing by it is exact in binary floating point and puts the data where its
    squares and fourth powers neither underflow nor overflow (float32 data of
    size 1e-15, say, whose objective would round to zero); 1 for zero data. The
    power and its reciprocal are normal numbers of ``X``'s dtype.
    """
    top = float(torch.linalg.vector_norm(X, math.inf)) if X.numel() else 0.0
    if top == 0.0 or _SAFE_MAGNITUDE[0] <= top <= _SAFE_MAGNITUDE[1]:
        return 1.0
    limit = (int(math.log2(torch.finfo(X.dtype).max)) - 1) // 2  # 63 in float32
    return 4.0 ** min(max(round(math.log(top, 4)), -limit), limit)


def weights_in_range(W):
    """``(W / w, w)`` for the largest weight ``w`` where it exceeds ``2^16``, else ``(W, 1)``.

    Products of such weights with squares of the data stay inside float32's range.
    """
    w = weight_scale(W)
    return (W / w, w) if w > _SAFE_MAGNITUDE[1] else (W, 1.0)


def energy(X, W) -> float:
    """``sum W X**2`` as a Python float, without the dtype's under- or overflow.

    The data are divided by :func:`value_scale` and the weights as
    :func:`weights_in_range` does.
    """
    s = value_scale(X)
    squares = X.square() if s == 1.0 else (X / s).square_()
    w = uniform_weight(W)
    if w is None:
        W, w = weights_in_range(W)
        squares.mul_(W)
    return float(squares.sum()) * w * s * s


def product_svd(A, B):
    """The thin SVD of ``A @ B`` (m x k times k x n) in O((m + n) k^2), in pieces.

    Returns ``Qa, U, S, Vt, Qb`` with ``A @ B = (Qa @ U) diag(S) (Vt @ Qb.T)``:
    the thin QRs ``A = Qa Ra`` and ``B^T = Qb Rb`` and the SVD of the k x k
    ``Ra Rb^T``. The callers form only the products they need.
    """
    Qa, Ra = torch.linalg.qr(A)
    Qb, Rb = torch.linalg.qr(B.T)
    U, S, Vt = torch.linalg.svd(Ra @ Rb.T)
    return Qa, U, S, Vt, Qb


def svd_components(A, B, floor: float):
    """``A @ B`` as its SVD components, balanced: ``(Qa U_r S_r^1/2, S_r^1/2 V_r^T Qb^T)``.

    Only the ``r`` singular values above ``floor`` times the largest are kept,
    so components that only repeat others' directions (a rank-deficient pair)
    merge into fewer, leaving room beside them.
    """
    Qa, U, S, Vt, Qb = product_svd(A, B)
    r = int((S > S[0] * floor).sum()) if float(S[0]) > 0 else 0
    root = S[:r].sqrt()
    return (Qa @ U[:, :r]) * root, root[:, None] * (Vt[:r] @ Qb.T)


def rounding_ridge(trace, k: int, dtype: torch.dtype):
    """Weight ``lam`` of the ridge ``lam |a|^2`` that each least-squares solve adds.

    Tikhonov regularisation at the level of rounding error (``eps`` = 1e-6 in
    float32, 1e-12 in float64) times the mean eigenvalue ``trace / k`` of the
    solve's Gram matrix, so relative to the weights' scale. It moves a
    well-determined row by a relative amount of about ``eps`` times its condition
    number. A row with fewer observed entries than ``k`` gets (nearly) its
    smallest-norm solution instead of drifting, sweep after sweep, along the
    directions that its entries leave free: that drift made the factors explode.
    A row without any weight gets ``lam = 0``; the solves hold it where it was.
    """
    eps = 1e-6 if dtype == torch.float32 else 1e-12
    return eps * trace / k


def tiny(dtype: torch.dtype) -> float:
    return float(torch.finfo(dtype).tiny)


def iterate(
    step: Callable,
    X,
    W,
    A,
    B,
    *,
    alpha: float,
    max_iter: int,
    tol: float,
    name: str,
    init_seconds: float = 0.0,
    callback: Callable | None = None,
    verbose: bool = False,
    patience: int = 1,
    scale: float = 1.0,
    restart: Callable | None = None,
    trend: bool = True,
    revive_at_stall: bool = True,
):
    """Run ``A, B = step(A, B, it)`` until the objective stalls; keep the best iterate.

    A step that knows the objective of its new point (an exact line search does)
    returns it as a third item, which saves computing it again.

    Converged means that ``patience`` iterations in a row each changed the
    objective by at most ``tol`` relative to it, or by no more than its rounding
    error (``eps * sqrt(objective * sum W X^2)``, which matters only for fits
    close to exact): an iteration that raises it more than that is not a stall,
    so a solver that keeps rising and falling runs to ``max_iter`` and reports
    ``converged=False`` (the caller warns, so the warning points at user code).
    With ``trend`` (a solver whose objective never rises), a small iteration is
    a stall only where the decreases' trend says that what remains is small
    too (:func:`remaining_decrease` at most ``tol`` relative to the objective):
    these problems converge linearly, and slowly where the rate is near one,
    so one small step is not yet the limit.
    Where that rounding error exceeds ``tol`` relative to the objective, the
    dtype cannot tell whether the fit still improves: ``rounding_limited``.
    ``callback(n_iter, A, B, objective)`` returning True stops the run early
    (that is not a convergence failure). The history holds the initial point
    first, with the time the initialisation took.

    ``W`` and ``alpha`` may be a rescaled problem (see :func:`solve`): ``scale``
    multiplies every objective reported (history and callback), so that they are
    in the caller's units.

    A stall with room for more components (fewer live ones than ``A`` has
    columns: a column of ``A`` and a row of ``B`` at zero, as the ridge leaves
    them, or components that vanished in combination, which are merged there,
    :func:`independent_components`) is not yet convergence where the objective
    can still fall along new rank-one directions (:func:`revive`): components
    are revived there and the run goes on. ``restart(A, B)`` then tells the
    step to forget its state (momentum, previous directions); a solver without
    it is never revived. Without ``revive_at_stall`` the first stall ends the
    run (:func:`~sklearn_wsvd._solvers.solve` still completes a start of too
    low a rank, :func:`~sklearn_wsvd._solvers.complete_rank`): all a path of
    decreasing penalties needs, each fit's start reviving the directions above
    its own penalty, those the stall of the fit before would have found included.
    Such a solver's steps see only the live components (:func:`live_components`:
    the vanished ones would stay zero and cost as much as the others), the
    revivals add to them, and the factors returned (and ``callback``'s) have
    every column, the vanished ones zero.
    """
    k = A.shape[1]
    if restart is not None:
        A, B = live_components(A, B)
    f = objective(X, W, A, B, alpha)
    best = (f, A, B)
    eps = torch.finfo(X.dtype).eps
    total = energy(X, W)
    # The objectives in the solver's units (the trend's: the caller's can overflow).
    values, seconds = [f], [init_seconds]
    start = time.perf_counter() - init_seconds
    converged = stopped = False
    it = stalls = revivals = 0
    since = 0  # where the steps since the last revival begin in values
    noise = low = 0.0
    revived = None
    # No disabled bar either: tqdm registers those too (13 us, against a 2 ms fit).
    bar = tqdm(total=max_iter, desc=name, leave=False) if verbose else nullcontext()
    with bar:
        for it in range(1, max_iter + 1):
            if revived is not None:
                A, B = revived
                restart(A, B)
                revived = None
            out = step(A, B, it) if A.shape[1] else (A, B)
            A, B = out[0], out[1]
            f_prev, f = f, out[2] if len(out) == 3 else objective(X, W, A, B, alpha)
            values.append(f)
            seconds.append(time.perf_counter() - start)
            if verbose:
                bar.update()
                bar.set_postfix(objective=f"{f * scale:.6g}")
            if not math.isfinite(f):
                raise FloatingPointError(
                    f"solver {name!r} diverged (objective {f * scale}) at iteration {it}; "
                    "try dtype='float64', another solver or a smaller learning rate."
                )
            if f < best[0]:
                best = (f, A, B)
            if callback is not None and callback(it, *pad_components(A, B, k), f * scale):
                stopped = True
                break
            low, high = sorted((abs(f_prev), abs(f)))
            noise = eps * math.sqrt(high * total)
            stalled = abs(f_prev - f) <= tol * low + noise
            if stalled and trend and abs(f_prev - f) > noise:
                stalled = remaining_decrease(values[since:]) <= tol * low + noise
            stalls = stalls + 1 if stalled else 0
            if stalls >= patience:
                if restart is not None and revivals < k and revive_at_stall:
                    # Only a ridge makes components vanish; kept, the next fit starts from them.
                    merged = independent_components(A, B) if alpha else (A, B)
                    if merged[0].shape[1] < A.shape[1]:
                        A, B = merged
                        restart(A, B)
                        f = objective(X, W, A, B, alpha)
                        best = min(best, (f, A, B), key=lambda fit: fit[0])
                    revived = revive(X, W, A, B, alpha, f, tol, rank=k)
                if revived is None:
                    converged = True
                    break
                revivals, stalls, since = revivals + 1, 0, len(values)
    rounding_limited = converged and noise > tol * low
    converged = converged or stopped or max_iter == 0
    A, B = pad_components(best[1], best[2], k)
    history = [value * scale for value in values]  # in the caller's units
    return Factors(A, B, it, history, seconds, converged, rounding_limited)


def remaining_decrease(history, window: int = TREND_WINDOW) -> float:
    """How much further a linearly converging objective falls, from its last values.

    The last ``w`` iterations lowered it by ``D1``, the ``w`` before them by
    ``D0``: for a linear rate ``r``, ``D1 / D0 = r**w = q`` and what remains is
    ``D1 q / (1 - q)``. Infinite where the decreases do not shrink, zero where
    the last ``w`` lowered nothing. ``w`` is ``window``, or half the iterations
    there are where fewer (zero after one: a warm start at its optimum stops
    there). Used to stop (``iterate``) once this is at most ``tol`` relative
    to the objective, it ended every fit of ``benchmarks/bench_convergence.py``
    (25 problems) within 0.01% of the best known at ``tol=1e-5``. A plateau
    that a long run later leaves it cannot see. A window of three stopped
    early more often in our trials, the decreases of conjugate-gradient steps
    being uneven.
    """
    w = min(window, (len(history) - 1) // 2)
    d1 = history[-1 - w] - history[-1]
    if w == 0 or d1 <= 0:
        return 0.0
    d0 = history[-1 - 2 * w] - history[-1 - w]
    if d1 >= d0:
        return math.inf
    q = d1 / d0
    return d1 * q / (1 - q)


def live_components(A, B):
    """The columns of ``A`` and rows of ``B`` whose products have not vanished.

    Vanished: ``|a_l| |b_l|`` at most ``sqrt(eps)`` times the largest (all of
    them where every product is zero), as a ridge leaves the components it
    removes; :func:`revive` treats them as room for new ones.
    """
    if A.shape[1] == 0:
        return A, B
    size = torch.linalg.vector_norm(A, dim=0) * torch.linalg.vector_norm(B, dim=1)
    live = size > torch.finfo(A.dtype).eps ** 0.5 * size.max()
    return (A, B) if bool(live.all()) else (A[:, live], B[live])


def independent_components(A, B):
    """The live components; where some vanished in combination, the SVD components of the product.

    Rotating a ridge's factors (``A Q``, ``Q^T B``, ``Q`` orthogonal) changes
    neither their product nor its penalty, and a solver's steps mix the
    components: those the ridge removes can vanish in combination, the
    product's singular values falling to the rounding of the fit while no
    column of ``A`` does (15 times in the 36 fits of one selection on the
    completion benchmark's photograph). They hold room that :func:`revive`
    would not see, and cost the steps as much as live ones. The squared
    singular values of the product are the eigenvalues of ``L^T (B B^T) L``,
    ``L L^T = A^T A`` (two ``r x r`` factorisations in float64, a quarter of
    the SVD's time at ``r`` = 40): where all exceed ``eps`` times the largest
    (the singular values ``sqrt(eps)``, the threshold of
    :func:`live_components`), the live components are returned as they are;
    otherwise the product's SVD components above that
    (:func:`svd_components`).
    """
    A, B = live_components(A, B)
    if A.shape[1] <= 1:
        return A, B
    eps = torch.finfo(A.dtype).eps
    L, info = torch.linalg.cholesky_ex((A.T @ A).double())
    if not info:
        squares = torch.linalg.eigvalsh(L.T @ (B @ B.T).double() @ L)
        if float(squares[0]) > eps * float(squares[-1]):
            return A, B
    return svd_components(A, B, eps**0.5)


def pad_components(A, B, k: int):
    """``A`` and ``B`` with zero components appended up to ``k``."""
    r = A.shape[1]
    if r == k:
        return A, B
    return (
        torch.cat([A, A.new_zeros(A.shape[0], k - r)], dim=1),
        torch.cat([B, B.new_zeros(k - r, B.shape[1])], dim=0),
    )


def revive(X, W, A, B, alpha: float, f: float, tol: float, rank: int | None = None):
    """Add to the live components of ``(A, B)`` the directions that lower the objective most.

    With a ridge, a component whose column of ``A`` and row of ``B`` are both
    zero is a stationary point that no solver leaves, though the objective may
    fall along a new direction ``u v^T``: by ``-2 t (u^T G v - alpha)`` for
    ``a = sqrt(t) u``, ``b = sqrt(t) v`` and the weighted residual
    ``G = W * (X - A B)``. So the fit is optimal over all ranks (the
    nuclear-norm-penalised optimum, when components are to spare) only where
    the largest singular value of ``G`` is at most ``alpha``. Otherwise the
    room left beside the live components (:func:`live_components`; ``r`` of
    ``rank``, by default ``A``'s columns) takes the top ``r`` singular pairs of
    ``G`` above ``alpha``, all at once: each at its own best step ``t_i``, the
    whole scaled by the exact line search along their sum (``u_i^T G v_j = 0``
    for ``i != j``, so the objective is quadratic along it). Where the ridge
    has zeroed every component of a start, the fit reaches the optimum's rank
    in one revival rather than in one per component, each followed by
    iterations to a stall. Returns the live components followed by the new
    ones (at most ``rank`` in all), or None where there is no room or nothing
    lowers ``f`` by more than ``tol`` relative to it. Components that vanished
    in combination hold room that this does not see: the callers pass
    :func:`independent_components`.

    That is certain where no singular value of ``G`` exceeds ``alpha / (1 -
    sqrt(tol))``, which the exact search certifies before it looks for any:
    along new components ``N = sum t_i u_i v_i^T`` (unit vectors, ``t_i >=
    0``) the objective falls at most by ``(<G, N> - alpha sum t_i)^2 / sum W
    N^2``, and by Cauchy-Schwarz ``<G, N> = sum W (X - A B) N`` is at most
    ``sqrt(f sum W N^2)``, so the fall is at most ``f (1 - alpha /
    sigma_max)^2``. On a completion path the stalls whose residual has
    singular values a percent or two above the ridge end there, rather than in
    a search for them that a subspace iteration cannot separate and a full
    eigendecomposition settles.
    """
    from .closed_form import REVIVE_RANDOMIZED_MIN_SIDE, truncated_svd  # it imports this module

    rank = A.shape[1] if rank is None else rank
    A, B = live_components(A, B)
    room = rank - A.shape[1]
    if room <= 0 or tol >= 1:  # no fall exceeds f itself
        return None
    G = torch.addmm(X, A, B, alpha=-1.0).mul_(W)
    # On large matrices a randomized SVD finds descending directions for less (its
    # u^T G v is at most the singular value, a few % below it on a residual's flat
    # spectrum); only where it finds none do the exact pairs certify that none exists.
    cheap = min(G.shape) >= REVIVE_RANDOMIZED_MIN_SIDE
    for exact in (False, True) if cheap else (True,):
        if exact:
            U, V = _top_singular_pairs(G, room, above=alpha, unless=alpha / (1 - tol**0.5))
        else:
            U, V = truncated_svd(G, room, svd_solver="randomized")
            U = U / torch.linalg.vector_norm(U, dim=0).clamp_min(tiny(U.dtype))
            V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True).clamp_min(tiny(V.dtype))
        gain = (U * (G @ V.T)).sum(0) - alpha  # u_i^T G v_i - alpha
        curvature = (U.square().T @ W * V.square()).sum(1)  # sum W (u_i v_i^T)^2
        # A gain within rounding of zero (a singular value of G equal to alpha: one
        # that a fit shrank to the ridge) is none.
        top = float((gain + alpha).abs().max()) if len(gain) else 0.0
        keep = (gain > torch.finfo(G.dtype).eps * max(G.shape) * top) & (curvature > 0)
        if keep.any():
            break
    else:
        return None
    U, V, gain = U[:, keep], V[keep], gain[keep]
    t = gain / curvature[keep]
    N = (U * t) @ V
    t = t * float((t * gain).sum()) / float((W * N.square()).sum())
    A = torch.cat([A, U * t.sqrt()], dim=1)
    B = torch.cat([B, t.sqrt()[:, None] * V], dim=0)
    if objective(X, W, A, B, alpha) >= f * (1 - tol):
        return None
    return A, B


def _top_singular_pairs(G, r: int, above: float, unless: float | None = None):
    """Unit singular pairs ``U, V`` of ``G`` whose values exceed ``above``, at most ``r`` of them.

    No pair where no singular value exceeds ``unless`` (at least ``above``; by
    default ``above``). From the Gram matrix of the smaller side, in float64,
    several times cheaper than LAPACK's SVD. Where ``unless`` exceeds
    ``above``, a Cholesky factorisation of ``unless**2 I - gram`` comes first:
    it exists only where no singular value exceeds ``unless`` (a converged
    fit), which it certifies exactly enough (the squares are accurate to about
    1e-16 of the largest) for half the cost of the count below. Otherwise the
    inertia of the LDL^T factorisation of ``above**2 I - gram`` (Sylvester's
    law) counts the values above, ``c`` (none: no pair), and the top
    ``p = min(r, c)`` eigenvectors of the Gram matrix give the pairs: by a
    subspace iteration where ``p`` is small against the side (a 214 x 214
    Gram matrix with ``p`` of a few: 0.3 ms against the eigendecomposition's
    1.7), whose Ritz values, lower bounds of the eigenvalues, keep only pairs
    that truly exceed ``above``; by the eigendecomposition otherwise, or where
    the iteration found none of the ``c`` (a flat spectrum), so that no pair
    is returned only where none exceeds ``above``. The pairs need not be exact
    (the caller computes each pair's gain).
    """
    M = G.double() if G.shape[0] <= G.shape[1] else G.T.double()
    gram = M @ M.T
    p = min(r, len(gram))
    unless = above if unless is None else unless
    if unless > above and int(torch.linalg.cholesky_ex(_shifted(gram, unless**2)).info) == 0:
        p = 0
    elif above > 0:
        p = min(r, _count_negative(_shifted(gram, above**2)))
    if p == 0:
        return G.new_zeros(G.shape[0], 0), G.new_zeros(0, G.shape[1])
    squares, U = _top_eigenpairs(gram, p, G.dtype)
    n = int((squares > above * above).sum())
    if n == 0:  # on a flat spectrum the iteration can miss what the count found
        squares, U = _top_eigenpairs(gram, p, G.dtype, exact=True)
        n = int((squares > above * above).sum())
    U = U[:, :n]
    V = U.T @ M
    V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True).clamp_min(tiny(V.dtype))
    if G.shape[0] > G.shape[1]:
        U, V = V.T, U.T
    return U.to(G.dtype), V.to(G.dtype)


def _shifted(S, c: float):
    """``c I - S``."""
    shifted = -S
    shifted.diagonal().add_(c)
    return shifted


# A subspace iteration: this many vectors beyond those wanted, and multiplications.
_OVERSAMPLE, _POWERS = 8, 3


def _top_eigenpairs(S, p: int, dtype, exact: bool = False):
    """The ``p`` largest eigenvalues of the symmetric PSD ``S`` and their eigenvectors, descending.

    Exact (an eigendecomposition, in ``dtype``: float32 halves its cost) where
    asked or where ``p`` is a large share of the side; otherwise the Ritz pairs
    of a subspace iteration of ``p`` plus a few vectors from a fixed random
    start (deterministic), accurate where the spectrum decays and lower bounds
    of the eigenvalues always.
    """
    n = len(S)
    if exact or 4 * (p + _OVERSAMPLE) >= n:
        values, vectors = (t.to(S.dtype) for t in torch.linalg.eigh(S.to(dtype)))
    else:
        generator = torch.Generator(device=S.device).manual_seed(0)
        Q = torch.randn(n, p + _OVERSAMPLE, generator=generator, dtype=S.dtype, device=S.device)
        for _ in range(_POWERS):
            Q = torch.linalg.qr(S @ Q).Q
        values, Y = torch.linalg.eigh(Q.T @ S @ Q)
        vectors = Q @ Y
    return values.flip(0)[:p], vectors.flip(1)[:, :p]


def _count_negative(S) -> int:
    """Negative eigenvalues of the symmetric ``S``: the inertia of its LDL^T factorisation.

    By Sylvester's law of inertia, those of the block-diagonal ``D`` of
    Bunch-Kaufman's ``P^T S P = L D L^T``: its 1 x 1 blocks and the eigenvalues
    of its 2 x 2 ones (sign of the determinant and of the trace).
    """
    LD, pivots, _ = torch.linalg.ldl_factor_ex(S)
    d, off, pivots = LD.diagonal().tolist(), LD.diagonal(-1).tolist(), pivots.tolist()
    count, i = 0, 0
    while i < len(d):
        if pivots[i] > 0 or i == len(d) - 1:  # a 1 x 1 block
            count, i = count + (d[i] < 0), i + 1
            continue
        a, b, c = d[i], off[i], d[i + 1]  # the 2 x 2 block [[a, b], [b, c]]
        determinant = a * c - b * b
        count += 1 if determinant < 0 else 2 * (a + c < 0) if determinant > 0 else (a + c < 0)
        i += 2
    return count
