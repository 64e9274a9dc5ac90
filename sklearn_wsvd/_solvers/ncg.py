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
A step costs five products of O(m n k), under a third of an ``"als-cg"`` sweep, and
knows the objective and the residual at its new point (``E + t E1 + t^2 E2``),
which the next step starts from.
"""

from __future__ import annotations

import numpy as np
import torch

from ._common import iterate, rounding_ridge, tiny, workspace
from .als import cg_sweep
from .closed_form import rank_one_approximation

# ncg carries the residual from step to step and recomputes it this often.
REFRESH = 16


def _block_preconditioner(F, weight, other, alpha):
    """``G -> rows of (weight_i F diag(other) F^T + (alpha + lam_i) I)^{-1} g_i``.

    The Hessian block of row ``i`` of one factor under the rank-one weights
    ``weight other^T``, with ``F`` (k x n) the other factor and ``lam_i`` the
    rounding-level ridge; one eigendecomposition of ``F diag(other) F^T`` serves
    every row.
    """
    values, vectors = torch.linalg.eigh((F * other) @ F.T)
    values = values.clamp_min(0.0)
    lam = rounding_ridge(weight[:, None] * values.sum(), len(values), values.dtype)
    denominator = (weight[:, None] * values + alpha + lam).clamp_min(tiny(values.dtype))

    def apply(G):
        return ((G @ vectors) / denominator) @ vectors.T

    return apply


def _minimise_quartic(c4, c3, c2, c1):
    """The ``t`` minimising ``c4 t^4 + c3 t^3 + c2 t^2 + c1 t`` (0 if nothing is lower)."""
    roots = np.roots([4 * c4, 3 * c3, 2 * c2, c1]) if c4 > 0 else np.roots([2 * c2, c1])
    best_t, best_f = 0.0, 0.0
    for r in roots:
        if abs(r.imag) > 1e-8 * max(1.0, abs(r.real)):
            continue
        t = float(r.real)
        value = ((c4 * t + c3) * t + c2) * t * t + c1 * t
        if value < best_f:
            best_t, best_f = t, value
    return best_t


def ncg(X, W, A, B, *, alpha=0.0, max_iter=1000, tol=1e-5, sweeps=3, cg_steps=3, **kw):
    """``sweeps`` alternating CG sweeps, then preconditioned Polak-Ribiere+ CG, exact line search.

    The sweeps (those of ``"als-cg"``) fit every row and column nearly exactly
    under its own weights, which the rank-one preconditioner cannot do where the
    weights are far from rank one (per-sample Fisher information: there the
    joint steps alone came within 1% several times later in our trials); from
    that start the joint steps converge faster than alternation, which zigzags.

    Every matrix-sized temporary lives in four buffers allocated once
    (:func:`~sklearn_wsvd._solvers._common.workspace`), and each sum over the
    matrix is taken from a product written into one of them.
    """
    a, b = rank_one_approximation(W)
    residual, weighted, second, scratch = workspace(X, 4)
    state = {}

    def inner(P, Q):  # sum(P * Q), accurately (torch's float32 dot of 1e7 terms is not)
        return float(torch.mul(P, Q, out=scratch).sum())

    def weighted_inner(P, Q):  # sum(W * P * Q)
        return float(torch.mul(P, Q, out=scratch).mul_(W).sum())

    def restart(A, B):
        state.clear()

    def step(A, B, it):
        if it <= sweeps:
            return cg_sweep(X, W, A, B, alpha, cg_steps, scratch)
        # The residual E = A B - X is carried from the last step (E + t E1 + t^2 E2),
        # and computed afresh every REFRESH steps against the drift of rounding, and
        # where the factors are not the last step's own (a sweep, a revival).
        fresh = it % REFRESH == 0 or state.get("A") is not A or state.get("B") is not B
        E = torch.addmm(X, A, B, beta=-1.0, out=residual) if fresh else residual
        R = torch.mul(W, E, out=weighted)
        f0 = inner(R, E)
        GA, GB = R @ B.T, A.T @ R
        if alpha:
            GA, GB = GA + alpha * A, GB + alpha * B
            f0 += alpha * float(A.square().sum() + B.square().sum())
        # Each row's share of the block: the rank-one model's a_i, corrected so that
        # the block's trace is the exact one, sum_j W_ij |b_j|^2 (one product W v).
        nb, na = B.square().sum(0), A.square().sum(1)
        ra = (W @ nb) / (b @ nb).clamp_min(tiny(W.dtype))
        rb = (na @ W) / (a @ na).clamp_min(tiny(W.dtype))
        ZA = _block_preconditioner(B, ra, b, alpha)(GA)
        ZB = _block_preconditioner(A.T, rb, a, alpha)(GB.T).T
        gz = float((GA * ZA).sum() + (GB * ZB).sum())
        if "D" in state and state["gz"] > 0:
            change = float((GA * (ZA - state["ZA"])).sum() + (GB * (ZB - state["ZB"])).sum())
            beta = max(0.0, change / state["gz"])
            DA, DB = -ZA + beta * state["D"][0], -ZB + beta * state["D"][1]
            if float((GA * DA).sum() + (GB * DB).sum()) >= 0:  # not a descent direction
                DA, DB = -ZA, -ZB
        else:
            DA, DB = -ZA, -ZB
        state.update(ZA=ZA, ZB=ZB, gz=gz, D=(DA, DB))
        # Along the line the residual is E + t E1 + t^2 E2, with E1 = DA B + A DB and
        # E2 = DA DB. The gradient gives c1 = 2 sum(W E E1) at the cost of k x k sums.
        c1 = 2.0 * float((GA * DA).sum() + (GB * DB).sum())
        E2 = torch.mm(DA, DB, out=second)
        c2 = 2.0 * inner(R, E2)
        # R is done with: its buffer takes E1 (one product of the stacked factors).
        E1 = torch.mm(torch.cat([DA, A], 1), torch.cat([B, DB], 0), out=weighted)
        c2 += weighted_inner(E1, E1)
        c3 = 2.0 * weighted_inner(E1, E2)
        c4 = weighted_inner(E2, E2)
        if alpha:
            c2 += alpha * float(DA.square().sum() + DB.square().sum())
        t = _minimise_quartic(c4, c3, c2, c1)
        if t == 0.0:
            state.clear()
            return A, B
        f = f0 + (((c4 * t + c3) * t + c2) * t + c1) * t
        A, B = A + t * DA, B + t * DB
        residual.add_(E1, alpha=t).add_(E2, alpha=t * t)
        state.update(A=A, B=B)
        # Where the step removes nearly all of f0, the sum cancels and rounding
        # would dominate: the driver computes the objective afresh.
        return (A, B, f) if f > 1e-3 * f0 else (A, B)

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
