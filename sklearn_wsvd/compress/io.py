"""Saving and loading compressed models: safetensors weights, a JSON of the factorised layers
and their provenance, and for Hugging Face models a directory that transformers loads itself."""

from __future__ import annotations

import contextlib
import functools
import importlib.metadata
import importlib.util
import inspect
import json
import platform
from datetime import datetime, timezone
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_model
from torch import nn

from ._format import (
    FORMAT,
    META,
    QUANT_METHOD,
    WEIGHT_FILES,
    WEIGHTS,
    _listed,
    aliases,
    check_model,
    check_tensors,
    expected_tensors,
    lowrank_shapes,
    read_header,
    read_meta,
)
from .layers import LowRankLinear, set_submodule

if importlib.util.find_spec("transformers") is not None:
    from . import _hf  # registers the quantization method with transformers
else:  # transformers is optional: plain torch models save and load without it
    _hf = None

# What transformers loads when it finds no weights where config.json points: none
# of them may sit beside the low-rank weights (see _hf.py).
_DEFAULT_WEIGHTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def stale_weights(directory) -> list[str]:
    """The files in ``directory`` that transformers would load instead of the low-rank weights."""
    return [name for name in _DEFAULT_WEIGHTS if (Path(directory) / name).exists()]


_VERSIONS = ("torch", "safetensors", "transformers", "sentence-transformers", "numpy")


def save_compressed(
    model: nn.Module,
    path,
    *,
    report=None,
    base_model: str | None = None,
    method: str | None = None,
) -> Path:
    """Write ``model`` to the directory ``path``; nothing is pickled.

    ``compression.json`` holds the factorised layers (name, shape, rank) and the
    provenance (base model, method, report, package versions, date);
    ``lowrank-model.safetensors`` the weights. A Hugging Face model is written by
    its own ``save_pretrained`` (``config.json`` naming its class, generation
    config) with the layers recorded as the ``sklearn_wsvd_lowrank`` quantization
    method, so that once ``sklearn_wsvd.compress`` is imported the usual
    ``from_pretrained`` of its class, ``AutoModel*`` and ``pipeline`` build the
    compressed model; without it they stop with an error instead of loading
    random layers. A ``SentenceTransformer`` is written by its own ``save``
    (modules, pooling, tokenizer) around such a transformers model, and loads with
    ``SentenceTransformer(path)``.

    Parameters
    ----------
    model : nn.Module
        A model holding :class:`LowRankLinear` layers: any torch model, a
        transformers ``PreTrainedModel`` or a ``SentenceTransformer``.
    path : str or Path
        The directory, created if needed. It must not hold other weights that
        transformers would load instead (``pytorch_model.bin``, a sharded index).
    report : object with a ``to_dict()`` method, optional
        What :func:`compress_model` reported, stored as JSON in the provenance.
    base_model : str, optional
        Name or path of the uncompressed model; defaults to the ``name_or_path``
        of a transformers model's config.
    method : str, optional
        How the model was compressed (``"fwsvd"``, say), for the provenance.

    Returns
    -------
    path : Path

    Examples
    --------
    >>> import tempfile, torch
    >>> from sklearn_wsvd.compress import LowRankLinear, load_compressed, save_compressed
    >>> small = torch.nn.Sequential(LowRankLinear.from_linear(torch.nn.Linear(8, 6), rank=2))
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     _ = save_compressed(small, tmp, method="svd")
    ...     loaded = load_compressed(tmp, model=torch.nn.Sequential(torch.nn.Linear(8, 6)))
    >>> type(loaded[0]).__name__, loaded[0].rank
    ('LowRankLinear', 2)
    """
    path = Path(path)
    inner, st_index = _transformer_of(model)
    layers = {
        name: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "rank": m.rank,
            "bias": m.out_proj.bias is not None,
        }
        # Every name of a shared module, so that loading shares it again.
        for name, m in inner.named_modules(remove_duplicate=False)
        if isinstance(m, LowRankLinear)
    }
    meta = {
        "format": FORMAT,
        "layers": layers,
        "provenance": _provenance(model, inner, report, base_model, method),
    }
    path.mkdir(parents=True, exist_ok=True)
    if _hf is None or not isinstance(inner, _hf.transformers.PreTrainedModel):
        save_model(model, str(path / WEIGHTS), metadata={"format": "pt"}, force_contiguous=True)
        (path / META).write_text(json.dumps(meta, indent=2) + "\n")
        return path
    meta["transformers_class"] = type(inner).__name__
    with _saved_as_is(inner):
        if st_index is None:
            target = path
            # One file (never shards), so that it can be moved out of transformers' way.
            inner.save_pretrained(path, max_shard_size=1 << 60)
        else:
            model.save(str(path))
            modules = json.loads((path / "modules.json").read_text())
            target = path / next(m["path"] for m in modules if m["idx"] == st_index)
    written = target / "model.safetensors"
    if not written.is_file():
        raise ValueError(
            f"{target}: transformers wrote a sharded checkpoint, which save_compressed cannot "
            "store yet."
        )
    written.replace(target / WEIGHTS)
    unsaved = _converted_layers(inner, layers, target / WEIGHTS)
    if unsaved:
        (target / WEIGHTS).unlink()
        raise ValueError(
            f"transformers saves a {type(inner).__name__} with some weights fused or split, "
            f"and that conversion mixes the factors of the layers {_listed(unsaved)}: "
            "leave them uncompressed (exclude_modules) to save this model."
        )
    stale = stale_weights(target)
    if stale:
        raise ValueError(
            f"{target} also holds {stale}, which transformers would load instead of the "
            "compressed weights: remove them, or save to an empty directory."
        )
    config_file = target / "config.json"
    config = json.loads(config_file.read_text())
    config["quantization_config"] = {
        "quant_method": QUANT_METHOD,
        "format": FORMAT,
        "layers": layers,
    }
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    (target / META).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def _converted_layers(model, layers, weights) -> list[str]:
    """The factorised layers whose tensors ``weights`` does not hold under their names
    (after transformers' renaming): those that its checkpoint conversion fused or split."""
    header, _, _ = _hf.in_model_names(model, read_header(weights))
    groups = aliases({name: model.get_submodule(name) for name in layers})
    return [
        names[0]
        for names in groups
        if not all(
            any(f"{name}.{key}" in header for name in names)
            for key in lowrank_shapes(layers[names[0]])
        )
    ]


