"""Importance-weighted low-rank approximation with a scikit-learn interface."""

from ._estimator import WeightedTruncatedSVD, weighted_low_rank
from .model_selection import HiddenEntryScorer, alpha_path

__version__ = "0.1.0"

__all__ = [
    "HiddenEntryScorer",
    "WeightedTruncatedSVD",
    "alpha_path",
    "weighted_low_rank",
    "__version__",
]
