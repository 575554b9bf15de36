"""One parser for dtype arguments given as ``torch.dtype`` objects or names (``"bfloat16"``, ``"torch.float16"``),
and one check for device arguments, shared by the library, the demo and every command line."""

from __future__ import annotations

import torch


def as_dtype(dtype, what: str = "dtype") -> torch.dtype:
    """``dtype`` as a floating-point ``torch.dtype``.

    Args:
        dtype: a ``torch.dtype`` or its name, with or without the ``torch.`` prefix.
        what: the argument's name, used in the error message.

    Raises:
        ValueError: not a dtype name, or not a floating-point dtype.
    """
    resolved = dtype if isinstance(dtype, torch.dtype) else getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"{what} must be a floating-point torch dtype or its name (float32, bfloat16, float16), "
                         f"got {dtype!r}")
    return resolved


def check_device(device, what: str = "device") -> torch.device:
    """``device`` (a name such as ``"cpu"``, ``"cuda:0"`` or a ``torch.device``) as a ``torch.device`` that exists.

    Args:
        device: the device.
        what: the argument's name, used in the error message (e.g. ``"--device"``).

    Raises:
        ValueError: not a device name, or a CUDA device without a CUDA GPU.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ValueError(f"{what}: invalid device {device!r} (e.g. cpu, cuda, cuda:0)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what} {device!r}: no CUDA GPU is available; use cpu")
    return dev
