"""
Inpainting an image with missing pixels
=======================================

A zero weight marks an entry that does not matter, so weighted low-rank
approximation completes matrices: here 60% of the pixels of a photograph that
scikit-learn ships are missing (NaN). Plain SVD has to treat the holes as zeros;
the weighted solver fits only the pixels it sees and fills the holes from the
low-rank structure. With 40% of the entries observed, a small ridge (``alpha``)
keeps the factors from fitting the noise of the observed pixels.
"""

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_sample_image

from sklearn_wsvd import WeightedTruncatedSVD

image = load_sample_image("china.jpg").mean(axis=2)[::2, ::2] / 255.0
rng = np.random.default_rng(0)
observed = rng.uniform(size=image.shape) > 0.6
damaged = np.where(observed, image, np.nan)

rank = 25
plain = WeightedTruncatedSVD(rank, solver="svd")
Z = plain.fit_transform(np.nan_to_num(damaged))
plain_fill = Z @ plain.components_

weighted = WeightedTruncatedSVD(rank, solver="als-cg", alpha=1.0, tol=1e-4, max_iter=300)
Z = weighted.fit_transform(damaged, sample_weight=observed.astype(float))
weighted_fill = Z @ weighted.components_

for name, fill in [("plain SVD", plain_fill), ("weighted", weighted_fill)]:
    rmse = np.sqrt(np.mean((fill - image)[~observed] ** 2))
    print(f"{name}: RMSE on the missing pixels {rmse:.4f}")

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
titles = [
    "original",
    "60% of pixels missing",
    "plain SVD, holes as zeros",
    "weighted (als-cg, alpha=1)",
]
for ax, img, title in zip(axes, [image, damaged, plain_fill, weighted_fill], titles, strict=True):
    ax.imshow(np.clip(img, 0, 1), cmap="gray", vmin=0, vmax=1)
    ax.set_title(title)
    ax.axis("off")
fig.tight_layout()
plt.show()
