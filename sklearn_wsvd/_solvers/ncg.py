"""Preconditioned nonlinear conjugate gradient on both factors at once.

The objective ``f(A, B) = sum W (A B - X)**2 + alpha (|A|^2 + |B|^2)`` is a quartic
polynomial along any line ``(A + t dA, B + t dB)``: with ``E = A B - X``,
``E1 = dA B + A dB`` and ``E2 = dA dB``, the residual there is
``E + t E1 + t^2 E2``. So each step minimises ``f`` exactly along its direction
(the real roots of a cubic), which makes the method monotone without a step
size to tune. Directions follow Polak-Ribiere+ (restarted where they stop
descending) on the gradient preconditioned by the Hessian blocks of the rank-one
model of the weights, ``W ~ a b^T``: with ``B`` fixed the block of row ``i`` of
``A`` is ``a_i B diag(b) B^T + alpha I`` (exact for rank-one weights), one
k x k eigendecomposition for all rows, and likewise for the columns of ``B``.
A step costs five products of O(m n k), ``k`` the live components (see
:func:`~sklearn_wsvd._solvers._common.iterate`), under a third of an
``"als-cg"`` sweep, and some twenty passes over the matrix; it knows the
objective and the residual at its new point (``E + t E1 + t^2 E2``), which the
next step starts from.
"""

from __future__ import annotations

import math

import torch

from ._common import iterate, rounding_ridge, tiny, workspace
from .als import cg_sweep
from .closed_form import rank_one_approximation

# ncg carries the residual from step to step and recomputes it this often.
REFRESH = 16
# ... and the eigenvectors of its preconditioner's blocks this often (see _block_inverse).
EIGEN_EVERY = 2


def _block_inverse(F, other, weight, alpha, rows: bool, vectors=None):
    """Denominators and eigenvectors of the rank-one model's Hessian blocks of one factor.

    The block of row ``i`` (``rows``: a row of the factor; else a column) is
    ``weight_i F diag(other) F^T + (alpha + lam_i) I``, with ``F`` (k x n) the
    other factor and ``lam_i`` the rounding-level ridge: one eigendecomposition
    ``V diag(s) V^T`` of ``F diag(other) F^T`` serves every row, whose
    preconditioned gradient is ``((g V) / d) V^T`` with ``d = weight_i s + alpha
    + lam_i``. Returns ``d`` (one row per row, or one column per column) and ``V``.

    Given the ``vectors`` of an earlier step, ``s`` are their Rayleigh quotients
    ``diag(V^T M V)`` instead: a preconditioner need not be exact, the factors
    move little in a step, and a k x k eigendecomposition costs as much as the
    rest of a step's small operations together (at k = 40; on a completion's
    214 x 320 matrices a quarter of the step). Tried on 17 problems, taking
    them every other step left the iterations to convergence within 1.1% of
    the exact preconditioner's on 13, within 4% on 16 and 15% above on one
    (384 x 1536, k = 96, which ended 0.06% lower), and cut the time of a step
    by 3-17% (over 15% at k = 192); more stale ones (every fourth step) took up
    to 60% more iterations.
    """
    M = (F * other) @ F.T
    if vectors is None:
        values, vectors = torch.linalg.eigh(M)
    else:
        values = torch.linalg.vecdot(vectors, M @ vectors, dim=0)
    values = values.clamp_min(0.0)
    values += rounding_ridge(values.sum(), len(values), values.dtype)
    d = torch.outer(weight, values) if rows else torch.outer(values, weight)
    return d.add_(alpha).clamp_min_(tiny(values.dtype)), vectors


