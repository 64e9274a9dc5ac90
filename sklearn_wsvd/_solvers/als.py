"""Alternating least squares (criss-cross regression, Gabriel & Zamir 1979).

With ``B`` fixed the objective separates over the rows of ``A``: row ``i`` solves

    (B diag(W_i) B^T + alpha I) a_i = B diag(W_i) x_i,

and likewise for the columns of ``B`` with ``A`` fixed. ``als`` solves these k x k
systems exactly (batched Cholesky, O(m n k^2) a sweep); ``als_cg`` takes a few
warm-started, Jacobi-preconditioned conjugate-gradient steps on all rows at once,
whose products ``(W * (P B)) B^T`` cost O(m n k) each. Both decrease the objective
monotonically: exact solves and CG steps from the current point both lower each
row's convex quadratic.
"""

from __future__ import annotations

import torch

from ._common import iterate, tiny

DEFAULT_MEMORY_BUDGET = 2**30  # bytes for the batch of k x k Gram matrices


def weighted_row_solve(X, W, B, A_old, *, alpha=0.0, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Exact weighted least squares of every row of ``X`` on the rows of ``B``.

    A proximal term ``lam |a - a_old|^2`` with a tiny ``lam`` keeps rows whose
    weights are all zero (or too few to determine ``a``) at ``a_old`` instead of
    producing NaN, without moving well-determined rows measurably.

    The Gram matrices ``G_i = sum_j W_ij b_j b_j^T`` are one matrix product
    ``W @ P`` with ``P_j = vec(b_j b_j^T)``. Rows and columns are chunked so that
    the chunk of ``G`` and that of ``P`` (or of ``G``'s Cholesky factor, which
    replaces ``P``) together never take more than ``memory_budget`` bytes.
    """
    m, n = X.shape
    k = B.shape[0]
    Bt = B.T
    rhs = (W * X) @ Bt
    itemsize = X.element_size()
    half = max(1, memory_budget // (2 * k * k * itemsize))  # matrices in half the budget
    rows, cols = min(m, half), min(n, half)
    eps = 1e-6 if X.dtype == torch.float32 else 1e-12
    out = torch.empty_like(A_old)
    for r in range(0, m, rows):
        G = torch.zeros(min(rows, m - r), k * k, dtype=X.dtype, device=X.device)
        for c in range(0, n, cols):
            Bc = Bt[c : c + cols]
            P = (Bc[:, :, None] * Bc[:, None, :]).reshape(-1, k * k)
            G.addmm_(W[r : r + rows, c : c + cols], P)
            del P  # free before the next chunk's P (and before the Cholesky factor)
        G = G.view(-1, k, k)
        lam = eps * G.diagonal(dim1=1, dim2=2).sum(-1) / k + tiny(X.dtype) ** 0.5
        G.diagonal(dim1=1, dim2=2).add_((lam + alpha)[:, None])
        b = rhs[r : r + rows] + lam[:, None] * A_old[r : r + rows]
        info = torch.empty(G.shape[0], dtype=torch.int32, device=X.device)
        torch.linalg.cholesky_ex(G, out=(G, info))  # in place: no second G-sized buffer
        x = torch.cholesky_solve(b[:, :, None], G)[:, :, 0]
        bad = torch.nonzero(info).flatten()
        if bad.numel():  # numerically indefinite: least squares on those rows' rebuilt Grams
            Gb = (B * W[r + bad, None, :]) @ Bt
            Gb.diagonal(dim1=1, dim2=2).add_((lam[bad] + alpha)[:, None])
            x[bad] = torch.linalg.lstsq(Gb, b[bad][:, :, None]).solution[:, :, 0]
        out[r : r + rows] = x
    return out


def _cg_row_update(WX, W, A, B, alpha, n_steps):
    """``n_steps`` of Jacobi-preconditioned CG on every row's normal equations at once."""

    def apply(P):  # P -> rows of (B diag(W_i) B^T + alpha I) p_i
        return (W * (P @ B)) @ B.T + alpha * P

    diag = (W @ B.square().T + alpha).clamp_min(tiny(A.dtype))
    resid = WX @ B.T - apply(A)
    z = resid / diag
    p = z
    rz = (resid * z).sum(1, keepdim=True)
    for _ in range(n_steps):
        Hp = apply(p)
        pHp = (p * Hp).sum(1, keepdim=True)
        step = torch.where(pHp > 0, rz / pHp.clamp_min(tiny(A.dtype)), 0.0)
        A = A + step * p
        resid = resid - step * Hp
        z = resid / diag
        rz_new = (resid * z).sum(1, keepdim=True)
        p = z + torch.where(rz > 0, rz_new / rz.clamp_min(tiny(A.dtype)), 0.0) * p
        rz = rz_new
    return A


def als(
    X, W, A, B, *, alpha=0.0, max_iter=100, tol=1e-5, memory_budget=DEFAULT_MEMORY_BUDGET, **kw
):
    """Exact alternating least squares; each sweep solves every row and column exactly."""
    Wt, Xt = W.T, X.T

    def step(A, B, it):
        A = weighted_row_solve(X, W, B, A, alpha=alpha, memory_budget=memory_budget)
        B = weighted_row_solve(Xt, Wt, A.T, B.T, alpha=alpha, memory_budget=memory_budget).T
        return A, B

    return iterate(step, X, W, A, B, alpha=alpha, max_iter=max_iter, tol=tol, name="als", **kw)


def als_cg(X, W, A, B, *, alpha=0.0, max_iter=100, tol=1e-5, cg_steps=3, **kw):
    """Alternating sweeps whose row and column solves are ``cg_steps`` warm-started CG steps."""
    WX = W * X
    WXt, Wt = WX.T, W.T

    def step(A, B, it):
        A = _cg_row_update(WX, W, A, B, alpha, cg_steps)
        B = _cg_row_update(WXt, Wt, B.T, A.T, alpha, cg_steps).T
        return A, B

    return iterate(step, X, W, A, B, alpha=alpha, max_iter=max_iter, tol=tol, name="als-cg", **kw)
