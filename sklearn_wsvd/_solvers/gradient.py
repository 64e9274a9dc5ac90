"""The TFWSVD paper's gradient recipe (Hua et al., EMNLP 2022): Adam, then SGD.

Both factors are optimised jointly on the weighted objective, normalised by
``sum W X^2`` so that the learning rate does not depend on the data's scale. Adam's
step is relative to the typical size of the initial factors' entries. After
``switch`` of the iterations the run continues with full-batch gradient descent
with Nesterov momentum 0.9 (the paper's SGD, on the whole matrix), starting at
``1 / L`` for an upper bound ``L`` on the curvature at the switch. One iteration
is ``steps_per_iter`` optimiser steps.

A fixed step size is unsafe: from a good start, Adam's first steps move every
entry by the full learning rate and can raise the objective many times over
(and never recover), while the bound ``L``, set by the largest weight, makes
gradient descent crawl. So both phases backtrack: a step that raises the
objective is undone (factors, gradient and optimiser state) and retaken with
half the learning rate, and each step that lowers it lets the learning rate grow
by ``growth`` (doubling at the start of gradient descent until a step fails).
The objective never rises, and a run that stalls does so at the largest step
that still descends, not at one too small to make progress.
"""

from __future__ import annotations

import copy

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
    growth=1.1,
    **kw,
):
    """Adam on (A, B) for the first ``switch`` of the iterations, then gradient descent."""
    norm = max(float((W * X.square()).sum()), torch.finfo(X.dtype).tiny)
    # The optimiser updates its own copies in place; the driver keeps A, B as the start.
    PA = A.detach().clone().requires_grad_(True)
    PB = B.detach().clone().requires_grad_(True)
    size = float(torch.cat([A.flatten(), B.flatten()]).square().mean().sqrt())
    switch_at = int(switch * max_iter)
    # The last point known to lower the objective: its value, factors, gradient,
    # and the optimiser's state before the step taken from it.
    accepted = {}
    warm = False

    def loss():
        return objective_tensor(X, W, PA, PB, alpha) / norm

    def accept(value):
        value.backward()
        accepted.update(
            f=float(value.detach()),
            params=(PA.detach().clone(), PB.detach().clone()),
            grads=(PA.grad.clone(), PB.grad.clone()),
            state=copy.deepcopy(opt.state_dict()),
        )

    def retreat():  # back to the accepted point, with its state and a halved step
        lr_now = [group["lr"] for group in opt.param_groups]
        opt.load_state_dict(accepted["state"])
        for group, lr_group in zip(opt.param_groups, lr_now, strict=True):
            group["lr"] = lr_group
        with torch.no_grad():
            PA.copy_(accepted["params"][0])
            PB.copy_(accepted["params"][1])

    def step_from_accepted():
        PA.grad, PB.grad = (g.clone() for g in accepted["grads"])
        opt.step()

    def step(A_, B_, it):
        nonlocal opt, warm
        if it == switch_at + 1:
            with torch.no_grad():
                spectral = (
                    torch.linalg.matrix_norm(accepted["params"][0], 2) ** 2
                    + torch.linalg.matrix_norm(accepted["params"][1], 2) ** 2
                )
                curvature = (2.0 * float(W.max()) * float(spectral) + 2.0 * alpha) / norm
            opt = torch.optim.SGD(
                [PA, PB], lr=1.0 / max(curvature, 1e-30), momentum=0.9, nesterov=True
            )
            warm = True  # double the (safe, but often tiny) step until it fails once
            accepted["state"] = copy.deepcopy(opt.state_dict())
            retreat()
            step_from_accepted()
        for _ in range(steps_per_iter):
            opt.zero_grad(set_to_none=True)
            value = loss()
            descends = float(value.detach()) <= accepted["f"]
            warm = warm and descends
            for group in opt.param_groups:
                group["lr"] *= (2.0 if warm else growth) if descends else 0.5
            if descends:
                accept(value)
            else:
                retreat()
            step_from_accepted()
        return accepted["params"]

    with torch.enable_grad():
        opt = torch.optim.Adam([PA, PB], lr=lr * max(size, 1e-12))
        accept(loss())
        step_from_accepted()
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
            **{**kw, "trend": False},  # its objective rises and falls
        )
