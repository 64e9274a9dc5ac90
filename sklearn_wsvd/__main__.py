"""Command line: ``python -m sklearn_wsvd demo``."""

from __future__ import annotations

import argparse
import sys

import numpy as np


def demo(args) -> int:
    """Weighted vs plain SVD on a bundled matrix with uneven importance."""
    from sklearn.datasets import load_digits

    from . import WeightedTruncatedSVD

    X = load_digits().data[:500]
    rng = np.random.default_rng(0)
    # Heavy-tailed element-wise importance, as squared gradients are.
    W = rng.standard_normal(X.shape) ** 2 * rng.lognormal(sigma=1.0, size=(1, X.shape[1]))
    print(f"digits: X {X.shape}, element-wise weights, rank {args.rank}")
    print(f"{'solver':>8}  {'weighted error / SVD':>20}  {'iterations':>10}  {'seconds':>8}")
    base = None
    for solver in ("svd", "fwsvd", "rank1", "als-cg", "als", "em", "adam"):
        est = WeightedTruncatedSVD(args.rank, solver=solver, random_state=0)
        est.fit(X, sample_weight=W)
        err = est.reconstruction_err_**2
        base = base or err
        seconds = est.history_["seconds"][-1]
        print(f"{solver:>8}  {err / base:>20.4f}  {est.n_iter_:>10}  {seconds:>8.3f}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sklearn_wsvd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help=demo.__doc__)
    p.add_argument("--rank", type=int, default=8)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
