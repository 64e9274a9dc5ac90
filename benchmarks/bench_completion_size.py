"""The completion recipe against SoftImpute on larger matrices than ``bench_completion.py``'s.

``bench_completion.py`` compares every library on matrices of at most 1797 x 64
and 600 x 300 entries, where ours comes closest to SoftImpute's time on the
photographs at 50% missing. This script asks how that changes as the matrices
grow: the recommended recipe of that benchmark (``alpha_path`` with
``select_rank=True`` for the plain and the column-centred model, the better
cross-validated score picking, then the final fit at the estimator's
defaults), timed in all, against fancyimpute's ``SoftImpute`` at its defaults
(its shrinkage and stopping rule), in its own virtual environment. Matrices:
scikit-learn's two sample photographs in grayscale at full resolution (427 x
640, k = 40), 50% and 90% missing; rank-10 and rank-15 matrices plus noise of
standard deviation 0.5 (1000 x 800 with 80% missing and 2000 x 1000 with 90%,
k = 40). Times are warm medians of ``--repeats`` runs (SoftImpute's too),
the error the RMSE on the hidden entries.

    python benchmarks/bench_completion_size.py --peer-python /tmp/peers-venv/bin/python

Writes results/completion_size.json and results/completion_size.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import warnings
from pathlib import Path

import numpy as np
from _common import RESULTS, provenance, write_json
from bench_completion import _complete, _model, rmse, timed
from sklearn.datasets import load_sample_image

from sklearn_wsvd import alpha_path

SOFT_IMPUTE = r"""
import contextlib, io, json, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
from fancyimpute import SoftImpute

data = np.load(sys.argv[1])
X, observed, repeats = data["X"], data["observed"], int(data["repeats"])
missing = np.where(observed, X, np.nan)

def run():
    with contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        L = SoftImpute(verbose=False).fit_transform(missing)
        return L, time.perf_counter() - start

run()  # warm
runs = [run() for _ in range(repeats)]
L = runs[-1][0]
print(json.dumps({
    "rmse": float(np.sqrt(np.mean((L - X)[~observed] ** 2))),
    "seconds": float(np.median([s for _, s in runs])),
}))
"""


def cases():
    """(label, data, observed, k) of the four completions."""
    rng = np.random.default_rng(5)
    out = []
    for name in ("china.jpg", "flower.jpg"):
        X = load_sample_image(name).mean(axis=2).astype(np.float64)
        for missing in (0.5, 0.9):
            observed = np.random.default_rng(0).uniform(size=X.shape) >= missing
            label = f"{name} {X.shape[0]}x{X.shape[1]}, {missing:.0%} missing"
            out.append((label, X, observed, 40))
    for m, n, rank, missing in ((1000, 800, 10, 0.8), (2000, 1000, 15, 0.9)):
        X = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
        X += 0.5 * rng.normal(size=X.shape)
        observed = np.random.default_rng(0).uniform(size=X.shape) >= missing
        out.append((f"rank-{rank} + noise {m}x{n}, {missing:.0%} missing", X, observed, 40))
    return out


def ours(X, observed, k, repeats):
    X_missing, W = np.where(observed, X, np.nan), observed.astype(float)

    def recipe():
        paths = {c: alpha_path(_model(k, c), X_missing, W, select_rank=True) for c in (0, 1)}
        centred = max(paths, key=lambda c: paths[c]["best_score"])
        path = paths[centred]
        model = _model(path["best_rank"], centred, path["best_alpha"])
        return _complete(model, X_missing, W), path, centred

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        seconds, (L, path, centred) = timed(recipe, repeats)
    return {
        "rmse": rmse(L, X, observed),
        "seconds": seconds,
        "config": f"rank {path['best_rank']}, {'centred, ' if centred else ''}"
        f"alpha = {path['best_alpha']:.4g}",
    }


def soft_impute(python, X, observed, repeats):
    with tempfile.TemporaryDirectory() as tmp:
        path, script = Path(tmp) / "case.npz", Path(tmp) / "run.py"
        np.savez(path, X=X, observed=observed, repeats=repeats)
        script.write_text(SOFT_IMPUTE)
        out = subprocess.run(
            [python, str(script), str(path)], capture_output=True, text=True, check=True
        )
    return json.loads(out.stdout.strip().splitlines()[-1])


def markdown(results):
    lines = [
        "| case | k | ours: RMSE | ours: s (selection and fit) | configuration "
        "| SoftImpute: RMSE | SoftImpute: s | time ratio (ours / SoftImpute) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in results["cases"]:
        o, s = c["ours"], c["soft_impute"]
        lines.append(
            f"| {c['case']} | {c['rank']} | {o['rmse']:.4g} | {o['seconds']:.2f} | {o['config']} "
            f"| {s['rmse']:.4g} | {s['seconds']:.2f} | {o['seconds'] / s['seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer-python", required=True, help="python with fancyimpute")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = {"provenance": provenance(), "repeats": args.repeats, "cases": []}
    for label, X, observed, k in cases():
        row = {
            "case": label,
            "rank": k,
            "ours": ours(X, observed, k, args.repeats),
            "soft_impute": soft_impute(args.peer_python, X, observed, args.repeats),
        }
        print(row, flush=True)
        results["cases"].append(row)
    write_json(RESULTS / "completion_size.json", results)
    (RESULTS / "completion_size.md").write_text(markdown(results))


if __name__ == "__main__":
    main()
