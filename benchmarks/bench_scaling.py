"""How the solvers scale with size and rank: time per iteration, time to 1%, peak memory.

Square Gaussian matrices with heavy-tailed element-wise weights (squared normals).

- Seconds per iteration: each iterative solver runs a few iterations and the median
  time of one is taken from its history. The exponents are least-squares slopes in
  log-log space, to compare with O(m n k) (als-cg, em, adam: 2 in the side, 1 in k)
  and O(m n k^2) (als: 2 in the side, 2 in k).
- Time to 1%: the default solver (als-cg from the rank1 start) runs to tol=1e-7; the
  time at which its objective first comes within 1% of its final objective, beside
  scikit-learn's randomized TruncatedSVD of the same matrix (the unweighted floor).
- Peak memory: in a fresh process holding X and W (one side^2 float32 matrix each),
  the resident-set peak (Linux VmHWM, reset just before) during a two-iteration
  fit at the largest size with k=256, minus the resident set before it. The exact
  ALS builds its Gram matrices in chunks with a 1 GiB working set
  (``DEFAULT_MEMORY_BUDGET``).

    python benchmarks/bench_scaling.py [--quick] [--memory-only] [--report-only]

``--memory-only`` measures memory again and keeps the timings of results/scaling.json;
``--report-only`` rewrites the table and the plot from it.

Writes results/scaling.json, results/scaling.md and results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings

import numpy as np
from _common import HERE, RESULTS, write_json
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

SOLVERS = ("als-cg", "als", "em", "adam")
MEMORY_SOLVERS = ("svd", "rank1", *SOLVERS)
MEMORY_SCRIPT = """
import sys, warnings
from bench_scaling import problem
from sklearn_wsvd import WeightedTruncatedSVD

def mib(key):  # VmRSS (now) or VmHWM (peak since the last reset), in MiB
    return next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith(key)) / 1024

solver, n, k = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
X, W = problem(n)
WeightedTruncatedSVD(2, solver="svd").fit(X[:50, :50])  # load torch's kernels
open("/proc/self/clear_refs", "w").write("5")  # reset the peak to the current RSS
before = mib("VmRSS")
warnings.simplefilter("ignore")
WeightedTruncatedSVD(k, solver=solver, max_iter=2, tol=0).fit(X, sample_weight=W)
print(mib("VmHWM") - before)
"""


def problem(n):
    """X and heavy-tailed weights, float32 without float64 temporaries."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal(size=(n, n), dtype=np.float32)
    W = np.square(rng.standard_normal(size=(n, n), dtype=np.float32))
    return X, W


