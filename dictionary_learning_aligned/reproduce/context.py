"""What every part of one reproduction shares (:class:`Context`): the settings :func:`.run.run_experiment` resolved,
the loaded model, the held-out data and the opened cache. The orchestration (:mod:`.run`) builds it and hands it to
every step; the records (:mod:`.recording`) read their settings from it."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from ..experiments import Plan


@dataclass
class Context:
    """What every part of one reproduction shares: the plan, the store, the loaded model and the held-out data
    (built once, by :func:`.run.run_experiment`, and handed to every step after it)."""

    name: str
    scale: str
    plan: Plan
    store: Path
    device: str
    batch_size: int
    amp: Optional[torch.dtype]
    steps: int
    total_tokens: int
    unique_tokens: int
    epochs: int
    cache: Optional[str]
    preload: Optional[bool]
    """hold the cache on ``device``: True, False, or None (decided when the cache is opened: :func:`.cache.
    fits_on_device`); after that, what was decided (:func:`.run._train_data`)"""
    compile_stacks: bool | str = False
    harvest_precision: str = "float32"
    """what the training activations are harvested at (a key of :data:`.dtypes.HARVEST_PRECISIONS`), as used:
    ``"tf32"`` asked on a device without TF32 is ``"float32"`` (:func:`.dtypes.effective_harvest_precision`)"""
    points: tuple = ()
    """step counts recorded from checkpoints and the end of each run (:meth:`.experiments.Plan.eval_points`);
    empty for an experiment without ``eval_steps`` (one record per run, ids without a step)"""
    time_limit: Optional[float] = None
    """seconds after ``t0`` past which no part starts that would not end in time (:func:`.run._time_for`)"""
    rank: int = 0
    world_size: int = 1
    model: object = None
    """the :class:`.pipeline.LoadedModel` (None in a process with nothing to train or harvest)"""
    harvest: object = None
    """the :class:`.pipeline.Harvest` settings every buffer of the run shares"""
    heldout: object = None
    """the :class:`.pipeline.HeldOut` evaluation data, drawn once"""
    opened_cache: object = None
    """the :class:`.cache.ActivationCache` the first part opened (preloaded onto ``device`` with ``preload``),
    served again in a fresh order to every later part (:func:`.run._train_data`); None before it, or without a cache"""
    verbose: bool = True
    use_wandb: bool = False
    wandb_project: str = ""
    command: str = ""
    t0: float = dataclasses.field(default_factory=time.monotonic)
    """when the reproduction started (``time.monotonic``), for the elapsed seconds of its log (:func:`.run._say`)"""
