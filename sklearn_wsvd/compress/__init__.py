"""Compressing neural networks: calibration statistics, methods, low-rank layers, save/load."""

from ._compress import CompressionReport, LayerReport, allocate_ranks, compress_model
from ._targets import find_targets
from .calibration import InputStatistics, LayerStatistics, collect_statistics, merge_statistics
from .importance import fisher_importance
from .io import load_compressed, save_compressed
from .layers import LowRankLinear, merge_lowrank
from .methods import METHODS, register_method

__all__ = [
    "METHODS",
    "CompressionReport",
    "InputStatistics",
    "LayerReport",
    "LayerStatistics",
    "LowRankLinear",
    "allocate_ranks",
    "collect_statistics",
    "compress_model",
    "find_targets",
    "fisher_importance",
    "load_compressed",
    "merge_lowrank",
    "merge_statistics",
    "register_method",
    "save_compressed",
]