def load_compressed(path, model: nn.Module | None = None, device=None) -> nn.Module:
    """Load what :func:`save_compressed` wrote, trusting nothing in the files.

    The JSON, the layers (they exist in the model, are linear, have the stated
    shape and a rank within it) and every tensor's name, shape and dtype (from the
    safetensors header) are checked before any weight is read or module touched:
    on any problem ``model`` is left as it was and a ``ValueError`` names the file.

    Parameters
    ----------
    path : str or Path
        The directory.
    model : nn.Module, optional
        A model of the original (uncompressed) architecture, whose factorised
        layers are replaced and whose weights are all loaded, in place. Not needed
        for a Hugging Face model, which is rebuilt (in eval mode) from the saved
        ``config.json`` as the class recorded in ``compression.json``, if that is
        a transformers model class; for a saved ``SentenceTransformer`` that is
        its transformers model (``SentenceTransformer(path)`` loads the whole).
    device : str or torch.device, optional
        Move the loaded model there; None keeps each weight where the model has it.

    Returns
    -------
    model : nn.Module
    """
    path = Path(path)
    meta_file = path / META
    meta = read_meta(meta_file)
    weights = path / WEIGHT_FILES[meta["format"]]
    header = read_header(weights)
    layers = meta["layers"]
    if model is None:
        if "transformers_class" not in meta:
            raise ValueError(f"{meta_file}: this model was not a Hugging Face model: pass model=.")
        if _hf is None:
            raise ImportError(f"{path} holds a transformers model: install transformers.")
        cls = _hf.model_class(meta["transformers_class"], meta_file)
        # The untrusted config.json sets the sizes: check the files against a skeleton on
        # the meta device before allocating anything.
        skeleton = _hf.build_model(cls, path, meta=True)
        header, keys = _in_model_names(skeleton, header, weights)
        _check(skeleton, layers, header, meta_file, weights)
        model = _hf.build_model(cls, path, meta=False).eval()
    else:
        header, keys = _in_model_names(model, header, weights)
    _load(model, layers, header, keys, meta_file, weights)
    if device is not None:
        model.to(device)
    return model


def _check(model, layers, header, meta_file, weights) -> dict[str, nn.Module]:
    replaced = check_model(model, layers, meta_file)
    check_tensors(header, expected_tensors(model, layers), weights)
    return replaced


