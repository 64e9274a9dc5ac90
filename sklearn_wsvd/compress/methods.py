"""Compression methods: pure functions ``(weight, statistics, rank) -> factors``, in one table.

Every method builds the metric or the weights of its objective from the
calibration statistics and hands the problem to
:class:`~sklearn_wsvd.WeightedTruncatedSVD`, the one place where weighted
low-rank problems are solved. A new method is one function and one table entry.

Weights come in ``nn.Linear`` orientation, ``(out_features, in_features)``; the
factors ``U`` (out x k) and ``V`` (k x in) give ``weight ~ U @ V``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from sklearn.exceptions import ConvergenceWarning

from .._estimator import WeightedTruncatedSVD
from .calibration import LayerStatistics

DEFAULT_DAMPING = 1e-2  # relative to the metric's mean eigenvalue, as GPTQ's percdamp
# The output-gradient moment comes from few loss directions (a C-class loss has C - 1
# per token), so shrinking it towards isotropy is offered (output_damping); 0.1 and 1
# moved accuracy only within noise on two tasks (benchmarks/results/compression-*.md).
OUTPUT_DAMPING = 0.0
ASVD_ALPHA = 0.5


@dataclass(frozen=True)
class Method:
    """A compression method: what it needs from calibration and how it factorises a layer."""

    name: str
    needs: tuple[str, ...]
    factorise: Callable
    summary: str


METHODS: dict[str, Method] = {}


def register_method(name: str, needs: tuple[str, ...], summary: str):
    """Decorator adding ``factorise(weight, stats, rank, **options) -> (U, V, solver)``."""

    def add(fn):
        METHODS[name] = Method(name, tuple(needs), fn, summary)
        return fn

    return add


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(
            f"Unknown method {name!r}; choose one of {', '.join(sorted(METHODS))}."
        ) from None


def fit_factors(X, rank, *, sample_weight=None, sample_metric=None, **params):
    """``X ~ U @ V`` by the estimator; ``U``, ``V`` tensors like ``X``, plus the solver used.

    ``X`` is a layer's weight: a NaN in it is damage, not a missing entry, and is refused.
    """
    if not torch.isfinite(torch.as_tensor(X)).all():
        raise ValueError("The weight matrix contains NaN or infinite values.")
    est = WeightedTruncatedSVD(rank, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        Z = est.fit_transform(X, sample_weight=sample_weight, sample_metric=sample_metric)
    return Z, torch.as_tensor(est.components_).to(Z), est.solver_


def _transposed(weight, rank, importance, **params):
    """Fit ``weight.T`` (in x out), the FWSVD and TFWSVD papers' orientation, and transpose back."""
    Z, C, solver = fit_factors(weight.T, rank, sample_weight=importance.T, **params)
    return C.T, Z.T, solver


@register_method("svd", (), "plain truncated SVD: ignores the data (the baseline)")
def svd(weight, stats, rank, **params):
    return fit_factors(weight, rank, solver="svd", **params)


@register_method(
    "fwsvd", ("fisher",), "FWSVD (Hsu et al. 2022): one Fisher weight per input feature, exact"
)
def fwsvd(weight, stats, rank, **params):
    return _transposed(weight, rank, _fisher(stats, weight), solver="fwsvd", **params)


@register_method(
    "fisher-rank1",
    ("fisher",),
    "the best rank-one model of the diagonal Fisher, exact closed form",
)
def fisher_rank1(weight, stats, rank, **params):
    return _transposed(weight, rank, _fisher(stats, weight), solver="rank1", **params)


@register_method(
    "tfwsvd",
    ("fisher",),
    "TFWSVD (Hua et al. 2022): the element-wise diagonal-Fisher problem, iterative solver",
)
def tfwsvd(weight, stats, rank, solver="auto", **params):
    return _transposed(weight, rank, _fisher(stats, weight), solver=solver, **params)


@register_method(
    "asvd",
    ("inputs",),
    "ASVD (Yuan et al. 2023): input channels scaled by their mean magnitude ** 0.5",
)
def asvd(weight, stats, rank, **params):
    scale = stats.input_mean_abs.to(weight.device) ** ASVD_ALPHA
    return fit_factors(weight, rank, feature_metric=scale.square(), **params)


@register_method(
    "svd-llm",
    ("inputs",),
    "SVD-LLM (Wang et al. 2024): whitened by the input Gram matrix, least output error",
)
def svd_llm(weight, stats, rank, metric_damping=DEFAULT_DAMPING, **params):
    C = stats.input_second_moment.to(weight.device)
    return fit_factors(weight, rank, feature_metric=C, metric_damping=metric_damping, **params)


@register_method(
    "kfac",
    ("inputs", "output_gradients"),
    "Kronecker-factored curvature (GFWSVD): input Gram and output-gradient moment, "
    "least loss estimate",
)
def kfac(
    weight, stats, rank, metric_damping=DEFAULT_DAMPING, output_damping=OUTPUT_DAMPING, **params
):
    C = stats.input_second_moment.to(weight.device)
    G = shrink(stats.output_gradient_moment.to(weight.device), output_damping)
    return fit_factors(
        weight,
        rank,
        sample_metric=G,
        feature_metric=C,
        metric_damping=metric_damping,
        **params,
    )


def shrink(G, amount):
    """``G + amount * mean_eigenvalue(G) * I``: a curvature estimate shrunk towards isotropy."""
    if not amount:
        return G
    eye = torch.eye(G.shape[0], dtype=G.dtype, device=G.device)
    return G + amount * (G.trace() / G.shape[0]) * eye


def _fisher(stats: LayerStatistics, weight):
    # at least float32: a half-precision model's Fisher (1e-12, say) would round to zero
    dtype = torch.promote_types(weight.dtype, torch.float32)
    F = stats.fisher.to(device=weight.device, dtype=dtype)
    if not (F > 0).any():
        raise ValueError(
            "its Fisher importance is zero everywhere (the loss never reaches it); exclude "
            "it or use a method that needs only inputs."
        )
    return F
