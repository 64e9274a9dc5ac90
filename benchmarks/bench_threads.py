"""How much numpy's BLAS threads slow the torch operations that follow them.

numpy (OpenBLAS) and torch (OpenMP) each keep a pool of threads. After a numpy
matrix product, numpy's threads spin for a while before they sleep; on a machine
with few cores, torch operations started meanwhile wait for a core. Measured here:

- twenty small torch operations (element-wise products and sums of a 1797 x 64
  float32 matrix, the size of the digits), alone, right after a numpy matrix
  product, and after the product and a 50 ms pause;
- a loop of the kind a user writes: sixteen warm-started fits of the digits with
  50% of the entries missing (rank 20, ``tol=1e-4``) along decreasing penalties,
  each followed by its reconstruction ``Z @ components_``, taken by
  ``inverse_transform`` (a torch product), by a numpy product, and by a numpy
  product with numpy's BLAS limited to one thread (threadpoolctl).

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
from threadpoolctl import threadpool_limits

from sklearn_wsvd import WeightedTruncatedSVD


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
    alphas = np.linalg.norm(np.where(observed, X, 0.0), 2) * np.logspace(-0.5, -2.5, 16)
    warnings.simplefilter("ignore")

    def fits(reconstruct, blas_threads=None):
        with threadpool_limits(blas_threads, user_api="blas"):
            init = None
            for alpha in alphas:
                est = WeightedTruncatedSVD(20, alpha=alpha, init=init, tol=1e-4, device="cpu")
                Z = est.fit_transform(X_missing, sample_weight=W)
                reconstruct(est, Z)
                init = (Z, est.components_)

    loops = {
        "inverse_transform (torch)": lambda: fits(lambda est, Z: est.inverse_transform(Z)),
        "a numpy product": lambda: fits(lambda est, Z: Z @ est.components_),
        "a numpy product, its BLAS limited to one thread": lambda: fits(
            lambda est, Z: Z @ est.components_, 1
        ),
    }
    loops = {
        name: median_ms(run, lambda: None, max(3, args.repeats // 5)) for name, run in loops.items()
    }
    write_json(RESULTS / "threads.json", {"torch_ops_ms": ops, "fit_loop_ms": loops})
    lines = [
        "| twenty small torch operations | ms (median) |",
        "|---|---|",
        *(f"| {k} | {v:.2f} |" for k, v in ops.items()),
        "",
        "| sixteen fits, digits 50% missing, each reconstructed by | ms (median) |",
        "|---|---|",
        *(f"| {k} | {v:.0f} |" for k, v in loops.items()),
    ]
    (RESULTS / "threads.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
