"""The only door between numpy and torch: device and dtype resolution, conversions."""

from __future__ import annotations

import numpy as np
import torch

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def is_tensor(x) -> bool:
    return isinstance(x, torch.Tensor)


def resolve_device(device, like=None) -> torch.device:
    """Resolve ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or a torch.device.

    ``"auto"`` follows a tensor input (``like``) and otherwise picks CUDA when it
    is present.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        if is_tensor(like):
            return like.device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device={device!r} is not a valid torch device.") from exc
    if device.type == "meta":  # tensors without data: nothing can be fitted there
        raise ValueError("device='meta' holds no data; use device='cpu', 'cuda' or 'auto'.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={str(device)!r} was requested but CUDA is not available on this "
            "machine; use device='cpu' or device='auto'."
        )
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as exc:  # mps on a machine without it, say
        raise ValueError(
            f"device={str(device)!r} is not usable here ({exc}); use device='cpu' or device='auto'."
        ) from None
    return device


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"dtype must be float32 or float64, got {dtype}.")
        return dtype
    try:
        return _DTYPES[np.dtype(dtype).name]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}.") from exc


def to_tensor(x, *, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Copy ``x`` (numpy array or tensor) to a fresh tensor: the caller's data is never aliased."""
    if is_tensor(x):
        return x.detach().to(device=device, dtype=dtype, copy=True)
    x = np.asarray(x)
    # torch takes neither negative strides (np.flip, x[::-1]) nor a foreign byte order
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
    return torch.tensor(x, device=device, dtype=dtype)


def to_numpy(t: torch.Tensor, dtype=None) -> np.ndarray:
    arr = t.detach().cpu().numpy()
    return arr if dtype is None else arr.astype(dtype, copy=False)


def numpy_dtype_like(like) -> np.dtype:
    """The float dtype that fitted attributes get for the input ``like``."""
    dtype = like.dtype if is_tensor(like) else getattr(like, "dtype", None)
    if dtype in (np.float32, torch.float32, torch.float16, torch.bfloat16):
        return np.dtype(np.float32)
    return np.dtype(np.float64)


def output_like(t: torch.Tensor, like):
    """Return ``t`` in the container of the user's input ``like``.

    A tensor input gets a tensor on its device, in its floating dtype; anything
    else gets a numpy array in the input's float dtype (float64 for other dtypes).
    """
    if is_tensor(like):
        dtype = like.dtype if like.is_floating_point() else t.dtype
        return t.detach().to(device=like.device, dtype=dtype)
    return to_numpy(t, numpy_dtype_like(like))