def _minimise_quartic(c4, c3, c2, c1):
    """The ``t`` minimising ``c4 t^4 + c3 t^3 + c2 t^2 + c1 t`` (0 if nothing is lower).

    The candidates are the real roots of the derivative, a cubic solved by
    Cardano's formulas (or, where ``c4`` vanishes, the vertex of the parabola),
    each refined by Newton steps: plain Python, a tenth of the cost of
    ``numpy.roots``, which counts where steps take a millisecond.
    """
    candidates = [-c1 / (2.0 * c2)] if c2 > 0 else []
    if c4 > 0:
        # t^3 + a t^2 + b t + c = 0, and with t = y - a / 3, y^3 + p y + q = 0
        a, b, c = 0.75 * c3 / c4, 0.5 * c2 / c4, 0.25 * c1 / c4
        p, q = b - a * a / 3.0, (2.0 * a * a - 9.0 * b) * a / 27.0 + c
        disc = 0.25 * q * q + p * p * p / 27.0
        if disc > 0:  # one real root
            u = -0.5 * q - math.copysign(math.sqrt(disc), q)
            u = math.copysign(abs(u) ** (1.0 / 3.0), u)
            ys = [u - p / (3.0 * u)] if u != 0 else [0.0]
        else:  # three
            r = 2.0 * math.sqrt(-p / 3.0)
            cosine = 3.0 * q / (p * r) if p < 0 else 0.0
            phi = math.acos(max(-1.0, min(1.0, cosine))) / 3.0
            ys = [r * math.cos(phi - 2.0 * math.pi * j / 3.0) for j in range(3)]
        candidates += [y - a / 3.0 for y in ys]
    best_t, best_f = 0.0, 0.0
    for t in candidates:
        for _ in range(3):  # Newton on the derivative, against the formulas' rounding
            curvature = (12.0 * c4 * t + 6.0 * c3) * t + 2.0 * c2
            if not curvature > 0:
                break
            t -= (((4.0 * c4 * t + 3.0 * c3) * t + 2.0 * c2) * t + c1) / curvature
        f = ((c4 * t + c3) * t + c2) * t * t + c1 * t
        if math.isfinite(f) and f < best_f:
            best_t, best_f = t, f
    return best_t


