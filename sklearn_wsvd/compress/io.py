"""Saving and loading compressed models: safetensors weights, a JSON of the factorised layers."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ._compress import _set_submodule
from .layers import LowRankLinear

FORMAT = "sklearn_wsvd.compressed/1"
WEIGHTS = "model.safetensors"
META = "compression.json"


def save_compressed(model: nn.Module, path) -> Path:
    """Write ``model`` to the directory ``path``; nothing is pickled.

    ``model.safetensors`` holds the weights (shared tensors stored once),
    ``compression.json`` the factorised layers and their ranks. A Hugging Face
    model also gets its ``config.json``, so that :func:`load_compressed` can
    rebuild it from the directory alone.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    layers = {
        name: {
            "in_features": m.in_features,
            "out_features": m.out_features,
            "rank": m.rank,
            "bias": m.out_proj.bias is not None,
        }
        for name, m in model.named_modules()
        if isinstance(m, LowRankLinear)
    }
    meta = {"format": FORMAT, "layers": layers}
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "save_pretrained"):
        config.save_pretrained(path)
        meta["transformers_class"] = type(model).__name__
    save_model(model, str(path / WEIGHTS))
    (path / META).write_text(json.dumps(meta, indent=2))
    return path


def load_compressed(path, model: nn.Module | None = None, device=None) -> nn.Module:
    """Load what :func:`save_compressed` wrote.

    Parameters
    ----------
    path : str or Path
        The directory.
    model : nn.Module, optional
        A model of the original (uncompressed) architecture, whose factorised
        layers are replaced and whose weights are all loaded, in place. Not needed
        for a Hugging Face model, which is rebuilt from the saved ``config.json``.
    device : str or torch.device, optional
        Where to load the weights.

    Returns
    -------
    model : nn.Module
    """
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise FileNotFoundError(f"{meta_file} not found: is {path} a save_compressed directory?")
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_file} has format {meta.get('format')!r}, expected {FORMAT!r}.")
    if model is None:
        if "transformers_class" not in meta:
            raise ValueError("This model was not a Hugging Face model: pass model=.")
        import transformers

        config = transformers.AutoConfig.from_pretrained(path)
        model = getattr(transformers, meta["transformers_class"])(config)
    for name, spec in meta["layers"].items():
        old = model.get_submodule(name)
        ref = next(old.parameters())
        layer = LowRankLinear(
            spec["in_features"],
            spec["out_features"],
            spec["rank"],
            bias=spec["bias"],
            device=ref.device,
            dtype=ref.dtype,
        )
        _set_submodule(model, name, layer)
    load_model(model, str(path / WEIGHTS), strict=True, device=str(torch.device(device or "cpu")))
    return model
