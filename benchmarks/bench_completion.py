"""Matrix completion against the peers: error on the hidden entries, wall time.

Cases: scikit-learn's digits (1797 x 64, k = 20), its sample images ``china.jpg``
and ``flower.jpg`` in grayscale, every other pixel (214 x 320, values 0-255,
k = 40), and a rank-8 matrix plus noise of standard deviation 0.5 (600 x 300,
k = 30), with 50% and 90% of the entries hidden at random (seed 0). What counts is
the RMSE on the hidden entries.

- Ours: the default (``alpha=0``, the rank-k fit of the observed entries), and the
  ridge chosen by cross-validation over hidden entries: :func:`alpha_path` with
  its defaults (16 penalties from ``alpha_max`` down, one fold of five of the
  observed entries held out, stopped 2 penalties past the best) and
  ``select_rank=True`` (the rank chosen too, at most k: the recommended recipe),
  for the plain model and for one after a ``StandardScaler(with_std=False)``
  (column means of the observed entries), the better cross-validated score
  picking; then at rank k alone, with all five folds (``max_folds=None``), and
  with the rank chosen instead by one path per rank among those the peers'
  oracles choose from (5, 10, 20 and k). The paths' fits stop at alpha_path's
  default ``tol=3e-4`` and the final fit, from the estimator's ``init``, at the
  estimator's default ``tol=1e-5``; one row runs the first's paths at ``1e-5``
  too (``tol=None``). The selection time is reported apart from the time of the
  final fit. For the first row, the iterations of ``refit=True``'s fit (which
  starts from the path's fit) are recorded against the final fit's. Then the
  same choice (at rank k) made by scikit-learn's ``GridSearchCV`` (row folds,
  ``HiddenEntryScorer``, centring and the same 16 penalties in the grid, its
  fits at ``tol=3e-4`` as the paths'), whose selection is timed once.
- fancyimpute 0.7.0 ``SoftImpute`` (nuclear-norm shrinkage, its default
  ``max singular value / 50``) and ``IterativeSVD``; wpca 0.1 ``WPCA`` and
  ``EMPCA``, which centre the columns: all in a virtual environment of their own
  (``--peer-python``; they need scikit-learn < 1.8, scipy < 1.14, numpy < 2).
- pymanopt 2.2.1: squared error of the observed entries on the manifold of
  rank-k matrices, conjugate gradient (200 iterations at most) with torch autodiff.

Each peer runs at its defaults with our rank (``setting: default``) and, to be
generous to it, at the best of a small grid of its own parameters as judged by
the hidden entries themselves (``oracle``: a choice no user can make, since the
hidden entries are unknown). Every configuration reported is timed warm (one run
first) and repeated: the median of ``--repeats`` runs, all in the same run of
this script.

    python benchmarks/bench_completion.py --peer-python V/bin/python

Writes results/completion.json and results/completion.md.
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
import sklearn
import torch
from _common import RESULTS, settle, write_json
from sklearn.datasets import load_digits, load_sample_image
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from sklearn_wsvd import HiddenEntryScorer, WeightedTruncatedSVD, alpha_path
from sklearn_wsvd.model_selection import _fold_in  # every entry of a fitted completion

PEER_SCRIPT = r"""
import contextlib, io, json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
from fancyimpute import IterativeSVD, SoftImpute
from wpca import EMPCA, WPCA

data = np.load(sys.argv[1])
X, observed, k, repeats = data["X"], data["observed"], int(data["k"]), int(data["repeats"])
ranks = sorted({5, 10, 20, k})
missing = np.where(observed, X, np.nan)
zeroed, weights = np.where(observed, X, 0.0), observed.astype(float)
top = np.linalg.norm(zeroed, ord=2)

def soft(shrink):
    return lambda: SoftImpute(shrinkage_value=shrink, verbose=False).fit_transform(missing)

