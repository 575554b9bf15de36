"""Train dictionaries from an activation cache, on one or several processes/GPUs.

Single process (``python -m dictionary_learning_aligned.train`` is the same command)::

    python -m dictionary_learning_aligned train --cache acts/ --out runs/x --arch relu,topk --alignment none,project

Several GPUs (one process per GPU, launched by torchrun)::

    torchrun --nproc_per_node 8 -m dictionary_learning_aligned.train --cache acts/ --out runs/x ...

``--placement ddp`` (default): every trainer is trained data-parallel over all processes with
DistributedDataParallel; each process reads the same global batches from the cache and trains on its
``batch_size / world_size`` slice (see :mod:`.distributed`); the result equals a one-process run up to float
rounding. ``--placement spread``: whole stacks of the sweep (same architecture and dict_size) run on one process
(GPU) each, balanced by size (trainer by trainer when there are fewer stacks than processes); every
process reads the whole data stream and trains its own trainers on it (no communication during training), which
gives the same dictionaries as training them all in one process. Only rank 0 writes run-level files; in spread
mode each process writes its own trainers' folders.

If ``--cache`` has no complete cache, it is built first (by rank 0) by harvesting ``--tokens`` activations of
``--model`` layer ``--layer`` over ``--corpus`` (default: SmolLM2-135M-Instruct, bundled corpus, and the model's
default layer, :func:`.pipeline.default_layer`: 8 for gemma-3-270m, else 12). Rank 0 prints the settings first: the
cache's model and layer, the trainers, steps, batch size and placement.

Writes ``--out/trainer_{i}/`` (``ae.safetensors``, ``config.json``, ``log.json`` with the logged losses) and
``--out/run.json`` (command, placement, world size, cache, trainer configs, and the training wall time:
``train_seconds`` from a common start to the last process's end, ``dictionary_tokens_per_s`` = trainers x steps x
batch size / ``train_seconds``).
"""

from __future__ import annotations

import itertools
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from simple_parsing.helpers import choice, field, flag

from . import distributed as dd
from .cache import fits_on_device
from .cli import default_device
from .dtypes import AUTOCAST_CHOICES, autocast_dtype, check_device, comma_list
from .models import MODEL_NAME_HELP, SMOLLM2_NAME

PLACEMENTS = ("ddp", "spread")


def grid_configs(archs: list[str], alignments: list[Optional[str]], dict_sizes: list[int], seeds: list[int],
                 k: int = 64, l1_penalty: Optional[float] = None, lr: Optional[float] = None,
                 alignment_penalty: Optional[float] = None) -> list[dict]:
    """Trainer configs (without steps/shape/model fields) for the product arch x alignment x dict_size x seed.

    Args:
        archs: registered architecture names (:mod:`.registry`); alignments: None (standard) or aligned modes;
            dict_sizes; seeds.
        k: the value of architectures whose sparsity parameter counts features per token (TopK, BatchTopK,
            Matryoshka ``k``; JumpReLU ``target_l0``); l1_penalty: that of penalty-weighted ones (ReLU L1,
            p-anneal initial coefficient; None: trainer default); lr: None: trainer default; alignment_penalty:
            the lambda of the ``"penalty"`` ablation (required by it).

    Raises:
        ValueError: unknown arch or alignment mode.
    """
    from . import registry
    from .alignment import check_mode

    out = []
    for name, mode, size, seed in itertools.product(archs, alignments, dict_sizes, seeds):
        arch = registry.get(name)
        mode = check_mode(mode)
        cfg = {"trainer": arch.trainer_for(mode).__name__, "dict_size": size, "seed": seed}
        if mode is not None:
            cfg["alignment"] = mode
        value = k if all(isinstance(v, int) for v in arch.sparsity_values) else l1_penalty
        if value is not None:
            cfg[arch.sparsity_param] = value
        if mode == "penalty" and alignment_penalty is not None:
            cfg["alignment_penalty"] = alignment_penalty
        if lr is not None:
            cfg["lr"] = lr
        out.append(cfg)
    return out


