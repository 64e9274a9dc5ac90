"""Peer libraries a user might pick instead, on the same matrices, ranks and machine.

- scikit-learn's TruncatedSVD: the unweighted speed floor (randomized and arpack);
- pymanopt 2.2.1: weighted cost on the fixed-rank manifold, conjugate gradient with
  torch autodiff (the strongest peer we found), started from random (its default)
  and from the same rank1 closed form our solvers start from;
- wpca 0.1 (WPCA and EMPCA with element-wise weights; they take 1/sigma, so
  sqrt(W)): it breaks with scikit-learn >= 1.8 and scipy >= 1.14, so it runs in
  its own virtual environment (``--wpca-python``, made by
  ``python3 -m venv V && V/bin/pip install "scipy<1.14" "scikit-learn<1.8" "numpy<2" wpca``).
  Both centre the data (PCA); our estimator does not (TruncatedSVD-like).

Error is the relative weighted error ``sum W (X - L)**2 / sum W X**2``; times are
wall seconds on the same machine in the same run, warm (every library fits a
small problem first). Ours and scikit-learn's SVD are the median of ``--repeats``
runs; the peers, which take up to minutes, of ``--peer-repeats`` runs. Ours is
the default solver ("auto", which is "ncg" here) with default settings.

    python benchmarks/bench_peers.py [--wpca-python /path/to/venv/bin/python]

Writes results/peers.json and results/peers.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, write_json
from bench_solvers import real_matrices
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import ConvergenceWarning

from sklearn_wsvd import WeightedTruncatedSVD

WPCA_SCRIPT = """
import json, sys, time
import numpy as np
from wpca import WPCA, EMPCA
data = np.load(sys.argv[1]); X, W, k = data["X"], data["W"], int(data["k"])
repeats = int(data["repeats"])
WPCA(n_components=2).fit(X[:50, :20], weights=np.sqrt(W[:50, :20]))  # warm
out = {}
for name, cls, kw in [("wpca WPCA", WPCA, {}), ("wpca EMPCA", EMPCA, {"max_iter": 25})]:
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        model = cls(n_components=k, **kw).fit(X, weights=np.sqrt(W))
        L = model.reconstruct(X, weights=np.sqrt(W))
        seconds.append(time.perf_counter() - start)
    error = float(np.sum(W * (X - L) ** 2) / np.sum(W * X ** 2))
    out[name] = {"error": error, "seconds": float(np.median(seconds))}
