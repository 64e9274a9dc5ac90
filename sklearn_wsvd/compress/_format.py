"""The on-disk format of compressed models, and the checks that run before anything is loaded.

Nothing read from a file is trusted: the JSON is checked against a schema, every
factorised layer against the model (it exists, is linear, has the stated shape and
a rank within it) and every tensor against the safetensors header (name, shape,
dtype), all before a single weight is allocated or a module touched. Every
problem is a ``ValueError`` that names the file.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .layers import LowRankLinear, is_factorisable, linear_shape

FORMAT = "sklearn_wsvd.compressed/2"
# Format 2 keeps the weights out of the names that transformers looks for by
# default, so that a loader without the sklearn_wsvd quantizer fails instead of
# building a model whose factorised layers are random (see _hf.py).
WEIGHT_FILES = {
    "sklearn_wsvd.compressed/1": "model.safetensors",
    FORMAT: "lowrank-model.safetensors",
}
WEIGHTS = WEIGHT_FILES[FORMAT]
META = "compression.json"
QUANT_METHOD = "sklearn_wsvd_lowrank"

_LAYER_KEYS = {"in_features": int, "out_features": int, "rank": int, "bias": bool}
_META_KEYS = {"format", "layers", "transformers_class", "provenance"}
_QUANT_KEYS = {"quant_method", "format", "layers"}
_FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
}


def _short(value, limit=60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listed(names, limit=5) -> str:
    names = sorted(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(map(repr, names[:limit])) + more


def read_meta(file: Path) -> dict:
    """Read and check ``compression.json``; returns its content."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found: is {file.parent} a save_compressed directory?")
    try:
        meta = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{file}: not valid JSON ({exc}).") from exc
    return check_meta(meta, file)


def check_meta(meta, source) -> dict:
    """The schema of ``compression.json``."""
    if not isinstance(meta, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(meta).__name__}.")
    unknown = set(meta) - _META_KEYS
    if unknown:
        raise ValueError(f"{source}: unknown keys {_listed(unknown)}.")
    if not isinstance(meta.get("format"), str) or meta["format"] not in WEIGHT_FILES:
        raise ValueError(
            f"{source}: format {_short(meta.get('format'))} is not one of {sorted(WEIGHT_FILES)}."
        )
    if "layers" not in meta:
        raise ValueError(f"{source}: the key 'layers' is missing.")
    check_layers(meta["layers"], source)
    name = meta.get("transformers_class")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise ValueError(f"{source}: transformers_class {_short(name)} is not a class name.")
    if not isinstance(meta.get("provenance", {}), dict):
        raise ValueError(f"{source}: provenance must be a JSON object.")
    return meta


def check_quantization_config(config: dict, source) -> dict:
    """The schema of the ``quantization_config`` of ``config.json``; returns its layers."""
    unknown = set(config) - _QUANT_KEYS
    if unknown:
        raise ValueError(f"{source}: quantization_config has unknown keys {_listed(unknown)}.")
    if config.get("quant_method") != QUANT_METHOD or config.get("format") != FORMAT:
        raise ValueError(
            f"{source}: quantization_config is not {QUANT_METHOD!r} in format {FORMAT!r}."
        )
    return check_layers(config.get("layers"), source)


def check_layers(layers, source) -> dict:
    """Each factorised layer: ``{name: {in_features, out_features, rank, bias}}``."""
    if not isinstance(layers, dict):
        raise ValueError(f"{source}: 'layers' must be a JSON object, got {_short(layers)}.")
    for name, spec in layers.items():
        if not all(name.split(".")):
            raise ValueError(f"{source}: {_short(name)} is not a module name.")
        if not isinstance(spec, dict) or set(spec) != set(_LAYER_KEYS):
            raise ValueError(
                f"{source}: layer {_short(name)} must be an object with exactly the keys "
                f"{sorted(_LAYER_KEYS)}, got {_short(spec)}."
            )
        for key, kind in _LAYER_KEYS.items():
            # bool is an int in Python; neither may stand for the other here.
            if type(spec[key]) is not kind:
                raise ValueError(
                    f"{source}: layer {_short(name)}: {key} must be a JSON "
                    f"{'boolean' if kind is bool else 'integer'}, got {_short(spec[key])}."
                )
        m, n, k = spec["out_features"], spec["in_features"], spec["rank"]
        if m < 1 or n < 1:
            raise ValueError(f"{source}: layer {_short(name)} has a zero or negative size.")
        if not 1 <= k <= min(m, n):
            raise ValueError(
                f"{source}: layer {_short(name)}: rank {k} is outside [1, {min(m, n)}] "
                f"for a {m}x{n} layer."
            )
    return layers


