"""Importance-weighted low-rank approximation with a scikit-learn interface."""

from ._estimator import WeightedTruncatedSVD, weighted_low_rank

__version__ = "0.1.0"

__all__ = ["WeightedTruncatedSVD", "weighted_low_rank", "__version__"]
