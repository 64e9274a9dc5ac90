"""Compressing neural networks: Fisher importance, low-rank layers, whole models, save/load."""

from ._compress import CompressionReport, LayerReport, allocate_ranks, compress_model
from ._targets import find_targets
from .importance import fisher_importance
from .io import load_compressed, save_compressed
from .layers import LowRankLinear

__all__ = [
    "CompressionReport",
    "LayerReport",
    "LowRankLinear",
    "allocate_ranks",
    "compress_model",
    "find_targets",
    "fisher_importance",
    "load_compressed",
    "save_compressed",
]
