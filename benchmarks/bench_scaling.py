"""How the iterative solvers scale: seconds per iteration against size and rank, and peak memory.

Square Gaussian matrices with heavy-tailed element-wise weights. Each solver runs a
few iterations and the median time of one iteration is taken from its history.
The exponents are least-squares slopes in log-log space, to compare against
O(m n k) (als-cg, em, adam: exponent 2 in the side, 1 in k) and O(m n k^2) (als:
2 in the side, 2 in k). Peak memory is the resident-set high-water mark of a
fresh process running two iterations at the largest size, minus that of the same
process before the solve.

    python benchmarks/bench_scaling.py [--quick]

Writes results/scaling.json, results/scaling.md and results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import warnings

import numpy as np
from _common import HERE, RESULTS, write_json
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

SOLVERS = ("als-cg", "als", "em", "adam")
MEMORY_SCRIPT = """
import resource, sys, warnings
import numpy as np
from sklearn_wsvd import WeightedTruncatedSVD
solver, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(0)
X = rng.normal(size=(n, n)).astype(np.float32)
W = (rng.normal(size=(n, n)) ** 2).astype(np.float32)
WeightedTruncatedSVD(2, solver="svd").fit(X[:50, :50])  # warm up torch's allocator
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
warnings.simplefilter("ignore")
WeightedTruncatedSVD(k, solver=solver, max_iter=2, tol=0).fit(X, sample_weight=W)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) / 1024)
"""


def seconds_per_iteration(n, k, solver, iterations=3):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(n, n)).astype(np.float32)
    W = (rng.normal(size=(n, n)) ** 2).astype(np.float32)
    est = WeightedTruncatedSVD(k, solver=solver, max_iter=iterations, tol=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    steps = np.diff(est.history_["seconds"])[-iterations:]
    if solver == "adam":
        steps = steps / 10  # one adam iteration is ten optimiser steps
    return float(np.median(steps))


def slope(x, y):
    return float(np.polyfit(np.log(x), np.log(y), 1)[0])


def peak_memory_mib(solver, n, k):
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, solver, str(n), str(k)],
        capture_output=True,
        text=True,
        check=True,
        cwd=HERE,
    )
    return float(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sides = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096]
    ranks = [16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256]
    by_side = {s: [seconds_per_iteration(n, 64, s) for n in sides] for s in SOLVERS}
    print("by side", json.dumps(by_side), flush=True)
    by_rank = {s: [seconds_per_iteration(1024, k, s) for k in ranks] for s in SOLVERS}
    print("by rank", json.dumps(by_rank), flush=True)
    big = sides[-1]
    memory = {s: peak_memory_mib(s, big, 256) for s in SOLVERS}
    print("memory", memory, flush=True)
    exponents = {
        s: {
            "side (k=64, sides >= 1024)": slope(sides[2:], by_side[s][2:]),
            "rank (1024x1024)": slope(ranks, by_rank[s]),
        }
        for s in SOLVERS
    }
    write_json(
        RESULTS / "scaling.json",
        {
            "sides": sides,
            "ranks": ranks,
            "seconds_per_iteration_by_side_k64": by_side,
            "seconds_per_iteration_by_rank_1024": by_rank,
            "exponents": exponents,
            "peak_memory_mib": {"size": f"{big}x{big}, k=256, float32", **memory},
        },
    )
    matrix_mib = big * big * 4 / 2**20
    lines = [
        "| solver | s/iteration at "
        f"{big}x{big}, k=64 | exponent in side | exponent in k | peak memory at {big}x{big}, "
        f"k=256 (MiB; one matrix is {matrix_mib:.0f}) |",
        "|---|---|---|---|---|",
    ]
    for s in SOLVERS:
        lines.append(
            f"| {s} | {by_side[s][-1]:.3f} | {exponents[s]['side (k=64, sides >= 1024)']:.2f} | "
            f"{exponents[s]['rank (1024x1024)']:.2f} | {memory[s]:.0f} |"
        )
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in SOLVERS:
        axes[0].loglog(sides, by_side[s], "o-", label=s)
        axes[1].loglog(ranks, by_rank[s], "o-", label=s)
    axes[0].set_xlabel("matrix side (square, k = 64)")
    axes[1].set_xlabel("rank k (1024 x 1024)")
    for ax in axes:
        ax.set_ylabel("seconds per iteration")
        ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