def check_model(model: nn.Module, layers: dict, source) -> dict[str, nn.Module]:
    """Check the factorised layers against ``model``; returns the modules they replace."""
    modules = dict(model.named_modules(remove_duplicate=False))
    found = {}
    for name, spec in layers.items():
        module = modules.get(name)
        if module is None:
            raise ValueError(
                f"{source}: layer {_short(name)} is not a module of {type(model).__name__}."
            )
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        if any(p in layers or isinstance(modules.get(p), LowRankLinear) for p in parents):
            raise ValueError(f"{source}: layer {name!r} lies inside another factorised layer.")
        if isinstance(module, LowRankLinear):
            shape = (module.out_features, module.in_features)
            bias = module.out_proj.bias is not None
        elif is_factorisable(module):
            shape = linear_shape(module)
            bias = module.bias is not None
        else:
            raise ValueError(
                f"{source}: layer {name!r} of the model is a {type(module).__name__}, not a "
                "linear layer that can be factorised."
            )
        if shape != (spec["out_features"], spec["in_features"]) or bias != spec["bias"]:
            raise ValueError(
                f"{source}: layer {name!r} is {spec['out_features']}x{spec['in_features']} "
                f"(bias={spec['bias']}) in the file but {shape[0]}x{shape[1]} (bias={bias}) "
                "in the model."
            )
        found[name] = module
    for names in aliases(found):
        if any(layers[n] != layers[names[0]] for n in names):
            raise ValueError(
                f"{source}: layers {_listed(names)} are one module of the model but differ "
                "in the file."
            )
    return found


def aliases(modules: dict[str, nn.Module]) -> list[list[str]]:
    """The names grouped by module: a module registered under several names is one layer."""
    groups: dict[int, list[str]] = {}
    for name, module in modules.items():
        groups.setdefault(id(module), []).append(name)
    return list(groups.values())


def lowrank_shapes(spec: dict) -> dict[str, tuple[int, ...]]:
    """The tensors of one factorised layer (names within it) and their shapes."""
    shapes = {
        "in_proj.weight": (spec["rank"], spec["in_features"]),
        "out_proj.weight": (spec["out_features"], spec["rank"]),
    }
    if spec["bias"]:
        shapes["out_proj.bias"] = (spec["out_features"],)
    return shapes


def read_header(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes of the tensors of a safetensors file, without loading them."""
    if not file.is_file():
        raise FileNotFoundError(f"{file} not found.")
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {
                key: (tuple(f.get_slice(key).get_shape()), f.get_slice(key).get_dtype())
                for key in f.keys()
            }
    except Exception as exc:  # safetensors raises its own error types for a malformed header
        raise ValueError(f"{file}: not a readable safetensors file ({exc}).") from exc


def expected_tensors(model: nn.Module, layers: dict) -> list[tuple[list[str], torch.Tensor]]:
    """What the file must hold to load into ``model`` with ``layers`` factorised.

    One entry per distinct tensor: its names (tied weights and shared modules have
    one tensor under several names, which the file stores under one of them) and a
    reference with the expected shape, dtype and device (for a factorised layer, a
    meta tensor).
    """
    replaced = tuple(f"{name}." for name in layers)
    groups: dict[int, tuple[list[str], torch.Tensor]] = {}
    for key, tensor in model.state_dict(keep_vars=True).items():
        if key.startswith(replaced):
            continue
        groups.setdefault(id(tensor), ([], tensor))[0].append(key)
    out = list(groups.values())
    for names in aliases({name: model.get_submodule(name) for name in layers}):
        ref = next(iter(model.get_submodule(names[0]).parameters()))
        for key, shape in lowrank_shapes(layers[names[0]]).items():
            keys = [f"{name}.{key}" for name in names]
            out.append((keys, torch.empty(shape, dtype=ref.dtype, device="meta")))
    return out


def check_tensors(header: dict, expected: list, source, *, exhaustive: bool = True) -> None:
    """Every expected tensor is in ``header`` with its shape and a compatible dtype (a float
    for a float, the same type otherwise) and, if ``exhaustive``, nothing else is."""
    known = {key for keys, _ in expected for key in keys}
    unexpected = set(header) - known
    if exhaustive and unexpected:
        raise ValueError(f"{source}: unexpected tensors {_listed(unexpected)}.")
    missing = [keys[0] for keys, _ in expected if not any(k in header for k in keys)]
    if missing:
        raise ValueError(f"{source}: missing tensors {_listed(missing)}.")
    for keys, ref in expected:
        for key in (k for k in keys if k in header):
            shape, dtype = header[key]
            if shape != tuple(ref.shape):
                raise ValueError(
                    f"{source}: tensor {key!r} has shape {list(shape)}, the model expects "
                    f"{list(ref.shape)}."
                )
            if ref.is_floating_point():
                ok = dtype in _FLOAT_DTYPES
            else:
                ok = _DTYPES.get(dtype) == ref.dtype
            if not ok:
                raise ValueError(
                    f"{source}: tensor {key!r} has dtype {dtype}, the model expects "
                    f"{'a floating-point tensor' if ref.is_floating_point() else ref.dtype} "
                    f"({ref.dtype})."
                )
