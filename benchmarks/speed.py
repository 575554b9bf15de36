"""Throughput benchmark: ``python -m benchmarks.speed [--device cuda] [--dict-sizes 4096,16384,65536] [--out FILE]``.

Measures, on one device, in one run:
* the bf16 matmul peak (an 8192^3 product, TFLOP/s) as the reference;
* training-step throughput (tokens/s) of every architecture (ReLU, TopK, BatchTopK), standard and aligned, per
  dictionary size, on random activations (width 576 = SmolLM2-135M's d_model, batch 8192 by default, bf16
  autocast on GPU), with achieved TFLOP/s counted as ``12 * activation_dim * dict_size`` per token (dense forward
  + backward) and its ratio to the measured peak, the aligned step's overhead over the standard one, and peak GPU
  memory;
* optionally (``--harvest``) activation harvesting tokens/s of SmolLM2-135M layer 12 at ctx 128 and 1024;
* ``--paths``: which implementations of our step to time (each a row group; see :data:`PATHS`): ``plain`` (dense
  decoder, no compile, unfused Adam), ``default`` (the trainers' defaults: fused Adam on CUDA), ``sparse``
  (+ sparse decoder for TopK/BatchTopK), ``compile`` (+ torch.compile of the loss), ``fast`` (all of them);
* ``--compare-dictionary-learning``: the same grid with PyPI ``dictionary-learning`` 0.1.0's trainers (install it
  for the benchmark only: ``pip install --no-deps dictionary-learning==0.1.0``; if it is absent, the benchmark says
  so and leaves those columns empty) on the same random activations and settings, and our speed-up over it.

* optionally (``--e2e-tokens N``) our end-to-end pipeline: harvest N activations of SmolLM2-135M layer 12 once and
  train the standard and aligned dictionary of every architecture on the same batches (``trainSAE``), in tokens/s
  of the whole pipeline (model loading excluded), once per step implementation in ``--e2e-paths``.

A grid point that fails (say, a kernel missing on the device) is reported as failed and the rest still runs; with
``--out`` the JSON is rewritten after every row (``"complete": false`` until the end).

No end-to-end (harvest + train) comparison with dictionary_learning: its 0.1.0 ``ActivationBuffer`` does not run
with the nnsight 0.8.1 this library pins (``OutOfOrderError`` at ``self.model.inputs.save()``), so its own
pipeline would need a separate environment with an older nnsight.

Example (the H200 run)::

    python -m benchmarks.speed --paths plain,default,sparse,compile,fast --compare-dictionary-learning \
        --out speed.json   # results/speed_h200/ holds the H200 runs

Prints a table and writes JSON (with the command, device and versions). Speed targets live here, not in tests.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import DL_ARCHS, dictionary_learning_trainers, matmul_peak, synchronize  # noqa: F401
from dictionary_learning_aligned.io import atomic_path

#: architectures timed unless ``--archs`` says otherwise (any registered name may be given)
ARCHS = ("relu", "topk", "batchtopk")


def arch_settings(arch: str) -> tuple[str, str, dict]:
    """``(standard trainer name, aligned trainer name, constructor arguments)`` of a registered architecture for
    the benchmark: its registered schedule for the 10k steps :func:`step_throughput` builds its trainers for
    (except the lr schedule, which the benchmark sets), a sparsity warmup of 1 step if it has one, and its default
    sparsity value.

    Raises:
        ValueError: an unregistered architecture.
    """
    from dictionary_learning_aligned import registry

    a = registry.get(arch)
    extra = {k: v for k, v in a.schedule(10_000).items() if k not in ("warmup_steps", "decay_start")}
    if "sparsity_warmup_steps" in extra:
        extra["sparsity_warmup_steps"] = 1
    extra[a.sparsity_param] = a.default_sparsity
    return a.trainer.__name__, a.aligned_trainer.__name__, extra


def _takes_sparse_decode(arch: str) -> bool:
    """Whether the architecture's trainer has the sparse-decoder option (the TopK family)."""
    from dictionary_learning_aligned import registry
    from dictionary_learning_aligned.trainers.top_k import TopKTrainer

    return issubclass(registry.get(arch).trainer, TopKTrainer)


