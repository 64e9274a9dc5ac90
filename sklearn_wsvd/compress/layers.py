"""The factorised replacement of a linear layer, the weights of the layers it replaces, and the way
back to dense layers."""

from __future__ import annotations

import copy
import sys
import warnings

import torch
from torch import nn

from .._validation import check_rank


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
        rank = check_rank(rank)
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

    @property
    def weight(self) -> torch.Tensor:
        """An empty stand-in of the dense weight's shape and dtype, on the ``meta`` device.

        For model code that reads a linear layer's weight for its dtype (T5's
        feed-forward casts its input to ``wo.weight.dtype``, several times per
        pass): free to make, and an error wherever its values are used. The
        dense weight ``U V`` is :meth:`to_dense`. While transformers loads a
        checkpoint it is the loader's stand-in.
        """
        stand_in = self.__dict__.get("_weight_stand_in")
        if stand_in is not None:
            return stand_in
        ref = self.in_proj.weight
        return torch.empty(self.out_features, self.in_features, dtype=ref.dtype, device="meta")

    @property
    def bias(self) -> torch.Tensor | None:
        """The bias (``out_proj.bias``), as ``nn.Linear`` offers it to model code that reads it
        (torch's ``nn.TransformerEncoderLayer`` does, to choose its fast path, which the
        stand-in weight then declines). While transformers loads a checkpoint it is the
        loader's stand-in."""
        stand_in = self.__dict__.get("_bias_stand_in")
        return self.out_proj.bias if stand_in is None else stand_in

    def to_dense(self) -> torch.Tensor:
        """The (out_features, in_features) weight ``U V``."""
        return self.out_proj.weight @ self.in_proj.weight

    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear``: weight ``U V`` and the same bias, device and dtype.

        The product is taken in float32 or wider and then cast, so that a
        half-precision layer loses nothing to the product beyond the final rounding.
        """
        U, V = self.out_proj.weight.detach(), self.in_proj.weight.detach()
        wide = torch.promote_types(U.dtype, torch.float32)
        bias = self.out_proj.bias
        layer = nn.Linear(
            self.in_features,
            self.out_features,
            bias=bias is not None,
            device=U.device,
            dtype=U.dtype,
        )
        with torch.no_grad():
            layer.weight.copy_(U.to(wide) @ V.to(wide))
            if bias is not None:
                layer.bias.copy_(bias)
        layer.train(self.training)
        return layer

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, bias={self.out_proj.bias is not None}"
        )


def set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` of ``model`` (torch's own needs torch >= 2.3)."""
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def merge_lowrank(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Replace every :class:`LowRankLinear` by the dense layer it equals (peft's merge).

    The way back from a compressed model to a dense one, as peft's ``merge_and_unload``.
    Each factorised layer becomes an ``nn.Linear`` with weight ``U V`` and the
    same bias (:meth:`LowRankLinear.to_linear`), except where a transformers model
    had a GPT-2 ``Conv1D`` at that name: there a ``Conv1D`` holding ``(U V).T``
    comes back, so that ``save_pretrained`` writes the original architecture's
    checkpoint (an ``nn.Linear`` would store the transposed shape, which a square
    layer would even load silently). A model loaded through ``from_pretrained``
    also loses its ``sklearn_wsvd_lowrank`` quantization config, and can then be
    saved with ``save_pretrained`` as an ordinary model.

    Parameters
    ----------
    model : nn.Module
        Any model holding :class:`LowRankLinear` layers (none is fine).
    inplace : bool, default=False
        Modify ``model`` itself instead of a deep copy.

    Returns
    -------
    model : nn.Module
        The dense model (``model`` itself when ``inplace``).

    Examples
    --------
    >>> import torch
    >>> from sklearn_wsvd.compress import LowRankLinear, merge_lowrank
    >>> model = torch.nn.Sequential(LowRankLinear.from_linear(torch.nn.Linear(8, 6), rank=2))
    >>> dense = merge_lowrank(model)
    >>> type(dense[0]).__name__, tuple(dense[0].weight.shape)
    ('Linear', (6, 8))
    >>> x = torch.randn(3, 8)
    >>> bool(torch.allclose(dense(x), model(x), atol=1e-6))
    True
    """
    if not inplace:
        model = copy.deepcopy(model)
    conv1d = _conv1d_names(model)
    for name, module in list(model.named_modules()):
        if isinstance(module, LowRankLinear):
            dense = module.to_linear()
            if name in conv1d:
                dense = _linear_to_conv1d(dense)
            set_submodule(model, name, dense)
    from ._format import QUANT_METHOD

    for module in model.modules():
        quantizer = getattr(module, "hf_quantizer", None)
        config = getattr(quantizer, "quantization_config", None)
        if getattr(config, "quant_method", None) == QUANT_METHOD:
            quantizer.remove_quantization_config(module)
    return model


def _conv1d_names(model: nn.Module) -> set[str]:
    """Names at which the architecture of a transformers model inside ``model`` has a ``Conv1D``.

    Read off a skeleton of each outermost transformers model built on the meta
    device (as ``from_pretrained`` does), so it costs no memory.
    """
    # A transformers model in memory means transformers is imported; never import it here.
    modeling = sys.modules.get("transformers.modeling_utils")
    if modeling is None:
        return set()
    PreTrainedModel = modeling.PreTrainedModel
    names = set()
    outer = []
    for prefix, module in model.named_modules():
        if isinstance(module, PreTrainedModel) and not any(
            prefix.startswith(p + ".") or p == "" for p in outer
        ):
            outer.append(prefix)
            inside = [n for n, m in module.named_modules() if isinstance(m, LowRankLinear)]
            if not inside:
                continue
            config = copy.deepcopy(module.config)
            if hasattr(config, "quantization_config"):
                del config.quantization_config
            try:
                with torch.device("meta"):
                    skeleton = type(module)(config)
            except Exception as exc:  # an architecture that cannot be rebuilt from its config
                warnings.warn(
                    f"Could not rebuild {type(module).__name__} from its config ({exc}); its "
                    "low-rank layers become nn.Linear, also where the architecture has a Conv1D.",
                    stacklevel=3,
                )
                continue
            skeleton_modules = dict(skeleton.named_modules())
            for n in inside:
                if is_conv1d(skeleton_modules.get(n, nn.Identity())):
                    names.add(f"{prefix}.{n}" if prefix else n)
    return names


def _linear_to_conv1d(linear: nn.Linear) -> nn.Module:
    from transformers.pytorch_utils import Conv1D

    with torch.device(linear.weight.device):
        conv = Conv1D(linear.out_features, linear.in_features).to(linear.weight.dtype)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.T)
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
        else:
            conv.bias.zero_()
    conv.train(linear.training)
    return conv
