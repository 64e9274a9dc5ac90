"""The TFWSVD paper's gradient recipe (Hua et al., EMNLP 2022): Adam, then SGD.

Both factors are optimised jointly on the weighted objective, normalised by
``sum W X^2`` so that the learning rate does not depend on the data's scale. Adam's
step is relative to the typical size of the initial factors' entries. After
``switch`` of the iterations the run continues with plain gradient descent (the
paper's SGD on the full matrix) at ``1 / L``, an upper bound ``L`` on the
curvature at the switch. One iteration is ``steps_per_iter`` optimiser steps.
"""

from __future__ import annotations

import torch

from ._common import iterate, objective_tensor


def adam(
    X,
    W,
    A,
    B,
    *,
    alpha=0.0,
    max_iter=300,
    tol=1e-5,
    lr=1e-2,
    switch=0.5,
    steps_per_iter=10,
    **kw,
):
    """Adam on (A, B) for the first ``switch`` of the iterations, then gradient descent."""
    norm = max(float((W * X.square()).sum()), torch.finfo(X.dtype).tiny)
    # The optimiser updates its own copies in place; the driver keeps A, B as the start.
    PA = A.detach().clone().requires_grad_(True)
    PB = B.detach().clone().requires_grad_(True)
    size = float(torch.cat([A.flatten(), B.flatten()]).square().mean().sqrt())
    opt = torch.optim.Adam([PA, PB], lr=lr * max(size, 1e-12))
    switch_at = int(switch * max_iter)

    def loss():
        return objective_tensor(X, W, PA, PB, alpha) / norm

    def step(A_, B_, it):
        nonlocal opt
        if it == switch_at + 1:
            with torch.no_grad():
                spectral = (
                    torch.linalg.matrix_norm(PA, 2) ** 2 + torch.linalg.matrix_norm(PB, 2) ** 2
                )
                curvature = (2.0 * float(W.max()) * float(spectral) + 2.0 * alpha) / norm
            opt = torch.optim.SGD([PA, PB], lr=1.0 / max(curvature, 1e-30))
        for _ in range(steps_per_iter):
            opt.zero_grad(set_to_none=True)
            loss().backward()
            opt.step()
        return PA.detach().clone(), PB.detach().clone()

    with torch.enable_grad():
        return iterate(
            step,
            X,
            W,
            A,
            B,
            alpha=alpha,
            max_iter=max_iter,
            tol=tol,
            name="adam",
            patience=5,
            **kw,
        )
