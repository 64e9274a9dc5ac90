"""
Weighted versus plain truncated SVD
===================================

Plain SVD treats every entry as equally important. When some entries matter far
more than others, as the weights of a trained network do, the weighted solvers
put the approximation error where it costs least. Here the importance of each
entry is heavy-tailed (a squared Gaussian times a per-column scale, as squared
gradients tend to be) and we compare the weighted error of every solver across
ranks.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits

from sklearn_wsvd import WeightedTruncatedSVD

X = load_digits().data[:600]
rng = np.random.default_rng(0)
W = rng.standard_normal(X.shape) ** 2 * rng.lognormal(sigma=1.0, size=(1, X.shape[1]))

ranks = [2, 4, 8, 12, 16, 24]
solvers = ["svd", "fwsvd", "rank1", "als-cg"]
errors = {s: [] for s in solvers}
for k in ranks:
    for s in solvers:
        est = WeightedTruncatedSVD(k, solver=s).fit(X, sample_weight=W)
        errors[s].append(1 - est.explained_weighted_variance_ratio_)

for s in solvers:
    print(s, " ".join(f"{e:.3f}" for e in errors[s]))

fig, ax = plt.subplots(figsize=(6, 4))
for s in solvers:
    ax.plot(ranks, errors[s], "o-", label=s)
ax.set_xlabel("rank")
ax.set_ylabel("relative weighted error")
ax.set_yscale("log")
ax.legend()
ax.set_title("Weighted error of each solver")
fig.tight_layout()
plt.show()
