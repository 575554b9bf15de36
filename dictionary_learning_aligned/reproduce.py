"""Reproduce an experiment of the paper: ``python -m dictionary_learning_aligned reproduce EXPERIMENT --scale
smoke|small|paper [--device cuda] [--results DIR]`` (``python -m dictionary_learning_aligned.reproduce`` is the
same command).

For each dictionary size of the experiment's grid (:mod:`.experiments`), activations are harvested once and every
dictionary still missing from the results store is trained on the same batches; each is then evaluated on
held-out text and written as one record (:mod:`.records`), with its group's cross-seed stability. Re-running skips
finished entries.

Several GPUs: run under ``torchrun --nproc_per_node N`` (one process per GPU). The grid is spread over the
processes in whole stacks (:func:`spread_runs`); process ``r`` uses ``cuda:r`` (its ``LOCAL_RANK``) when
``--device`` is ``cuda``; with ``--cache``, process 0 harvests the cache once while the others wait, and each
process then reads (or preloads onto its GPU) the same cache. Processes do not communicate while training, so
each writes its own records as its parts finish.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from simple_parsing.helpers import choice, field

from . import distributed as _dist
from . import registry
from .cli import default_device
from .dtypes import AUTOCAST_CHOICES, autocast_dtype, check_device, comma_list
from .experiments import EXPERIMENTS, RECIPES, SCALES, Plan, Run, resolve
from .records import SCHEMA_VERSION, group_id, has_record, record_id, write_record
from .stacked import compile_mode


def trainer_config(run: Run, activation_dim: int, steps: int, plan: Plan) -> dict:
    """The ``trainSAE`` config of one run: the architecture's trainer from the registry (its aligned version when
    ``alignment`` is set), the run's sparsity value, and the plan's recipe for ``steps`` steps
    (:meth:`.experiments.Recipe.schedule`: learning rate, warmups, decay start); the ``"penalty"`` mode's
    coefficient as ``alignment_penalty``.

    Raises:
        ValueError: an architecture that is not registered.
    """
    arch = registry.get(run.arch)
    cfg = dict(trainer=arch.trainer_for(run.alignment).__name__, steps=steps, activation_dim=activation_dim,
               dict_size=run.dict_size, layer=plan.layer, lm_name=plan.model, seed=run.seed,
               submodule_name=f"layers.{plan.layer}", **plan.recipe.schedule(arch, steps))
    if run.alignment:
        cfg["alignment"] = run.alignment
    if run.alignment_penalty is not None:
        cfg["alignment_penalty"] = run.alignment_penalty
    value = run.sparsity_value
    cfg[run.sparsity_name] = int(value) if arch.fixed_l0 else value
    return cfg


@dataclass
class _Part:
    """What every part of one reproduction shares: the plan, the store, the loaded model and the held-out data
    (built once, by :func:`run_experiment`, and handed to every step after it)."""

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
    preload: bool
    compile_stacks: bool | str = False
    points: tuple = ()
    """step counts recorded from checkpoints and the end of each run (:meth:`.experiments.Plan.eval_points`);
    empty for an experiment without ``eval_steps`` (one record per run, ids without a step)"""
    time_limit: Optional[float] = None
    """seconds after ``t0`` past which no part starts that would not end in time (:func:`_time_for`)"""
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
    served again in a fresh order to every later part (:func:`_train_data`); None before it, or without a cache"""
    verbose: bool = True
    use_wandb: bool = False
    wandb_project: str = ""
    command: str = ""
    t0: float = dataclasses.field(default_factory=time.monotonic)
    """when the reproduction started (``time.monotonic``), for the elapsed seconds of its log (:func:`_say`)"""


