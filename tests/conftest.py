import numpy as np
import pytest
import torch

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available"),
    ),
]


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def low_rank_plus_noise(rng, m=40, n=30, rank=4, noise=0.1):
    """A matrix with a clear spectral gap after ``rank``."""
    X = rng.normal(size=(m, rank)) @ rng.normal(size=(rank, n))
    return X + noise * rng.normal(size=(m, n))


def weighted_objective(X, W, L):
    return float(np.sum(W * np.where(W > 0, X - L, 0.0) ** 2))


def tail_energy(M, k):
    """Eckart-Young: the best rank-k error of M is the sum of its squared tail singular values."""
    s = np.linalg.svd(M, compute_uv=False)
    return float(np.sum(s[k:] ** 2))