#: implementations of our training step that ``--paths`` can time: trainer keyword arguments per path
#: (``sparse_decode`` applies to TopK/BatchTopK only); ``default`` is what the trainers do when not told
PATHS = {"plain": {"fused_optimizer": False},
         "default": {},
         "sparse": {"sparse_decode": True},
         "compile": {"compile": True},
         "fast": {"sparse_decode": True, "compile": True}}
def step_throughput(trainer_name: str, extra: dict, dict_size: int, activation_dim: int, batch: int, device: str,
                    steps: int, warmup: int, library=None) -> dict:
    """Tokens/s and peak memory of ``trainer.update`` on random activations (seed 0, so every implementation
    sees the same activations).

    Args:
        trainer_name: class name in our ``TRAINER_CLASSES`` or, with ``library``, in that trainers module.
        extra: further constructor arguments. library: dictionary_learning's ``trainers`` module, or None (ours).
    """
    if library is None:
        from dictionary_learning_aligned.trainers import TRAINER_CLASSES

        cls = TRAINER_CLASSES[trainer_name]
    else:
        cls = getattr(library, trainer_name)
    tr = cls(steps=10_000, activation_dim=activation_dim, dict_size=dict_size, layer=0, lm_name="benchmark",
             warmup_steps=1, device=device, seed=0, **extra)
    x = torch.randn(batch, activation_dim, device=device, generator=torch.Generator(device).manual_seed(0))
    amp = (torch.autocast("cuda", dtype=torch.bfloat16) if torch.device(device).type == "cuda"
           else torch.autocast("cpu", enabled=False))
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for s in range(warmup):
        with amp:
            tr.update(s, x)
    synchronize(device)
    t = time.perf_counter()
    for s in range(warmup, warmup + steps):
        with amp:
            tr.update(s, x)
    synchronize(device)
    dt = time.perf_counter() - t
    tok_s = batch * steps / dt
    return {"tokens_per_s": tok_s, "tflops": 12 * activation_dim * dict_size * tok_s / 1e12,
            "peak_mem_gib": (torch.cuda.max_memory_allocated() / 2**30
                             if torch.device(device).type == "cuda" else None)}


def _smollm2(device: str):
    """``(hf_model, nnsight_model)``: SmolLM2-135M-Instruct on ``device`` (bfloat16 on a GPU, float32 on the CPU),
    wrapped by nnsight with its own tokenizer copy."""
    import copy

    from nnsight import LanguageModel

    from dictionary_learning_aligned.models import load_language_model

    cuda = torch.device(device).type == "cuda"
    hf, tok = load_language_model(device=device, dtype=torch.bfloat16 if cuda else torch.float32)
    return hf, LanguageModel(hf, tokenizer=copy.deepcopy(tok))


