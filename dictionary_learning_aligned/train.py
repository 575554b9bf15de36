"""Train dictionaries from an activation cache, on one or several processes/GPUs.

Single process::

    python -m dictionary_learning_aligned.train --cache acts/ --out runs/x --arch relu,topk --alignment none,project

Several GPUs (one process per GPU, launched by torchrun)::

    torchrun --nproc_per_node 8 -m dictionary_learning_aligned.train --cache acts/ --out runs/x ...

``--placement ddp`` (default): every trainer is trained data-parallel over all processes with
DistributedDataParallel; each process reads the same global batches from the cache and trains on its
``batch_size / world_size`` slice (see :mod:`.distributed`); the result equals a one-process run up to float
rounding. ``--placement spread``: trainer ``i`` of the sweep runs on process (GPU) ``i % world_size``; every
process reads the whole data stream and trains its own trainers on it (no communication during training), which
gives the same dictionaries as training them all in one process. Only rank 0 writes run-level files; in spread
mode each process writes its own trainers' folders.

If ``--cache`` has no complete cache, it is built first (by rank 0) by harvesting ``--tokens`` activations of
``--model`` layer ``--layer`` over ``--corpus`` (default: SmolLM2-135M-Instruct, layer 12, bundled corpus).

Writes ``--out/trainer_{i}/`` (``ae.safetensors``, ``config.json``, ``log.json`` with the logged losses) and
``--out/run.json`` (command, placement, world size, cache, trainer configs, and the training wall time:
``train_seconds`` from a common start to the last process's end, ``dictionary_tokens_per_s`` = trainers x steps x
batch size / ``train_seconds``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from . import distributed as dd
from .dtypes import AUTOCAST_CHOICES, autocast_dtype, check_device, comma_list

ARCHS = {"relu": ("StandardTrainer", "AlignedStandardTrainer"), "topk": ("TopKTrainer", "AlignedTopKTrainer"),
         "batchtopk": ("BatchTopKTrainer", "AlignedBatchTopKTrainer"),
         "panneal": ("PAnnealTrainer", "AlignedPAnnealTrainer")}
PLACEMENTS = ("ddp", "spread")


def grid_configs(archs: list[str], alignments: list[Optional[str]], dict_sizes: list[int], seeds: list[int],
                 k: int = 64, l1_penalty: Optional[float] = None, lr: Optional[float] = None,
                 alignment_penalty: Optional[float] = None) -> list[dict]:
    """Trainer configs (without steps/shape/model fields) for the product arch x alignment x dict_size x seed.

    Args:
        archs: names from :data:`ARCHS`; alignments: None (standard) or aligned modes; dict_sizes; seeds.
        k: TopK/BatchTopK k; l1_penalty: ReLU L1 / p-anneal initial coefficient (None: trainer default);
        lr: None: trainer default; alignment_penalty: the lambda of the ``"penalty"`` ablation (required by it).

    Raises:
        ValueError: unknown arch or alignment mode.
    """
    from .alignment import check_mode

    out = []
    for arch, mode, size, seed in itertools.product(archs, alignments, dict_sizes, seeds):
        if arch not in ARCHS:
            raise ValueError(f"unknown arch {arch!r}; choose from {sorted(ARCHS)}")
        mode = check_mode(mode)
        cfg = {"trainer": ARCHS[arch][mode is not None], "dict_size": size, "seed": seed}
        if mode is not None:
            cfg["alignment"] = mode
        if arch in ("topk", "batchtopk"):
            cfg["k"] = k
        if arch == "relu" and l1_penalty is not None:
            cfg["l1_penalty"] = l1_penalty
        if arch == "panneal" and l1_penalty is not None:
            cfg["initial_sparsity_penalty"] = l1_penalty
        if mode == "penalty" and alignment_penalty is not None:
            cfg["alignment_penalty"] = alignment_penalty
        if lr is not None:
            cfg["lr"] = lr
        out.append(cfg)
    return out


def _rank0_first(fn: Callable[[], object]):
    """Run ``fn`` on rank 0 only, then let every rank continue; an exception on rank 0 is raised on every rank
    (as a RuntimeError naming it on the others), so no rank waits forever."""
    err = None
    if dd.rank() == 0:
        try:
            fn()
        except Exception as e:  # re-raised below, on every rank
            err = e
    if dd.world_size() > 1:
        msg = [None if err is None else f"{type(err).__name__}: {err}"]
        torch.distributed.broadcast_object_list(msg, src=0)
        if msg[0] is not None and err is None:
            raise RuntimeError(f"rank 0 failed: {msg[0]}")
    if err is not None:
        raise err


def harvest_cache(path, tokens: int, model: Optional[str] = None, layer: int = 12, corpus: Optional[str] = None,
                  ctx_len: int = 128, device: str = "cpu", refresh_batch_size: int = 64) -> Path:
    """Build an activation cache at ``path`` from ``tokens`` activations of ``model``'s layer ``layer`` (output,
    BOS removed, tokens above 10x the median norm dropped) over ``corpus``'s train split.

    Args:
        path: new cache folder. tokens: activations to store. model: Hugging Face name (default SmolLM2-135M-
            Instruct, offline). layer: layer index. corpus: see :func:`.data.iter_texts` (default: bundled).
        ctx_len: tokens per context. device: where the model runs. refresh_batch_size: contexts per forward.

    Returns:
        the cache folder.
    """
    import copy

    from nnsight import LanguageModel

    from .buffer import ActivationBuffer
    from .cache import build_cache
    from .data import iter_texts
    from .models import SMOLLM2_NAME, get_layer, load_language_model

    model = model or SMOLLM2_NAME
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    hf, tok = load_language_model(model, device=device, dtype=dtype)
    lm = LanguageModel(hf, tokenizer=copy.deepcopy(tok))
    buf = ActivationBuffer(iter_texts(corpus, split="train", seed=0), lm, get_layer(lm, layer),
                           d_submodule=hf.config.hidden_size, n_ctxs=max(64, min(8000, tokens // ctx_len // 4)),
                           ctx_len=ctx_len, refresh_batch_size=refresh_batch_size, out_batch_size=8192, device=device,
                           remove_bos=True, max_norm_multiple=10.0, seed=0)
    meta = {"model": model, "layer": layer, "io": "out", "corpus": corpus or "bundled", "split": "train",
            "ctx_len": ctx_len, "remove_bos": True, "max_norm_multiple": 10.0}
    return build_cache(buf, path, tokens, meta)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dictionary_learning_aligned.train``."""
    ap = argparse.ArgumentParser(prog="python -m dictionary_learning_aligned.train", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", required=True, help="activation cache folder (built first if it holds no cache)")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    ap.add_argument("--placement", choices=PLACEMENTS, default="ddp",
                    help="ddp: every trainer data-parallel over all processes; spread: trainer i on process "
                         "i %% world_size (default: ddp)")
    ap.add_argument("--arch", default="relu", help=f"comma list of {sorted(ARCHS)} (default relu)")
    ap.add_argument("--alignment", default="none,project",
                    help="comma list of alignment modes; none = standard (default none,project)")
    ap.add_argument("--dict-size", default="4096", help="comma list of dictionary sizes (default 4096)")
    ap.add_argument("--seeds", default="0", help="comma list of seeds (default 0)")
    ap.add_argument("--k", type=int, default=64, help="k of TopK/BatchTopK (default 64)")
    ap.add_argument("--l1-penalty", type=float, default=None,
                    help="ReLU L1 / p-anneal initial sparsity coefficient (default: trainer's)")
    ap.add_argument("--alignment-penalty", type=float, default=None,
                    help="lambda of the 'penalty' alignment ablation (required when --alignment has penalty)")
    ap.add_argument("--lr", type=float, default=None, help="learning rate (default: trainer's)")
    ap.add_argument("--config", default=None,
                    help="JSON file with a list of trainer configs ({'trainer': class name, ...}); replaces the "
                         "--arch/--alignment/--dict-size/--seeds grid")
    ap.add_argument("--compile", action="store_true", help="torch.compile each trainer's loss (speed only)")
    ap.add_argument("--sparse-decode", action="store_true",
                    help="TopK/BatchTopK: decode from the kept (index, value) pairs (speed only)")
    ap.add_argument("--batch-size", type=int, default=8192, help="global batch size (default 8192)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the cache (default 1)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (default: every full batch)")
    ap.add_argument("--warmup-steps", type=int, default=None, help="lr warmup (default: min(1000, steps // 10))")
    ap.add_argument("--preload", choices=("auto", "yes", "no"), default="auto",
                    help="hold the whole cache on the training device and index batches there (auto: on a GPU "
                         "when the cache takes at most 40%% of its free memory); no: gather each batch from the "
                         "memory-mapped files on the CPU. Same batches either way")
    ap.add_argument("--normalize", action="store_true", help="normalize activations to unit mean squared norm")
    ap.add_argument("--log-steps", type=int, default=None, help="log losses every this many steps")
    ap.add_argument("--save-steps", default="", help="comma list of steps to checkpoint (ddp placement)")
    ap.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if CUDA is available, else cpu")
    ap.add_argument("--autocast", choices=AUTOCAST_CHOICES, default="auto",
                    help="auto: bfloat16 on CUDA, float32 on CPU")
    ap.add_argument("--backend", choices=("nccl", "gloo"), default=None, help="default: nccl on CUDA, else gloo")
    ap.add_argument("--verbose", action="store_true")
    b = ap.add_argument_group("building a missing cache")
    b.add_argument("--tokens", type=int, default=10_000_000, help="activations to harvest (default 10M)")
    b.add_argument("--model", default=None, help="language model (default SmolLM2-135M-Instruct)")
    b.add_argument("--layer", type=int, default=None, help="layer (default 12)")
    b.add_argument("--corpus", default=None, help="text source (default: the bundled corpus)")
    b.add_argument("--ctx-len", type=int, default=128, help="context length (default 128)")
    return ap


