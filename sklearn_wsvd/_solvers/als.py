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

from ._common import iterate, objective, rounding_ridge, tiny, weight_scale, workspace

# Bytes that weighted_row_solve may allocate beyond its inputs and output: the
# chunk of Gram matrices, the outer products they are built from, the
# factorisation's temporaries and the weighted right-hand sides.
DEFAULT_MEMORY_BUDGET = 2**30


def weighted_row_solve(X, W, B, A_old, *, alpha=0.0, memory_budget=DEFAULT_MEMORY_BUDGET):
    """Exact weighted least squares of every row of ``X`` on the rows of ``B``.

    Row ``i`` solves ``(B diag(W_i) B^T + (alpha + lam_i) I) a_i = B diag(W_i) x_i``
    with the rounding-level ridge ``lam_i`` of :func:`rounding_ridge`, which keeps
    rows with too few observed entries to determine ``a_i`` finite. Rows whose
    weights are all zero keep ``A_old`` (shrunk by ``1 / (1 + alpha)``) instead of
    becoming NaN. The weights are divided by their largest value, and ``alpha``
    with them, which leaves the solution unchanged and keeps float32 Gram
    matrices clear of overflow and underflow.

    The Gram matrices ``G_i = sum_j W_ij b_j b_j^T`` are one matrix product
    ``W @ P`` with ``P_j = vec(b_j b_j^T)``. What this function allocates beyond
    its inputs and its output stays within ``memory_budget`` bytes (or one
    ``k x k`` matrix where that is larger): a chunk of rows' ``G`` takes three
    quarters of it; the chunk of ``P``, the batches that the Cholesky
    factorisation and solve work on, and the chunk of ``W * X`` for the
    right-hand sides each take at most an eighth, and ``P`` is freed before the
    factorisation starts.
    """
    m, n = X.shape
    k = B.shape[0]
    scale = weight_scale(W)
    alpha = alpha / scale
    Bt = B.T
    itemsize = X.element_size()
    matrix = k * k * itemsize
    rows = min(m, max(1, 3 * memory_budget // (4 * matrix)))
    eighth = max(1, memory_budget // (8 * matrix))  # matrices in an eighth of the budget
    cols, batch = min(n, eighth), min(rows, eighth)
    rhs_rows = max(1, memory_budget // (8 * n * itemsize))
    out = torch.empty_like(A_old)
    for r in range(0, m, rows):
        stop = min(m, r + rows)
        G = torch.zeros(stop - r, k * k, dtype=X.dtype, device=X.device)
        for c in range(0, n, cols):
            Bc = Bt[c : c + cols]
            P = (Bc[:, :, None] * Bc[:, None, :]).reshape(-1, k * k)
            G.addmm_(W[r:stop, c : c + cols], P, alpha=1.0 / scale)
            del P  # free before the next chunk's P (and before the factorisation)
        for s in range(r, stop, batch):
            e = min(stop, s + batch)
            out[s:e] = _solve_batch(
                X[s:e], W[s:e], B, A_old[s:e], G[s - r : e - r], alpha, scale, rhs_rows
            )
        del G  # before the next chunk's G, which would otherwise be allocated beside it
    return out


def _solve_batch(X, W, B, A_old, G, alpha, scale, rhs_rows):
    """The rows of one batch of :func:`weighted_row_solve`; ``G`` holds their Gram matrices.

    ``G`` (rows x k^2, unscaled by the ridge) is factorised in place.
    """
    k = B.shape[0]
    G = G.view(-1, k, k)
    trace = G.diagonal(dim1=1, dim2=2).sum(-1)
    empty = (trace == 0).to(X.dtype)  # these rows solve (1 + alpha) a = a_old
    lam = rounding_ridge(trace, k, X.dtype) + empty
    G.diagonal(dim1=1, dim2=2).add_((lam + alpha)[:, None])
    # Written in place, so that no small result lands between two chunks of W * X
    # and keeps the allocator from reusing the first chunk's memory.
    b = torch.empty(X.shape[0], k, dtype=X.dtype, device=X.device)
    for i in range(0, X.shape[0], rhs_rows):
        torch.mm(W[i : i + rhs_rows] * X[i : i + rhs_rows], B.T, out=b[i : i + rhs_rows])
    b.div_(scale).add_(empty[:, None] * A_old)
    info = torch.empty(X.shape[0], dtype=torch.int32, device=X.device)
    torch.linalg.cholesky_ex(G, out=(G, info))  # in place
    x = torch.cholesky_solve(b[:, :, None], G)[:, :, 0]
    for i in torch.nonzero(info).flatten().tolist():
        # numerically indefinite: least squares on the rebuilt Gram matrix
        Gi = (B * (W[i] / scale)) @ B.T
        Gi.diagonal().add_(lam[i] + alpha)
        x[i] = torch.linalg.lstsq(Gi, b[i][:, None]).solution[:, 0]
    return x


def _cg_row_update(X, W, A, B, alpha, n_steps, scratch):
    """``n_steps`` of Jacobi-preconditioned CG on every row's normal equations at once.

    The rows solve the same systems as in :func:`weighted_row_solve` (with the
    rounding-level ridge; rows without weight stay where they are), warm-started
    at ``A``. ``scratch``, a tensor of ``X``'s shape (a transposed view will do),
    holds every matrix-sized temporary.
    """
    gram_diag = W @ B.square().T
    trace = gram_diag.sum(1, keepdim=True)
    lam = rounding_ridge(trace, B.shape[0], A.dtype)
    reg = alpha + lam + (trace == 0).to(A.dtype)  # weightless rows: (1 + alpha) a = a_old

    def weighted(P):  # (W * P) @ B^T, P of X's shape already in scratch
        return torch.mm(P.mul_(W), B.T)

    def apply(P):  # P -> rows of (B diag(W_i) B^T + reg_i I) p_i
        return weighted(torch.mm(P, B, out=scratch)) + reg * P

    diag = gram_diag + reg
    # the residual of the normal equations, B diag(W_i) (x_i - B^T a_i) - (alpha + lam_i) a_i
    resid = -weighted(torch.addmm(X, A, B, beta=-1.0, out=scratch)) - (alpha + lam) * A
    z = resid / diag
    rz = (resid * z).sum(1, keepdim=True)
    # Rows whose preconditioned residual has fallen to rounding level stop (their
    # direction becomes zero): the ratios below would divide by subnormal numbers,
    # which is slow and overflows.
    eps = torch.finfo(A.dtype).eps
    floor = (eps**2 * rz).clamp_min(tiny(A.dtype) / eps)
    p = torch.where(rz > floor, z, 0.0)
    for _ in range(n_steps):
        Hp = apply(p)
        pHp = (p * Hp).sum(1, keepdim=True)
        step = torch.where(pHp > 0, rz / torch.where(pHp > 0, pHp, 1.0), 0.0)
        A = A + step * p
        resid = resid - step * Hp
        z = resid / diag
        rz_new = (resid * z).sum(1, keepdim=True)
        live = (rz_new > floor) & (rz > floor)
        p = torch.where(live, z + rz_new / torch.where(live, rz, 1.0) * p, 0.0)
        rz = rz_new
    return A


def cg_sweep(X, W, A, B, alpha, n_steps, scratch):
    """One alternating sweep: ``n_steps`` CG steps for the rows of ``A``, then the columns of ``B``.

    Returns the new factors and their objective, computed in ``scratch``.
    """
    A = _cg_row_update(X, W, A, B, alpha, n_steps, scratch)
    B = _cg_row_update(X.T, W.T, B.T, A.T, alpha, n_steps, scratch.T).T
    return A, B, objective(X, W, A, B, alpha, out=scratch)


def als(
    X, W, A, B, *, alpha=0.0, max_iter=100, tol=1e-5, memory_budget=DEFAULT_MEMORY_BUDGET, **kw
):
    """Exact alternating least squares; each sweep solves every row and column exactly."""
    Wt, Xt = W.T, X.T

    def step(A, B, it):
        A = weighted_row_solve(X, W, B, A, alpha=alpha, memory_budget=memory_budget)
        B = weighted_row_solve(Xt, Wt, A.T, B.T, alpha=alpha, memory_budget=memory_budget).T
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
        name="als",
        restart=_stateless,
        **kw,
    )


def als_cg(X, W, A, B, *, alpha=0.0, max_iter=100, tol=1e-5, cg_steps=3, **kw):
    """Alternating sweeps whose row and column solves are ``cg_steps`` warm-started CG steps."""
    (scratch,) = workspace(X, 1)

    def step(A, B, it):
        return cg_sweep(X, W, A, B, alpha, cg_steps, scratch)

    return iterate(
        step,
        X,
        W,
        A,
        B,
        alpha=alpha,
        max_iter=max_iter,
        tol=tol,
        name="als-cg",
        restart=_stateless,
        **kw,
    )


def _stateless(A, B):
    """The sweeps keep no state between iterations: nothing to forget after a revival."""