def harvest_throughput(device: str, ctx_len: int, tokens: int, batch_tokens: int = 131072,
                       corpus: str | None = None) -> dict:
    """Tokens/s of ``ActivationBuffer`` filling ``tokens`` activations of SmolLM2-135M layer 12 (bf16 on a GPU).

    One forward pass of ``batch_tokens // ctx_len`` contexts runs first, untimed (warm-up); then one buffer
    fill of ``tokens // ctx_len`` contexts is timed (tokenization in the buffer's background thread, model
    forward stopped after layer 12, activations copied into the buffer).

    Args:
        device: where the model runs.
        ctx_len: tokens per context.
        tokens: activations harvested in the timed fill.
        batch_tokens: tokens per forward pass (``refresh_batch_size = batch_tokens // ctx_len``).
        corpus: text source (:func:`dictionary_learning_aligned.data.iter_texts`; default the bundled corpus,
            about 2M tokens: pass a larger local file for fills beyond that).

    Returns:
        ``{"tokens_per_s", "tokens", "refresh_batch_size"}``.
    """
    from dictionary_learning_aligned.buffer import ActivationBuffer
    from dictionary_learning_aligned.data import iter_texts

    _, lm = _smollm2(device)
    refresh = max(1, batch_tokens // ctx_len)
    buf = ActivationBuffer(iter_texts(corpus, split="all"), lm, lm.model.layers[12], n_ctxs=max(1, tokens // ctx_len),
                           ctx_len=ctx_len, refresh_batch_size=refresh, out_batch_size=8192, device=device, seed=0)
    buf.harvest(buf.token_batch())  # warm-up forward
    synchronize(device)
    t = time.perf_counter()
    buf.refresh()
    synchronize(device)
    return {"tokens_per_s": buf.tokens_harvested / (time.perf_counter() - t), "tokens": buf.tokens_harvested,
            "refresh_batch_size": refresh}


def end_to_end_throughput(device: str, tokens: int, dict_size: int, archs: tuple = tuple(ARCHS), batch: int = 8192,
                          ctx_len: int = 128, paths_opts: dict | None = None, corpus: str | None = None) -> dict:
    """Harvest ``tokens`` activations of SmolLM2-135M layer 12 (bundled corpus, BOS removed) once and train a
    standard and an aligned dictionary of each arch on the same batches with ``trainSAE``.

    Returns:
        ``{"tokens", "dictionaries", "dict_size", "seconds", "tokens_per_s", "load_s"}``; ``tokens_per_s`` is
        harvested-and-trained tokens per second of wall time (model loading, ``load_s``, excluded).

    Raises:
        ValueError: fewer ``tokens`` than one ``batch``.
    """
    from dictionary_learning_aligned.buffer import ActivationBuffer
    from dictionary_learning_aligned.data import iter_texts
    from dictionary_learning_aligned.models import get_layer
    from dictionary_learning_aligned.training import trainSAE

    steps = tokens // batch
    if steps < 1:
        raise ValueError(f"--e2e-tokens {tokens} is less than one batch of {batch}")
    cuda = torch.device(device).type == "cuda"
    t = time.perf_counter()
    hf, lm = _smollm2(device)
    load_s = time.perf_counter() - t
    buf = ActivationBuffer(iter_texts(corpus, split="all"), lm, get_layer(lm, 12), d_submodule=hf.config.hidden_size,
                           n_ctxs=max(8, 4 * batch // ctx_len, min(8000, tokens // ctx_len // 4)), ctx_len=ctx_len,
                           refresh_batch_size=max(1, 131072 // ctx_len) if cuda else 8, out_batch_size=batch,
                           device=device, remove_bos=True, seed=0)
    configs = []
    for arch in archs:
        std, ali, extra = arch_settings(arch)
        for name in (std, ali):
            configs.append({"trainer": name, "steps": steps, "activation_dim": hf.config.hidden_size,
                            "dict_size": dict_size, "layer": 12, "lm_name": "smollm2-135m-instruct",
                            "warmup_steps": 1, "seed": 0, **extra, **(paths_opts or {})})
            if not _takes_sparse_decode(arch):
                configs[-1].pop("sparse_decode", None)
    synchronize(device)
    t = time.perf_counter()
    trainSAE(buf, configs, steps, device=device, autocast_dtype=torch.bfloat16 if cuda else torch.float32)
    synchronize(device)
    dt = time.perf_counter() - t
    return {"tokens": steps * batch, "dictionaries": len(configs), "dict_size": dict_size, "seconds": dt,
            "tokens_per_s": steps * batch / dt, "load_s": load_s}


def run(device: str, dict_sizes: list, activation_dim: int = 576, batch: int = 8192, steps: int = 20,
        warmup: int = 5, harvest: bool = False, peak_n: int = 8192, paths: tuple = ("default",),
        compare_dictionary_learning: bool = False, archs: tuple = tuple(ARCHS), e2e_tokens: int = 0,
        e2e_dict_size: int = 16384, harvest_tokens: int | None = None, harvest_batch_tokens: int = 131072,
        corpus: str | None = None, e2e_paths: tuple = ("default",), progress=None) -> dict:
    """Run the benchmark grid; returns the JSON-ready results.

    A grid point whose step raises (e.g. a kernel missing for a dtype) is recorded as ``{"error": "..."}`` in its
    row and the grid goes on; ``progress(res)``, if given, is called with the results so far after every row, so a
    run cut short keeps what it measured.

    Raises:
        ValueError: an unknown path or architecture.
    """
    bad = _unknown_names(tuple(paths) + tuple(e2e_paths), archs)
    if bad:
        raise ValueError(bad)
    res = {"device": torch.cuda.get_device_name() if torch.device(device).type == "cuda" else platform.processor()
           or "cpu", "activation_dim": activation_dim, "batch": batch, "steps": steps,
           "matmul_peak_tflops": matmul_peak(device, peak_n), "train": [], "harvest": {}, "paths": list(paths)}
    dl = None
    if compare_dictionary_learning:
        dl, info = dictionary_learning_trainers()
        res["dictionary_learning"] = info if dl is not None else None
        if dl is None:
            res["dictionary_learning_missing"] = info
            print(f"note: {info}; skipping the dictionary_learning rows")
    for d in dict_sizes:
        for arch in archs:
            std, ali, extra = arch_settings(arch)
            dl_row = None
            if dl is not None and arch in DL_ARCHS:
                name, dl_extra = DL_ARCHS[arch]
                try:
                    dl_row = step_throughput(name, dl_extra, d, activation_dim, batch, device, steps, warmup,
                                             library=dl)
                    dl_row["frac_of_peak"] = dl_row["tflops"] / res["matmul_peak_tflops"]
                except Exception as e:  # recorded in this arch's rows; our own rows still run
                    dl_row = {"error": _error_text(e)}
            for path in paths:
                opts = {k: v for k, v in PATHS[path].items() if k != "sparse_decode" or _takes_sparse_decode(arch)}
                row = {"arch": arch, "dict_size": d, "path": path}
                try:
                    for kind, name in (("standard", std), ("aligned", ali)):
                        row[kind] = step_throughput(name, {**extra, **opts}, d, activation_dim, batch, device,
                                                    steps, warmup)
                except Exception as e:  # recorded, not fatal: the rest of the grid still runs
                    row = {"arch": arch, "dict_size": d, "path": path, "error": _error_text(e)}
                    res["train"].append(row)
                    _progress(progress, res)
                    continue
                row["aligned_overhead"] = row["standard"]["tokens_per_s"] / row["aligned"]["tokens_per_s"] - 1
                for kind in ("standard", "aligned"):
                    row[kind]["frac_of_peak"] = row[kind]["tflops"] / res["matmul_peak_tflops"]
                if dl_row is not None and "error" in dl_row:
                    row["dictionary_learning_error"] = dl_row["error"]
                elif dl_row is not None:
                    row["dictionary_learning"] = dl_row
                    row["speedup_vs_dl"] = {k: row[k]["tokens_per_s"] / dl_row["tokens_per_s"]
                                            for k in ("standard", "aligned")}
                res["train"].append(row)
                _progress(progress, res)
    if harvest:
        for ctx in (128, 1024):
            n = harvest_tokens or (2_000_000 if torch.device(device).type == "cuda" else 65536)
            res["harvest"][f"ctx{ctx}"] = harvest_throughput(device, ctx, n, harvest_batch_tokens, corpus)
            _progress(progress, res)
    if e2e_tokens:
        res["end_to_end"] = {}
        for p in e2e_paths:
            try:
                res["end_to_end"][p] = end_to_end_throughput(device, e2e_tokens, e2e_dict_size, archs, batch,
                                                             paths_opts=PATHS[p], corpus=corpus)
            except Exception as e:  # recorded like a failed grid point; the other paths still run
                res["end_to_end"][p] = {"error": _error_text(e)}
            _progress(progress, res)
    return res


def _unknown_names(paths, archs) -> str:
    """An error message naming the unknown step paths and architectures, or "" when all are known."""
    from dictionary_learning_aligned import registry

    known = registry.names()
    bad = [p for p in paths if p not in PATHS] + [a for a in archs if a not in known]
    return f"unknown path/arch {bad}; paths: {sorted(PATHS)}, archs: {sorted(known)}" if bad else ""


def _error_text(e: BaseException) -> str:
    """How a failed measurement is recorded: the exception's type and message, at most 500 characters."""
    return f"{type(e).__name__}: {e}"[:500]


def _progress(progress, res: dict) -> None:
    if progress is not None:
        progress(res)


def _one_line(msg: str, n: int = 200) -> str:
    return " ".join(msg.split())[:n]


def format_table(res: dict) -> str:
    """Text table of the benchmark results."""
    lines = [f"device: {res['device']}; matmul peak {res['matmul_peak_tflops']:.1f} TFLOP/s; batch {res['batch']}"]
    if res.get("dictionary_learning_missing"):
        lines.append(f"dictionary_learning rows skipped: {res['dictionary_learning_missing']}")
    elif res.get("dictionary_learning"):
        lines.append(f"dictionary_learning {res['dictionary_learning']}: DL tok/s and our speed-up (std, aligned)")
    lines.append(f"{'arch':10}{'dict_size':>10}{'path':>9}{'std tok/s':>14}{'aligned tok/s':>15}{'overhead':>10}"
                 f"{'std TFLOP/s':>13}{'% peak':>8}{'peak GiB':>10}{'DL tok/s':>12}{'x DL std':>10}{'x DL al.':>10}")
    for r in res["train"]:
        if "error" in r:
            lines.append(f"{r['arch']:10}{r['dict_size']:>10}{r['path']:>9}  failed: {_one_line(r['error'])}")
            continue
        s, a = r["standard"], r["aligned"]
        mem = "" if s["peak_mem_gib"] is None else f"{max(s['peak_mem_gib'], a['peak_mem_gib']):.1f}"
        dl = (f"{r['dictionary_learning']['tokens_per_s']:>12,.0f}{r['speedup_vs_dl']['standard']:>10.2f}"
              f"{r['speedup_vs_dl']['aligned']:>10.2f}" if "dictionary_learning" in r else "")
        lines.append(f"{r['arch']:10}{r['dict_size']:>10}{r.get('path', 'default'):>9}{s['tokens_per_s']:>14,.0f}"
                     f"{a['tokens_per_s']:>15,.0f}{r['aligned_overhead']:>+10.1%}{s['tflops']:>13.1f}"
                     f"{s['frac_of_peak']:>8.1%}{mem:>10}{dl}")
    for p, e in res.get("end_to_end", {}).items():
        if "error" in e:
            lines.append(f"end to end ({p}): failed: {_one_line(e['error'])}")
            continue
        lines.append(f"end to end ({p}): harvest {e['tokens']:,} tokens + train {e['dictionaries']} dictionaries "
                     f"(dict_size {e['dict_size']}): {e['tokens_per_s']:,.0f} tokens/s ({e['seconds']:.1f} s)")
    for k, v in res["harvest"].items():
        lines.append(f"harvest SmolLM2-135M layer 12, {k}: {v['tokens_per_s']:,.0f} tokens/s "
                     f"({v['tokens']:,} tokens, {v['refresh_batch_size']} contexts per forward)")
    return "\n".join(lines)


def _sweep(args: list) -> int:
    """``--sweep``: :mod:`benchmarks.sweep` with the other arguments."""
    from benchmarks import sweep

    args.remove("--sweep")
    return sweep.main(args)


def main(argv=None) -> int:
    """Command line (see the module docstring); ``--sweep ...`` runs :mod:`benchmarks.sweep` with the rest."""
    if "--sweep" in (sys.argv[1:] if argv is None else argv):
        return _sweep(list(sys.argv[1:] if argv is None else argv))
    ap = argparse.ArgumentParser(prog="python -m benchmarks.speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dict-sizes", default="4096,16384,65536")
    ap.add_argument("--activation-dim", type=int, default=576,
                    help="width of the random activations (576: SmolLM2-135M; 2304: Gemma-2-2B)")
    ap.add_argument("--batch", type=int, default=8192)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--harvest", action="store_true", help="also measure harvesting (loads SmolLM2)")
    ap.add_argument("--harvest-tokens", type=int, default=None,
                    help="tokens per timed harvest (default 2M on a GPU, 65536 on the CPU)")
    ap.add_argument("--harvest-batch-tokens", type=int, default=131072, help="tokens per harvesting forward pass")
    ap.add_argument("--corpus", default=None, help="text for harvesting (default: the bundled corpus)")
    ap.add_argument("--peak-n", type=int, default=8192, help="size of the matmul used for the peak")
    ap.add_argument("--paths", default="default", help=f"comma list of step implementations to time, from "
                                                       f"{list(PATHS)} (default: default)")
    ap.add_argument("--archs", default=",".join(ARCHS), help=f"comma list of registered architectures (default "
                    f"{','.join(ARCHS)}; also panneal and the extensions jumprelu, matryoshka)")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens here)")
    ap.add_argument("--e2e-tokens", type=int, default=0,
                    help="also time harvest + training of every arch (standard and aligned) on N tokens (0: off)")
    ap.add_argument("--e2e-dict-size", type=int, default=16384, help="dict_size of the end-to-end run")
    ap.add_argument("--e2e-paths", default="default", help="comma list: the step implementations of the "
                                                            "end-to-end runs (default: default)")
    ap.add_argument("--compare-dictionary-learning", action="store_true",
                    help="also time dictionary-learning 0.1.0's trainers (pip install --no-deps "
                         "dictionary-learning==0.1.0) and report our speed-up")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.activation_dim < 1:
        print(f"error: --activation-dim must be >= 1, got {args.activation_dim}", file=sys.stderr)
        return 2
    bad = [f"--{k.replace('_', '-')} must be >= 1, got {getattr(args, k)}" for k in ("batch", "steps", "peak_n")
           if getattr(args, k) < 1]
    if 0 < args.e2e_tokens < args.batch:
        bad.append(f"--e2e-tokens {args.e2e_tokens} is less than one batch of {args.batch}")
    unknown = _unknown_names(args.paths.split(",") + args.e2e_paths.split(","), args.archs.split(","))
    if unknown:
        bad.append(unknown)
    if args.out:
        if Path(args.out).is_dir():
            bad.append(f"--out {args.out} is a directory")
        else:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    if bad:
        print("error: " + "; ".join(bad), file=sys.stderr)
        return 2
    command = " ".join(["python -m benchmarks.speed"] + (argv if argv is not None else sys.argv[1:]))

    def write(obj: dict) -> None:  # atomically: a run killed mid-write keeps the previous version
        with atomic_path(args.out) as tmp:
            tmp.write_text(json.dumps(obj, indent=2))

    def save(partial: dict) -> None:  # after every row, so a run cut short keeps what it measured
        if args.out:
            write({**partial, "command": command, "complete": False})

    res = run(args.device, [int(d) for d in args.dict_sizes.split(",")], activation_dim=args.activation_dim,
              batch=args.batch, steps=args.steps,
              warmup=args.warmup, harvest=args.harvest, peak_n=args.peak_n, paths=tuple(args.paths.split(",")),
              compare_dictionary_learning=args.compare_dictionary_learning, archs=tuple(args.archs.split(",")),
              e2e_tokens=args.e2e_tokens, e2e_dict_size=args.e2e_dict_size, harvest_tokens=args.harvest_tokens,
              harvest_batch_tokens=args.harvest_batch_tokens, corpus=args.corpus,
              e2e_paths=tuple(args.e2e_paths.split(",")), progress=save)
    res["command"], res["complete"] = command, True
    res["versions"] = {"torch": torch.__version__, "python": platform.python_version()}
    print(format_table(res))
    if args.out:
        write(res)
    failed = [r for r in res["train"] if "error" in r] + [e for e in res.get("end_to_end", {}).values() if "error" in e]
    if failed and len(failed) == len(res["train"]) + len(res.get("end_to_end", {})):
        print("error: every measurement failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
