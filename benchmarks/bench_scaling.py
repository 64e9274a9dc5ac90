"""How the solvers scale with size and rank: time per iteration, time to 1%, peak memory.

Square Gaussian matrices with heavy-tailed element-wise weights (squared normals).

- Seconds per iteration: each iterative solver runs a few iterations and the median
  time of one is taken from its history. The exponents are least-squares slopes in
  log-log space, to compare with O(m n k) (ncg, als-cg, em, adam: 2 in the side, 1
  in k) and O(m n k^2) (als: 2 in the side, 2 in k).
- The closed form "svd" (no weights: the default, as a TruncatedSVD user meets it)
  beside scikit-learn's randomized TruncatedSVD of the same matrix.
- Time to 1%: the default "ncg" and the former default "als-cg" each run from the
  rank1 start to tol=1e-7 under a time cap; the best objective either reaches is
  the reference, and each one's time to come within 1% of it is the median of
  three runs (the repeats stop there). Beside it, scikit-learn's randomized
  TruncatedSVD of the same matrix (the unweighted floor), and how far above the
  reference a fit with the default settings (``tol=1e-5``) ends, and one with
  ``tol=1e-6``, with their wall times.
- Peak memory: in a fresh process holding X and W (one side^2 float32 matrix each),
  the resident-set peak (Linux VmHWM, reset just before) during a two-iteration
  fit at the largest size with k=256, minus the resident set before it. The exact
  ALS builds its Gram matrices in chunks with a 1 GiB working set
  (``DEFAULT_MEMORY_BUDGET``).

Every time is warm (one unmeasured run first, or the repeats after a first run)
and the median of three runs (seven for scikit-learn's SVD, whose time varies
more from run to run).

    python benchmarks/bench_scaling.py [--quick] [--memory-only] [--report-only]

``--memory-only`` measures memory again and keeps the timings of results/scaling.json;
``--report-only`` rewrites the table and the plot from it.

Writes results/scaling.json, results/scaling.md and results/scaling.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
from _common import HERE, RESULTS, page_figure, save, write_json
from bench_solvers import sklearn_svd_seconds, time_to
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

SOLVERS = ("ncg", "als-cg", "als", "em", "adam")
TO_ONE_PERCENT = ("ncg", "als-cg")
REPEATS = 3
MEMORY_SOLVERS = ("svd", "rank1", *SOLVERS)
LOAD_AT_START = os.getloadavg()
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
    warmup = 3 if solver == "ncg" else 0  # its first three iterations are als-cg sweeps
    est = WeightedTruncatedSVD(k, solver=solver, max_iter=warmup + iterations, tol=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    steps = np.diff(est.history_["seconds"])[-iterations:]
    if solver == "adam":
        steps = steps / 10  # one adam iteration is ten optimiser steps
    return float(np.median(steps))


def median_seconds(fit, repeats=REPEATS):
    """Median wall time of ``repeats`` runs of ``fit`` after one unmeasured run."""
    fit()
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fit()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds))


def history(X, W, k, solver, cap, target=None):
    """Objective and seconds of a fit to tol=1e-7, stopped at the cap or at ``target``."""
    deadline = time.perf_counter() + cap

    def stop(n_iter, A, B, objective):
        return time.perf_counter() > deadline or (target is not None and objective <= target)

    est = WeightedTruncatedSVD(
        k, solver=solver, tol=1e-7, max_iter=100_000, device="cpu", callback=stop
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        est.fit(X, sample_weight=W)
    return est.history_["objective"], est.history_["seconds"]


def time_to_one_percent(n, k, cap):
    """The solvers' time to 1% of the best objective, the closed forms' times, the default's end."""
    X, W = problem(n)
    out = {
        "sklearn_svd_seconds": sklearn_svd_seconds(X, k),
        "svd_solver_seconds": median_seconds(
            lambda: WeightedTruncatedSVD(k, solver="svd", device="cpu").fit(X)
        ),
    }
    runs = {s: history(X, W, k, s, cap) for s in TO_ONE_PERCENT}
    best = min(float(obj.min()) for obj, _ in runs.values())
    for s, (obj, sec) in runs.items():
        times = [time_to(obj, sec, 1.01 * best)]
        if times[0] is not None:
            times += [
                time_to(*history(X, W, k, s, cap, 1.01 * best), 1.01 * best)
                for _ in range(REPEATS - 1)
            ]
        out[s] = {
            "time_to_1pct": None if None in times else float(np.median(times)),
            "runs": times,
            "final_above_best": float(obj.min()) / best - 1,
        }
    # the default settings, and a tighter tol with all the iterations it needs
    for key, params in (("default", {}), ("tol=1e-6", {"tol": 1e-6, "max_iter": 100_000})):
        start = time.perf_counter()
        default = WeightedTruncatedSVD(k, device="cpu", **params)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            default.fit(X, sample_weight=W)
        out[key] = {
            "solver": default.solver_,
            "seconds": time.perf_counter() - start,
            "n_iter": default.n_iter_,
            "final_above_best": float(default.history_["objective"].min()) / best - 1,
        }
    out["best_objective"] = best
    print(n, k, json.dumps(out), flush=True)
    return out


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
    to_1pct_side = [time_to_one_percent(n, 64, 90.0 if n >= 4096 else 30.0) for n in sides]
    to_1pct_rank = [time_to_one_percent(1024, k, 60.0 if k >= 256 else 30.0) for k in ranks]
    exponents = {
        s: {
            "side (k=64, sides >= 1024)": slope(sides[2:], by_side[s][2:]),
            "rank (1024x1024)": slope(ranks, by_rank[s]),
        }
        for s in SOLVERS
    }
    for s in TO_ONE_PERCENT:
        exponents[f"{s} time to 1%"] = {
            "side (k=64, sides >= 1024)": slope(
                sides[2:], [t[s]["time_to_1pct"] for t in to_1pct_side[2:]]
            ),
            "rank (1024x1024)": slope(ranks, [t[s]["time_to_1pct"] for t in to_1pct_rank]),
        }
    return {
        "repeats": REPEATS,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": LOAD_AT_START,
        "load_average_at_end": os.getloadavg(),
        "sides": sides,
        "ranks": ranks,
        "seconds_per_iteration_by_side_k64": by_side,
        "seconds_per_iteration_by_rank_1024": by_rank,
        "to_1pct_by_side_k64": to_1pct_side,
        "to_1pct_by_rank_1024": to_1pct_rank,
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
    to_side, to_rank = results["to_1pct_by_side_k64"], results["to_1pct_by_rank_1024"]
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
    cases = [(f"{n}x{n}, k=64", t) for n, t in zip(sides, to_side, strict=True)]
    cases += [(f"1024x1024, k={k}", t) for k, t in zip(ranks, to_rank, strict=True)]

    def sec(t):
        return "never" if t is None else f"{t:.3f}"

    lines += [
        "",
        "| problem | sklearn randomized SVD (s) | solver='svd' (s) | ratio "
        "| ncg time to 1% (s) | ratio to SVD | als-cg time to 1% (s) | ratio to SVD "
        "| default's end above best | default fit (s) | tol=1e-6: end above best | fit (s) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, t in cases:
        floor = t["sklearn_svd_seconds"]
        cells = [label, f"{floor:.3f}", f"{t['svd_solver_seconds']:.3f}"]
        cells.append(f"{t['svd_solver_seconds'] / floor:.2f}")
        for s in TO_ONE_PERCENT:
            one = t[s]["time_to_1pct"]
            cells += [sec(one), "-" if one is None else f"{one / floor:.1f}"]
        for key in ("default", "tol=1e-6"):
            fit = t.get(key)  # results before the tol=1e-6 fit was added lack it
            cells += (
                ["-", "-"]
                if fit is None
                else [f"{100 * fit['final_above_best']:.3f}%", f"{fit['seconds']:.2f}"]
            )
        lines.append("| " + " | ".join(cells) + " |")
    for s in TO_ONE_PERCENT:
        e = exponents[f"{s} time to 1%"]
        lines.append(
            f"\n{s} time-to-1% exponents: {e['side (k=64, sides >= 1024)']:.2f} in the side, "
            f"{e['rank (1024x1024)']:.2f} in k."
        )
    (RESULTS / "scaling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))

    fig, axes = page_figure(1, 2, height=3.4)
    axes = axes[0]
    for s in SOLVERS:
        axes[0].loglog(sides, by_side[s], "o-", label=f"{s}, one iteration")
        axes[1].loglog(ranks, by_rank[s], "o-", label=f"{s}, one iteration")
    for ax, x, t in ((axes[0], sides, to_side), (axes[1], ranks, to_rank)):
        for s, style in zip(TO_ONE_PERCENT, ("k^-", "kv--"), strict=True):
            ax.loglog(x, [c[s]["time_to_1pct"] for c in t], style, label=f"{s}, time to 1%")
        ax.loglog(x, [c["sklearn_svd_seconds"] for c in t], "k:", label="sklearn randomized SVD")
        ax.set_xticks(x, [str(v) for v in x], minor=False)
        ax.set_xticks([], minor=True)
        ax.set_ylabel("seconds")
    axes[0].set_xlabel("matrix side (square, k = 64)")
    axes[1].set_xlabel("rank k (1024 x 1024)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, bbox_to_anchor=(0.5, 0))
    fig.tight_layout(rect=(0, 0.16, 1, 1))
    save(fig, RESULTS / "scaling.png")


if __name__ == "__main__":
    main()