def _in_model_names(model, header, weights) -> tuple[dict, dict[str, str]]:
    """The header keyed by the names in ``model``, and each one's key in the file.

    They differ where transformers renames an architecture's weights in its
    checkpoints (:func:`~sklearn_wsvd.compress._hf.in_model_names`).
    """
    if _hf is None or not isinstance(model, _hf.transformers.PreTrainedModel):
        return header, {key: key for key in header}
    header, keys, converted = _hf.in_model_names(model, header)
    if converted:
        name = type(model).__name__
        raise ValueError(
            f"{weights}: transformers converts tensors {_listed(converted)} of a {name} as it "
            f"loads them (fused or split weights), which load_compressed does not: load the "
            f"directory with {name}.from_pretrained or an AutoModel class."
        )
    return header, keys


def _load(model, layers, header, keys, meta_file, weights) -> None:
    replaced = _check(model, layers, header, meta_file, weights)
    prefixes = tuple(f"{name}." for name in layers)
    # Read and convert everything first: the model changes only once nothing can fail.
    try:
        with safe_open(str(weights), framework="pt") as f:
            tensors = {name: f.get_tensor(keys[name]) for name in header}
    except Exception as exc:  # safetensors' own errors for a damaged file
        raise ValueError(f"{weights}: cannot read its tensors ({exc}).") from exc
    new = {}
    for names in aliases(replaced):
        spec, old = layers[names[0]], replaced[names[0]]
        ref = next(iter(old.parameters()))
        layer = LowRankLinear(
            spec["in_features"],
            spec["out_features"],
            spec["rank"],
            bias=spec["bias"],
            device=ref.device,
            dtype=ref.dtype,
        ).train(old.training)
        with torch.no_grad():
            for key, param in layer.named_parameters():
                stored = next(f"{n}.{key}" for n in names if f"{n}.{key}" in header)
                param.copy_(tensors[stored])
        new.update(dict.fromkeys(names, layer))
    updates = [
        (target, tensors[next(k for k in keys if k in header)].to(target))
        for keys, target in expected_tensors(model, layers)
        if not keys[0].startswith(prefixes)
    ]
    for name, layer in new.items():
        set_submodule(model, name, layer)
    with torch.no_grad():
        for target, value in updates:
            target.copy_(value)


def _transformer_of(model):
    """``(model, None)``, or for a SentenceTransformer its transformers model and its index."""
    if not (
        type(model).__module__.startswith("sentence_transformers.")
        and isinstance(model, nn.Sequential)
    ):
        return model, None
    for index, module in enumerate(model):
        inner = getattr(module, "auto_model", None)
        if _hf is not None and isinstance(inner, _hf.transformers.PreTrainedModel):
            others = [
                name
                for i, part in enumerate(model)
                if i != index
                for name, m in part.named_modules()
                if isinstance(m, LowRankLinear)
            ]
            if others:
                raise ValueError(
                    "save_compressed stores the low-rank layers of a SentenceTransformer's "
                    f"transformers model only, and module {others[0]!r} is outside it."
                )
            return inner, index
    raise ValueError("This SentenceTransformer has no transformers model to save.")


@contextlib.contextmanager
def _saved_as_is(model):
    """Let save_pretrained write ``model`` as it is, also where a SentenceTransformer calls it.

    Past the quantizer of a model loaded through it (which forbids saving, so that
    users call save_compressed; the files are fixed up afterwards), and under the
    module names: transformers 5 converts many architectures' weights back to
    their original checkpoints' names and layouts as it saves them, fusing some
    (a query-key-value projection, say) in ways that mix the factors of the
    layers. Its loading conversion leaves the module names as they are.
    """
    quantizer = model.__dict__.get("hf_quantizer")
    if quantizer is not None:
        model.hf_quantizer = None
    if "save_original_format" in inspect.signature(model.save_pretrained).parameters:
        model.save_pretrained = functools.partial(model.save_pretrained, save_original_format=False)
    try:
        yield
    finally:
        model.__dict__.pop("save_pretrained", None)
        if quantizer is not None:
            model.hf_quantizer = quantizer


def _provenance(model, inner, report, base_model, method) -> dict:
    if report is not None:
        if not callable(getattr(report, "to_dict", None)):
            raise TypeError(f"report must have a to_dict() method, got {type(report).__name__}.")
        report = report.to_dict()
    if base_model is None:
        base_model = getattr(getattr(inner, "config", None), "name_or_path", None) or None
    from .. import __version__

    versions = {"python": platform.python_version(), "sklearn_wsvd": __version__}
    for package in _VERSIONS:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    provenance = {
        "base_model": None if base_model is None else str(base_model),
        "method": method,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions,
        "report": report,
    }
    try:
        json.dumps(provenance)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"report.to_dict() or method is not JSON-serialisable ({exc}).") from exc
    return provenance
