"""Choosing the rank with the penalty (``alpha_path(select_rank=True)``) off the benchmark.

``bench_completion.py`` compares the libraries on eight cases; this script asks,
on fourteen other completions, whether choosing the rank too is a good default
or only suits those eight: the hidden-entry RMSE and selection time of
``alpha_path`` at rank k (the penalty alone chosen) against ``select_rank=True``
(rank at most k), both for the plain and the column-centred model, the better
cross-validated score picking, exactly as in ``bench_completion.py``. Matrices:
scikit-learn's wine (178 x 13, k = 8) and breast-cancer (569 x 30, k = 15)
data standardised, a rank-20 matrix plus unit noise (400 x 400, k = 40), two
300 x 200 matrices of full rank whose singular values fall as ``i**-1`` and
``i**-0.5`` (k = 40), the digits at k = 40 and the flower photograph at k = 80
(the benchmark's cases use 20 and 40); each with 30% and 70% of the entries
hidden at random. The paths' fits stop at alpha_path's default ``tol=3e-4``,
the final fits at the estimator's default ``1e-5``; times are warm medians of
``--repeats`` runs.

It also checks ``alpha_path``'s ``patience`` (how many penalties past the best
score a path goes on) on these fourteen completions and the eight of
``bench_completion.py``: whether stopping one, two or three penalties past the
best chooses the penalty, rank and centring that the full path (``patience=None``)
chooses, with and without ``select_rank``, and whether each full path's score
falls at every penalty past its best.

And it compares settings of the paths' fits on the same 22 completions, with
``select_rank=True``: their ``tol`` (1e-4, 3e-4: the default, and 1e-3), and
whether a fit that stalls looks for components to revive before it stops (as
the estimator's own fits do; alpha_path's leave that to the next penalty's
start), against the previous default (``tol=1e-4`` with that revival): each
the recipe's choice of penalty, rank and centring, its hidden-entry RMSE and
its selection time (warm, median of ``--repeats``, the settings alternating
within each case).

    python benchmarks/bench_rank_selection.py

Writes results/rank_selection.json and results/rank_selection.md.
"""

from __future__ import annotations

import argparse
import time
import warnings
from contextlib import nullcontext
from functools import partial
from unittest import mock

import numpy as np
from _common import RESULTS, write_json
from bench_completion import _complete, _model, cases, rmse, timed
from sklearn.datasets import load_breast_cancer, load_digits, load_sample_image, load_wine
from sklearn.preprocessing import StandardScaler

from sklearn_wsvd import WeightedTruncatedSVD, alpha_path


def matrices():
    rng = np.random.default_rng(5)

    def spectrum(m, n, power):  # full rank, singular values 100 i**-power
        U, _ = np.linalg.qr(rng.normal(size=(m, n)))
        V, _ = np.linalg.qr(rng.normal(size=(n, n)))
        return (U * 100.0 * np.arange(1, n + 1) ** -power) @ V.T

    flower = load_sample_image("flower.jpg").mean(axis=2)[::2, ::2]
    return {
        "wine, standardised 178x13": (StandardScaler().fit_transform(load_wine().data), 8),
        "breast cancer, standardised 569x30": (
            StandardScaler().fit_transform(load_breast_cancer().data),
            15,
        ),
        "rank 20 + unit noise 400x400": (
            rng.normal(size=(400, 20)) @ rng.normal(size=(20, 400)) + rng.normal(size=(400, 400)),
            40,
        ),
        "singular values i^-1, 300x200": (spectrum(300, 200, 1.0), 40),
        "singular values i^-0.5, 300x200": (spectrum(300, 200, 0.5), 40),
        "digits 1797x64": (load_digits().data.astype(np.float64), 40),
        "flower image 214x320": (flower.astype(np.float64), 80),
    }


def completions():
    """(label, data, observed, k) of the fourteen completions."""
    out = []
    for name, (X, k) in matrices().items():
        for missing in (0.3, 0.7):
            observed = np.random.default_rng(0).uniform(size=X.shape) >= missing
            out.append((f"{name}, {missing:.0%} missing", X, observed, k))
    return out


def choose(X_missing, W, k, select_rank, patience=2, paths=None, **options):
    """(centred, rank, alpha) chosen; ``paths`` (a dict) receives the two paths."""
    paths = {} if paths is None else paths
    for c in (False, True):
        paths[c] = alpha_path(
            _model(k, c), X_missing, W, select_rank=select_rank, patience=patience, **options
        )
    centred = max(paths, key=lambda c: paths[c]["best_score"])
    return centred, paths[centred]["best_rank"], paths[centred]["best_alpha"]


PATIENCES = (1, 2, 3)


def patience_check():
    """Choices with each patience against the full path's, on all 22 completions."""
    rows = []
    for label, X, observed, k in completions() + cases():
        X_missing, W = np.where(observed, X, np.nan), observed.astype(float)
        row = {"case": label, "falls_past_best": True}
        for select_rank in (False, True):
            full = {}
            reference = choose(X_missing, W, k, select_rank, patience=None, paths=full)
            for path in full.values():
                mean = path["mean_test_score"][int(np.argmax(path["mean_test_score"])) :]
                row["falls_past_best"] &= bool(np.all(np.diff(mean) < 0))
            for patience in PATIENCES:
                chosen = choose(X_missing, W, k, select_rank, patience=patience)
                row[f"patience {patience}, select_rank={select_rank}"] = chosen == reference
        rows.append(row)
        print(row, flush=True)
    return rows