def ncg(X, W, A, B, *, alpha=0.0, max_iter=1000, tol=1e-5, sweeps=3, cg_steps=3, **kw):
    """``sweeps`` alternating CG sweeps, then preconditioned Polak-Ribiere+ CG, exact line search.

    The sweeps (those of ``"als-cg"``) fit every row and column nearly exactly
    under its own weights, which the rank-one preconditioner cannot do where the
    weights are far from rank one (per-sample Fisher information: there the
    joint steps alone came within 1% several times later in our trials); from
    that start the joint steps converge faster than alternation, which zigzags.

    Every matrix-sized temporary lives in four buffers allocated once
    (:func:`~sklearn_wsvd._solvers._common.workspace`). The line's coefficients
    are dot products of those buffers (torch's float32 dot is accurate to about
    1e-5 of a sum of 1e7 terms, which moves a step by as little); the objective,
    where it is computed rather than carried, is summed as a product written
    into one of them, to the dtype's accuracy. A step of the small problems of a
    completion's path, which takes about a millisecond, is mostly the dispatch
    of torch's operations: the factors, the gradient and the direction are each
    one vector, whose inner products are one operation each.
    """
    a, b = rank_one_approximation(W)
    m = A.shape[0]
    residual, weighted, second, scratch = workspace(X, 4)
    state = {}

    def dot(P, Q):  # sum(P * Q) of two buffers or vectors (not to the dtype's accuracy)
        return float(torch.dot(P.view(-1), Q.view(-1)))

    def factors(v, k):  # the (A, B) parts of a vector of both, as views
        return v[: m * k].view(m, k), v[m * k :].view(k, -1)

    def restart(A, B):
        state.clear()

    def step(A, B, it):
        if it <= sweeps:
            return cg_sweep(X, W, A, B, alpha, cg_steps, scratch)
        k = A.shape[1]  # the live components (see iterate)
        # The factors live in one vector P = (A, B), and so do the gradient G, its
        # preconditioned Z and the direction D: their inner products are single dots.
        # The residual E = A B - X is carried from the last step (E + t E1 + t^2 E2),
        # and so is the objective; both are computed afresh every REFRESH steps
        # against the drift of rounding, and where the factors are not the last
        # step's own (a sweep, a revival).
        own = state.get("A") is A and state.get("B") is B
        fresh = it % REFRESH == 0 or not own
        P = state["P"] if own else torch.cat([A.reshape(-1), B.reshape(-1)])
        E = torch.addmm(X, A, B, beta=-1.0, out=residual) if fresh else residual
        R = torch.mul(W, E, out=weighted)
        if fresh or "f" not in state:  # accurately: torch's float32 dot of 1e7 terms is not
            f0 = float(torch.mul(R, E, out=scratch).sum())
            if alpha:
                f0 += alpha * dot(P, P)
        else:
            f0 = state["f"]
        G = torch.empty_like(P)
        GA, GB = factors(G, k)
        torch.mm(R, B.T, out=GA)
        torch.mm(A.T, R, out=GB)
        if alpha:
            G.add_(P, alpha=alpha)
        # Each row's share of the block: the rank-one model's a_i, corrected so that
        # the block's trace is the exact one, sum_j W_ij |b_j|^2 (one product W v).
        nb, na = torch.linalg.vecdot(B, B, dim=0), torch.linalg.vecdot(A, A, dim=1)
        ra = (W @ nb) / max(float(b @ nb), tiny(W.dtype))
        rb = (na @ W) / max(float(a @ na), tiny(W.dtype))
        Z = torch.empty_like(P)
        ZA, ZB = factors(Z, k)
        eigen = "V" not in state or (it - state["eigen"]) % EIGEN_EVERY == 0
        VA, VB = (None, None) if eigen else state["V"]
        d, VA = _block_inverse(B, b, ra, alpha, True, VA)
        torch.mm(torch.mm(GA, VA).div_(d), VA.T, out=ZA)
        d, VB = _block_inverse(A.T, a, rb, alpha, False, VB)
        torch.mm(VB, torch.mm(VB.T, GB).div_(d), out=ZB)
        if eigen:
            state.update(V=(VA, VB), eigen=it)
        gz = dot(G, Z)
        D = None
        if "D" in state and state["gz"] > 0:  # Polak-Ribiere+
            beta = max(0.0, (gz - dot(G, state["Z"])) / state["gz"])
            D = state["D"].mul(beta).sub_(Z)
            gd = dot(G, D)
            if gd >= 0:  # not a descent direction
                D = None
        if D is None:
            D, gd = -Z, -gz
        state.update(Z=Z, gz=gz, D=D)
        DA, DB = factors(D, k)
        # Along the line the residual is E + t E1 + t^2 E2, with E1 = DA B + A DB and
        # E2 = DA DB. The gradient gives c1 = 2 sum(W E E1) at the cost of a dot.
        c1 = 2.0 * gd
        E2 = torch.mm(DA, DB, out=second)
        c2 = 2.0 * dot(R, E2)
        # R is done with: its buffer takes E1 (two products into it: stacking the
        # factors for one would copy them, which costs more on small matrices).
        E1 = torch.mm(DA, B, out=weighted).addmm_(A, DB)
        WE = torch.mul(W, E1, out=scratch)
        c2 += dot(WE, E1)
        c3 = 2.0 * dot(WE, E2)
        c4 = dot(torch.mul(W, E2, out=scratch), E2)
        if alpha:
            c2 += alpha * dot(D, D)
        t = _minimise_quartic(c4, c3, c2, c1)
        if t == 0.0:
            state.clear()
            return A, B
        f = f0 + (((c4 * t + c3) * t + c2) * t + c1) * t
        P = torch.add(P, D, alpha=t)
        A, B = factors(P, k)
        residual.add_(E1, alpha=t).add_(E2, alpha=t * t)
        state.update(A=A, B=B, P=P, f=f)
        # Where the step removes nearly all of f0, the sum cancels and rounding
        # would dominate: the driver computes the objective afresh (and so does
        # the next step).
        if f > 1e-3 * f0:
            return A, B, f
        del state["f"]
        return A, B

    return iterate(
        step,
        X,
        W,
        A,
        B,
        alpha=alpha,
        max_iter=max_iter,
        tol=tol,
        name="ncg",
        restart=restart,
        **kw,
    )