print(json.dumps(out))
"""


def relative(X, W, L):
    return float(np.sum(W * (X - L) ** 2) / np.sum(W * X**2))


def median_of(fit, repeats):
    """The last result of ``fit`` and the median of the wall times of ``repeats`` runs."""
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fit()
        seconds.append(time.perf_counter() - start)
    return result, float(np.median(seconds))


def ours(X, W, k, repeats):
    """Error, median seconds, and the (seconds, relative error) history of our default."""

    def fit():
        est = WeightedTruncatedSVD(k, device="cpu")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return est, est.fit_transform(X, sample_weight=W)

    (est, Z), seconds = median_of(fit, repeats)
    total = float(np.sum(W * X**2))
    history = [
        [float(t), float(f / total)]
        for t, f in zip(est.history_["seconds"], est.history_["objective"], strict=True)
    ]
    return relative(X, W, Z @ est.components_), seconds, history


def time_to_reach(history, error):
    """Seconds our default needed to reach ``error`` (None if it never did)."""
    for seconds, value in history:
        if value <= error:
            return seconds
    return None


def pymanopt_fit(X, W, k, iterations, start_from_rank1):
    import pymanopt
    from pymanopt.manifolds import FixedRankEmbedded
    from pymanopt.optimizers import ConjugateGradient

    Xt, Wt = torch.from_numpy(X), torch.from_numpy(W)
    manifold = FixedRankEmbedded(*X.shape, k)

    @pymanopt.function.pytorch(manifold)
    def cost(u, s, vt):
        return torch.sum(Wt * (Xt - (u * s) @ vt) ** 2)

    np.random.seed(0)  # noqa: NPY002 (pymanopt's random start draws from the global state)
    start = time.perf_counter()
    initial = None
    if start_from_rank1:
        est = WeightedTruncatedSVD(k, solver="rank1", dtype="float64").fit(X, sample_weight=W)
        Z = est.fit_transform(X, sample_weight=W)
        u, s, vt = np.linalg.svd(Z @ est.components_, full_matrices=False)
        initial = type(manifold.random_point())(u[:, :k], s[:k], vt[:k])
    problem = pymanopt.Problem(manifold, cost)
    result = ConjugateGradient(max_iterations=iterations, verbosity=0).run(
        problem, initial_point=initial
    )
    u, s, vt = result.point
    return relative(X, W, (u * s) @ vt), time.perf_counter() - start


def wpca_fit(python, X, W, k, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.npz"
        np.savez(path, X=X, W=W, k=k, repeats=repeats)
        script = Path(tmp) / "run.py"
        script.write_text(WPCA_SCRIPT)
        out = subprocess.run(
            [python, str(script), str(path)], capture_output=True, text=True, check=True
        )
    return json.loads(out.stdout)


def cases():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(768, 3072))
    W = rng.normal(size=X.shape) ** 2
    out = [("gaussian 768x3072, W = N(0,1)^2", X, W, 64)]
    for label, (Xr, Wr) in real_matrices().items():
        out.append((label, Xr, Wr, min(Xr.shape) // 4))
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--wpca-python", help="python of a venv where wpca imports")
    parser.add_argument("--repeats", type=int, default=3, help="runs of ours and sklearn's SVD")
    parser.add_argument("--peer-repeats", type=int, default=1, help="runs of each peer")
    args = parser.parse_args()
    load = os.getloadavg()
    warm = np.random.default_rng(1).normal(size=(60, 40))
    ours(warm, np.ones_like(warm), 3, 1)  # load torch's kernels before any timing
    pymanopt_fit(warm, np.ones_like(warm), 3, 2, False)
    rows = []
    for label, X, W, k in cases():
        print(f"{label}, k={k}", flush=True)
        err, sec, history = ours(X, W, k, args.repeats)
        row = {
            "matrix": label,
            "rank": k,
            "results": {"sklearn-wsvd (auto)": [err, sec]},
            "ours_history": history,
        }
        for algorithm in ("randomized", "arpack"):

            def fit(algorithm=algorithm, X=X, k=k):
                tsvd = TruncatedSVD(k, algorithm=algorithm, random_state=0)
                return tsvd.fit_transform(X) @ tsvd.components_

            fit()  # warm
            L, seconds = median_of(fit, args.repeats)
            name = f"sklearn TruncatedSVD ({algorithm}, unweighted)"
            row["results"][name] = [relative(X, W, L), seconds]
        for iterations, rank1 in ((50, False), (50, True), (200, True)):
            name = f"pymanopt CG {iterations} it, {'rank1' if rank1 else 'random'} start"
            runs = [pymanopt_fit(X, W, k, iterations, rank1) for _ in range(args.peer_repeats)]
            row["results"][name] = [runs[-1][0], float(np.median([s for _, s in runs]))]
        if args.wpca_python:
            for name, r in wpca_fit(args.wpca_python, X, W, k, args.peer_repeats).items():
                row["results"][name] = [r["error"], r["seconds"]]
        for name, (e, s) in row["results"].items():
            print(f"  {name:>50}: error {e:.4f}  {s:7.2f} s", flush=True)
        rows.append(row)
    write_json(
        RESULTS / "peers.json",
        {
            "rows": rows,
            "argv": sys.argv[1:],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "load_average_at_start": load,
            "load_average_at_end": os.getloadavg(),
        },
    )
    lines = []
    for row in rows:
        base_e, base_s = row["results"]["sklearn-wsvd (auto)"]
        lines += [
            f"**{row['matrix']}, k = {row['rank']}**",
            "",
            "| method | relative weighted error | seconds | error vs ours "
            "| ours reaches that error in (s) | speed-up of ours |",
            "|---|---|---|---|---|---|",
        ]
        for name, (e, s) in row["results"].items():
            t = time_to_reach(row["ours_history"], e)
            reach = "never" if t is None else f"{t:.2f}"
            speed = "-" if t is None else f"{s / t:.1f}x"
            lines.append(f"| {name} | {e:.4f} | {s:.2f} | {e / base_e:.3f} | {reach} | {speed} |")
        lines.append("")
    (RESULTS / "peers.md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