def harvest_cache(path, tokens: int, model: Optional[str] = None, layer: Optional[int] = None,
                  corpus: Optional[str] = None, ctx_len: int = 128, device: str = "cpu",
                  refresh_batch_size: int = 64) -> Path:
    """Build an activation cache at ``path`` from ``tokens`` activations of ``model``'s layer ``layer`` (output,
    BOS removed, tokens above 10x the median norm dropped) over ``corpus``'s train split: the model loaded by
    :func:`.pipeline.load_model` (bfloat16 on CUDA, else float32; the cache's ``harvest_precision`` says which) and
    harvested by :func:`.pipeline.harvest_into`.

    Args:
        path: new cache folder. tokens: activations to store. model: Hugging Face name (default SmolLM2-135M-
            Instruct, offline). layer: layer index (default: :func:`.pipeline.default_layer` of ``model``: 8 for
            gemma-3-270m, else 12). corpus: see :func:`.data.iter_texts` (default: bundled).
        ctx_len: tokens per context. device: where the model runs. refresh_batch_size: contexts per forward.

    Returns:
        the cache folder.

    Raises:
        FileExistsError: ``path`` exists. FileNotFoundError / ValueError: the model cannot be loaded, the layer
            is out of range, or the corpus yields no activations.
    """
    from .pipeline import Harvest, default_layer, harvest_into, load_model

    model = model or SMOLLM2_NAME
    layer = default_layer(model) if layer is None else layer
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    harvest = Harvest(load_model(model, layer, device, dtype), corpus=corpus, batch_size=8192, ctx_len=ctx_len,
                      refresh_batch_size=refresh_batch_size, device=device)
    return harvest_into(path, harvest, tokens)


#: the --help text of ``--model`` (the model names of demo's, :data:`.models.MODEL_NAME_HELP`)
_MODEL_HELP = (f"building a missing cache: language model, {MODEL_NAME_HELP} (default {SMOLLM2_NAME}); checked "
               f"against an existing cache when given")


