"""One parser for dtype arguments given as ``torch.dtype`` objects or names (``"bfloat16"``, ``"torch.float16"``)."""

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
