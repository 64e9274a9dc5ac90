"""How much numpy's BLAS threads slow the torch operations that follow them.

numpy (OpenBLAS) and torch (OpenMP) each keep a pool of threads. After a numpy
matrix product, numpy's threads spin for a while before they sleep; on a machine
with few cores, torch operations started meanwhile wait for a core. Measured here:

- twenty small torch operations (element-wise products and sums of a 1797 x 64
  float32 matrix, the size of the digits), alone, right after a numpy matrix
  product, and after the product and a 50 ms pause;
- :func:`alpha_path` on the digits with 50% of the entries missing (rank 20,
  centred, ``tol=1e-4`` as in bench_completion.py), with the estimator as it is
  (its ``inverse_transform`` multiplies in torch) and with one whose
  ``inverse_transform`` multiplies in numpy, as the package did before, with
  numpy's BLAS as it is and limited to one thread (threadpoolctl).

Medians of ``--repeats`` runs after one unmeasured run.

    python benchmarks/bench_threads.py

Writes results/threads.json and results/threads.md.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from _common import RESULTS, write_json
from sklearn.datasets import load_digits
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from sklearn_wsvd import WeightedTruncatedSVD, alpha_path


class NumpyInverse(WeightedTruncatedSVD):
    """The estimator with the numpy product its ``inverse_transform`` used to take."""

    def inverse_transform(self, X):
        return np.asarray(X) @ self.components_


def median_ms(run, before, repeats):
    run()
    seconds = []
    for _ in range(repeats):
        before()
        start = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - start)
    return 1000 * float(np.median(seconds))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    T = torch.from_numpy(rng.normal(size=(1797, 64)).astype(np.float32))
    A, B = rng.normal(size=(1797, 64)), rng.normal(size=(64, 20))

    def torch_ops():
        for _ in range(20):
            (T * T).sum()

    def product_then_pause():
        A @ B
        time.sleep(0.05)

    ops = {
        "alone": median_ms(torch_ops, lambda: None, args.repeats),
        "after a numpy product": median_ms(torch_ops, lambda: A @ B, args.repeats),
        "after a numpy product and 50 ms": median_ms(torch_ops, product_then_pause, args.repeats),
    }
    X = load_digits().data
    observed = np.random.default_rng(0).uniform(size=X.shape) >= 0.5
    X_missing, W = np.where(observed, X, np.nan), observed.astype(float)
    warnings.simplefilter("ignore")
    paths = {}
    variants = {
        "torch (now)": (WeightedTruncatedSVD, None),
        "numpy (before)": (NumpyInverse, None),
        "numpy, its BLAS limited to one thread": (NumpyInverse, 1),
    }
    for name, (cls, blas_threads) in variants.items():
        model = make_pipeline(StandardScaler(with_std=False), cls(20, tol=1e-4, device="cpu"))

        def path(model=model, blas_threads=blas_threads):
            with threadpool_limits(blas_threads, user_api="blas"):
                alpha_path(model, X_missing, W)

        paths[name] = median_ms(path, lambda: None, max(3, args.repeats // 5))
    write_json(RESULTS / "threads.json", {"torch_ops_ms": ops, "alpha_path_ms": paths})
    lines = [
        "| twenty small torch operations | ms (median) |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in ops.items()),
        "",
        "| alpha_path, digits 50% missing, inverse_transform in | ms (median) |",
        "|---|---|",
        *(f"| {k} | {v:.0f} |" for k, v in paths.items()),
    ]
    (RESULTS / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
