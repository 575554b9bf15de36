"""One parser for dtype arguments given as ``torch.dtype`` objects or names (``"bfloat16"``, ``"torch.float16"``),
the autocast choice of the training commands, one check for device arguments, one parser for comma-list
arguments and one check that an activation batch is a floating-point tensor, shared by the library, the demo and
every command line."""

from __future__ import annotations

import torch


def require_float_batch(b, hint: str = "") -> None:
    """Refuse an activation batch that is not a floating-point ``torch.Tensor`` (``trainSAE``, ``build_cache``).

    Args:
        b: the batch.
        hint: appended to the message (e.g. a guess at what was passed instead).

    Raises:
        TypeError: naming the batch's dtype or type.
    """
    if not isinstance(b, torch.Tensor) or not b.is_floating_point():
        raise TypeError(f"activation batches must be floating-point tensors, got "
                        f"{getattr(b, 'dtype', type(b).__name__)}{hint}")


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


#: ``--autocast`` choices of the training commands
AUTOCAST_CHOICES = ("auto", "bfloat16", "float32")


def autocast_dtype(choice: str, device) -> torch.dtype:
    """The autocast dtype of ``--autocast CHOICE`` on ``device``: ``"auto"`` is bfloat16 on CUDA and float32 (no
    autocast) elsewhere.

    Raises:
        ValueError: ``choice`` not in :data:`AUTOCAST_CHOICES`.
    """
    if choice not in AUTOCAST_CHOICES:
        raise ValueError(f"autocast must be one of {AUTOCAST_CHOICES}, got {choice!r}")
    if choice == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return as_dtype(choice)


def comma_list(s: str, cast=str, flag: str = "list", allow_empty: bool = True) -> list:
    """The items of a comma-separated argument (blank items skipped), each passed through ``cast``.

    Args:
        s: the argument, e.g. ``"4096,16384"``.
        cast: ``str``, ``int``, ``float`` or another one-argument constructor.
        flag: the argument's name, used in the error message (e.g. ``"--dict-sizes"``).
        allow_empty: whether no item at all is accepted.

    Raises:
        ValueError: an item ``cast`` rejects, or no item when ``allow_empty`` is False.
    """
    kind = {int: "integers", float: "numbers"}.get(cast, f"{getattr(cast, '__name__', 'valid')} values")
    try:
        values = [cast(v.strip()) for v in s.split(",") if v.strip()]
    except ValueError:
        values = None
    if values is None or (not values and not allow_empty):
        raise ValueError(f"{flag} must be a comma list of {kind}, got {s!r}")
    return values
