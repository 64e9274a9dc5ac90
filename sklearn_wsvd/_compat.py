"""The one place that imports private scikit-learn helpers."""

from sklearn.base import _fit_context

__all__ = ["_fit_context"]
