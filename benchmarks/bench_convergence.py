"""How close the default fit ends to the best objective known, and what a tighter ``tol`` costs.

The iterative solvers stop once an iteration lowers the objective by at most
``tol`` relative to it and the trend of the last decreases says that what
remains is at most that too (``remaining_decrease``: these problems converge
linearly, slowly where the rate is near one). For each problem this runs the
default estimator at ``tol`` = 1e-4, 1e-5 (the default), 1e-6, 1e-7 and 1e-8
(``max_iter`` 20000), and a reference fit to ``tol=1e-10`` (at most ``--cap``
seconds); the best objective any of them reaches is "the best known". Reported
per ``tol``: how far above it the fit ends, its iterations and its wall time
(warm: one unmeasured run, then the median of ``--repeats``), and whether the
default ``max_iter`` would have stopped it first. One more setting, "1e-05, last
step only", is the rule before 2026-12-07 in the same run: ``remaining_decrease``
patched to zero, so that one small step stops the fit.

Problems: the scaling benchmark's square Gaussian matrices under squared-normal
weights (256 x 256 and 1024 x 1024, k = 64), the solver benchmark's 512 x 2048
Gaussian matrix under heavy-tailed weights (k = 64), sixteen small Gaussian
matrices (64 to 200 rows, a quarter or a tenth of that as the rank) under
squared-normal or log-normal weights, and, where ``finetune_minilm.py`` has
been run, three fine-tuned MiniLM weight matrices under their per-sample Fisher
weights (k = 24 and 96).

    python benchmarks/bench_convergence.py [--cap SECONDS] [--repeats N]

Writes results/convergence.json and results/convergence.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import nullcontext
from unittest import mock

import numpy as np
from _common import RESULTS, finetuned_path, settle, write_json
from bench_scaling import problem
from bench_solvers import real_matrices, synthetic_matrices
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD
from sklearn_wsvd._solvers import DEFAULT_MAX_ITER, _common

TOLS = (1e-4, 1e-5, 1e-6, 1e-7, 1e-8)
DEFAULT = "1e-05"
STEP_ONLY = "1e-05, last step only"
SETTINGS = {**{f"{tol:g}": (tol, False) for tol in TOLS}, STEP_ONLY: (1e-5, True)}


def problems():
    out = {}
    for n in (256, 1024):
        X, W = problem(n)
        out[f"squared-normal W {n}x{n}, k=64"] = (X, W, 64)
    X, W = synthetic_matrices()["gaussian 512x2048, heavy-tailed W"]
    out["heavy-tailed W 512x2048, k=64"] = (X, W, 64)
    for seed in range(4):
        for n, k in ((64, 16), (96, 24), (128, 32), (200, 20)):
            rng = np.random.default_rng(seed)
            X = rng.normal(size=(n, n + 17 * seed))
            if seed % 2:
                label, W = "log-normal", rng.lognormal(sigma=1.5, size=X.shape)
            else:
                label, W = "squared-normal", rng.normal(size=X.shape) ** 2
            out[f"{label} W {n}x{X.shape[1]}, k={k} (seed {seed})"] = (X, W, k)
    if finetuned_path("tweets").exists():
        for label, (X, W) in real_matrices().items():
            for k in (24, 96):
                out[f"{label}, k={k}"] = (X, W, k)
    return out


def fit(X, W, k, step_only=False, **params):
    est = WeightedTruncatedSVD(k, device="cpu", random_state=0, **params)
    patch = mock.patch.object(_common, "remaining_decrease", lambda history: 0.0)
    with warnings.catch_warnings(), patch if step_only else nullcontext():
        warnings.simplefilter("ignore", ConvergenceWarning)
        start = time.perf_counter()
        est.fit(X, sample_weight=W)
        seconds = time.perf_counter() - start
    return float(est.history_["objective"].min()), est.n_iter_, seconds


def bench_problem(X, W, k, cap, repeats):
    deadline = time.perf_counter() + cap
    reference = fit(
        X, W, k, tol=1e-10, max_iter=20_000, callback=lambda *_: time.perf_counter() > deadline
    )
    rows = {}
    for key, (tol, step_only) in SETTINGS.items():
        settle()
        fit(X, W, k, step_only, tol=tol, max_iter=20_000)  # warm
        runs = [fit(X, W, k, step_only, tol=tol, max_iter=20_000) for _ in range(repeats)]
        rows[key] = {
            "objective": runs[0][0],
            "n_iter": runs[0][1],
            "seconds": float(np.median([r[2] for r in runs])),
        }
    best = min(reference[0], *(row["objective"] for row in rows.values()))
    for row in rows.values():
        row["above_best"] = row["objective"] / best - 1
    return {
        "best_objective": best,
        "reference": {"objective": reference[0], "n_iter": reference[1], "seconds": reference[2]},
        "tols": rows,
    }


def markdown(results):
    tols = list(SETTINGS)
    lines = [
        "| problem | " + " | ".join(f"tol={t}: above best, iterations, s" for t in tols) + " |",
        "|---" * (len(tols) + 1) + "|",
    ]
    for label, res in results["problems"].items():
        cells = [
            f"{100 * r['above_best']:.4f}%, {r['n_iter']}, {r['seconds']:.3f}"
            for r in (res["tols"][t] for t in tols)
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| tol | above best: range | within 0.01% | time / default's: range (median) "
        f"| iterations over the default max_iter ({DEFAULT_MAX_ITER['ncg']}) |",
        "|---|---|---|---|---|",
    ]
    for t, s in results["summary"].items():
        lines.append(
            f"| {t} | {100 * s['above_best'][0]:.4f}% to {100 * s['above_best'][1]:.4f}% | "
            f"{s['within_0.01pct']} of {s['problems']} | "
            f"{s['time_ratio'][0]:.2f}x to {s['time_ratio'][1]:.2f}x "
            f"({s['median_time_ratio']:.2f}x) | {s['over_default_max_iter']} |"
        )
    return "\n".join(lines) + "\n"


def summary(results):
    out = {}
    probs = list(results["problems"].values())
    for t in SETTINGS:
        above = [p["tols"][t]["above_best"] for p in probs]
        ratio = [p["tols"][t]["seconds"] / p["tols"][DEFAULT]["seconds"] for p in probs]
        out[t] = {
            "above_best": [min(above), max(above)],
            "within_0.01pct": sum(a <= 1e-4 for a in above),
            "problems": len(above),
            "time_ratio": [min(ratio), max(ratio)],
            "median_time_ratio": float(np.median(ratio)),
            "over_default_max_iter": sum(
                p["tols"][t]["n_iter"] > DEFAULT_MAX_ITER["ncg"] for p in probs
            ),
        }
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--cap", type=float, default=60.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"repeats": args.repeats, "cap_seconds": args.cap, "problems": {}}
    for label, (X, W, k) in problems().items():
        results["problems"][label] = bench_problem(X, W, k, args.cap, args.repeats)
        print(label, results["problems"][label]["tols"], flush=True)
    results["summary"] = summary(results)
    write_json(RESULTS / "convergence.json", results)
    (RESULTS / "convergence.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