# (tol of the paths' fits, whether a fit that stalls looks for components to revive)
SETTINGS = {
    "tol=1e-4, revival at the stall (until 2026-12-07)": (1e-4, True),
    "tol=1e-4": (1e-4, False),
    "tol=3e-4 (default)": (3e-4, False),
    "tol=1e-3": (1e-3, False),
    "tol=3e-4, revival at the stall": (3e-4, True),
}


def stall_revival(on):
    """The paths' fits revive components at a stall (``on``), as the estimator's do."""
    if not on:
        return nullcontext()
    solve = WeightedTruncatedSVD._solve

    def _solve(self, *args, **options):
        return solve(self, *args, **{**options, "revive_at_stall": True})

    return mock.patch.object(WeightedTruncatedSVD, "_solve", _solve)


def settings_check(repeats):
    """Choices, errors and selection times of the paths' settings on all 22 completions."""
    rows = []
    for label, X, observed, k in completions() + cases():
        X_missing, W = np.where(observed, X, np.nan), observed.astype(float)
        problem = X_missing, W, k, True  # select_rank
        seconds, choices = {name: [] for name in SETTINGS}, {}
        for _ in range(1 + repeats):  # warm, then alternating against drift of the machine
            for name, (tol, revival) in SETTINGS.items():
                start = time.perf_counter()
                with stall_revival(revival):
                    choices[name] = choose(*problem, tol=tol)
                seconds[name].append(time.perf_counter() - start)
        row = {"case": label}
        for name, (centred, rank, alpha) in choices.items():
            L = _complete(_model(rank, centred, alpha), X_missing, W)
            row[name] = {
                "choice": [bool(centred), int(rank), float(alpha)],
                "rmse": rmse(L, X, observed),
                "selection_seconds": float(np.median(seconds[name][1:])),
            }
        rows.append(row)
        print(row, flush=True)
    return rows


def settings_lines(rows):
    reference = next(iter(SETTINGS))
    lines = [
        "",
        f"Settings of the paths' fits on {len(rows)} completions (select_rank=True), against "
        f"{reference}: the same choice of penalty, rank and centring; where not, the change of "
        "the hidden-entry RMSE; the selection time:",
        "",
        "| setting | same choice | RMSE change where not (min, max) | time (median, min-max) |",
        "|---|---|---|---|",
    ]
    for name in SETTINGS:
        same = [row[name]["choice"] == row[reference]["choice"] for row in rows]
        changes = [
            row[name]["rmse"] / row[reference]["rmse"] - 1
            for row, s in zip(rows, same, strict=True)
            if not s
        ]
        ratios = [
            row[name]["selection_seconds"] / row[reference]["selection_seconds"] for row in rows
        ]
        spread = f"{min(changes):+.2%}, {max(changes):+.2%}" if changes else "-"
        lines.append(
            f"| {name} | {sum(same)} of {len(rows)} | {spread} | {np.median(ratios):.2f}x "
            f"({min(ratios):.2f}-{max(ratios):.2f}x) |"
        )
    return lines


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    results = {"repeats": args.repeats, "cases": []}
    lines = [
        "| case | k | rank k: RMSE (selection s) | rank chosen: RMSE (selection s) "
        "| rank | ratio |",
        "|---|---|---|---|---|---|",
    ]
    for label, X, observed, k in completions():
        X_missing, W = np.where(observed, X, np.nan), observed.astype(float)
        row = {"case": label, "k": k}
        for key, select_rank in (("rank_k", False), ("rank_chosen", True)):
            fit = partial(choose, X_missing, W, k, select_rank)
            seconds, (centred, rank, alpha) = timed(fit, args.repeats)
            L = _complete(_model(rank, centred, alpha), X_missing, W)
            row[key] = {
                "rmse": rmse(L, X, observed),
                "selection_seconds": seconds,
                "rank": rank,
                "centred": centred,
                "alpha": alpha,
            }
        a, b = row["rank_k"], row["rank_chosen"]
        lines.append(
            f"| {row['case']} | {k} | {a['rmse']:.4g} ({a['selection_seconds']:.2f}) "
            f"| {b['rmse']:.4g} ({b['selection_seconds']:.2f}) | {b['rank']} "
            f"| {b['rmse'] / a['rmse']:.3f} |"
        )
        print(lines[-1], flush=True)
        results["cases"].append(row)
    results["patience"] = patience_check()
    n = len(results["patience"])
    falls = sum(row["falls_past_best"] for row in results["patience"])
    lines += [
        "",
        f"Patience of ``alpha_path`` on {n} completions (these and bench_completion.py's; "
        f"every full path's score falls at each penalty past its best in {falls} of {n}):",
        "",
        "| patience | select_rank | same choice as the full path |",
        "|---|---|---|",
    ]
    for patience in PATIENCES:
        for select_rank in (False, True):
            key = f"patience {patience}, select_rank={select_rank}"
            same = sum(row[key] for row in results["patience"])
            lines.append(f"| {patience} | {select_rank} | {same} of {n} |")
    results["settings"] = settings_check(args.repeats)
    lines += settings_lines(results["settings"])
    write_json(RESULTS / "rank_selection.json", results)
    (RESULTS / "rank_selection.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
