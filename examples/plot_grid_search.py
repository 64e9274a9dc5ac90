"""
Choosing a solver and a rank with GridSearchCV
==============================================

``score`` returns the negative weighted mean squared reconstruction error, so
``GridSearchCV`` can compare solvers and ranks. With metadata routing enabled,
``sample_weight`` is split with the rows and routed to both ``fit`` and
``score``, so every fold is fitted and judged under its own weights.
"""

import matplotlib.pyplot as plt
import numpy as np
import sklearn
from sklearn.model_selection import GridSearchCV

from sklearn_wsvd import WeightedTruncatedSVD

sklearn.set_config(enable_metadata_routing=True)

rng = np.random.default_rng(0)
sigma = rng.lognormal(sigma=1.0, size=(400, 30))
X = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 30)) + sigma * rng.normal(size=sigma.shape)
W = 1.0 / sigma**2

estimator = (
    WeightedTruncatedSVD().set_fit_request(sample_weight=True).set_score_request(sample_weight=True)
)
grid = GridSearchCV(
    estimator,
    {"solver": ["svd", "rank1", "als-cg"], "n_components": [2, 5, 8]},
    cv=3,
)
grid.fit(X, sample_weight=W)
print("best:", grid.best_params_, f"score {grid.best_score_:.4f}")

results = grid.cv_results_
fig, ax = plt.subplots(figsize=(6, 4))
for solver in ["svd", "rank1", "als-cg"]:
    mask = results["param_solver"] == solver
    ax.plot(
        np.asarray(results["param_n_components"])[mask],
        -results["mean_test_score"][mask],
        "o-",
        label=solver,
    )
ax.set_xlabel("n_components")
ax.set_ylabel("held-out weighted MSE")
ax.set_yscale("log")
ax.legend()
fig.tight_layout()
plt.show()

sklearn.set_config(enable_metadata_routing=False)
