"""Compressing neural networks: calibration statistics, methods, low-rank layers, save/load."""

from ._compress import compress_model
from ._targets import find_targets
from .allocation import allocate_ranks
from .calibration import InputStatistics, LayerStatistics, collect_statistics, merge_statistics
from .evaluation import accuracy, embeddings, perplexity
from .importance import fisher_importance
from .io import load_compressed, save_compressed
from .layers import LowRankLinear, merge_lowrank
from .methods import METHODS, register_method
from .report import CompressionReport, LayerReport

__all__ = [
    "METHODS",
    "CompressionReport",
    "InputStatistics",
    "LayerReport",
    "LayerStatistics",
    "LowRankLinear",
    "accuracy",
    "allocate_ranks",
    "collect_statistics",
    "compress_model",
    "embeddings",
    "find_targets",
    "fisher_importance",
    "load_compressed",
    "merge_lowrank",
    "merge_statistics",
    "perplexity",
    "register_method",
    "save_compressed",
]
