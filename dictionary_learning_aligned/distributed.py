"""Data-parallel training over several processes with ``torch.distributed`` (DistributedDataParallel).

Every rank reads the same global activation batch ``[batch, activation_dim]`` and trains on its own disjoint
slice ``[batch / world_size, activation_dim]`` (:func:`shard`). Each trainer's loss is run through a
``DistributedDataParallel`` wrapper, so gradients are averaged over ranks during the backward pass; since every
loss term is a mean over tokens, the averaged gradient equals the single-process gradient of the global batch.
The few statistics that are not per-token means are made global with collectives inside
:meth:`DictionaryTrainer.update <dictionary_learning_aligned.trainers.base.DictionaryTrainer.update>`
(dead-feature counters, the TopK auxiliary loss' dead mask and residual variance, the BatchTopK batch-level
selection, the inference-threshold EMAs, the geometric-median init of ``b_dec``, p-annealing's Lp statistics,
the finiteness check), so all ranks hold identical weights and trainer state and the result equals a one-process
run on the global batch up to float rounding. The decoder renormalization after each step runs on identical
weights on every rank.
"""

from __future__ import annotations

import datetime
import os
from typing import Optional

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    """True when a default ``torch.distributed`` process group exists."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process' rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def init_from_env(backend: Optional[str] = None, timeout: Optional[datetime.timedelta] = None
                  ) -> tuple[int, int, int]:
    """Initialise the default process group from torchrun's environment (``RANK``, ``WORLD_SIZE``,
    ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); without those variables nothing is initialised.

    Args:
        backend: ``"nccl"`` or ``"gloo"`` (default: nccl when CUDA is available, else gloo).
        timeout: how long a collective (e.g. a barrier while process 0 harvests) may wait (default: torch's).

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` for a plain single process.
    """
    if "WORLD_SIZE" not in os.environ or is_initialized():
        return rank(), world_size(), int(os.environ.get("LOCAL_RANK", 0))
    backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, **({"timeout": timeout} if timeout is not None else {}))
    return dist.get_rank(), dist.get_world_size(), local_rank


def shard(batch: torch.Tensor, rank_: Optional[int] = None, world: Optional[int] = None) -> torch.Tensor:
    """This rank's contiguous slice of a global batch.

    Args:
        batch: ``[batch, activation_dim]``, the same on every rank.
        rank_, world: default: this process' rank and the world size.

    Returns:
        ``[batch / world, activation_dim]`` rows ``rank * batch / world`` to ``(rank + 1) * batch / world``.

    Raises:
        ValueError: the batch size is not a multiple of the world size (shards must be equal so that the mean of
            the per-rank means is the global mean).
    """
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    n = batch.shape[0]
    if n % world:
        raise ValueError(f"data-parallel training needs a batch size divisible by the world size: got a batch of "
                         f"{n} activations for {world} processes (choose a batch size that is a multiple of "
                         f"{world}; with an ActivationCache, pass drop_last=True)")
    size = n // world
    return batch[rank_ * size:(rank_ + 1) * size]


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce ``t`` in place over the default group and return it (``op``: ``"sum"``, ``"max"``,
    ``"min"``)."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t


def all_gather_cat(t: torch.Tensor) -> torch.Tensor:
    """Concatenate ``t [n, ...]`` of every rank along dim 0 in rank order (all ranks must pass the same shape)."""
    out = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(out, t.contiguous())
    return torch.cat(out)


class LossModule(torch.nn.Module):
    """``nn.Module`` whose forward is a trainer's loss computation, so that ``DistributedDataParallel`` can wrap
    it (the dictionary is its only submodule; the trainer itself is not registered).

    ``forward(x [batch, activation_dim], step)`` returns the trainer's ``_compute(x, step)`` tuple
    ``(loss, terms, x_hat, f, aux)``.
    """

    def __init__(self, trainer):
        super().__init__()
        self.ae = trainer.ae
        self._compute = trainer._compute

    def forward(self, x: torch.Tensor, step: int):
        return self._compute(x, step)


def wrap(trainer) -> torch.nn.Module:
    """``DistributedDataParallel`` over :class:`LossModule` of ``trainer``. Construction broadcasts rank 0's
    weights and buffers to every rank. Buffers are not broadcast at each forward: trainers keep them equal."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = torch.device(trainer.device)
    module = LossModule(trainer)
    ids = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else None
    import inspect

    no_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in inspect.signature(DDP).parameters
               else {"broadcast_buffers": False})  # newer torch renamed the option
    return DDP(module, device_ids=ids, **no_sync)