def wpca(cls, rank, **kw):
    return lambda: cls(n_components=rank, **kw).fit(zeroed, weights=weights).reconstruct(
        zeroed, weights=weights)

configs = {"SoftImpute": {"default": soft(None)}, "IterativeSVD": {}, "WPCA": {}, "EMPCA": {}}
for d in (10, 20, 100, 200):
    configs["SoftImpute"][f"shrinkage = max singular value / {d}"] = soft(top / d)
for r in ranks:
    svd = lambda r=r: IterativeSVD(rank=r, verbose=False).fit_transform(missing)
    configs["IterativeSVD"]["default" if r == 10 else f"rank {r}"] = svd
    configs["WPCA"]["default" if r == k else f"rank {r}"] = wpca(WPCA, r)
    for reg in (1.0, 10.0, 100.0):
        configs["WPCA"][f"rank {r}, regularization {reg:g}"] = wpca(WPCA, r, regularization=reg)
    configs["EMPCA"]["default" if r == k else f"rank {r}"] = wpca(EMPCA, r, max_iter=25)

def run(fit):
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        L = fit()
        return L, time.perf_counter() - start

def rmse(L):
    return float(np.sqrt(np.mean((L - X)[~observed] ** 2)))

out = {}
for peer, grid in configs.items():
    scores = {}
    for name, fit in grid.items():
        try:
            scores[name] = rmse(run(fit)[0])
        except Exception as exc:  # wpca's solves fail on underdetermined rows
            scores[name] = f"failed: {type(exc).__name__}: {exc}"
    finite = {n: s for n, s in scores.items() if isinstance(s, float) and np.isfinite(s)}
    best = min(finite, key=finite.get) if finite else None
    rows = {}
    for setting, name in (("default", "default"), ("oracle", best)):
        if name is None or not isinstance(scores[name], float):
            rows[setting] = {"config": name, "rmse": scores.get(name), "seconds": None}
            continue
        try:
            run(grid[name])  # warm
            seconds = float(np.median([run(grid[name])[1] for _ in range(repeats)]))
        except Exception as exc:  # EMPCA's random start fails now and then
            seconds = f"a timed run failed: {type(exc).__name__}"
        rows[setting] = {"config": name, "rmse": scores[name], "seconds": seconds}
    out[peer] = {"rows": rows, "grid": scores}