@dataclass
class TrainConfig:
    """Settings of ``python -m dictionary_learning_aligned train`` (one flag per field, ``--dict-size`` for
    ``dict_size``)."""

    cache: str
    """activation cache folder (built first, by harvesting --tokens activations, if it holds no cache)"""
    out: str
    """output folder: trainer_{i}/ (ae.safetensors, config.json, log.json) and run.json"""
    overwrite: bool = field(False, action="store_true")
    """replace an earlier run in --out"""
    placement: str = choice(*PLACEMENTS, default="ddp")
    """ddp: every trainer data-parallel over all processes; spread: whole stacks (architecture x dict_size) per
    process"""
    arch: str = "relu"
    """comma list of architectures (relu, topk, batchtopk, panneal; the extensions jumprelu, matryoshka; or one of
    your own that a --plugins module registers)"""
    alignment: str = "none,project"
    """comma list of alignment modes: none (standard), project, rescale, tied, penalty"""
    dict_size: str = "4096"
    """comma list of dictionary sizes"""
    seeds: str = "0"
    """comma list of seeds"""
    k: int = 64
    """active features per token of TopK / BatchTopK / Matryoshka; JumpReLU's target L0"""
    l1_penalty: Optional[float] = None
    """ReLU L1 / p-anneal initial sparsity coefficient (default: the trainer's)"""
    alignment_penalty: Optional[float] = None
    """lambda of the 'penalty' alignment ablation (required when --alignment has penalty)"""
    lr: Optional[float] = None
    """peak learning rate (default: the trainer's)"""
    config: Optional[str] = None
    """JSON file with a list of trainer configs ({"trainer": class name or module:Class, ...}); replaces the
    --arch/--alignment/--dict-size/--seeds grid"""
    plugins: Optional[str] = field(None, metavar="MODULES")
    """comma list of Python modules to import first (from the current folder or PYTHONPATH), such as the file of
    your own architecture (docs/extending.md): the architectures it registers become --arch values"""
    compile: bool = field(False, action="store_true")
    """torch.compile each trainer's loss (speed only)"""
    sparse_decode: bool = field(False, action="store_true")
    """TopK/BatchTopK: decode from the kept (index, value) pairs (speed only)"""
    batch_size: int = 8192
    """global batch size (activations per step over all processes)"""
    epochs: int = 1
    """passes over the cache"""
    steps: Optional[int] = None
    """training steps (default: every full batch of --epochs passes)"""
    warmup_steps: Optional[int] = None
    """learning-rate warmup steps (default: min(1000, steps // 10))"""
    preload: str = choice("auto", "yes", "no", default="auto")
    """hold the whole cache on the training device and index batches there (auto: on a GPU when the cache takes
    at most 40%% of its free memory); no: gather each batch from the memory-mapped files on the CPU. Same batches
    either way"""
    normalize: bool = flag(True, negative_prefix="--no-")
    """scale activations to unit mean squared norm (the factor is folded into the saved weights), as the
    reproduction's committed results do; --no-normalize trains on raw activations"""
    log_steps: Optional[int] = None
    """log losses every this many steps (default: no intermediate logs)"""
    save_steps: str = ""
    """comma list of step indices (0 .. steps-1) after which to checkpoint, trainer_i/checkpoints/step_{s}
    (ddp placement)"""
    device: Optional[str] = None
    """training device (default: cuda:LOCAL_RANK when CUDA is available, else cpu)"""
    autocast: str = choice(*AUTOCAST_CHOICES, default="auto")
    """autocast dtype of training (auto: bfloat16 on CUDA, float32 on CPU)"""
    backend: Optional[str] = choice("nccl", "gloo", None, default=None)
    """torch.distributed backend under torchrun (default: nccl on CUDA, else gloo)"""
    verbose: bool = field(False, action="store_true")
    """print every logged step and third-party messages (default: one progress bar and a summary)"""
    wandb: bool = field(False, action="store_true")
    """log losses to Weights & Biases (pip install .[wandb]; project from --wandb-project)"""
    wandb_project: str = ""
    """Weights & Biases project (default: wandb's own default)"""
    tokens: int = 10_000_000
    """building a missing cache: activations to harvest"""
    model: Optional[str] = field(None, help=_MODEL_HELP)
    """building a missing cache: language model, an offline alias (models.OFFLINE_NAMES), a Hugging Face name or a
    local folder (default SmolLM2-135M-Instruct); checked against an existing cache when given (the --help text
    names the aliases with models.MODEL_NAME_HELP, shared with demo's --model)"""
    layer: Optional[int] = None
    """building a missing cache: decoder block whose output is read (default: 8 for gemma-3-270m, the paper's
    relative depth, else 12); checked against an existing cache when given"""
    corpus: Optional[str] = None
    """building a missing cache: text source (default: the bundled corpus); checked against an existing cache
    when given"""
    ctx_len: int = 128
    """building a missing cache: tokens per context"""


def build_parser(prog: str = "python -m dictionary_learning_aligned train"):
    """The command line of ``train`` (a :func:`.cli.config_parser` over :class:`TrainConfig`)."""
    from .cli import config_parser

    return config_parser(prog, TrainConfig, __doc__)


def _check_args(args: TrainConfig, world: int) -> None:
    """Refuse bad sizes before anything is loaded or written.

    Raises:
        ValueError: a batch size, epoch count, step count or token count below 1, a context length below 2,
            ``--save-steps`` with spread placement (which writes no checkpoints), or a batch size not divisible by
            the world size under ddp placement.
    """
    if args.batch_size < 1 or args.epochs < 1:
        raise ValueError(f"--batch-size and --epochs must be >= 1, got {args.batch_size}, {args.epochs}")
    if args.steps is not None and args.steps < 1:
        raise ValueError(f"--steps must be >= 1 (leave it out to train on every full batch), got {args.steps}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
    if args.ctx_len < 2:
        raise ValueError(f"--ctx-len must be >= 2 (BOS and one token), got {args.ctx_len}")
    if args.save_steps.strip() and args.placement == "spread":
        raise ValueError("--save-steps works with --placement ddp only (spread placement writes no checkpoints)")
    if args.placement == "ddp" and args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the world size {world} "
                         f"(data-parallel training gives each process batch_size / world_size activations)")


def harvest_layer(args: TrainConfig) -> int:
    """The decoder block a missing cache is harvested from: ``--layer`` when given, else the default of
    ``--model`` (:func:`.pipeline.default_layer`: 8 for gemma-3-270m, else 12)."""
    from .pipeline import default_layer

    return default_layer(args.model) if args.layer is None else args.layer


