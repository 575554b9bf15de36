"""The command line of the reproduction: ``python -m dictionary_learning_aligned reproduce EXPERIMENT [flags]``
(and its alias ``python -m dictionary_learning_aligned.reproduce``). :class:`ReproduceConfig` holds the flags,
:func:`build_parser` describes them (:data:`DESCRIPTION` before them, :func:`experiments_help` after),
:func:`run_config` turns them into :func:`.run.run_experiment`'s arguments and :func:`main` runs it,
reporting bad input in one line.
"""

from __future__ import annotations

import os
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from simple_parsing.helpers import choice, field

from ..dtypes import AUTOCAST_CHOICES, HARVEST_PRECISIONS, comma_list
from ..experiments import EXPERIMENTS, RECIPES, SCALES
from ..stacked import compile_mode
from .run import run_experiment

#: the description of ``reproduce -h``
DESCRIPTION = """\
Reproduce an experiment of the paper: ``python -m dictionary_learning_aligned reproduce EXPERIMENT --scale
smoke|small|paper [--device cuda] [--results DIR]`` (``python -m dictionary_learning_aligned.reproduce`` is the
same command).

For each dictionary size of the experiment's grid (:mod:`.experiments`), activations are harvested once and every
dictionary still missing from the results store is trained on the same batches; each is then evaluated on
held-out text and written as one record (:mod:`.records`), with its group's cross-seed stability. Re-running skips
finished entries.

Several GPUs: run under ``torchrun --nproc_per_node N`` (one process per GPU). The grid is spread over the
processes in whole stacks (:func:`.selection.spread_runs`); process ``r`` uses ``cuda:r`` (its ``LOCAL_RANK``) when
``--device`` is ``cuda``; with ``--cache``, process 0 harvests the cache once while the others wait, and each
process then reads (or preloads onto its GPU) the same cache. Processes do not communicate while training, so
each writes its own records as its parts finish.
"""


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
    harvest_precision: str = choice(*HARVEST_PRECISIONS, default="float32")
    """matmul precision of the language model's forward passes that harvest the training activations: float32, or
    tf32 (TF32 matmuls, about 2x faster forward passes on an H200, relative error about 6e-4 per token; a no-op on
    a CPU, which then harvests and records float32). Recorded in the cache and every record; a cache of the other
    precision is not reused (a tf32 cache's folder name ends in _tf32). Held-out evaluation stays float32"""
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
    """train only the first N seeds of the grid now (default: all); a group's cross-seed stability (MCS) is
    computed over the seeds trained in one call, so seeds added by a later call are compared among themselves"""
    chunk: Optional[int] = None
    """train at most N dictionaries together (whole seed groups) and record them before the next part, so a run
    cut short keeps what finished (default: all of one dictionary size together)"""
    time_limit: Optional[float] = None
    """seconds from the start after which no part starts that would not end in time (judged from the slowest part
    so far; none starts once they have passed); the rest is left for a later call of the same command (default:
    no limit)"""
    also: Optional[str] = None
    """comma list of further experiments to train in the same run, on the same harvest: a dictionary that several
    of them ask for (e.g. every budget run is a main run) is trained once and recorded for each (they must share
    model, layer, corpus, tokens and recipe); --archs, --dict-sizes, --sparsity and --alignments pick from all
    their grids"""
    sparsity: Optional[str] = None
    """comma list: train only the grid points with these sparsity values now (L1 penalty, k or p-anneal
    coefficient; default: all)"""
    alignments: Optional[str] = None
    """comma list: train only these alignment entries of the grid now, spelled as in the experiment's grid
    (standard, project, tied, rescale, projection, penalty:0.1, ...; penalty:0.10 is penalty:0.1; default: all),
    e.g. tied for the tying runs that main does not train. A group's cross-seed stability (MCS) is computed over
    the seeds trained in one call; a group (arch, sparsity, alignment, dict_size) lies in one entry, so this
    filter keeps groups whole"""
    eval_batches: int = 10
    """held-out batches (of --batch-size activations) for reconstruction metrics"""
    ce_batches: int = 4
    """held-out batches of contexts for CE losses (0: no CE losses)"""
    ce_batch_size: int = 8
    """contexts (of 128 tokens) per CE batch"""
    no_preload: bool = field(False, action="store_true")
    """read cached batches from disk even on a GPU (default: the cache is held on the GPU when its free memory is
    at least 2.5x the cache, else read from disk, as the log says)"""
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
    from ..cli import config_parser

    return config_parser(prog, ReproduceConfig, DESCRIPTION, epilog=experiments_help())


def run_config(cfg: ReproduceConfig, command: Optional[str] = None) -> list[str]:
    """:func:`.run.run_experiment` with the settings of ``cfg`` (comma lists parsed); returns the record ids
    written.

    Raises:
        ValueError: a malformed comma list, and everything :func:`.run.run_experiment` refuses.
    """
    return run_experiment(
        cfg.experiment, cfg.scale, cfg.results, device=cfg.device, corpus=cfg.corpus, batch_size=cfg.batch_size,
        autocast=cfg.autocast, archs=comma_list(cfg.archs, allow_empty=False) if cfg.archs else None,
        dict_sizes=comma_list(cfg.dict_sizes, int, "--dict-sizes") if cfg.dict_sizes else None,
        cache=cfg.cache, tokens=cfg.tokens, epochs=cfg.epochs, seeds=cfg.seeds,
        preload=False if cfg.no_preload else None, eval_batches=cfg.eval_batches, ce_batches=cfg.ce_batches,
        ce_batch_size=cfg.ce_batch_size, chunk=cfg.chunk, verbose=cfg.verbose, use_wandb=cfg.wandb,
        wandb_project=cfg.wandb_project, command=command, compile_stacks=compile_setting(cfg.compile, cfg.compile_mode),
        recipe=cfg.recipe, time_limit=cfg.time_limit, harvest_precision=cfg.harvest_precision,
        also=comma_list(cfg.also, flag="--also", allow_empty=False) if cfg.also is not None else (),
        sparsity=comma_list(cfg.sparsity, float, "--sparsity", allow_empty=False)
        if cfg.sparsity is not None else None,
        alignments=comma_list(cfg.alignments, flag="--alignments", allow_empty=False)
        if cfg.alignments is not None else None)


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
    """Command line of the reproduction (see :data:`DESCRIPTION` and ``-h``); also the alias
    ``python -m dictionary_learning_aligned.reproduce``. Returns the exit status (2 for bad input)."""
    import shlex

    from ..cli import parse_config, run_reporting_errors, set_verbosity

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