def run(args: argparse.Namespace) -> list[int]:
    """Train as the parsed ``args`` say (call within torchrun or as a single process).

    Returns:
        the indices of the trainers this process trained.

    Raises:
        ValueError: bad arguments (unknown arch, a batch size not divisible by the world size, an empty sweep...).
        FileExistsError: ``--out`` holds something and ``--overwrite`` was not given.
    """
    from .cache import ActivationCache, clear_unfinished
    from .io import check_output_dir, prepare_output_dir, write_json
    from .training import _build_trainer, _save, trainSAE

    rank, world, local_rank = dd.init_from_env(args.backend)
    cuda = torch.cuda.is_available()
    device = args.device or (f"cuda:{local_rank}" if cuda else "cpu")
    check_device(device, "--device")
    if args.batch_size < 1 or args.epochs < 1:
        raise ValueError(f"--batch-size and --epochs must be >= 1, got {args.batch_size}, {args.epochs}")
    if args.tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {args.tokens}")
    save_steps = comma_list(args.save_steps, int, "--save-steps")
    if args.placement == "ddp" and args.batch_size % world:
        raise ValueError(f"--batch-size {args.batch_size} is not divisible by the world size {world} "
                         f"(data-parallel training gives each process batch_size / world_size activations)")
    check_output_dir(args.out, args.overwrite)  # every rank: all fail alike, before any work
    cache_path = Path(args.cache)
    if not (cache_path / "meta.json").is_file():
        # an interrupted build of ours is started again; a file or someone else's folder is refused before the
        # model is loaded
        _rank0_first(lambda: clear_unfinished(cache_path) or harvest_cache(
            cache_path, args.tokens, args.model, 12 if args.layer is None else args.layer, args.corpus,
            args.ctx_len, device))
    # the options that describe the cache, when given, must match an existing one
    expect = {k: v for k, v in (("model", args.model), ("layer", args.layer), ("corpus", args.corpus))
              if v is not None}
    preload = _want_preload(args.preload, cache_path, device)
    cache = ActivationCache(cache_path, batch_size=args.batch_size, epochs=args.epochs, seed=0,
                            device=device if preload else "cpu", drop_last=True, expect=expect, preload=preload)
    steps = args.steps or len(cache)
    if args.config:
        try:
            configs = json.loads(Path(args.config).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"--config {args.config}: cannot read a JSON list of trainer configs ({e})") from None
        if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
            raise ValueError(f"{args.config} must hold a JSON list of trainer configs (dicts)")
    else:
        alignments = [None if a.lower() in ("none", "standard") else a for a in comma_list(args.alignment)]
        configs = grid_configs(comma_list(args.arch), alignments, comma_list(args.dict_size, int, "--dict-size"),
                               comma_list(args.seeds, int, "--seeds"),
                               k=args.k, l1_penalty=args.l1_penalty, lr=args.lr,
                               alignment_penalty=args.alignment_penalty)
    if not configs:
        raise ValueError("no trainers to train")
    warmup = args.warmup_steps if args.warmup_steps is not None else min(1000, steps // 10)
    for i, c in enumerate(configs):
        c.setdefault("steps", steps)
        c.setdefault("activation_dim", cache.activation_dim)
        c.setdefault("layer", cache.meta.get("layer", -1))
        c.setdefault("lm_name", cache.meta.get("model", "unknown"))
        c.setdefault("warmup_steps", warmup)
        if any(n in str(c.get("trainer")) for n in ("StandardTrainer", "PAnnealTrainer")):
            c.setdefault("sparsity_warmup_steps", min(2000, steps // 5))
        if "PAnnealTrainer" in str(c.get("trainer")) and steps > 3:  # anneal over the run, as reproduce does
            c.setdefault("anneal_start", max(1, steps // 4))
            c.setdefault("anneal_end", steps - 2)
        if args.compile:
            c.setdefault("compile", True)
        if args.sparse_decode and "TopK" in str(c.get("trainer")):
            c.setdefault("sparse_decode", True)
        c.setdefault("seed", i)  # seeded: the same initial weights whichever process builds the trainer
    amp = autocast_dtype(args.autocast, device)
    run_cfg = {"cache": cache.config, "placement": args.placement, "world_size": world,
               "batch_size": args.batch_size}
    out = Path(args.out)
    common = dict(steps=steps, log_steps=args.log_steps, normalize_activations=args.normalize, device=device,
                  autocast_dtype=amp, run_cfg=run_cfg, verbose=args.verbose)
    if world > 1:
        torch.distributed.barrier()
    t0 = time.perf_counter()
    if args.placement == "ddp":
        mine = list(range(len(configs)))
        trainers = trainSAE(cache, configs, save_dir=args.out, overwrite=args.overwrite,
                            save_steps=save_steps, data_parallel=world > 1, **common)
        writes = rank == 0
    else:
        def check_then_prepare():
            # every config must build before an earlier run in --out is replaced (--overwrite): built on the
            # meta device, so no memory is used; trainSAE builds them for real below
            for c in configs:
                _build_trainer({**c, "device": "meta"}, "meta")
            prepare_output_dir(args.out, args.overwrite)

        _rank0_first(check_then_prepare)
        mine = [i for i in range(len(configs)) if i % world == rank]
        trainers = trainSAE(cache, [configs[i] for i in mine], **common) if mine else []
        for i, tr in zip(mine, trainers):
            _save(tr, out / f"trainer_{i}", tr.norm_factor, run_cfg, tr.steps_done)
        writes = True
    seconds = _wall_seconds(t0, device, world)  # from the common start to the last process's end
    if writes:
        for i, tr in zip(mine, trainers):
            write_json(out / f"trainer_{i}" / "log.json", tr.log)
    # steps actually trained (fewer than ``steps`` when the activation data ran out): the same on every process
    done = trainers[0].steps_done if trainers else steps
    if rank == 0:
        write_json(out / "run.json", {"command": "python -m dictionary_learning_aligned.train " + " ".join(
            sys.argv[1:]), "placement": args.placement, "world_size": world, "device": device, "steps": steps,
            "cache": cache.config, "preload": preload, "trainers": json.loads(json.dumps(configs, default=str)),
            "steps_done": done, "train_seconds": seconds, "tokens_per_trainer": done * args.batch_size,
            "dictionary_tokens_per_s": len(configs) * done * args.batch_size / seconds})
    for i, tr in zip(mine, trainers):  # every process reports its own trainers
        last = tr.log[-1] if tr.log else {}
        print(f"trainer_{i}: {type(tr).__name__} alignment={tr.config.get('alignment')} "
              f"dict_size={tr.config.get('dict_size')} steps={tr.steps_done} tokens={tr.tokens_seen}"
              + "".join(f" {k}={last[k]:.4g}" for k in ("loss", "l0", "frac_variance_explained")
                        if isinstance(last.get(k), (int, float)))
              + f" -> {out / f'trainer_{i}'}")
    if world > 1:
        torch.distributed.barrier()
    return mine


def _want_preload(choice: str, cache_path: Path, device: str) -> bool:
    """``--preload``: yes/no, or (auto) on a CUDA device whose free memory is at least 2.5x the cache's shards."""
    if choice != "auto":
        return choice == "yes"
    if torch.device(device).type != "cuda":
        return False
    size = sum(f.stat().st_size for f in Path(cache_path).glob("*.npy"))
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return size <= 0.4 * free


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


def main(argv=None) -> int:
    """Entry point; returns the exit status (2 with a one-line error for bad input)."""
    args = build_parser().parse_args(argv)
    try:
        run(args)
    except (ValueError, FileExistsError, FileNotFoundError, NotADirectoryError, PermissionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dd.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
