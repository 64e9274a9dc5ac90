"""
Solver convergence curves
=========================

Every iterative solver records its objective and the elapsed time after each
iteration in ``history_``. Here they race on one problem with heavy-tailed
element-wise weights, each started from the ``rank1`` closed form, and the
TFWSVD paper's recipe (Adam then SGD, started from FWSVD) is shown for
reference.
"""

import warnings

import matplotlib.pyplot as plt
import numpy as np
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

rng = np.random.default_rng(0)
X = rng.normal(size=(200, 500))
W = rng.normal(size=X.shape) ** 2 * rng.lognormal(sigma=1.0, size=(200, 1))

runs = {
    "als-cg": dict(solver="als-cg"),
    "als": dict(solver="als"),
    "em": dict(solver="em"),
    "TFWSVD recipe": dict(solver="adam", init="fwsvd"),
}
histories = {}
for name, params in runs.items():
    est = WeightedTruncatedSVD(16, tol=1e-6, max_iter=40, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    histories[name] = est.history_

best = min(h["objective"].min() for h in histories.values())
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, h in histories.items():
    ax.plot(h["seconds"], h["objective"] / best - 1, label=name)
    print(f"{name}: {h['objective'][-1] / best:.4f} x best after {h['seconds'][-1]:.1f} s")
ax.axhline(0.01, color="grey", lw=0.6, ls="--")
ax.set_yscale("log")
ax.set_xlabel("seconds")
ax.set_ylabel("objective / best - 1")
ax.legend()
fig.tight_layout()
plt.show()
