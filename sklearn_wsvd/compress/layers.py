"""The factorised replacement of a linear layer, and the weights of the layers it replaces."""

from __future__ import annotations

import torch
from torch import nn


def is_conv1d(module: nn.Module) -> bool:
    """transformers' GPT-2 ``Conv1D``: a linear map whose weight is stored (in, out)."""
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def is_factorisable(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear) or is_conv1d(module)


def dense_weight(module: nn.Module) -> torch.Tensor:
    """The layer's weight in ``nn.Linear``'s orientation, (out_features, in_features)."""
    return module.weight.T if is_conv1d(module) else module.weight


def linear_shape(module: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of a factorisable layer."""
    return tuple(dense_weight(module).shape)


class LowRankLinear(nn.Module):
    """``y = U (V x) + b``: a rank-``k`` linear map with ``k (in + out)`` weights.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of the input and the output, as for ``nn.Linear``.
    rank : int
        Inner dimension ``k``.
    bias : bool, default=True
        Whether the second map adds a bias.
    device, dtype : optional
        As for ``nn.Linear``.

    Attributes
    ----------
    in_proj : nn.Linear
        ``V``, weight of shape (rank, in_features), no bias.
    out_proj : nn.Linear
        ``U``, weight of shape (out_features, rank), with the bias.

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress import LowRankLinear
    >>> layer = torch.nn.Linear(8, 6)
    >>> low = LowRankLinear.from_linear(layer, rank=6)
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(low(x), layer(x), atol=1e-5))
    True
    """

    def __init__(self, in_features, out_features, rank, bias=True, device=None, dtype=None):
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.in_proj = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.out_proj = nn.Linear(rank, out_features, bias=bias, device=device, dtype=dtype)

    @classmethod
    def from_factors(cls, U, V, bias=None) -> LowRankLinear:
        """Build from ``U`` (out x k), ``V`` (k x in) and an optional bias, keeping their dtype."""
        layer = cls(
            V.shape[1],
            U.shape[0],
            U.shape[1],
            bias=bias is not None,
            device=U.device,
            dtype=U.dtype,
        )
        with torch.no_grad():
            layer.in_proj.weight.copy_(V)
            layer.out_proj.weight.copy_(U)
            if bias is not None:
                layer.out_proj.bias.copy_(bias)
        return layer

    @classmethod
    def from_linear(cls, module: nn.Module, rank: int) -> LowRankLinear:
        """Plain truncated SVD of an ``nn.Linear`` or ``Conv1D`` (exact at full rank)."""
        weight = dense_weight(module).detach()
        U, S, Vt = torch.linalg.svd(weight.double(), full_matrices=False)
        root = S[:rank].sqrt()
        return cls.from_factors(
            (U[:, :rank] * root).to(weight.dtype),
            (root[:, None] * Vt[:rank]).to(weight.dtype),
            module.bias,
        )

    def forward(self, x):
        return self.out_proj(self.in_proj(x))

    def to_dense(self) -> torch.Tensor:
        """The (out_features, in_features) weight ``U V``."""
        return self.out_proj.weight @ self.in_proj.weight

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.out_proj.bias is not None}"
        )