def _harvest_missing(args: TrainConfig, path: Path, device: str) -> Path:
    """Build the missing cache at ``path`` (:func:`harvest_cache` with ``args``' model, :func:`harvest_layer`,
    corpus, token count and context length), saying first what is harvested."""
    layer = harvest_layer(args)
    print(f"train: harvesting {args.tokens:,} activations of {args.model or SMOLLM2_NAME} layer {layer} over "
          f"{args.corpus or 'the bundled corpus'} into {path}", flush=True)
    return harvest_cache(path, args.tokens, args.model, layer, args.corpus, args.ctx_len, device)


def _open_cache(args: TrainConfig, device: str):
    """The activation cache of ``args.cache`` (harvested first, by rank 0, when missing) and whether it is
    preloaded on ``device``."""
    from .pipeline import harvest_once, open_cache

    cache_path = Path(args.cache)
    if not (cache_path / "meta.json").is_file():
        # an interrupted build of ours is started again; a file or someone else's folder is refused before the
        # model is loaded
        harvest_once(cache_path, lambda path: _harvest_missing(args, path, device))
    # the options that describe the cache, when given, must match an existing one
    expect = {k: v for k, v in (("model", args.model), ("layer", args.layer), ("corpus", args.corpus))
              if v is not None}
    preload = _want_preload(args.preload, cache_path, device)
    cache = open_cache(cache_path, args.batch_size, device if preload else "cpu", expect=expect, epochs=args.epochs,
                       preload=preload, drop_last=True)
    return cache, preload


def _read_configs(args: TrainConfig) -> list[dict]:
    """The trainer configs of the run: ``--config``'s JSON list, else the --arch x --alignment x --dict-size x
    --seeds grid (:func:`grid_configs`).

    Raises:
        ValueError: an unreadable ``--config`` file or one not holding a list of dicts; an empty sweep.
    """
    from .registry import resolve_trainer

    if args.config:
        try:
            configs = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {args.config}: cannot read a JSON list of trainer configs ({e})") from None
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
            raise ValueError(f"{args.config} must hold a JSON list of trainer configs (dicts)")
        for i, c in enumerate(configs):  # every trainer name resolves (module:Class imported) before any harvest
            if "trainer" not in c:
                raise ValueError(f"--config {args.config}: trainer config {i} has no 'trainer' key")
            try:
                resolve_trainer(c["trainer"])
            except ValueError as e:
                raise ValueError(f"--config {args.config}: trainer config {i}: {e}") from None
    else:
        alignments = [None if a.lower() in ("none", "standard") else a for a in comma_list(args.alignment)]
        configs = grid_configs(comma_list(args.arch), alignments, comma_list(args.dict_size, int, "--dict-size"),
                               comma_list(args.seeds, int, "--seeds"),
                               k=args.k, l1_penalty=args.l1_penalty, lr=args.lr,
                               alignment_penalty=args.alignment_penalty)
    if not configs:
        raise ValueError("no trainers to train")
    return configs


