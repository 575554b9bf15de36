"""What the throughput benchmarks share (:mod:`benchmarks.speed`, :mod:`benchmarks.sweep`): the peer library's
trainers and the measured matmul peak that throughput is reported against."""

from __future__ import annotations

import time

import torch

#: dictionary_learning 0.1.0 trainer class per architecture, and its settings matching ours
DL_ARCHS = {"relu": ("StandardTrainer", {"l1_penalty": 0.04, "sparsity_warmup_steps": 1}),
            "topk": ("TopKTrainer", {"k": 64}),
            "batchtopk": ("BatchTopKTrainer", {"k": 64})}


def dictionary_learning_trainers():
    """``(module, version)`` of the installed PyPI ``dictionary-learning`` trainers, or ``(None, reason)``."""
    try:
        import dictionary_learning
        from dictionary_learning import trainers
    except Exception as e:  # absent, or its imports fail
        return None, f"dictionary-learning not importable ({type(e).__name__}: {e}); install it for the benchmark " \
                     f"only with: pip install --no-deps dictionary-learning==0.1.0"
    return trainers, getattr(dictionary_learning, "__version__", "?")


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA); nothing on a CPU."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int = 8192, reps: int = 10) -> float:
    """Measured bf16 (CPU: float32) matmul throughput in TFLOP/s on ``n x n x n`` products."""
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def device_kind(ap, device: str, cpu_meaning: str) -> str:
    """The kind (``"cuda"`` or ``"cpu"``) of a benchmark's ``--device`` value, or ``ap.error`` (exit 2, before any
    work) for another kind, an unparsable value, or ``cuda`` on a machine without one; ``cpu_meaning`` ends that
    last message: what ``--device cpu`` measures instead."""
    try:
        kind = torch.device(device).type
    except RuntimeError:
        kind = None
    if kind not in ("cuda", "cpu"):
        ap.error(f"--device must be cuda or cpu, got {device!r}")
    if kind == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device cuda: no CUDA device here; `--device cpu` {cpu_meaning}")
    return kind
