"""Expectation-maximisation (Srebro & Jaakkola, ICML 2003), with restarted Nesterov momentum.

With ``V = W / max(W)`` in [0, 1], each step fills the matrix,
``F = V * X + (1 - V) * L``, and lowers ``|F - A B|^2`` by one unweighted ALS sweep
(a generalised M-step, O(m n k) instead of a full SVD). The filled-matrix
surrogate majorises the weighted objective, so a plain step never increases it.
The accelerated step fills with an extrapolated ``L`` (Tuzhilina & Hastie 2021);
when that fails to decrease the objective, the step is redone plainly and the
momentum restarts, which keeps the history monotone.
"""

from __future__ import annotations

import torch

from ._common import iterate, objective, rounding_ridge, weight_scale


def _ridge_solve(B, F, alpha):
    """``(B B^T + (alpha + lam) I)^{-1} B F``, with the rounding-level ridge ``lam``.

    A zero ``B`` gives zero (rather than a singular system).
    """
    G = B @ B.T
    trace = G.trace()
    G.diagonal().add_(alpha + rounding_ridge(trace, B.shape[0], B.dtype) + float(trace == 0))
    return torch.linalg.solve(G, B @ F)


def _ridge_sweep(F, B, alpha):
    A = _ridge_solve(B, F.T, alpha).T
    return A, _ridge_solve(A.T, F, alpha)


def em(X, W, A, B, *, alpha=0.0, max_iter=500, tol=1e-5, accelerate=True, **kw):
    """Srebro-Jaakkola EM with an ALS M-step and restarted Nesterov acceleration."""
    scale = weight_scale(W)
    V = W / scale if scale != 1.0 else W
    VX = V * X
    inner_alpha = alpha / scale
    state = {"L_prev": A @ B, "t": 1.0, "f": objective(X, W, A, B, alpha)}

    def fill(L):
        return VX + (1.0 - V) * L

    def step(A, B, it):
        L = A @ B
        if accelerate:
            t_next = (1.0 + (1.0 + 4.0 * state["t"] ** 2) ** 0.5) / 2.0
            Z = L + ((state["t"] - 1.0) / t_next) * (L - state["L_prev"])
            A1, B1 = _ridge_sweep(fill(Z), B, inner_alpha)
            f1 = objective(X, W, A1, B1, alpha)
            if f1 <= state["f"]:
                state.update(L_prev=L, t=t_next, f=f1)
                return A1, B1
            state["t"] = 1.0
        A1, B1 = _ridge_sweep(fill(L), B, inner_alpha)
        state.update(L_prev=L, f=objective(X, W, A1, B1, alpha))
        return A1, B1

    def restart(A, B):  # a revived component: the momentum no longer points anywhere useful
        state.update(L_prev=A @ B, t=1.0, f=objective(X, W, A, B, alpha))

    return iterate(
        step, X, W, A, B, alpha=alpha, max_iter=max_iter, tol=tol, name="em", restart=restart, **kw
    )