print(json.dumps(out))
"""


def cases():
    """(label, data, observed, rank) of every case: four matrices, 50% and 90% missing."""

    def photo(name):  # grayscale, every other pixel
        return load_sample_image(name).mean(axis=2)[::2, ::2].astype(np.float64)

    rng = np.random.default_rng(1)
    low_rank = rng.normal(size=(600, 8)) @ rng.normal(size=(8, 300))
    matrices = {
        "digits": (load_digits().data.astype(np.float64), 20),
        "image": (photo("china.jpg"), 40),
        "flower image": (photo("flower.jpg"), 40),
        "rank-8 + noise": (low_rank + 0.5 * rng.normal(size=low_rank.shape), 30),
    }
    out = []
    for name, (X, rank) in matrices.items():
        for missing in (0.5, 0.9):
            observed = np.random.default_rng(0).uniform(size=X.shape) >= missing
            label = f"{name} {X.shape[0]}x{X.shape[1]}, {missing:.0%} missing"
            out.append((label, X, observed, rank))
    return out


def rmse(L, X, observed):
    return float(np.sqrt(np.mean((L - X)[~observed] ** 2)))


def timed(fit, repeats):
    """Median seconds of ``repeats`` runs after a warm-up, and the last result."""
    settle()  # after another library's run
    fit()
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fit()
        seconds.append(time.perf_counter() - start)
    return float(np.median(seconds)), result


def _model(k, centred, alpha=0.0):
    est = WeightedTruncatedSVD(k, alpha=alpha, device="cpu", random_state=0)
    return make_pipeline(StandardScaler(with_std=False), est) if centred else est


def _last(model):
    return model[-1] if hasattr(model, "steps") else model


def _complete(model, X_missing, W):
    """Fit and reconstruct every entry."""
    prefix = "weightedtruncatedsvd__" if hasattr(model, "steps") else ""
    model.fit(X_missing, **{f"{prefix}sample_weight": W})
    return _fold_in(model, X_missing, W)


def ours(X, observed, k, repeats):
    X_missing, W = np.where(observed, X, np.nan), observed.astype(float)
    rows = {}
    seconds, L = timed(lambda: _complete(_model(k, False), X_missing, W), repeats)
    rows["default"] = {"config": "alpha = 0", "rmse": rmse(L, X, observed), "seconds": seconds}

    ranks = sorted({5, 10, 20, k})  # the ranks the peers' oracles choose from
    variants = {  # row -> (ranks, keywords of alpha_path)
        "alpha_path, select_rank": ([k], {"select_rank": True}),
        "alpha_path": ([k], {}),
        "alpha_path, 5 folds": ([k], {"max_folds": None}),
        f"alpha_path, rank in {ranks}": (ranks, {}),
        "alpha_path, select_rank, paths at tol=1e-5": ([k], {"select_rank": True, "tol": None}),
    }
    for row, (row_ranks, keywords) in variants.items():

        def select(row_ranks=row_ranks, keywords=keywords):
            paths = {
                (r, c): alpha_path(_model(r, c), X_missing, W, **keywords)
                for r in row_ranks
                for c in (False, True)
            }
            return max(paths, key=lambda rc: paths[rc]["best_score"]), paths

        selection_seconds, ((rank, centred), paths) = timed(select, repeats)
        alpha, best_rank = paths[rank, centred]["best_alpha"], paths[rank, centred]["best_rank"]
        model = _model(best_rank, centred, alpha)
        seconds, L = timed(lambda model=model: _complete(model, X_missing, W), repeats)
        alpha_max = paths[rank, centred]["alphas"][0]
        config = f"{'centred, ' if centred else ''}alpha = {alpha:.4g} (max {alpha_max:.4g})"
        rows[row] = {
            "config": config if best_rank == k else f"rank {best_rank}, {config}",
            "rmse": rmse(L, X, observed),
            "seconds": seconds,
            "selection_seconds": selection_seconds,
            "n_iter": _last(model).n_iter_,
            "paths": {
                f"rank {r}, {'centred' if c else 'plain'}": {
                    "alphas": [float(v) for v in p["alphas"]],
                    "cv_rmse": [float(v) for v in np.sqrt(-p["mean_test_score"])],
                }
                for (r, c), p in paths.items()
            },
        }
        if row == "alpha_path, select_rank":  # refit=True: from the path's fit
            refit = alpha_path(_model(k, centred), X_missing, W, select_rank=True, refit=True)
            rows[row]["refit"] = {
                "n_iter": _last(refit["estimator"]).n_iter_,
                "rmse": rmse(_fold_in(refit["estimator"], X_missing, W), X, observed),
            }
    # The same choice by scikit-learn's GridSearchCV over the same penalties (row
    # folds, HiddenEntryScorer), timed once: the route that works with any search.
    grid = {
        "standardscaler": ["passthrough", StandardScaler(with_std=False)],
        "weightedtruncatedsvd__alpha": list(np.geomspace(alpha_max, 1e-3 * alpha_max, 16)),
    }
    start = time.perf_counter()
    with sklearn.config_context(enable_metadata_routing=True):
        pipe = make_pipeline(
            StandardScaler(with_std=False).set_fit_request(sample_weight=False),
            WeightedTruncatedSVD(k, tol=3e-4, device="cpu", random_state=0).set_fit_request(
                sample_weight=True
            ),
        )
        search = GridSearchCV(
            pipe, grid, scoring=HiddenEntryScorer(), cv=KFold(5, shuffle=True, random_state=0)
        )
        search.fit(X_missing, sample_weight=W)
    grid_seconds = time.perf_counter() - start
    centred_g = search.best_params_["standardscaler"] != "passthrough"
    alpha_g = search.best_params_["weightedtruncatedsvd__alpha"]
    seconds, L = timed(lambda: _complete(_model(k, centred_g, alpha_g), X_missing, W), repeats)
    rows["GridSearchCV"] = {
        "config": f"{'centred, ' if centred_g else ''}alpha = {alpha_g:.4g}",
        "rmse": rmse(L, X, observed),
        "seconds": seconds,
        "selection_seconds": grid_seconds,
    }
    return rows


def pymanopt_completion(X, observed, rank, max_iterations=200):
    import pymanopt
    from pymanopt.manifolds import FixedRankEmbedded
    from pymanopt.optimizers import ConjugateGradient

    Xt = torch.from_numpy(np.where(observed, X, 0.0))
    Wt = torch.from_numpy(observed.astype(np.float64))
    manifold = FixedRankEmbedded(*X.shape, rank)

    @pymanopt.function.pytorch(manifold)
    def cost(u, s, vt):
        return torch.sum(Wt * (Xt - (u * s) @ vt) ** 2)

    np.random.seed(0)  # noqa: NPY002 (pymanopt's random start draws from the global state)
    problem = pymanopt.Problem(manifold, cost)
    result = ConjugateGradient(max_iterations=max_iterations, verbosity=0).run(problem)
    u, s, vt = result.point
    return (u * s) @ vt


def pymanopt_rows(X, observed, k, repeats):
    grid = {}
    for r in sorted({5, 10, 20, k}):
        grid["default" if r == k else f"rank {r}"] = rmse(
            pymanopt_completion(X, observed, r), X, observed
        )
    best = min(grid, key=grid.get)
    rows = {}
    for setting, name in (("default", "default"), ("oracle", best)):
        rank = k if name == "default" else int(name.split()[1])
        seconds, _ = timed(lambda rank=rank: pymanopt_completion(X, observed, rank), repeats)
        rows[setting] = {
            "config": name if name != "default" else f"rank {k}",
            "rmse": grid[name],
            "seconds": seconds,
        }
    return {"rows": rows, "grid": grid}


def peers(python, X, observed, k, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case.npz"
        np.savez(path, X=X, observed=observed, k=k, repeats=repeats)
        script = Path(tmp) / "run.py"
        script.write_text(PEER_SCRIPT)
        out = subprocess.run(
            [python, str(script), str(path)], capture_output=True, text=True, check=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def peer_versions(python):
    code = (
        "import importlib.metadata as m, json; print(json.dumps({p: m.version(p) for p in "
        "['fancyimpute', 'wpca', 'numpy', 'scipy', 'scikit-learn']}))"
    )
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def summary(results):
    lines = [
        "| case | ours: RMSE | ours: fit s (+ selection s) | ours, rank k: RMSE (selection s) "
        "| ours, rank k, 5 folds | ours, one path per rank | best peer at its defaults "
        "| best peer, oracle setting | SoftImpute (default): RMSE, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def brief(row):
        return "-" if row is None else f"{row['rmse']:.3f} ({row['selection_seconds']:.2f})"

    for case in results["cases"]:
        methods = case["methods"]
        ours_row = methods["sklearn-wsvd"]["alpha_path, select_rank"]
        fixed = brief(methods["sklearn-wsvd"].get("alpha_path"))
        folds = brief(methods["sklearn-wsvd"].get("alpha_path, 5 folds"))
        ranked = [r for n, r in methods["sklearn-wsvd"].items() if n.startswith("alpha_path, rank")]
        ranked = brief(ranked[0] if ranked else None)

        def best(setting, methods=methods):
            rows = [
                (r[setting]["rmse"], m)
                for m, r in methods.items()
                if m != "sklearn-wsvd" and isinstance(r[setting]["rmse"], float)
            ]
            value, name = min(rows)
            return f"{value:.3f} ({name})"

        soft = methods.get("fancyimpute SoftImpute", {}).get("default")
        soft = "-" if soft is None else f"{soft['rmse']:.3f}, {soft['seconds']:.3f}"
        lines.append(
            f"| {case['case']} | {ours_row['rmse']:.3f} | {ours_row['seconds']:.3f} "
            f"(+ {ours_row['selection_seconds']:.2f}) | {fixed} | {folds} | {ranked} "
            f"| {best('default')} "
            f"| {best('oracle')} | {soft} |"
        )
    return "\n".join(lines)


def markdown(results):
    lines = [summary(results), ""]
    for case in results["cases"]:
        lines += [
            f"**{case['case']}, k = {case['rank']}**",
            "",
            "| method | setting | hidden-entry RMSE | seconds (median) | configuration |",
            "|---|---|---|---|---|",
        ]
        for method, rows in case["methods"].items():
            for setting, r in rows.items():
                rm = r["rmse"]
                rm = f"{rm:.3f}" if isinstance(rm, float) and np.isfinite(rm) else f"{rm}"
                sec = f"{r['seconds']:.3f}" if isinstance(r["seconds"], float) else "-"
                if "selection_seconds" in r:
                    sec += f" (+ {r['selection_seconds']:.2f} selection)"
                lines.append(f"| {method} | {setting} | {rm} | {sec} | {r['config']} |")
        first = case["methods"]["sklearn-wsvd"]["alpha_path, select_rank"]
        if "refit" in first:
            lines += [
                "",
                f"alpha_path's `refit=True` (from the path's fit): {first['refit']['n_iter']} "
                f"iterations, hidden-entry RMSE {first['refit']['rmse']:.3f}; the final fit "
                f"from the estimator's init: {first['n_iter']} iterations.",
            ]
        lines.append("")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--peer-python", help="python of a venv with fancyimpute and wpca")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="run the cases whose label contains this")
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads((RESULTS / "completion.json").read_text())
        (RESULTS / "completion.md").write_text(markdown(results))
        return
    warnings.simplefilter("ignore")  # underdetermined rows at alpha=0, pymanopt strides
    results = {
        "argv": sys.argv[1:],
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "load_average_at_start": os.getloadavg(),
        "repeats": args.repeats,
        "cases": [],
    }
    if args.peer_python:
        results["peer_versions"] = peer_versions(args.peer_python)
    import pymanopt

    results["pymanopt"] = pymanopt.__version__
    for label, X, observed, k in cases():
        if args.only not in label:
            continue
        print(label, flush=True)
        load = os.getloadavg()
        methods = {"sklearn-wsvd": ours(X, observed, k, args.repeats)}
        if args.peer_python:
            for peer, out in peers(args.peer_python, X, observed, k, args.repeats).items():
                methods[
                    f"fancyimpute {peer}" if "Soft" in peer or "Iter" in peer else f"wpca {peer}"
                ] = out["rows"]
                methods[f"_grid {peer}"] = out["grid"]
        manopt = pymanopt_rows(X, observed, k, args.repeats)
        methods["pymanopt CG"] = manopt["rows"]
        methods["_grid pymanopt"] = manopt["grid"]
        grids = {m[6:]: methods.pop(m) for m in list(methods) if m.startswith("_grid ")}
        for method, rows in methods.items():
            for setting, r in rows.items():
                print(f"  {method:>24} {setting:>15}: {r['rmse']}  {r['seconds']}", flush=True)
        results["cases"].append(
            {
                "case": label,
                "rank": k,
                "load_average_before": load,
                "load_average_after": os.getloadavg(),
                "methods": methods,
                "grids": grids,
            }
        )
    write_json(RESULTS / "completion.json", results)
    (RESULTS / "completion.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
