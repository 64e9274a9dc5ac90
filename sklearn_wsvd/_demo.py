"""The end-to-end example behind ``python -m sklearn_wsvd demo``, on data scikit-learn ships."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

from . import WeightedTruncatedSVD
from .compress import compress_model, fisher_importance, load_compressed, save_compressed


def _mlp():
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def _train_mlp(X, y, seed=0, epochs=30):
    torch.manual_seed(seed)
    model = _mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    X, y = torch.as_tensor(X, dtype=torch.float32), torch.as_tensor(y)
    for _ in range(epochs):
        for idx in torch.randperm(len(X)).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def _accuracy(model, X, y):
    return float((model(torch.as_tensor(X, dtype=torch.float32)).argmax(1).numpy() == y).mean())


def matrix_demo(rank: int = 8) -> None:
    X = load_digits().data[:500]
    rng = np.random.default_rng(0)
    # Heavy-tailed element-wise importance, as squared gradients are.
    W = rng.standard_normal(X.shape) ** 2 * rng.lognormal(sigma=1.0, size=(1, X.shape[1]))
    print(f"1. A weighted low-rank problem: digits X {X.shape}, element-wise weights, rank {rank}")
    print(f"   {'solver':>8}  {'weighted error / SVD':>20}  {'iterations':>10}  {'seconds':>8}")
    base = None
    for solver in ("svd", "fwsvd", "rank1", "als-cg", "als", "em", "adam"):
        est = WeightedTruncatedSVD(rank, solver=solver, random_state=0)
        est.fit(X, sample_weight=W)
        err = est.reconstruction_err_**2
        base = base or err
        seconds = est.history_["seconds"][-1]
        print(f"   {solver:>8}  {err / base:>20.4f}  {est.n_iter_:>10}  {seconds:>8.3f}")


def compression_demo(rank: int = 12) -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.5, random_state=0)
    model = _train_mlp(X_train, y_train)
    Xt, yt = torch.as_tensor(X_train, dtype=torch.float32), torch.as_tensor(y_train)
    batches = [(Xt[i : i + 64], yt[i : i + 64]) for i in range(0, len(Xt), 64)]
    start = time.perf_counter()
    importance = fisher_importance(model, batches, loss_fn=nn.CrossEntropyLoss(), per_sample=True)
    print(
        f"\n2. Compressing a digits MLP (test accuracy {_accuracy(model, X_test, y_test):.3f}) "
        f"to rank {rank}; Fisher importance of {len(X_train)} samples in "
        f"{time.perf_counter() - start:.1f} s"
    )
    small = report = None
    for solver in ("svd", "fwsvd", "rank1", "als-cg"):
        small, report = compress_model(
            model, rank=rank, importance=importance, solver=solver, progress=False
        )
        acc = _accuracy(small, X_test, y_test)
        seconds = sum(r.seconds for r in report.layers)
        print(f"   {solver:>8}: test accuracy {acc:.3f}  ({seconds:.2f} s)")
    print(
        "   (On a small network trained from scratch the diagonal Fisher says little and plain\n"
        "   SVD is as good; the weighted solvers pay off on fine-tuned transformers: see the\n"
        "   README's table.)"
    )
    print("\n   Per-layer report of the last run:\n")
    print("\n".join("   " + line for line in str(report).splitlines()))
    with tempfile.TemporaryDirectory() as tmp:
        save_compressed(small, tmp)
        loaded = load_compressed(tmp, model=_mlp())
        X_test_t = torch.as_tensor(X_test, dtype=torch.float32)
        with torch.no_grad():
            same = torch.equal(loaded(X_test_t), small(X_test_t))
        files = ", ".join(sorted(p.name for p in Path(tmp).iterdir()))
    print(f"\n3. Saved ({files}) and reloaded: identical outputs: {same}")


def main(rank: int = 8) -> None:
    matrix_demo(rank)
    compression_demo()
