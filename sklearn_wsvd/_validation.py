"""Checks of arguments shared by the estimator's and the compression's modules."""

from __future__ import annotations

from numbers import Integral


def is_positive_int(value) -> bool:
    """Whether ``value`` is an integer of at least one (``True`` is not a rank)."""
    return isinstance(value, Integral) and not isinstance(value, bool) and value >= 1


def check_rank(rank, name: str = "rank") -> int:
    """``rank`` as an int, or a ValueError that names it unless it is a positive integer."""
    if not is_positive_int(rank):
        raise ValueError(f"{name} must be a positive integer, got {rank!r}.")
    return int(rank)