def _fill_defaults(configs: list[dict], args: TrainConfig, cache, steps: int) -> None:
    """Complete every trainer config in place with what the run decides: steps, shape and model fields, warmup
    and the architecture's schedules scaled to ``steps``, the speed options, and a seed (its index). Which
    schedule settings a trainer takes is read from its architecture's registered schedule (:mod:`.registry`;
    a user's trainer subclassing a registered one takes that one's)."""
    from .registry import for_trainer, resolve_trainer
    from .trainers.top_k import TopKTrainer

    warmup = args.warmup_steps if args.warmup_steps is not None else min(1000, steps // 10)
    for i, c in enumerate(configs):
        cls = resolve_trainer(c["trainer"])
        arch = for_trainer(cls)
        takes = set(arch.schedule(max(steps, 11))) if arch is not None else set()
        c.setdefault("steps", steps)
        c.setdefault("activation_dim", cache.activation_dim)
        c.setdefault("layer", cache.meta.get("layer", -1))
        c.setdefault("lm_name", cache.meta.get("model", "unknown"))
        c.setdefault("warmup_steps", warmup)
        if "sparsity_warmup_steps" in takes:
            c.setdefault("sparsity_warmup_steps", min(2000, steps // 5))
        if "anneal_start" in takes and steps > 3:  # anneal over the run, as reproduce does
            c.setdefault("anneal_start", max(1, steps // 4))
            c.setdefault("anneal_end", steps - 2)
        if args.compile:
            c.setdefault("compile", True)
        if args.sparse_decode and issubclass(cls, TopKTrainer):
            c.setdefault("sparse_decode", True)
        c.setdefault("seed", i)  # seeded: the same initial weights whichever process builds the trainer


def _train_placed(args: TrainConfig, cache, configs: list[dict], common: dict, rank: int, world: int):
    """Train ``configs`` as ``--placement`` says; returns (indices this process trained, its trainers, whether
    this process writes their folders)."""
    from .io import prepare_output_dir
    from .pipeline import rank0_first
    from .training import _build_trainer, _save, trainSAE

    if args.placement == "ddp":
        trainers = trainSAE(cache, configs, save_dir=args.out, overwrite=args.overwrite,
                            save_steps=comma_list(args.save_steps, int, "--save-steps"), data_parallel=world > 1,
                            **common)
        return list(range(len(configs))), trainers, rank == 0

    def check_then_prepare():
        # every config must build before an earlier run in --out is replaced (--overwrite): built on the meta
        # device, so no memory is used; trainSAE builds them for real below
        for c in configs:
            _build_trainer({**c, "device": "meta"}, "meta")
        prepare_output_dir(args.out, args.overwrite)

    rank0_first(check_then_prepare)
    mine = [i for i, o in enumerate(_stack_owners(configs, world)) if o == rank]
    trainers = trainSAE(cache, [configs[i] for i in mine], **common) if mine else []
    for i, tr in zip(mine, trainers):
        _save(tr, Path(args.out) / f"trainer_{i}", tr.norm_factor, common["run_cfg"], tr.steps_done)
    return mine, trainers, True


def _stack_owners(configs: list[dict], world: int) -> list[int]:
    """The process of each trainer under ``--placement spread``: whole stacks (same architecture and dict_size)
    per process, balanced by size (:func:`.stacked.spread_over_processes`); with fewer stacks than processes,
    trainer by trainer."""
    from .registry import for_trainer
    from .stacked import spread_over_processes

    def arch(c):
        spec = for_trainer(c["trainer"])
        return spec.name if spec is not None else str(c["trainer"])

    stacks = [(c["dict_size"], arch(c)) for c in configs]
    keys = stacks if len(set(stacks)) >= world else list(range(len(configs)))
    return spread_over_processes(keys, [c["dict_size"] for c in configs], world)


def _print_settings(args: TrainConfig, cache, n_trainers: int, steps: int, world: int, device: str) -> None:
    """One line before training: the cache's model, layer, corpus and size, then the trainers, steps, global batch
    size and placement."""
    meta = cache.meta
    print(f"train: cache {args.cache} ({meta.get('model', 'unknown')} layer {meta.get('layer', '?')}, "
          f"corpus {meta.get('corpus', '?')}, {cache.n_tokens:,} activations); {n_trainers} trainer(s) x {steps} "
          f"steps, batch {args.batch_size}, {args.placement} over {world} process(es) on {device}", flush=True)


def _report(out: Path, mine: list[int], trainers: list) -> None:
    """One line per trainer this process trained: class, alignment, size, steps, last logged losses, folder."""
    for i, tr in zip(mine, trainers):
        last = tr.log[-1] if tr.log else {}
        print(f"trainer_{i}: {type(tr).__name__} alignment={tr.config.get('alignment')} "
              f"dict_size={tr.config.get('dict_size')} steps={tr.steps_done} tokens={tr.tokens_seen}"
              + "".join(f" {k}={last[k]:.4g}" for k in ("loss", "l0", "frac_variance_explained")
                        if isinstance(last.get(k), (int, float)))
              + f" -> {out / f'trainer_{i}'}")


def run(args: TrainConfig, command: Optional[str] = None) -> list[int]:
    """Train as ``args`` say (call within torchrun or as a single process).

    Args:
        args: the settings (a :class:`TrainConfig`, or any object with its fields).
        command: the command line recorded in ``run.json`` (default: this module's alias and ``sys.argv``).

    Returns:
        the indices of the trainers this process trained.

    Raises:
        ValueError: bad arguments (unknown arch, a --plugins module that cannot be imported, a batch size not
            divisible by the world size, an empty sweep...).
        FileExistsError: ``--out`` holds something and ``--overwrite`` was not given.
    """
    from .io import check_output_dir, write_json
    from .registry import import_plugins

    rank, world, local_rank = dd.init_from_env(args.backend)
    device = args.device or default_device(local_rank)
    check_device(device, "--device")
    _check_args(args, world)
    comma_list(args.save_steps, int, "--save-steps")
    check_output_dir(args.out, args.overwrite)  # every rank: all fail alike, before any work
    import_plugins(args.plugins)  # a user's architectures, before the names are looked up
    configs = _read_configs(args)  # checked (trainer names resolved) before the cache is opened or harvested
    cache, preload = _open_cache(args, device)
    steps = args.steps if args.steps is not None else len(cache)
    _fill_defaults(configs, args, cache, steps)
    if rank == 0:
        _print_settings(args, cache, len(configs), steps, world, device)
    run_cfg = {"cache": cache.config, "placement": args.placement, "world_size": world,
               "batch_size": args.batch_size}
    common = dict(steps=steps, log_steps=args.log_steps, normalize_activations=args.normalize, device=device,
                  autocast_dtype=autocast_dtype(args.autocast, device), run_cfg=run_cfg, verbose=args.verbose,
                  use_wandb=args.wandb, wandb_project=args.wandb_project)
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    mine, trainers, writes = _train_placed(args, cache, configs, common, rank, world)
    seconds = _wall_seconds(t0, device, world)  # from the common start to the last process's end
    out = Path(args.out)
    if writes:
        for i, tr in zip(mine, trainers):
            write_json(out / f"trainer_{i}" / "log.json", tr.log)
    # steps actually trained (fewer than ``steps`` when the activation data ran out): the same on every process
    done = trainers[0].steps_done if trainers else steps
    if rank == 0:
        write_json(out / "run.json", {
            "command": command or "python -m dictionary_learning_aligned.train " + " ".join(sys.argv[1:]),
            "placement": args.placement, "world_size": world, "device": device, "steps": steps,
            "cache": cache.config, "preload": preload, "trainers": json.loads(json.dumps(configs, default=str)),
            "steps_done": done, "train_seconds": seconds, "tokens_per_trainer": done * args.batch_size,
            "dictionary_tokens_per_s": len(configs) * done * args.batch_size / seconds})
    _report(out, mine, trainers)  # every process reports its own trainers
    if world > 1:
        torch.distributed.barrier()
    return mine


def _want_preload(choice: str, cache_path: Path, device: str) -> bool:
    """``--preload``: yes/no, or (auto) :func:`.cache.fits_on_device`."""
    if choice != "auto":
        return choice == "yes"
    return fits_on_device(cache_path, device)


def _wall_seconds(t0: float, device: str, world: int) -> float:
    """Seconds since ``t0`` once this process's GPU work is done, the maximum over processes when ``world > 1``."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    dt = time.perf_counter() - t0
    if world > 1:
        t = torch.tensor([dt], dtype=torch.float64,
                         device=device if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        dt = float(t.item())
    return dt


def main(argv: Optional[list[str]] = None, prog: str = "python -m dictionary_learning_aligned train") -> int:
    """Entry point of ``train`` (and of the alias ``python -m dictionary_learning_aligned.train``); returns the exit
    status (2 with a one-line error for bad input)."""
    import shlex

    from .cli import SETTING_ERRORS, parse_config, run_reporting_errors, set_verbosity

    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_config(build_parser(prog), argv)
    set_verbosity(args.verbose)
    command = " ".join([prog, *map(shlex.quote, argv)])
    try:
        return run_reporting_errors(lambda cfg: run(cfg, command=command), args, SETTING_ERRORS)
    finally:
        if dd.is_initialized():
            torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