def train_steps(total_tokens: int, batch_size: int, epochs: int = 1, cached: bool = False) -> tuple[int, int]:
    """The optimizer steps of a run of ``total_tokens`` training tokens at ``batch_size`` activations per step,
    and the distinct tokens it harvests; every step trains on a full batch (as dictionary_learning's and SAEBench's
    trainers do; a short batch would also be a new shape for ``torch.compile``).

    Without a cache (one pass over a buffer that refills from the text): ``ceil(total_tokens / batch_size)``
    steps over ``total_tokens`` distinct tokens; the buffer serves full batches, so the last step trains on up to
    ``batch_size - 1`` tokens more than asked.

    With a cache (``cached``): ``unique = ceil(total_tokens / epochs)`` tokens are harvested and each of the
    ``epochs`` passes trains on the ``unique // batch_size`` full batches of a fresh shuffle, leaving out that
    pass' other ``unique % batch_size`` tokens (``drop_last``: each pass is exactly one epoch, no batch mixes two
    passes or holds a token twice, and a cache harvested before serves the same tokens):
    ``epochs * (unique // batch_size)`` steps, up to ``epochs * (batch_size - 1)`` tokens fewer than asked.

    Returns:
        ``(steps, unique_tokens)``.

    Raises:
        ValueError: with a cache, fewer distinct tokens than one batch.
    """
    if not cached:
        return -(-total_tokens // batch_size), total_tokens
    unique = -(-total_tokens // epochs)
    if unique < batch_size:
        raise ValueError(f"{total_tokens:,} training tokens (--tokens, or the scale's budget) over --epochs {epochs} "
                         f"harvest {unique:,} distinct tokens, fewer "
                         f"than one batch of {batch_size}; pass more --tokens, fewer --epochs or a smaller "
                         f"--batch-size")
    return epochs * (unique // batch_size), unique


def _check_steps(steps: int, total_tokens: int, batch_size: int) -> None:
    """Refuse a run of one step (:func:`train_steps`): no architecture's learning-rate warmup fits in it.

    Raises:
        ValueError: ``steps < 2``; the message names the smallest ``--tokens`` that gives 2 steps.
    """
    if steps < 2:
        raise ValueError(f"{total_tokens:,} training tokens (--tokens, or the scale's budget) give 1 training step "
                         f"at batch size {batch_size}; a run needs at "
                         f"least 2 (its learning-rate warmup takes a step): pass --tokens of at least "
                         f"{2 * batch_size:,} or a smaller --batch-size")


def run_experiment(name: str, scale: str, results: str, device: Optional[str] = None, corpus: Optional[str] = None,
                   batch_size: Optional[int] = None, autocast: str = "auto", eval_batches: int = 10,
                   ce_batches: int = 4, ce_batch_size: int = 8, archs: Optional[list] = None,
                   dict_sizes: Optional[list] = None, cache: Optional[str] = None, tokens: Optional[int] = None,
                   epochs: int = 1, seeds: Optional[int] = None, preload: Optional[bool] = None,
                   sparsity: Optional[list] = None, chunk: Optional[int] = None, verbose: bool = True,
                   use_wandb: bool = False, wandb_project: str = "", command: Optional[str] = None,
                   compile_stacks: bool | str = False, recipe: Optional[str] = None,
                   also: Sequence[str] = (), time_limit: Optional[float] = None) -> list[str]:
    """Train, evaluate and record every missing dictionary of an experiment (and of the experiments ``also``);
    returns the ids written (by this process).

    The steps: :func:`select_runs` (the grid points still missing from the store), this process' share of them
    (:func:`spread_runs`), then per part of one dictionary size (:func:`_chunks`) :func:`train_part`,
    :func:`evaluate_part` and :func:`record_part`. An experiment with ``eval_steps`` (``budget``) trains each run
    once for the full budget, saving checkpoints at those steps, and evaluates and records every step point
    (:meth:`.experiments.Plan.eval_points`) from them: one record per run and step point, with ``steps`` and
    ``checkpoint_of``, and its group's cross-seed stability at that step.
    Several GPUs (``torchrun``): see the module docstring.

    Several experiments at once (``also``): their grids are trained together on one harvest, and a dictionary
    that two of them ask for (the same trainer config, :func:`training_key`; e.g. every ``budget`` run is a
    ``main`` run, two thirds of ``tying`` are) is trained once and recorded for each, under each experiment's id
    and at each one's step points (``trained_for`` in the records names them all). The experiments must read the
    same data: the same model, layer, corpus, token budget and recipe (:func:`shared_plans`).

    Args:
        name, scale: see :func:`.experiments.resolve`.
        results: the results store folder (created if missing; existing records are kept and skipped).
        device: default ``cuda`` when available, else ``cpu``.
        corpus: training text for smoke/small (default: bundled corpus).
        batch_size: activations per step (default: the recipe's, 2048 at small and paper scale, 1024 at smoke).
        autocast: ``"auto"`` (bfloat16 on GPU, none on CPU), ``"bfloat16"`` or ``"float32"``.
        eval_batches, ce_batches, ce_batch_size: held-out evaluation size.
        archs, dict_sizes: train only this part of the grid now (the rest is left for later invocations, e.g.
            to fit a GPU time limit); records of one group are written together, so filter whole groups.
        cache: folder of on-disk activation caches (:mod:`.cache`): the training activations are harvested once
            into ``cache/<model>_L<layer>_<corpus>_<tokens>`` (float16) and reused by every dictionary size and
            every later invocation with the same model, layer, corpus and token count.
        tokens: training tokens per dictionary instead of the scale's budget (recorded as ``train_tokens``, with
            ``plan_tokens`` the scale's value), e.g. the longest run that fits a time limit.
        epochs: passes over the cached activations (needs ``cache``): ``ceil(tokens / epochs)`` distinct tokens
            are harvested and each pass trains on full batches of a fresh shuffle of them (:func:`train_steps`;
            recorded as ``unique_tokens`` and ``epochs``).
        seeds: train only the first ``seeds`` seeds of the grid now.
        chunk: train at most this many dictionaries together (whole seed groups; default all of one size), and
            write their records before the next part starts: a run stopped by a time limit keeps what finished.
        sparsity: train only the grid points with these sparsity values now (L1 penalties, k values or p-anneal
            coefficients, as listed in :mod:`.experiments`).
        preload: hold the whole cache on ``device`` (default: on a GPU) instead of reading batches from disk; it is
            loaded once per process, by the first part, and kept for the later parts.
        verbose: print every logged training step; use_wandb, wandb_project: log training to Weights & Biases.
        command: the command line recorded in each record (default: the module alias and ``sys.argv``).
        compile_stacks: ``torch.compile`` each stack of same-shape dictionaries (``trainSAE(compile_stacks=True)``;
            the dictionaries are trained as stacks either way, see :mod:`.stacked`); a mode string of
            :data:`.stacked.COMPILE_MODES` picks the ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs).
        recipe: a key of :data:`.experiments.RECIPES` instead of the scale's recipe (batch size, learning rate,
            warmups; recorded as ``recipe``).
        also: names of further experiments trained in the same invocation (see above); ``archs``, ``dict_sizes``
            and ``sparsity`` then pick from the union of the grids (a value needs to be in one of them).
        time_limit: seconds (from the start of the reproduction) after which no part starts that the slowest
            part so far says would not end in time (:func:`_time_for`); the parts not trained are left for a later
            call of the same command. None: no limit.

    Every step trains on a full batch of ``batch_size`` activations (:func:`train_steps` gives the steps the data
    serves; the learning-rate schedule, step points and records use them). The log says, with the seconds
    elapsed since the start, when the model is loaded, the held-out data drawn, the cache harvested (tokens/s,
    and the build's seconds waiting for batches, writing and fsyncing: :func:`.cache.build_seconds`), and when
    each part's training and evaluation end.

    Raises:
        ValueError: unknown experiment/scale/recipe, a bad device, bad tokens/epochs/seeds/batch and evaluation
            sizes, ``epochs > 1`` without ``cache``, with ``cache`` fewer distinct tokens than one batch, or a
            run of one step, an experiment of ``also`` that is unknown, repeated or reads other data (all checked
            before the model is loaded); a cache holding fewer activations than the run needs (the corpus ran out
            while harvesting).
    """
    plans = shared_plans([name, *also], scale, corpus, recipe)
    plan = plans[0]
    _check_sizes(plan, tokens, epochs, cache, seeds, chunk, batch_size, eval_batches, ce_batches, ce_batch_size)
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"--time-limit must be a number of seconds > 0, got {time_limit}")
    compile_mode(compile_stacks)  # an unknown mode is refused here, before the model loads
    device = device or default_device()
    check_device(device, "--device")
    batch_size = batch_size or plan.recipe.batch_size
    total_tokens = tokens or plan.tokens
    store = Path(results)
    if store.exists() and not store.is_dir():
        raise ValueError(f"--results {store} is a file, not a results store folder")
    steps, unique_tokens = train_steps(total_tokens, batch_size, epochs, cached=cache is not None)
    todos = select_shared_runs(plans, store, archs, dict_sizes, seeds, sparsity, steps)
    todo = runs_to_train(plans, todos, steps)
    if todo:
        _check_steps(steps, total_tokens, batch_size)
    if cache is not None and todo:
        _check_cache_folder(plan, cache, unique_tokens)
    store.mkdir(parents=True, exist_ok=True)  # after every check: a refused command creates nothing
    started_group = not _dist.is_initialized()
    rank, world, local_rank = _dist.init_from_env("gloo", timeout=datetime.timedelta(hours=24))
    try:
        device = _process_device(device, local_rank, world)
        ctx = _Part(name=name, scale=scale, plan=plan, store=store, device=device, batch_size=batch_size,
                    amp=autocast_dtype(autocast, device), steps=steps, total_tokens=total_tokens,
                    unique_tokens=unique_tokens, epochs=epochs, cache=cache,
                    preload=torch.device(device).type == "cuda" if preload is None else preload,
                    compile_stacks=compile_stacks, points=plan.eval_points(steps) if plan.eval_steps else (),
                    time_limit=time_limit, rank=rank, world_size=world, verbose=verbose, use_wandb=use_wandb,
                    wandb_project=wandb_project,
                    command=command or _default_command())
        recorders = [_Recorder(dataclasses.replace(ctx, name=p.experiment.name, plan=p, points=(
                         p.eval_points(steps) if p.eval_steps else ())), _keyed(p, t, steps))
                     for p, t in zip(plans, todos)]
        return _run_share(ctx, todo, chunk, (eval_batches, ce_batches, ce_batch_size), recorders)
    finally:
        if started_group and _dist.is_initialized():
            torch.distributed.destroy_process_group()


def _default_command() -> str:
    """The command line recorded when none is given: this module's alias and ``sys.argv``."""
    return " ".join([Path(sys.executable).name, "-m", "dictionary_learning_aligned.reproduce"] + sys.argv[1:])


def _run_share(ctx: _Part, todo: list[Run], chunk: Optional[int], eval_sizes: tuple,
               recorders: list[_Recorder]) -> list[str]:
    """:func:`run_experiment` after its checks, in process ``ctx.rank`` of ``ctx.world_size`` on ``ctx.device``:
    its share of ``todo`` (:func:`spread_runs`), the cache harvested once, then part by part: train, evaluate at
    every step point some experiment records, and write each experiment's records (``recorders``: one per
    experiment, the first being ``ctx``'s own). ``eval_sizes``: (eval_batches, ce_batches, ce_batch_size) of the
    held-out data."""
    plan, rank, world = ctx.plan, ctx.rank, ctx.world_size
    mine = spread_runs(todo, rank, world)
    print(f"{_who(rank, world)}{ctx.name} @ {ctx.scale}: {len(plan.runs)} dictionaries in the grid, "
          f"{len(recorders[0].runs)} to {'record' if len(recorders) > 1 else 'train'}"
          + _also_note(recorders, len(todo))
          + (f", {len(mine)} of them here on {ctx.device}" if world > 1 else "")
          + f"; recipe {plan.recipe.name}, batch {ctx.batch_size}"
          + (f" ({plan.offline_note})" if plan.offline_note else ""))
    if not todo:
        return []
    if mine or (rank == 0 and ctx.cache is not None):
        _load_model_and_eval_data(ctx, *eval_sizes)
    _harvest_once(ctx)
    written = []
    parts = [part for d in sorted({r.dict_size for r in mine})
             for part in _chunks([r for r in mine if r.dict_size == d], chunk)]
    _say_capped_schedule(ctx)
    pace = 0.0  # the slowest part's seconds (training and evaluation) per feature trained
    for j, runs in enumerate(parts):
        if not _time_for(ctx, runs, pace, parts[j:]):
            break
        t = time.monotonic()
        keys = [training_key(r, ctx.plan, ctx.steps) for r in runs]
        points = sorted({p for rec in recorders if any(k in rec.runs for k in keys) for p in rec.points(ctx.steps)})
        trained = train_part(ctx, runs, j, [p for p in points if p < ctx.steps])
        for point in points:
            written += _evaluate_and_record(ctx, recorders, keys, trained, j, point)
        pace = max(pace, (time.monotonic() - t) / sum(r.dict_size for r in runs))
    return written


def _time_for(ctx: _Part, runs: list[Run], pace: float, left: list[list[Run]]) -> bool:
    """Whether the part ``runs`` can start under ``ctx.time_limit``: its features times ``pace`` (the slowest
    earlier part's seconds per feature, training and evaluation; 0 before the first part, which always starts)
    must end before the limit. If not, say so and what is left (the parts ``left``) for a later call."""
    if ctx.time_limit is None or not pace:
        return True
    elapsed, need = time.monotonic() - ctx.t0, pace * sum(r.dict_size for r in runs)
    if elapsed + need <= ctx.time_limit:
        return True
    _say(ctx, f"time limit: the next part ({len(runs)} dictionaries) needs about {need:.0f} s and "
              f"{max(0.0, ctx.time_limit - elapsed):.0f} s are left; {sum(map(len, left))} dictionaries are left for "
              f"a later call of the same command")
    return False


def _evaluate_and_record(ctx: _Part, recorders: list[_Recorder], keys: list, trained: tuple, j: int,
                         point: int) -> list[str]:
    """After part ``j`` trained (``trained``: :func:`train_part`'s folder, trainers and seconds; ``keys``: its
    runs' :func:`training_key`), evaluate its dictionaries after ``point`` steps that some experiment records
    there, and write each experiment's records (:func:`record_part`); returns the ids written."""
    run_dir, trainers, train_s = trained
    t = time.monotonic()
    wanted = [i for i, k in enumerate(keys) if any(k in rec.runs and point in rec.points(ctx.steps)
                                                   for rec in recorders)]
    dictionaries, metrics = evaluate_part(ctx, run_dir, point, wanted)
    written, counts = [], []
    for rec in recorders:
        members = [(i, rec.runs[k], [o.ctx.name for o in recorders if k in o.runs])
                   for i, k in enumerate(keys) if k in rec.runs and point in rec.points(ctx.steps)]
        if members:
            written += record_part(rec.ctx, members, run_dir, trainers, train_s, dictionaries, metrics,
                                   point if rec.ctx.points else None)
            counts.append(f"{len(members)} of {rec.ctx.name}")
    _say(ctx, f"part {j}: evaluated and recorded {len(wanted)} dictionaries"
              + (f" after {point:,} steps" if point < ctx.steps or ctx.points else "")
              + (f" ({', '.join(counts)})" if len(recorders) > 1 else "") + f" in {time.monotonic() - t:.1f} s")
    return written


@dataclass
class _Recorder:
    """One experiment that records dictionaries of a reproduction's training: its context (``ctx.name``,
    ``ctx.plan``, ``ctx.points``) and its runs still to record, keyed by :func:`training_key`."""

    ctx: _Part
    runs: dict

    def points(self, steps: int) -> tuple:
        """The step counts at which this experiment records its runs of ``steps`` steps (its ``ctx.points``, or
        the end of the run alone)."""
        return self.ctx.points or (steps,)


def _keyed(plan: Plan, runs: list[Run], steps: int) -> dict:
    """``runs`` of ``plan`` keyed by :func:`training_key`."""
    return {training_key(r, plan, steps): r for r in runs}


def _also_note(recorders: list[_Recorder], n_train: int) -> str:
    """For a reproduction of several experiments, what the others add: their records and the dictionaries
    trained in all (empty for one experiment)."""
    if len(recorders) == 1:
        return ""
    return ("; " + "; ".join(f"{r.ctx.name}: {len(r.runs)} to record" + (
        f" (at {len(r.ctx.points)} step points)" if r.ctx.points else "") for r in recorders[1:])
            + f"; {n_train} dictionaries to train in all")


def training_key(run: Run, plan: Plan, steps: int) -> tuple:
    """What run ``run`` of ``plan`` trains, whatever experiment asks for it: its trainer config for ``steps``
    steps (:func:`trainer_config`, the activation width left out) as a sorted tuple. Two runs with the same key,
    of plans reading the same data (:func:`shared_plans`), train the same dictionary."""
    return tuple(sorted(trainer_config(run, 0, steps, plan).items()))


#: the settings of a plan that the experiments of one reproduction must share: the data they train on, and the
#: recipe (the schedule is in :func:`training_key` too, but a different batch size would be a different harvest)
SHARED_SETTINGS = ("model", "layer", "corpus", "tokens", "recipe")


def shared_plans(names: list[str], scale: str, corpus: Optional[str] = None,
                 recipe: Optional[str] = None) -> list[Plan]:
    """The plans of the experiments ``names`` (the first one leads: its name is on the dictionaries' folders) at
    ``scale``, with ``recipe`` (a key of :data:`.experiments.RECIPES`) instead of the scale's.

    Raises:
        ValueError: an unknown experiment, scale or recipe; a name given twice; two plans that differ in one of
            :data:`SHARED_SETTINGS` (the message names it and both values).
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"experiment {repeated[0]!r} is named twice (--also names experiments besides the first)")
    plans = [resolve(n, scale, corpus) for n in names]
    if recipe is not None:
        plans = [dataclasses.replace(p, recipe=RECIPES[recipe]) for p in plans]
    first = plans[0]
    for p in plans[1:]:
        for setting in SHARED_SETTINGS:
            a, b = getattr(first, setting), getattr(p, setting)
            if a != b:
                shown = (lambda v: v.name) if setting == "recipe" else repr
                raise ValueError(f"{p.experiment.name} cannot share training with {first.experiment.name} at "
                                 f"{scale} scale: its {setting} is {shown(b)}, not {shown(a)}")
    return plans


def select_shared_runs(plans: list[Plan], store: Path, archs: Optional[list], dict_sizes: Optional[list],
                       seeds: Optional[int], sparsity: Optional[list], steps: int) -> list[list[Run]]:
    """Per plan, its runs still to record (:func:`select_runs`). With one plan the filters must lie in its grid;
    with several they pick from the union of the grids: each plan takes the values of its own grid, and a plan
    none of whose grid is picked records nothing.

    Raises:
        ValueError: a requested architecture, size or sparsity value in none of the grids.
    """
    if len(plans) == 1:
        return [select_runs(plans[0], store, archs, dict_sizes, seeds, sparsity, steps=steps)]
    check_grid_filters(" + ".join(p.experiment.name for p in plans), [r for p in plans for r in p.runs], archs,
                       dict_sizes, sparsity)
    todos = []
    for p in plans:
        mine = [r for r in p.runs if (not archs or r.arch in archs) and (not dict_sizes or r.dict_size in dict_sizes)
                and (not sparsity or _among(r.sparsity_value, sparsity))]
        todos.append([r for r in select_runs(p, store, seeds=seeds, steps=steps) if r in mine])
    return todos


def runs_to_train(plans: list[Plan], todos: list[list[Run]], steps: int) -> list[Run]:
    """The dictionaries to train for the runs ``todos`` of ``plans``: one run per :func:`training_key` (the first
    plan's when it has one), ordered by dictionary size and architecture, then as the plans list them."""
    chosen: dict[tuple, Run] = {}
    for p, todo in zip(plans, todos):
        for r in todo:
            chosen.setdefault(training_key(r, p, steps), r)
    archs = list(dict.fromkeys(r.arch for r in chosen.values()))
    return sorted(chosen.values(), key=lambda r: (r.dict_size, archs.index(r.arch)))


def _say_capped_schedule(ctx: _Part) -> None:
    """Print which of the recipe's fixed schedule settings were capped at a quarter of this (short) run."""
    capped = [f"{k} {v} -> {max(1, ctx.steps // 4)}" for k, v in ctx.plan.recipe.steps_fixed if v > ctx.steps // 4]
    if capped:
        print(f"{_who(ctx.rank, ctx.world_size)}note: this run has {ctx.steps} steps, so the {ctx.plan.recipe.name} "
              f"recipe's fixed settings are capped at a quarter of it ({', '.join(capped)}, where the architecture "
              f"has them); each trainer's config.json and record hold the values used", flush=True)


def spread_runs(runs: list[Run], rank: int, world: int) -> list[Run]:
    """The share of ``runs`` that process ``rank`` of ``world`` trains: whole stacks (the runs of one dictionary
    size and architecture, trained as one batched model) go to one process, the largest first onto the least
    loaded process (load: dictionaries x dict_size); with fewer stacks than processes, whole seed groups instead.
    Every process computes the same assignment from the same ``runs``.

    Raises:
        ValueError: ``world < 1`` or ``rank`` outside ``0..world-1``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..world-1 and world >= 1, got rank {rank}, world {world}")
    if world == 1:
        return list(runs)
    from .stacked import spread_over_processes

    stacks = [(r.dict_size, r.arch) for r in runs]
    keys = stacks if len(set(stacks)) >= world else [_gid(r) for r in runs]
    owners = spread_over_processes(keys, [r.dict_size for r in runs], world)
    return [r for r, o in zip(runs, owners) if o == rank]


def _process_device(device: str, local_rank: int, world: int) -> str:
    """This process' device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (and is made current) when several processes
    share the grid; any other device is used as given."""
    if world > 1 and device == "cuda":
        device = f"cuda:{local_rank}"
    if torch.device(device).type == "cuda" and torch.device(device).index is not None:
        torch.cuda.set_device(torch.device(device))
    return device


def _who(rank: int, world: int) -> str:
    """A ``[process r/N] `` prefix for messages when several processes share the grid, else nothing."""
    return f"[process {rank}/{world}] " if world > 1 else ""


def _check_sizes(plan: Plan, tokens, epochs, cache, seeds, chunk, batch_size, eval_batches, ce_batches,
                 ce_batch_size) -> None:
    """Refuse bad token, epoch, seed, chunk, batch and evaluation sizes before anything is loaded.

    Raises:
        ValueError: naming the setting and its allowed range.
    """
    if tokens is not None and tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {tokens}")
    if epochs < 1 or (epochs > 1 and cache is None):
        raise ValueError(f"--epochs must be >= 1 and --epochs > 1 needs --cache (got epochs={epochs}, "
                         f"cache={cache!r})")
    if seeds is not None and not 1 <= seeds <= plan.experiment.seeds:
        raise ValueError(f"seeds must be in 1..{plan.experiment.seeds} for {plan.experiment.name}, got {seeds}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    for flag_, v, low in (("batch_size", batch_size, 1), ("eval_batches", eval_batches, 1),
                          ("ce_batches", ce_batches, 0), ("ce_batch_size", ce_batch_size, 1)):
        if v is not None and v < low:
            raise ValueError(f"--{flag_.replace('_', '-')} must be >= {low}, got {v}")


def select_runs(plan: Plan, store: Path, archs: Optional[list] = None, dict_sizes: Optional[list] = None,
                seeds: Optional[int] = None, sparsity: Optional[list] = None,
                steps: Optional[int] = None) -> list[Run]:
    """The runs of ``plan`` still to train: not yet recorded in ``store`` and inside the requested part of the
    grid (``archs``, ``dict_sizes``, the first ``seeds`` seeds, ``sparsity`` values; None: all). For a plan with
    ``eval_steps``, a run is recorded when every step point of a run of ``steps`` steps is (default: the plan's
    token budget at the recipe's batch size without a cache, :func:`train_steps`).

    Raises:
        ValueError: a requested architecture, size or sparsity value that is not in the experiment's grid.
    """
    check_grid_filters(plan.experiment.name, plan.runs, archs, dict_sizes, sparsity)
    steps = steps or train_steps(plan.tokens, plan.recipe.batch_size)[0]
    points = plan.eval_points(steps) if plan.eval_steps else (None,)
    return [r for r in plan.runs if not all(has_record(store, _rid(r, p)) for p in points)
            and (not archs or r.arch in archs)
            and (not dict_sizes or r.dict_size in dict_sizes) and (seeds is None or r.seed < seeds)
            and (not sparsity or _among(r.sparsity_value, sparsity))]


def check_grid_filters(name: str, runs, archs: Optional[list], dict_sizes: Optional[list],
                       sparsity: Optional[list]) -> None:
    """Refuse filters that pick nothing of the grid ``runs`` (of experiment ``name``; None: no filter).

    Raises:
        ValueError: an architecture or dictionary size not in the grid, or a sparsity value not among the chosen
            architectures' values (the message names the grid's values).
    """
    for name_, chosen, allowed in (("arch", archs, {r.arch for r in runs}),
                                   ("dict_size", dict_sizes, {r.dict_size for r in runs})):
        if chosen and not set(chosen) <= allowed:
            raise ValueError(f"{name_} {sorted(set(chosen) - allowed)} not in the {name} grid {sorted(allowed)}")
    values = sorted({float(r.sparsity_value) for r in runs if not archs or r.arch in archs})
    if sparsity and not all(_among(v, values) for v in sparsity):
        raise ValueError(f"sparsity {sorted(sparsity)} not all in the {name} grid's values {values} "
                         f"(of the chosen architectures)")


def _load_model_and_eval_data(ctx: _Part, eval_batches: int, ce_batches: int, ce_batch_size: int) -> None:
    """Load the plan's language model into ``ctx`` and draw the held-out evaluation data once
    (:func:`.pipeline.load_model`, :func:`.pipeline.heldout_data`)."""
    from . import pipeline

    t = time.monotonic()
    ctx.model = pipeline.load_model(ctx.plan.model, ctx.plan.layer, ctx.device)
    _say(ctx, f"loaded {ctx.plan.model} (layer {ctx.plan.layer}) on {ctx.device} in {time.monotonic() - t:.1f} s")
    ctx.harvest = pipeline.Harvest(ctx.model, corpus=ctx.plan.corpus, batch_size=ctx.batch_size,
                                   refresh_batch_size=32 if ctx.scale == "smoke" else 256, device=ctx.device)
    t = time.monotonic()
    ctx.heldout = pipeline.heldout_data(ctx.harvest, eval_batches, ce_batches, ce_batch_size)
    _say(ctx, f"drew the held-out data (activation batches {len(ctx.heldout.acts)}, CE batches "
              f"{len(ctx.heldout.ce_tokens)}) in {time.monotonic() - t:.1f} s")


def _say(ctx: _Part, message: str) -> None:
    """Print one line of the reproduction's log: the process (:func:`_who`), the seconds since it started
    (``ctx.t0``) and ``message``."""
    print(f"{_who(ctx.rank, ctx.world_size)}[{time.monotonic() - ctx.t0:7.1f} s] {message}", flush=True)


def _cache_location(ctx: _Part) -> tuple[Path, dict]:
    """Where the plan's activation cache lives under ``ctx.cache`` and the metadata it must carry."""
    from .pipeline import cache_location

    return cache_location(ctx.cache, ctx.plan.model, ctx.plan.layer, ctx.plan.corpus, ctx.unique_tokens)


def _check_cache_folder(plan: Plan, cache: str, unique_tokens: int) -> None:
    """Refuse, before any model is loaded, a cache location that holds something other than a cache or an
    interrupted build of ours (nothing is deleted), or a complete cache of other settings.

    Raises:
        FileExistsError: a foreign file or folder where the cache goes. ValueError: a cache whose metadata differs
            (the message names the field), or one with fewer activations than ``unique_tokens``
            (:func:`_cached_tokens`).
    """
    from .cache import refuse_foreign
    from .pipeline import cache_location

    if Path(cache).exists() and not Path(cache).is_dir():
        raise FileExistsError(f"--cache {cache} is a file, not a folder of activation caches")
    path, meta = cache_location(cache, plan.model, plan.layer, plan.corpus, unique_tokens)
    refuse_foreign(path)
    if (path / "meta.json").is_file():
        _cached_tokens(path, meta, unique_tokens)


def _cached_tokens(path: Path, meta: dict, unique_tokens: int) -> int:
    """The activations the complete cache at ``path`` holds (its metadata and shard list are read; the shards
    stay on disk), refused unless its metadata matches ``meta`` and it holds the ``unique_tokens`` the run's steps
    were planned for (:func:`train_steps`), so that no run asks for more batches than the cache serves.

    Raises:
        ValueError: other metadata (the message names the field), or fewer activations (the corpus ran out while
            harvesting).
    """
    from .pipeline import open_cache

    n = open_cache(path, 1, expect=meta).n_tokens
    if n < unique_tokens:
        raise ValueError(f"the activation cache {path.name} holds {n:,} activations, fewer than the {unique_tokens:,} "
                         f"distinct tokens this run needs (its corpus ran out while harvesting); pass a --tokens of "
                         f"at most {n:,} x --epochs (a new cache is harvested for it) or a larger --corpus")
    return n


def _harvest_once(ctx: _Part) -> None:
    """With a cache folder: process 0 harvests the plan's cache when it is missing while every other process
    waits for it (:func:`.pipeline.harvest_once`); every process then checks that it holds the run's distinct
    tokens (:func:`_cached_tokens`) and says how long the harvest took.

    Raises:
        ValueError: a cache with fewer activations than the run needs (the corpus ran out).
    """
    if ctx.cache is None:
        return
    from .cache import build_seconds
    from .pipeline import harvest_into, harvest_once

    path, meta = _cache_location(ctx)
    built, t = not (path / "meta.json").is_file(), time.monotonic()
    harvest_once(path, lambda p: harvest_into(p, ctx.harvest, ctx.unique_tokens))
    seconds, n = time.monotonic() - t, _cached_tokens(path, meta, ctx.unique_tokens)
    if not built:
        _say(ctx, f"reusing the activation cache {path.name} ({n:,} activations)")
    elif ctx.rank == 0:
        split = build_seconds(path)
        _say(ctx, f"harvested {n:,} activations into {path.name} in {seconds:.1f} s "
                  f"({n / max(seconds, 1e-9):,.0f} tokens/s)"
             + (f"; waiting for batches {split['waiting_for_batches']:.1f} s, writing {split['writing']:.1f} s "
                f"(in the background), fsync {split['fsync']:.1f} s" if split else ""))
    else:
        _say(ctx, f"waited {seconds:.1f} s for process 0 to harvest the activation cache {path.name}")


def _train_data(ctx: _Part):
    """The training activations: a fresh buffer, or (with a cache folder) the cached harvest of the plan's
    model, layer, corpus and token count (built by :func:`_harvest_once`), ``ctx.epochs`` seeded shuffles of it
    served in full batches only (``drop_last``): ``ctx.steps`` batches (:func:`train_steps`), the same stream on
    every call, so each part trains on the same batches. The cache is opened (and preloaded) by the first call
    only and kept in ``ctx.opened_cache``; later calls serve it again from the start
    (:meth:`.cache.ActivationCache.with_order`: the batches of a fresh open)."""
    from . import pipeline

    if ctx.cache is None:
        return pipeline.activation_buffer(ctx.harvest, "train", pipeline.buffer_ctxs(ctx.total_tokens))
    path, meta = _cache_location(ctx)
    if ctx.opened_cache is None or ctx.opened_cache.path != path:
        ctx.opened_cache = pipeline.open_cache(path, ctx.batch_size, ctx.device, expect=meta, epochs=ctx.epochs,
                                               preload=ctx.preload, drop_last=True)
        return ctx.opened_cache
    return ctx.opened_cache.with_order(batch_size=ctx.batch_size, epochs=ctx.epochs, seed=0, drop_last=True)


def train_part(ctx: _Part, runs: list[Run], j: int, saves: tuple = ()) -> tuple[Path, list, float]:
    """Train the dictionaries of ``runs`` (one size) together on the same batches into a new folder of the store,
    with a checkpoint after each step point of ``saves`` (each below ``ctx.steps``; ``trainer_i/checkpoints/step_{p
    - 1}``: the dictionary after ``p`` steps); returns (that folder, the trainers, the training seconds)."""
    from .training import trainSAE

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    part = f"{j}" if ctx.world_size == 1 else f"p{ctx.rank}-{j}"  # processes may start a part in the same second
    run_dir = ctx.store / "dictionaries" / f"{ctx.name}__{ctx.scale}__d{runs[0].dict_size}__{stamp}__{part}"
    _say(ctx, f"part {j}: training {len(runs)} dictionaries of {runs[0].dict_size} features for {ctx.steps:,} steps")
    t0, reused = time.time(), ctx.opened_cache is not None
    _forget_compiled_stacks(ctx)
    data = _train_data(ctx)
    if ctx.cache is not None:
        _say(ctx, f"part {j}: opened the cache{' onto ' + ctx.device if ctx.preload else ''} in "
                  f"{time.time() - t0:.1f} s" + (" (reused: opened by an earlier part)" if reused else ""))
    trainers = trainSAE(data, [trainer_config(r, ctx.model.d_model, ctx.steps, ctx.plan) for r in runs],
                        ctx.steps, save_dir=run_dir, save_steps=[p - 1 for p in saves],
                        normalize_activations=True, device=ctx.device,
                        autocast_dtype=ctx.amp, verbose=ctx.verbose, log_steps=max(1, ctx.steps // 10),
                        use_wandb=ctx.use_wandb, wandb_project=ctx.wandb_project, compile_stacks=ctx.compile_stacks,
                        run_cfg={"experiment": ctx.name, "scale": ctx.scale, "model": ctx.plan.model,
                                 "corpus": ctx.plan.corpus or "bundled"})
    seconds = time.time() - t0
    _say(ctx, f"part {j}: trained {trainers[0].steps_done:,} steps in {seconds:.1f} s{_pace(trainers[0].log)}")
    return run_dir, trainers, seconds


def _forget_compiled_stacks(ctx: _Part) -> None:
    """With compiled stacks, drop the compiled code of earlier parts (``torch._dynamo.reset``) before a part
    trains: every stack shares the loss's code object, Dynamo keeps at most 8 compiled versions of it
    (``recompile_limit``), and a part past that limit would train eagerly, several times slower, with only a log
    warning (the ninth session's fourth `gemma` part hit it). Each part compiles its own stack anyway."""
    if ctx.compile_stacks:
        torch._dynamo.reset()


def _pace(log: list) -> str:
    """Where a run's training time went, from its log entries' ``step`` and ``elapsed_s``: the seconds up to the
    second logged step (the first steps, with any compilation) and the steps per second after it; empty with
    fewer than three entries."""
    if len(log) < 3:
        return ""
    first, last = log[1], log[-1]
    rate = (last["step"] - first["step"]) / max(last["elapsed_s"] - first["elapsed_s"], 1e-9)
    return (f" (steps 0-{first['step']:,} took {first['elapsed_s']:.1f} s, any compilation included, then "
            f"{rate:,.1f} steps/s)")


def evaluate_part(ctx: _Part, run_dir: Path, point: Optional[int], indices: list[int]) -> tuple[dict, dict]:
    """Load the trained dictionaries ``run_dir/trainer_{i}`` for ``i`` in ``indices`` (at step point ``point``:
    their checkpoints after that many steps, :func:`dictionary_dir`) and evaluate them on the held-out data;
    returns (dictionaries, metrics), both keyed by ``i``.

    Raises:
        CheckpointError: a dictionary or checkpoint folder that cannot be read (e.g. training stopped early).
    """
    from .pipeline import evaluate_dictionaries

    folders = [dictionary_dir(run_dir / f"trainer_{i}", point, ctx.steps) for i in indices]
    aes, metrics = evaluate_dictionaries(folders, ctx.heldout, ctx.model, ctx.device, per_feature=True)
    return dict(zip(indices, aes)), dict(zip(indices, metrics))


def dictionary_dir(trainer_dir: Path, point: Optional[int], steps: int) -> Path:
    """The folder of a run's dictionary after ``point`` steps: ``trainer_dir`` itself for the end of the run
    (``point`` None or ``steps``), else its checkpoint ``trainer_dir/checkpoints/step_{point - 1}`` (trainSAE names
    a checkpoint by the index of the last step it holds).

    Raises:
        ValueError: ``point`` outside ``1..steps``.
    """
    from .training import CHECKPOINT_PREFIX

    if point is None or point == steps:
        return Path(trainer_dir)
    if not 1 <= point < steps:
        raise ValueError(f"step point {point} is outside the run's 1..{steps} steps")
    return Path(trainer_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{point - 1}"


def record_part(ctx: _Part, members: list[tuple], run_dir: Path, trainers: list, train_s: float,
                dictionaries: dict, metrics: dict, point: Optional[int] = None) -> list[str]:
    """Write one record of experiment ``ctx.name`` per member ``(i, run, trained_for)`` of a trained and evaluated
    part (``i``: its trainer's index in the part, the key of ``dictionaries`` and ``metrics``; ``trained_for``: the
    experiments that record this dictionary, kept in the record as ``trained_for`` when there are several), with
    its group's cross-seed stability; returns the record ids. With ``point`` (a step point of ``ctx.points``) the
    records are those of the dictionaries after ``point`` steps (ids with ``__step{point}``, ``steps``,
    ``checkpoint_of``: :func:`_record`)."""
    from .stability import stability

    groups: dict[str, list[tuple]] = {}
    for m in members:
        groups.setdefault(_gid(m[1], point), []).append(m)
    written = []
    for gid, group in groups.items():
        stab = stability([dictionaries[i] for i, _, _ in group]) if len(group) > 1 else None
        for j, (i, r, trained_for) in enumerate(group):
            rec = _record(ctx, r, gid, trainers[i], dictionaries[i], dict(metrics[i]), stab, j,
                          run_dir / f"trainer_{i}", point)
            rec.update(train_seconds_all_dictionaries_of_this_size=round(train_s, 1),  # of its part with --chunk
                       trained_together=len(trainers))
            if len(trained_for) > 1:
                rec["trained_for"] = trained_for
            write_record(ctx.store, rec)
            written.append(rec["id"])
    return written


def _record(ctx: _Part, r: Run, gid: str, trainer, ae, m: dict, stab: Optional[dict], j: int,
            trainer_dir: Path, point: Optional[int] = None) -> dict:
    """The record of one run (:mod:`.records`): settings, metrics, alignment scores, per-feature data, the
    stability of its group (``stab``, it being member ``j``), training log and the dictionary's path. At a step
    point ``point`` (:func:`record_part`): the dictionary after ``point`` steps, its tokens, the log up to it and
    ``checkpoint_of`` (the run's final dictionary folder)."""
    from .alignment import alignment_scores

    summary, fired = m.pop("alignment"), m.pop("fired")
    plan = ctx.plan
    if point is None or point == ctx.steps:  # the end of the run: what it trained on
        steps, tokens = trainer.steps_done, trainer.tokens_seen
    else:  # a checkpoint: every batch before it was full (train_steps)
        steps, tokens = point, min(trainer.tokens_seen, point * ctx.batch_size)
    per_pass = max(1, ctx.steps // ctx.epochs)  # batches of one pass over the cache (train_steps)
    rec = {
        "schema": SCHEMA_VERSION, "id": _rid(r, point), "experiment": ctx.name, "scale": ctx.scale,
        "model": plan.model, "paper_model": plan.experiment.paper_model, "offline_note": plan.offline_note,
        "layer": plan.layer, "corpus": plan.corpus or "bundled", "train_tokens": tokens,
        "plan_tokens": plan.tokens, "unique_tokens": min(ctx.unique_tokens, tokens),
        "epochs": min(ctx.epochs, -(-steps // per_pass)), "recipe": plan.recipe.name, "steps": steps,
        "batch_size": ctx.batch_size,
        "trained_on": {"device": ctx.device, "process": ctx.rank, "processes": ctx.world_size}, "arch": r.arch,
        "alignment": r.alignment, "alignment_penalty": r.alignment_penalty, "dict_size": r.dict_size,
        "sparsity": _sparsity(r), "seed": r.seed, "group": gid, "trainer": trainer.config, "metrics": m,
        "alignment_scores": summary,
        "per_feature": {
            "alignment_score": [round(v, 5) for v in alignment_scores(ae).cpu().tolist()],
            "max_cos_other_seeds": [round(v, 4) for v in stab["per_feature_max_cos"][j]] if stab else None,
            "fired": fired},
        "stability": None if stab is None else {k: stab[k] for k in (
            "n_runs", "mcs", "frac_above_0.7", "frac_above_0.9", "hungarian_mean_cos")},
        "training_log": [e for e in trainer.log if e.get("step", 0) <= steps],
        "paths": {"dictionary": str(dictionary_dir(trainer_dir, point, ctx.steps).relative_to(ctx.store))},
        "command": ctx.command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if point is not None:
        rec["checkpoint_of"] = str(trainer_dir.relative_to(ctx.store))
    return rec


def _among(value: float, values) -> bool:
    """Whether a sparsity value is one of ``values`` (up to float rounding: ``0.04`` from the command line)."""
    return any(math.isclose(value, v, rel_tol=1e-9) for v in values)


def _chunks(runs: list, n: Optional[int]) -> list[list]:
    """``runs`` cut into parts of at most ``n`` dictionaries (None: one part), never splitting the seeds of one
    group (a group larger than ``n`` is a part of its own), in order."""
    groups: dict[str, list] = {}
    for r in runs:
        groups.setdefault(_gid(r), []).append(r)
    parts: list[list] = []
    for members in groups.values():
        if parts and (n is None or len(parts[-1]) + len(members) <= n):
            parts[-1].extend(members)
        else:
            parts.append(list(members))
    return parts


def _rid(r: Run, steps: Optional[int] = None) -> str:
    """The record id of run ``r`` (at step point ``steps``, for an experiment with ``eval_steps``)."""
    return record_id(r.experiment, r.arch, r.alignment, r.dict_size, _sparsity(r), r.seed,
                     alignment_penalty=r.alignment_penalty, steps=steps)


def _gid(r: Run, steps: Optional[int] = None) -> str:
    """The group id of run ``r`` (at step point ``steps``, for an experiment with ``eval_steps``)."""
    return group_id(r.experiment, r.arch, r.alignment, r.dict_size, _sparsity(r),
                    alignment_penalty=r.alignment_penalty, steps=steps)


def _sparsity(r: Run) -> dict:
    """The ``{"name", "value"}`` sparsity of run ``r``, as records hold it."""
    return {"name": r.sparsity_name, "value": r.sparsity_value}


def experiments_help() -> str:
    """The experiments and scales, for ``reproduce -h``: per experiment its grid (alignment entries as written,
    e.g. ``penalty:0.1``), its step points when it records checkpoints, and the paper figures it feeds or what it
    is for (read from :data:`.experiments.EXPERIMENTS`, so the help cannot drift from the grids)."""
    lines = ["experiments (grids in dictionary_learning_aligned/experiments.py):"]
    for e in EXPERIMENTS.values():
        figs = ("feeds Figs. " + ", ".join(map(str, e.figures)) if e.figures
                else "not in the paper" + (f": {e.note}" if e.note else " (an extension): feeds none of its figures"))
        modes = ", ".join("standard" if a is None else a for a in e.alignments)
        line = (f"{e.name:10s} {', '.join(e.archs)} x ({modes}); dict_size {', '.join(map(str, e.dict_sizes))}; "
                f"{e.seeds} seed(s); tokens smoke/small/paper {e.tokens['smoke']:,}/{e.tokens['small']:,}/"
                f"{e.tokens['paper']:,}; {figs}")
        lines += textwrap.wrap(line, 110, initial_indent="  ", subsequent_indent=" " * 13)
    lines += textwrap.wrap("scales: smoke (minutes on a CPU, checks the pipeline, the numbers mean nothing; the "
                           "grids above shrink to one dict_size of 256, at most 2 seeds and the two extreme sparsity "
                           "values), small (one GPU, offline models, local text), paper (the paper's models on the "
                           "Pile; needs the hub)", 110, subsequent_indent="  ")
    return "\n".join(lines)


@dataclass
class ReproduceConfig:
    """Settings of ``python -m dictionary_learning_aligned reproduce`` (the experiment first, then flags)."""

    experiment: str = field(positional=True, metavar="EXPERIMENT")
    """the experiment to run: one of those described at the end of this help"""
    time_limit: Optional[float] = None
    """seconds from the start after which no part starts that would not end in time (judged from the slowest part
    so far); the rest is left for a later call of the same command (default: no limit)"""
    also: Optional[str] = None
    """comma list of further experiments to train in the same run, on the same harvest: a dictionary that several
    of them ask for (e.g. every budget run is a main run) is trained once and recorded for each (they must share
    model, layer, corpus, tokens and recipe); --archs, --dict-sizes and --sparsity pick from all their grids"""
    scale: str = choice(*SCALES, default="smoke")
    """token budget, models and grid: smoke (CPU check), small (one GPU), paper (the paper's budgets)"""
    results: str = "results/store"
    """results store folder: records/ (one JSON per dictionary) and dictionaries/ (weights); existing records are
    kept and skipped"""
    device: Optional[str] = None
    """device for the model and the SAEs (default: cuda when available, else cpu)"""
    corpus: Optional[str] = None
    """training text for smoke/small: a txt/jsonl(.gz) file or folder, or a Hugging Face dataset (default: the
    bundled corpus)"""
    batch_size: Optional[int] = None
    """activations per training step (default: the recipe's: 2048 at small and paper scale, 1024 at smoke)"""
    recipe: Optional[str] = choice(*RECIPES, default=None)
    """training recipe instead of the scale's (saebench at small and paper scale: batch 2048, lr 3e-4, warmups
    1000/5000 steps, capped at a quarter of a shorter run, lr decay over the last fifth; scaled at smoke: every
    schedule setting a fraction of the run)"""
    autocast: str = choice(*AUTOCAST_CHOICES, default="auto")
    """autocast dtype of SAE training (auto: bfloat16 on CUDA, float32 on CPU)"""
    archs: Optional[str] = None
    """comma-separated subset of the grid's architectures to train now (default: all)"""
    dict_sizes: Optional[str] = None
    """comma-separated subset of the grid's dictionary sizes to train now (default: all)"""
    cache: Optional[str] = None
    """harvest the training activations once into this folder and reuse them for every dictionary size and later
    invocation (default: harvest into memory each time)"""
    tokens: Optional[int] = None
    """training tokens per dictionary instead of the scale's budget (recorded with each result)"""
    epochs: int = 1
    """passes over the cached activations (needs --cache): ceil(tokens/epochs) distinct tokens are harvested"""
    seeds: Optional[int] = None
    """train only the first N seeds of the grid now (default: all)"""
    chunk: Optional[int] = None
    """train at most N dictionaries together (whole seed groups) and record them before the next part, so a run
    cut short keeps what finished (default: all of one dictionary size together)"""
    sparsity: Optional[str] = None
    """comma list: train only the grid points with these sparsity values now (L1 penalty, k or p-anneal
    coefficient; default: all)"""
    eval_batches: int = 10
    """held-out batches (of --batch-size activations) for reconstruction metrics"""
    ce_batches: int = 4
    """held-out batches of contexts for CE losses (0: no CE losses)"""
    ce_batch_size: int = 8
    """contexts (of 128 tokens) per CE batch"""
    no_preload: bool = field(False, action="store_true")
    """read cached batches from disk even on a GPU (default: a cache is held on the GPU)"""
    verbose: bool = field(False, action="store_true")
    """print every logged training step and third-party messages"""
    compile: bool = field(False, action="store_true")
    """torch.compile each stack of same-shape dictionaries (about 2x faster steps on an H200 after a minute of
    compilation per stack; see docs/stacked.md)"""
    compile_mode: Optional[str] = None
    """with --compile: the torch.compile mode, one of default, reduce-overhead (CUDA graphs too; for small
    launch-bound stacks), max-autotune, max-autotune-no-cudagraphs"""
    wandb: bool = field(False, action="store_true")
    """log training losses to Weights & Biases (pip install .[wandb]; project from --wandb-project)"""
    wandb_project: str = ""
    """Weights & Biases project (default: wandb's own default)"""


def build_parser(prog: str = "python -m dictionary_learning_aligned reproduce"):
    """The command line of ``reproduce`` (a :func:`.cli.config_parser` over :class:`ReproduceConfig`)."""
    from .cli import config_parser

    return config_parser(prog, ReproduceConfig, __doc__, epilog=experiments_help())


def run_config(cfg: ReproduceConfig, command: Optional[str] = None) -> list[str]:
    """:func:`run_experiment` with the settings of ``cfg`` (comma lists parsed); returns the record ids written.

    Raises:
        ValueError: a malformed comma list, and everything :func:`run_experiment` refuses.
    """
    return run_experiment(
        cfg.experiment, cfg.scale, cfg.results, device=cfg.device, corpus=cfg.corpus, batch_size=cfg.batch_size,
        autocast=cfg.autocast, archs=comma_list(cfg.archs, allow_empty=False) if cfg.archs else None,
        dict_sizes=comma_list(cfg.dict_sizes, int, "--dict-sizes") if cfg.dict_sizes else None,
        cache=cfg.cache, tokens=cfg.tokens, epochs=cfg.epochs, seeds=cfg.seeds,
        preload=False if cfg.no_preload else None, eval_batches=cfg.eval_batches, ce_batches=cfg.ce_batches,
        ce_batch_size=cfg.ce_batch_size, chunk=cfg.chunk, verbose=cfg.verbose, use_wandb=cfg.wandb,
        wandb_project=cfg.wandb_project, command=command, compile_stacks=compile_setting(cfg.compile, cfg.compile_mode),
        recipe=cfg.recipe, time_limit=cfg.time_limit,
        also=comma_list(cfg.also, flag="--also", allow_empty=False) if cfg.also is not None else (),
        sparsity=comma_list(cfg.sparsity, float, "--sparsity", allow_empty=False)
        if cfg.sparsity is not None else None)


def compile_setting(compile: bool, mode: Optional[str]) -> bool | str:
    """``compile_stacks`` from the ``--compile`` flag and ``--compile-mode``: False, True, or the mode string.

    Raises:
        ValueError: a mode without ``--compile``, or a mode not in :data:`.stacked.COMPILE_MODES`
            (:func:`.stacked.compile_mode`; the message names them).
    """
    if mode is None:
        return bool(compile)
    if not compile:
        raise ValueError(f"--compile-mode {mode} needs --compile")
    compile_mode(mode)  # refuses a mode not in COMPILE_MODES, naming them
    return mode


def main(argv: Optional[list[str]] = None, prog: str = "python -m dictionary_learning_aligned reproduce") -> int:
    """Command line of the reproduction (see the module docstring and ``-h``); also the alias
    ``python -m dictionary_learning_aligned.reproduce``. Returns the exit status (2 for bad input)."""
    import shlex

    from .cli import parse_config, run_reporting_errors, set_verbosity

    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = parse_config(build_parser(prog), argv)
    set_verbosity(cfg.verbose)

    world = int(os.environ.get("WORLD_SIZE", 1))
    launcher = f"torchrun --nproc_per_node {os.environ.get('LOCAL_WORLD_SIZE', world)} -m " if world > 1 else ""

    def work(cfg: ReproduceConfig) -> None:
        command = launcher + " ".join([prog.removeprefix("python -m ") if launcher else prog,
                                       *map(shlex.quote, argv)])
        ids = run_config(cfg, command=command)
        who = f"[process {os.environ['RANK']}] " if world > 1 else ""
        print(f"{who}wrote {len(ids)} record(s) to {Path(cfg.results) / 'records'}")

    return run_reporting_errors(work, cfg, (ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
