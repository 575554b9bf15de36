"""The reproduction of an experiment of the paper, run (the command line is :mod:`.command`:
``python -m dictionary_learning_aligned reproduce EXPERIMENT --scale smoke|small|paper``, or its alias
``python -m dictionary_learning_aligned.reproduce``).

For each dictionary size of the experiment's grid (:mod:`.experiments`), activations are harvested once and every
dictionary still missing from the results store is trained on the same batches; each is then evaluated on
held-out text and written as one record (:mod:`.records`), with its group's cross-seed stability. Re-running skips
finished entries. :func:`run_experiment` runs it: its checks, then the model and the held-out data loaded once, the
cache harvested once, and part by part :func:`train_part`, :func:`evaluate_part` and
:func:`.recording.record_part`.

Several GPUs: run under ``torchrun --nproc_per_node N`` (one process per GPU). The grid is spread over the
processes in whole stacks (:func:`.selection.spread_runs`); process ``r`` uses ``cuda:r`` (its ``LOCAL_RANK``) when
``--device`` is ``cuda``; with ``--cache``, process 0 harvests the cache once while the others wait, and each
process then reads (or preloads onto its GPU) the same cache. Processes do not communicate while training, so
each writes its own records as its parts finish.

Which runs are trained is :mod:`.selection`, what a record holds :mod:`.recording`, what every part shares
:mod:`.context`.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch

from .. import distributed as _dist
from ..cli import default_device
from ..dtypes import autocast_dtype, check_device, effective_harvest_precision
from ..experiments import Plan, Run
from ..records import has_record
from ..stacked import compile_mode
from .context import Context
from .recording import _rid, dictionary_dir, record_part
from .selection import (_check_sizes, _check_steps, _chunks, runs_to_train, select_shared_runs, shared_plans,
                        spread_runs, train_steps, trainer_config, training_key)


def run_experiment(name: str, scale: str, results: str, device: Optional[str] = None, corpus: Optional[str] = None,
                   batch_size: Optional[int] = None, autocast: str = "auto", eval_batches: int = 10,
                   ce_batches: int = 4, ce_batch_size: int = 8, archs: Optional[list] = None,
                   dict_sizes: Optional[list] = None, cache: Optional[str] = None, tokens: Optional[int] = None,
                   epochs: int = 1, seeds: Optional[int] = None, preload: Optional[bool] = None,
                   sparsity: Optional[list] = None, chunk: Optional[int] = None, verbose: bool = True,
                   use_wandb: bool = False, wandb_project: str = "", command: Optional[str] = None,
                   compile_stacks: bool | str = False, recipe: Optional[str] = None,
                   also: Sequence[str] = (), time_limit: Optional[float] = None,
                   harvest_precision: str = "float32", alignments: Optional[list] = None) -> list[str]:
    """Train, evaluate and record every missing dictionary of an experiment (and of the experiments ``also``);
    returns the ids written (by this process).

    The steps: :func:`.selection.select_runs` (the grid points still missing from the store), this process' share
    of them (:func:`.selection.spread_runs`), then per part of one dictionary size (:func:`.selection._chunks`)
    :func:`train_part`, :func:`evaluate_part` and :func:`.recording.record_part`. An experiment with ``eval_steps``
    (``budget``) trains each run once for the full budget, saving checkpoints at those steps, and evaluates and
    records every step point (:meth:`.experiments.Plan.eval_points`) from them: one record per run and step point,
    with ``steps`` and ``checkpoint_of``, and its group's cross-seed stability at that step.
    Several GPUs (``torchrun``): see the module docstring.

    Several experiments at once (``also``): their grids are trained together on one harvest, and a dictionary
    that two of them ask for (the same trainer config, :func:`.selection.training_key`; e.g. every ``budget`` run is a
    ``main`` run, two thirds of ``tying`` are) is trained once and recorded for each, under each experiment's id
    and at each one's step points (``trained_for`` in the records names them all). The experiments must read the
    same data: the same model, layer, corpus, token budget and recipe (:func:`.selection.shared_plans`).

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
            into ``cache/<model>_L<layer>_<corpus>_<tokens>`` (float16; ``_tf32`` appended for a TF32 harvest) and
            reused by every dictionary size and every later invocation with the same model, layer, corpus, token
            count and harvest precision.
        tokens: training tokens per dictionary instead of the scale's budget (recorded as ``train_tokens``, with
            ``plan_tokens`` the scale's value), e.g. the longest run that fits a time limit.
        epochs: passes over the cached activations (needs ``cache``): ``ceil(tokens / epochs)`` distinct tokens
            are harvested and each pass trains on full batches of a fresh shuffle of them
            (:func:`.selection.train_steps`; recorded as ``unique_tokens`` and ``epochs``).
        seeds: train only the first ``seeds`` seeds of the grid now (a group's stability is computed over the
            seeds trained in one call: seeds a later call adds are compared among themselves, not with these).
        chunk: train at most this many dictionaries together (whole seed groups; default all of one size), and
            write their records before the next part starts: a run stopped by a time limit keeps what finished.
        sparsity: train only the grid points with these sparsity values now (L1 penalties, k values or p-anneal
            coefficients, as listed in :mod:`.experiments`).
        alignments: train only these entries of the grid's ``alignments`` now, spelled as in
            :attr:`.experiments.Experiment.alignments` (``"standard"``, ``"project"``, ``"tied"``, ``"rescale"``,
            ``"projection"``, ``"penalty:0.1"``; read by :func:`.experiments.parse_alignment`, so ``"penalty:0.10"``
            is ``"penalty:0.1"``), e.g. ``["tied"]`` for the ``tying`` runs that ``main`` does not train. A seed
            group is one alignment entry's seeds, so the filter keeps groups whole and their stability is that of
            all their seeds.
        preload: hold the whole cache on ``device`` instead of reading batches from disk (default None: on a GPU
            whose free memory is at least 2.5x the cache, :func:`.cache.fits_on_device`, said in the log); it is
            loaded once per process, by the first part, and kept for the later parts.
        verbose: print every logged training step; use_wandb, wandb_project: log training to Weights & Biases.
        command: the command line recorded in each record (default: the module alias and ``sys.argv``).
        compile_stacks: ``torch.compile`` each stack of same-shape dictionaries (``trainSAE(compile_stacks=True)``;
            the dictionaries are trained as stacks either way, see :mod:`.stacked`); a mode string of
            :data:`.stacked.COMPILE_MODES` picks the ``torch.compile`` mode (``"reduce-overhead"``: CUDA graphs).
        recipe: a key of :data:`.experiments.RECIPES` instead of the scale's recipe (batch size, learning rate,
            warmups; recorded as ``recipe``).
        also: names of further experiments trained in the same invocation (see above); ``archs``, ``dict_sizes``,
            ``sparsity`` and ``alignments`` then pick from the union of the grids (a value needs to be in one of
            them).
        time_limit: seconds (from the start of the reproduction) after which no part starts that the slowest
            part so far says would not end in time (:func:`_time_for`), and none once they have passed (the first
            part too: loading the model and harvesting may use them up); the parts not trained are left for a
            later call of the same command. None: no limit.
        harvest_precision: the float32 matmul precision of the language model's forward passes that harvest the
            training activations (into the cache, or the training buffer without one): ``"float32"`` (the
            default) or ``"tf32"`` (TF32 tensor-core matmuls, about 2x faster forward passes on an H200, error
            about 6e-4 relative per token: docs/training.md), set for each forward pass only and restored after
            it. On a device without TF32 (a CPU, a GPU older than Ampere) ``"tf32"`` changes nothing: the run says
            so and harvests, caches and records ``"float32"``. The held-out evaluation data and the CE losses are
            float32 either way. Recorded as ``harvest_precision`` in the cache's metadata and in every record; a
            cache of another precision is never reused for the run.

    Every step trains on a full batch of ``batch_size`` activations (:func:`.selection.train_steps` gives the
    steps the data serves; the learning-rate schedule, step points and records use them). The log says, with the seconds
    elapsed since the start, when the model is loaded, the held-out data drawn, the cache harvested (tokens/s,
    and the build's seconds waiting for batches, writing and fsyncing: :func:`.cache.build_seconds`), and when
    each part's training and evaluation end.

    Raises:
        ValueError: unknown experiment/scale/recipe/harvest precision, a bad device, bad tokens/epochs/seeds/batch
            and evaluation sizes, ``epochs > 1`` without ``cache``, with ``cache`` fewer distinct tokens than one
            batch, or a run of one step, an experiment of ``also`` that is unknown, repeated or reads other data,
            a filter value in none of the grids or a malformed alignment entry (all checked before the model is
            loaded); a cache holding fewer activations than the run needs (the corpus ran out while harvesting).
    """
    plans = shared_plans([name, *also], scale, corpus, recipe)
    plan = plans[0]
    _check_sizes(plan, tokens, epochs, cache, seeds, chunk, batch_size, eval_batches, ce_batches, ce_batch_size,
                 time_limit)
    compile_mode(compile_stacks)  # an unknown mode is refused here, before the model loads
    device = device or default_device()
    check_device(device, "--device")
    precision = effective_harvest_precision(harvest_precision, device)
    batch_size = batch_size or plan.recipe.batch_size
    total_tokens = tokens or plan.tokens
    store = Path(results)
    if store.exists() and not store.is_dir():
        raise ValueError(f"--results {store} is a file, not a results store folder")
    steps, unique_tokens = train_steps(total_tokens, batch_size, epochs, cached=cache is not None)
    todos = select_shared_runs(plans, store, archs, dict_sizes, seeds, sparsity, steps, alignments)
    todo = runs_to_train(plans, todos, steps)
    if todo:
        _check_steps(steps, total_tokens, batch_size)
    if cache is not None and todo:
        _check_cache_folder(plan, cache, unique_tokens, precision)
    store.mkdir(parents=True, exist_ok=True)  # after every check: a refused command creates nothing
    started_group = not _dist.is_initialized()
    rank, world, local_rank = _dist.init_from_env("gloo", timeout=datetime.timedelta(hours=24))
    try:
        device = _process_device(device, local_rank, world)
        if precision != harvest_precision and rank == 0:
            _say_no_tf32(harvest_precision, precision, device)
        ctx = Context(name=name, scale=scale, plan=plan, store=store, device=device, batch_size=batch_size,
                    amp=autocast_dtype(autocast, device), steps=steps, total_tokens=total_tokens,
                    unique_tokens=unique_tokens, epochs=epochs, cache=cache,
                    preload=preload,
                    compile_stacks=compile_stacks, harvest_precision=precision,
                    points=plan.eval_points(steps) if plan.eval_steps else (),
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


def _say_no_tf32(asked: str, used: str, device: str) -> None:
    """Say that the harvest precision ``asked`` does not exist on ``device`` and that ``used`` is harvested (and
    cached and recorded) instead."""
    print(f"note: --harvest-precision {asked} has no effect on {device} (TF32 exists on CUDA GPUs of compute "
          f"capability 8.0 or newer): the activations are harvested in {used}, and the cache and the records say so",
          flush=True)


def _default_command() -> str:
    """The command line recorded when none is given: this module's alias and ``sys.argv``."""
    return " ".join([Path(sys.executable).name, "-m", "dictionary_learning_aligned.reproduce"] + sys.argv[1:])


def _run_share(ctx: Context, todo: list[Run], chunk: Optional[int], eval_sizes: tuple,
               recorders: list[_Recorder]) -> list[str]:
    """:func:`run_experiment` after its checks, in process ``ctx.rank`` of ``ctx.world_size`` on ``ctx.device``:
    its share of ``todo`` (:func:`.selection.spread_runs`), the cache harvested once, then part by part: train,
    evaluate at every step point some experiment records, and write each experiment's records (``recorders``: one
    per experiment, the first being ``ctx``'s own). ``eval_sizes``: (eval_batches, ce_batches, ce_batch_size) of the
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
    if ctx.time_limit is not None and len(parts) == 1:
        _say(ctx, "time limit: this call trains one part, which starts or not as a whole; --chunk N cuts it into "
                  "parts of N dictionaries, so that the limit can stop between them")
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


def _time_for(ctx: Context, runs: list[Run], pace: float, left: list[list[Run]]) -> bool:
    """Whether the part ``runs`` can start under ``ctx.time_limit``: its features times ``pace`` (the slowest
    earlier part's seconds per feature, training and evaluation; 0 before the first part, which starts unless
    the limit has passed, e.g. while the model loaded and the cache was harvested) must end before the limit. If
    not, say so and what is left (the parts ``left``) for a later call."""
    if ctx.time_limit is None:
        return True
    elapsed, need = time.monotonic() - ctx.t0, pace * sum(r.dict_size for r in runs)
    if elapsed + need <= ctx.time_limit:
        return True
    _say(ctx, (f"time limit: the next part ({len(runs)} dictionaries) needs about {need:.0f} s and "
               f"{max(0.0, ctx.time_limit - elapsed):.0f} s are left" if pace else
               f"time limit: {ctx.time_limit:g} s (--time-limit is in seconds) passed before the first part "
               f"started")
         + f"; {sum(map(len, left))} dictionaries are left for a later call of the same command")
    return False


def _evaluate_and_record(ctx: Context, recorders: list[_Recorder], keys: list, trained: tuple, j: int,
                         point: int) -> list[str]:
    """After part ``j`` trained (``trained``: :func:`train_part`'s folder, trainers and seconds; ``keys``: its
    runs' :func:`.selection.training_key`), evaluate its dictionaries after ``point`` steps that some experiment records
    there, and write each experiment's records (:func:`.recording.record_part`, which keeps those in the store
    already; a point whose records are all there is not evaluated); returns the ids written."""
    run_dir, trainers, train_s = trained
    t = time.monotonic()
    wanted = [i for i, k in enumerate(keys) if any(k in rec.runs and point in rec.points(ctx.steps)
                                                   for rec in recorders)]
    if all(rec.recorded(keys[i], point, ctx.steps) for i in wanted for rec in recorders):
        _say(ctx, f"part {j}: the records after {point:,} steps are in the store already (kept)")
        return []
    dictionaries, metrics = evaluate_part(ctx, run_dir, point, wanted)
    written, counts, kept = [], [], 0
    for rec in recorders:
        members = [(i, rec.runs[k], [o.ctx.name for o in recorders if k in o.runs])
                   for i, k in enumerate(keys) if k in rec.runs and point in rec.points(ctx.steps)]
        if members:
            ids = record_part(rec.ctx, members, run_dir, trainers, train_s, dictionaries, metrics,
                              point if rec.ctx.points else None)
            written, kept = written + ids, kept + len(members) - len(ids)
            counts.append(f"{len(members)} of {rec.ctx.name}")
    _say(ctx, f"part {j}: evaluated and recorded {len(wanted)} dictionaries"
              + (f" after {point:,} steps" if point < ctx.steps or ctx.points else "")
              + (f" ({', '.join(counts)})" if len(recorders) > 1 else "") + f" in {time.monotonic() - t:.1f} s"
              + (f"; {kept} of these records were in the store already and are kept" if kept else ""))
    return written


@dataclass
class _Recorder:
    """One experiment that records dictionaries of a reproduction's training: its context (``ctx.name``,
    ``ctx.plan``, ``ctx.points``) and its runs still to record, keyed by :func:`.selection.training_key`."""

    ctx: Context
    runs: dict

    def points(self, steps: int) -> tuple:
        """The step counts at which this experiment records its runs of ``steps`` steps (its ``ctx.points``, or
        the end of the run alone)."""
        return self.ctx.points or (steps,)

    def recorded(self, key: tuple, point: int, steps: int) -> bool:
        """Whether this experiment's record of the run ``key`` after ``point`` steps is in the store already (or
        is none of its records: a run it does not record, a point it does not record at)."""
        run = self.runs.get(key)
        if run is None or point not in self.points(steps):
            return True
        return has_record(self.ctx.store, _rid(run, point if self.ctx.points else None))


def _keyed(plan: Plan, runs: list[Run], steps: int) -> dict:
    """``runs`` of ``plan`` keyed by :func:`.selection.training_key`."""
    return {training_key(r, plan, steps): r for r in runs}


def _also_note(recorders: list[_Recorder], n_train: int) -> str:
    """For a reproduction of several experiments, what the others add: their records and the dictionaries
    trained in all (empty for one experiment)."""
    if len(recorders) == 1:
        return ""
    return ("; " + "; ".join(f"{r.ctx.name}: {len(r.runs)} to record" + (
        f" (at {len(r.ctx.points)} step points)" if r.ctx.points else "") for r in recorders[1:])
            + f"; {n_train} dictionaries to train in all")


def _say_capped_schedule(ctx: Context) -> None:
    """Print which of the recipe's fixed schedule settings were capped at a quarter of this (short) run."""
    capped = [f"{k} {v} -> {max(1, ctx.steps // 4)}" for k, v in ctx.plan.recipe.steps_fixed if v > ctx.steps // 4]
    if capped:
        print(f"{_who(ctx.rank, ctx.world_size)}note: this run has {ctx.steps} steps, so the {ctx.plan.recipe.name} "
              f"recipe's fixed settings are capped at a quarter of it ({', '.join(capped)}, where the architecture "
              f"has them); each trainer's config.json and record hold the values used", flush=True)


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


def _load_model_and_eval_data(ctx: Context, eval_batches: int, ce_batches: int, ce_batch_size: int) -> None:
    """Load the plan's language model into ``ctx`` and draw the held-out evaluation data once
    (:func:`.pipeline.load_model`, :func:`.pipeline.heldout_data`)."""
    from .. import pipeline

    t = time.monotonic()
    ctx.model = pipeline.load_model(ctx.plan.model, ctx.plan.layer, ctx.device)
    _say(ctx, f"loaded {ctx.plan.model} (layer {ctx.plan.layer}) on {ctx.device} in {time.monotonic() - t:.1f} s")
    ctx.harvest = pipeline.Harvest(ctx.model, corpus=ctx.plan.corpus, batch_size=ctx.batch_size,
                                   refresh_batch_size=32 if ctx.scale == "smoke" else 256, device=ctx.device,
                                   precision=ctx.harvest_precision)
    t = time.monotonic()
    ctx.heldout = pipeline.heldout_data(ctx.harvest, eval_batches, ce_batches, ce_batch_size)
    _say(ctx, f"drew the held-out data (activation batches {len(ctx.heldout.acts)}, CE batches "
              f"{len(ctx.heldout.ce_tokens)}) in {time.monotonic() - t:.1f} s")


def _say(ctx: Context, message: str) -> None:
    """Print one line of the reproduction's log: the process (:func:`_who`), the seconds since it started
    (``ctx.t0``) and ``message``."""
    print(f"{_who(ctx.rank, ctx.world_size)}[{time.monotonic() - ctx.t0:7.1f} s] {message}", flush=True)


def _cache_location(ctx: Context) -> tuple[Path, dict]:
    """Where the plan's activation cache of ``ctx.harvest_precision`` lives under ``ctx.cache`` and the metadata it
    must carry (:func:`.pipeline.cache_location`)."""
    from ..pipeline import cache_location

    return cache_location(ctx.cache, ctx.plan.model, ctx.plan.layer, ctx.plan.corpus, ctx.unique_tokens,
                          precision=ctx.harvest_precision)


def _check_cache_folder(plan: Plan, cache: str, unique_tokens: int, precision: str = "float32") -> None:
    """Refuse, before any model is loaded, a cache location that holds something other than a cache or an
    interrupted build of ours (nothing is deleted), or a complete cache of other settings.

    Raises:
        FileExistsError: a foreign file or folder where the cache goes. ValueError: a cache whose metadata differs
            (the message names the field), or one with fewer activations than ``unique_tokens``
            (:func:`_cached_tokens`).
    """
    from ..cache import refuse_foreign
    from ..pipeline import cache_location

    if Path(cache).exists() and not Path(cache).is_dir():
        raise FileExistsError(f"--cache {cache} is a file, not a folder of activation caches")
    path, meta = cache_location(cache, plan.model, plan.layer, plan.corpus, unique_tokens, precision=precision)
    refuse_foreign(path)
    if (path / "meta.json").is_file():
        _cached_tokens(path, meta, unique_tokens)


def _cached_tokens(path: Path, meta: dict, unique_tokens: int) -> int:
    """The activations the complete cache at ``path`` holds (its metadata and shard list are read; the shards
    stay on disk), refused unless its metadata matches ``meta`` and it holds the ``unique_tokens`` the run's steps
    were planned for (:func:`.selection.train_steps`), so that no run asks for more batches than the cache serves.

    Raises:
        ValueError: other metadata (the message names the field), or fewer activations (the corpus ran out while
            harvesting).
    """
    from ..pipeline import open_cache

    n = open_cache(path, 1, expect=meta).n_tokens
    if n < unique_tokens:
        raise ValueError(f"the activation cache {path.name} holds {n:,} activations, fewer than the {unique_tokens:,} "
                         f"distinct tokens this run needs (its corpus ran out while harvesting); pass a --tokens of "
                         f"at most {n:,} x --epochs (a new cache is harvested for it) or a larger --corpus")
    return n


def _harvest_once(ctx: Context) -> None:
    """With a cache folder: process 0 harvests the plan's cache when it is missing while every other process
    waits for it (:func:`.pipeline.harvest_once`); every process then checks that it holds the run's distinct
    tokens (:func:`_cached_tokens`) and says how long the harvest took.

    Raises:
        ValueError: a cache with fewer activations than the run needs (the corpus ran out).
    """
    if ctx.cache is None:
        return
    from ..cache import build_seconds
    from ..pipeline import harvest_into, harvest_once

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


def _train_data(ctx: Context):
    """The training activations: a fresh buffer, or (with a cache folder) the cached harvest of the plan's
    model, layer, corpus and token count (built by :func:`_harvest_once`), ``ctx.epochs`` seeded shuffles of it
    served in full batches only (``drop_last``): ``ctx.steps`` batches (:func:`.selection.train_steps`), the same
    stream on every call, so each part trains on the same batches. The cache is opened (and preloaded) by the first call
    only and kept in ``ctx.opened_cache``; later calls serve it again from the start
    (:meth:`.cache.ActivationCache.with_order`: the batches of a fresh open)."""
    from .. import pipeline

    if ctx.cache is None:
        return pipeline.activation_buffer(ctx.harvest, "train", pipeline.buffer_ctxs(ctx.total_tokens))
    path, meta = _cache_location(ctx)
    if ctx.opened_cache is None or ctx.opened_cache.path != path:
        if ctx.preload is None:
            ctx.preload = _decide_preload(ctx, path)
        ctx.opened_cache = pipeline.open_cache(path, ctx.batch_size, ctx.device, expect=meta, epochs=ctx.epochs,
                                               preload=ctx.preload, drop_last=True)
        return ctx.opened_cache
    return ctx.opened_cache.with_order(batch_size=ctx.batch_size, epochs=ctx.epochs, seed=0, drop_last=True)


def _decide_preload(ctx: Context, path: Path) -> bool:
    """Whether to hold the cache at ``path`` on ``ctx.device`` (:func:`.cache.fits_on_device`); on a GPU too
    small for it, says so and reads batches from disk."""
    from ..cache import PRELOAD_SHARE, fits_on_device

    fits = fits_on_device(path, ctx.device)
    if not fits and torch.device(ctx.device).type == "cuda":
        _say(ctx, f"the cache is larger than {PRELOAD_SHARE:.0%} of {ctx.device}'s free memory: batches are read "
                  "from disk (slower; --no-preload asks for this on any GPU)")
    return fits


def train_part(ctx: Context, runs: list[Run], j: int, saves: tuple = ()) -> tuple[Path, list, float]:
    """Train the dictionaries of ``runs`` (one size) together on the same batches into a new folder of the store,
    with a checkpoint after each step point of ``saves`` (each below ``ctx.steps``; ``trainer_i/checkpoints/step_{p
    - 1}``: the dictionary after ``p`` steps); returns (that folder, the trainers, the training seconds)."""
    from ..training import trainSAE

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


def _forget_compiled_stacks(ctx: Context) -> None:
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


def evaluate_part(ctx: Context, run_dir: Path, point: Optional[int], indices: list[int]) -> tuple[dict, dict]:
    """Load the trained dictionaries ``run_dir/trainer_{i}`` for ``i`` in ``indices`` (at step point ``point``:
    their checkpoints after that many steps, :func:`.recording.dictionary_dir`) and evaluate them on the held-out data;
    returns (dictionaries, metrics), both keyed by ``i``.

    Raises:
        CheckpointError: a dictionary or checkpoint folder that cannot be read (e.g. training stopped early).
    """
    from ..pipeline import evaluate_dictionaries

    folders = [dictionary_dir(run_dir / f"trainer_{i}", point, ctx.steps) for i in indices]
    aes, metrics = evaluate_dictionaries(folders, ctx.heldout, ctx.model, ctx.device, per_feature=True, bar=True)
    return dict(zip(indices, aes)), dict(zip(indices, metrics))