def seconds_per_iteration(n, k, solver, iterations=3):
    X, W = problem(n)
    est = WeightedTruncatedSVD(k, solver=solver, max_iter=iterations, tol=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    steps = np.diff(est.history_["seconds"])[-iterations:]
    if solver == "adam":
        steps = steps / 10  # one adam iteration is ten optimiser steps
    return float(np.median(steps))


def time_to_one_percent(n, k):
    """(seconds for als-cg to come within 1% of its converged objective, sklearn SVD seconds)."""
    X, W = problem(n)
    start = time.perf_counter()
    TruncatedSVD(k, algorithm="randomized", random_state=0).fit(X)
    svd_seconds = time.perf_counter() - start
    est = WeightedTruncatedSVD(k, tol=1e-7, max_iter=500, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    objective, seconds = est.history_["objective"], est.history_["seconds"]
    hit = np.flatnonzero(objective <= 1.01 * objective.min())[0]
    return float(seconds[hit]), svd_seconds


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


def measure_timings(sides, ranks):
    by_side = {s: [seconds_per_iteration(n, 64, s) for n in sides] for s in SOLVERS}
    print("by side", json.dumps(by_side), flush=True)
    by_rank = {s: [seconds_per_iteration(1024, k, s) for k in ranks] for s in SOLVERS}
    print("by rank", json.dumps(by_rank), flush=True)
    to_1pct_side = [time_to_one_percent(n, 64) for n in sides]
    to_1pct_rank = [time_to_one_percent(1024, k) for k in ranks]
    print("time to 1% (als-cg, sklearn svd)", to_1pct_side, to_1pct_rank, flush=True)
    exponents = {
        s: {
            "side (k=64, sides >= 1024)": slope(sides[2:], by_side[s][2:]),
            "rank (1024x1024)": slope(ranks, by_rank[s]),
        }
        for s in SOLVERS
    }
    exponents["als-cg time to 1%"] = {
        "side (k=64, sides >= 1024)": slope(sides[2:], [t for t, _ in to_1pct_side[2:]]),
        "rank (1024x1024)": slope(ranks, [t for t, _ in to_1pct_rank]),
    }
    return {
        "sides": sides,
        "ranks": ranks,
        "seconds_per_iteration_by_side_k64": by_side,
        "seconds_per_iteration_by_rank_1024": by_rank,
        "als_cg_time_to_1pct_and_sklearn_svd_seconds_by_side_k64": to_1pct_side,
        "als_cg_time_to_1pct_and_sklearn_svd_seconds_by_rank_1024": to_1pct_rank,
        "exponents": exponents,
    }


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--memory-only", action="store_true")
    parser.add_argument("--report-only", action="store_true", help="redraw from the JSON")
    args = parser.parse_args()
    if args.report_only:
        return report(json.loads((RESULTS / "scaling.json").read_text()))
    if args.memory_only:
        results = json.loads((RESULTS / "scaling.json").read_text())
        results["timings_provenance"] = results.pop("provenance")
        results.pop("peak_memory_mib")
    else:
        sides = [256, 512, 1024, 2048] if args.quick else [256, 512, 1024, 2048, 4096]
        ranks = [16, 32, 64, 128] if args.quick else [16, 32, 64, 128, 256]
        results = measure_timings(sides, ranks)
    big = results["sides"][-1]
    memory = {s: peak_memory_mib(s, big, 256) for s in MEMORY_SOLVERS}
    print("memory", memory, flush=True)
    results["peak_memory_mib"] = {"size": f"{big}x{big}, k=256, float32", **memory}
    write_json(RESULTS / "scaling.json", results)
    report(results)


def report(results):
    sides, ranks, exponents = results["sides"], results["ranks"], results["exponents"]
    by_side = results["seconds_per_iteration_by_side_k64"]
    by_rank = results["seconds_per_iteration_by_rank_1024"]
    to_1pct_side = results["als_cg_time_to_1pct_and_sklearn_svd_seconds_by_side_k64"]
    to_1pct_rank = results["als_cg_time_to_1pct_and_sklearn_svd_seconds_by_rank_1024"]
    memory = results["peak_memory_mib"]
    big = sides[-1]
    matrix_mib = big * big * 4 / 2**20
    lines = [
        f"| solver | s/iteration at {big}x{big}, k=64 | exponent in side | exponent in k "
        f"| peak memory at {big}x{big}, k=256 (MiB; X is {matrix_mib:.0f}) |",
        "|---|---|---|---|---|",
    ]
    for s in MEMORY_SOLVERS:
        if s in SOLVERS:
            e = exponents[s]
            cells = f"{by_side[s][-1]:.3f} | {e['side (k=64, sides >= 1024)']:.2f} | "
            cells += f"{e['rank (1024x1024)']:.2f}"
        else:
            cells = "closed form | | "
        lines.append(f"| {s} | {cells} | {memory[s]:.0f} |")
    lines += [
        "",
        "| problem | als-cg time to 1% (s) | sklearn randomized SVD (s) | ratio |",
        "|---|---|---|---|",
    ]
    cases = [(f"{n}x{n}, k=64", t) for n, t in zip(sides, to_1pct_side, strict=True)]
    cases += [(f"1024x1024, k={k}", t) for k, t in zip(ranks, to_1pct_rank, strict=True)]
    for label, (ours, floor) in cases:
        lines.append(f"| {label} | {ours:.3f} | {floor:.3f} | {ours / floor:.2f} |")
    e = exponents["als-cg time to 1%"]
    lines.append(
        f"\nals-cg time-to-1% exponents: {e['side (k=64, sides >= 1024)']:.2f} in the side, "
        f"{e['rank (1024x1024)']:.2f} in k."
    )
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for s in SOLVERS:
        axes[0].loglog(sides, by_side[s], "o-", label=f"{s}, one iteration")
        axes[1].loglog(ranks, by_rank[s], "o-", label=f"{s}, one iteration")
    for ax, x, t in ((axes[0], sides, to_1pct_side), (axes[1], ranks, to_1pct_rank)):
        ax.loglog(x, [a for a, _ in t], "k^-", label="als-cg, time to 1%")
        ax.loglog(x, [b for _, b in t], "k:", label="sklearn randomized SVD")
        ax.set_xticks(x, [str(v) for v in x], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_ylabel("seconds")
        ax.legend(fontsize=8)
    axes[0].set_xlabel("matrix side (square, k = 64)")
    axes[1].set_xlabel("rank k (1024 x 1024)")
    fig.tight_layout()
    fig.savefig(RESULTS / "scaling.png", dpi=110)


if __name__ == "__main__":
    main()
