"""One parser for dtype arguments given as ``torch.dtype`` objects or names (``"bfloat16"``, ``"torch.float16"``),
the autocast choice of the training commands, the precision choice of the activation harvest (float32 or TF32
matmuls, :func:`effective_harvest_precision`, :func:`matmul_precision`), one check for device arguments, one parser
for comma-list arguments and one check that an activation batch is a floating-point tensor, shared by the library,
the demo and every command line."""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

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


#: ``--harvest-precision`` choices, each with the float32 matmul precision (``torch.set_float32_matmul_precision``)
#: of the harvest's language-model forward passes: ``"float32"`` (IEEE float32 matmuls, PyTorch's default) or
#: ``"tf32"`` (TF32 tensor-core matmuls: 10-bit mantissa inputs, float32 accumulation)
HARVEST_PRECISIONS = {"float32": "highest", "tf32": "high"}


def tf32_applies(device) -> bool:
    """Whether TF32 changes float32 matmuls on ``device``: a CUDA GPU of compute capability 8.0 (Ampere) or
    newer."""
    dev = torch.device(device)
    return dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8


def check_harvest_precision(choice) -> str:
    """``choice`` when it is a key of :data:`HARVEST_PRECISIONS`.

    Raises:
        ValueError: any other value (the message names the choices).
    """
    if choice not in HARVEST_PRECISIONS:
        raise ValueError(f"harvest precision must be one of {', '.join(HARVEST_PRECISIONS)}, got {choice!r}")
    return choice


def effective_harvest_precision(choice: str, device) -> str:
    """The precision a harvest asked to run at ``choice`` (a key of :data:`HARVEST_PRECISIONS`) runs at on
    ``device``: ``choice``, except ``"tf32"`` where TF32 does not exist (a CPU, a GPU older than Ampere:
    :func:`tf32_applies`), which is ``"float32"``: the harvest is then float32's exactly, and says and records so.

    Raises:
        ValueError: ``choice`` not in :data:`HARVEST_PRECISIONS` (the message names them).
    """
    check_harvest_precision(choice)
    return "float32" if choice == "tf32" and not tf32_applies(device) else choice


@contextlib.contextmanager
def matmul_precision(level: Optional[str]) -> Iterator[None]:
    """Run the block under ``torch.set_float32_matmul_precision(level)`` (``"highest"``, ``"high"`` or
    ``"medium"``); the setting in force before is restored afterwards, also on error. ``level`` None changes
    nothing. The setting is process-wide: while the block runs, float32 matmuls of other threads use it too."""
    if level is None:
        yield
        return
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(level)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before)


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
