"""Compressed models through transformers' ``from_pretrained``: a registered quantization method.

A directory written by :func:`~sklearn_wsvd.compress.save_compressed` for a
Hugging Face model records ``quantization_config = {"quant_method":
"sklearn_wsvd_lowrank", "layers": ...}`` in its ``config.json``. Importing this
module registers that method with transformers, the way quantisation libraries
plug in: the config class, and an ``HfQuantizer`` that swaps the factorised
layers in as :class:`LowRankLinear` (on the meta device, before any weight is
read) so that ``from_pretrained`` of the model's class, the ``AutoModel*``
classes, ``pipeline`` and sentence-transformers all build the compressed model.

Without the registration transformers only warns about the unknown method and
would fill the factorised layers with random weights. So the weights are not
stored under the names transformers looks for by default (``model.safetensors``):
a loader without this module stops with "no file named model.safetensors" after
transformers' "Unknown quantization type, got sklearn_wsvd_lowrank" warning, and
the quantizer points transformers at the real file (``config.transformers_weights``)
from the one hook that sees the config before the weights are looked up.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
import transformers
from torch import nn
from transformers.quantizers.base import HfQuantizer
from transformers.utils.quantization_config import QuantizationConfigMixin

from ._format import (
    FORMAT,
    QUANT_METHOD,
    WEIGHTS,
    _short,
    aliases,
    check_model,
    check_quantization_config,
    check_tensors,
    lowrank_shapes,
    read_header,
)
from .layers import LowRankLinear, merge_lowrank, set_submodule

_FLOAT_DTYPES = (None, torch.float16, torch.bfloat16, torch.float32, torch.float64)


class LowRankConfig(QuantizationConfigMixin):
    """The ``quantization_config`` of a compressed model: its factorised layers.

    Parameters
    ----------
    layers : dict of str to dict
        ``{name: {"in_features", "out_features", "rank", "bias"}}`` per
        factorised layer, named as in the saved model.
    format : str
        Version of the on-disk format.
    """

    def __init__(self, layers=None, format=FORMAT, quant_method=QUANT_METHOD, **unknown):
        self.quant_method = quant_method
        self.format = format
        self.layers = {} if layers is None else layers
        # Kept so that the check in the quantizer names them, instead of dropping them here.
        self.__dict__.update(unknown)


class LowRankQuantizer(HfQuantizer):
    """Builds the factorised layers of a compressed checkpoint before its weights load."""

    # Loading only: from_pretrained does not compress a dense checkpoint.
    requires_calibration = True

    def update_attn_implementation(self, config):
        # The only hook that sees the model's config before transformers resolves the
        # weight files (get_hf_quantizer): point it at the low-rank file.
        config.transformers_weights = WEIGHTS
        return super().update_attn_implementation(config)

    def _process_model_before_weight_loading(self, model, checkpoint_files=None, **kwargs):
        if not checkpoint_files or Path(checkpoint_files[0]).name != WEIGHTS:
            raise ValueError(
                f"{QUANT_METHOD} models load from their directory, whose weights are in {WEIGHTS}; "
                f"got {checkpoint_files}."
            )
        weights = Path(checkpoint_files[0])
        source = weights.parent / "config.json"
        saved = check_quantization_config(self.quantization_config.to_dict(), source)
        header, _, _ = in_model_names(model, read_header(weights))  # converted: not ours
        names = _as_model_names(model, saved, header)
        layers = {name: saved[names[name]] for name in names}
        found = check_model(model, layers, source)
        groups = aliases(found)
        check_tensors(
            header,
            [
                ([f"{names[n]}.{key}" for n in group], torch.empty(shape, device="meta"))
                for group in groups
                for key, shape in lowrank_shapes(layers[group[0]]).items()
            ],
            weights,
            exhaustive=False,
        )
        for group in groups:
            spec, old = layers[group[0]], found[group[0]]
            ref = next(iter(old.parameters()))
            layer = LowRankLinear(
                spec["in_features"],
                spec["out_features"],
                spec["rank"],
                bias=spec["bias"],
                device=ref.device,
                dtype=ref.dtype,
            )
            # transformers initialises every module after loading, and many architectures
            # read a child's weight by name there (GPT-2's c_proj, T5's wo): give the layer
            # inert stand-ins, marked as initialised, until the weights are in.
            for attr, key in (("weight", "_weight_stand_in"), ("bias", "_bias_stand_in")):
                tensor = getattr(old, attr, None)
                if tensor is not None:
                    stand_in = torch.empty_like(tensor, device="meta")
                    stand_in._is_hf_initialized = True
                    layer.__dict__[key] = stand_in
            for name in group:
                set_submodule(model, name, layer)
        return model

    def _process_model_after_weight_loading(self, model, **kwargs):
        for module in model.modules():
            if isinstance(module, LowRankLinear):
                module.__dict__.pop("_weight_stand_in", None)
                module.__dict__.pop("_bias_stand_in", None)
        return model

    def _dequantize(self, model, dtype=None):
        return merge_lowrank(model, inplace=True)

    def is_serializable(self, *args, **kwargs):
        warnings.warn(
            "save_pretrained would write a checkpoint that loaders without sklearn_wsvd read as a "
            "model with random layers: save it with sklearn_wsvd.compress.save_compressed, or "
            "call model.dequantize() (sklearn_wsvd.compress.merge_lowrank) for a dense model.",
            stacklevel=2,
        )
        return False

    @property
    def is_trainable(self):
        return True

    @property
    def is_qat_trainable(self):
        # The factors are ordinary parameters: the whole model can be fine-tuned.
        return True

    @property
    def is_compileable(self):
        return True


def in_model_names(model, header: dict) -> tuple[dict, dict[str, str], list[str]]:
    """A checkpoint's ``header`` keyed by the names in ``model``, each one's key in the file,
    and the keys that transformers converts rather than renames.

    transformers 5 renames the weights of many architectures between the module
    tree and the checkpoint: ViT's module ``vit.layers.0.attention.k_proj`` is
    saved as ``vit.encoder.layer.0.attention.attention.key``, as its original
    checkpoints name it. ``save_pretrained`` writes the checkpoint's names and
    ``from_pretrained`` renames them back, as this does with the same mapping.
    Tensors that a converter fuses or splits on loading (a mixture of experts'
    per-expert weights, a fused query-key-value projection) are left out of the
    first two and listed third. Before transformers 5, checkpoints name the modules.
    """
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightConverter, rename_source_key
    except ImportError:
        return header, {key: key for key in header}, []
    transforms = get_model_conversion_mapping(model)
    converters = [t for t in transforms if isinstance(t, WeightConverter)]
    renamings = [t for t in transforms if not isinstance(t, WeightConverter)]
    keys, converted = {}, []
    for key in header:
        name, converter = rename_source_key(key, renamings, converters)
        if converter is None:
            keys[name] = key
        else:
            converted.append(key)
    return {name: header[key] for name, key in keys.items()}, keys, converted


def _as_model_names(model, layers: dict, header: dict) -> dict[str, str]:
    """``{name in model: name in checkpoint}``, across the base-model prefix.

    A checkpoint of a model with a head (``bert.encoder...``) loads into the bare
    model (``encoder...``, the head's layers dropped) and the other way round, as
    transformers does for the weights themselves.
    """
    prefix = getattr(model, "base_model_prefix", "")
    in_checkpoint = bool(prefix) and any(key.startswith(prefix + ".") for key in header)
    in_model = bool(prefix) and isinstance(getattr(model, prefix, None), nn.Module)
    if in_checkpoint and not in_model:
        return {
            name.removeprefix(prefix + "."): name
            for name in layers
            if name.startswith(prefix + ".")
        }
    if in_model and not in_checkpoint:
        return {f"{prefix}.{name}": name for name in layers}
    return {name: name for name in layers}


def model_class(name, source) -> type:
    """The transformers model class called ``name``: only a ``PreTrainedModel`` subclass."""
    if isinstance(name, str) and name.isidentifier() and not name.startswith("_"):
        try:
            cls = getattr(transformers, name)
        except (AttributeError, ImportError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls
    raise ValueError(
        f"{source}: transformers_class {_short(name)} is not a transformers model class."
    )


def build_model(cls, path: Path, *, meta: bool) -> nn.Module:
    """``cls`` from the ``config.json`` in ``path``, with random weights or on the meta device."""
    source = path / "config.json"
    try:
        config = cls.config_class.from_pretrained(path)
    except Exception as exc:  # transformers' own errors for a missing or malformed config
        raise ValueError(f"{source}: not a {cls.config_class.__name__} ({exc}).") from exc
    # The in-memory model is an ordinary one, as compress_model returns it.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    dtype = getattr(config, "dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, dtype)
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"{source}: dtype {_short(dtype)} is not a floating-point type.")
    try:
        if meta:
            with torch.device("meta"):
                return cls._from_config(config)
        return cls._from_config(config)
    except Exception as exc:  # a config whose values the architecture rejects
        raise ValueError(f"{source}: cannot build {cls.__name__} from it ({exc}).") from exc


def _register() -> None:
    from transformers.quantizers import auto

    if QUANT_METHOD not in auto.AUTO_QUANTIZATION_CONFIG_MAPPING:
        auto.register_quantization_config(QUANT_METHOD)(LowRankConfig)
    if QUANT_METHOD not in auto.AUTO_QUANTIZER_MAPPING:
        auto.register_quantizer(QUANT_METHOD)(LowRankQuantizer)


_register()
