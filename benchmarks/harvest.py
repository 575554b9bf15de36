"""Precision and speed of the activation harvest: ``python -m benchmarks.harvest --model smollm2|gemma-3-270m
[--device cuda] [--corpus FILE] [--contexts N] [--out FILE]``.

The harvest (:func:`dictionary_learning_aligned.pipeline.harvest_into`) runs the language model in float32, as
:func:`~dictionary_learning_aligned.pipeline.load_model` loads it, by default with float32 matmul precision
"highest" (no TF32; ``reproduce --harvest-precision tf32`` opts into TF32, measured here). This benchmark measures
what two cheaper precisions change, on the real offline model and the same contexts:

* ``float32``: as the harvest runs now (the reference);
* ``tf32``: the same model with ``torch.set_float32_matmul_precision("high")`` (TF32 tensor-core matmuls on an
  Ampere or newer GPU), restored afterwards; on a CPU, or a GPU older than Ampere, this changes nothing, and the
  JSON says so (``tf32.applies``) instead of reporting a speed-up that is not one;
* ``bfloat16``: a copy of the model cast to bfloat16 (the float32 model is not changed). The buffer casts the
  activations back to float32, as it does for any model.

For each precision, over ``--contexts`` contexts of the corpus's train split (packed as the harvest packs them,
``--refresh-batch-size`` contexts per forward pass, as ``reproduce`` harvests at ``small``: 256): after
``--warmup`` forward passes, every forward pass is timed with the device synchronized before and after it, then
"the rest" of its harvest step (:meth:`.ActivationBuffer.rows`: BOS removed, cast to float32, massive-norm tokens
dropped; then the cache's conversion to float16 and copy to the host, ``cache._stored_rows``), synchronized too.
Against float32 on the same contexts: per token (BOS removed, every token) the relative error ``||a - a_fp32|| /
||a_fp32||`` (median, 99th percentile, max) and the cosine (median, 1st percentile, min), and the fraction of tokens
whose massive-norm drop decision (:func:`.buffer.norm_keep_mask`) differs. ``float16_storage`` gives the same
errors for float32 activations rounded to float16, as the cache stores them: a precision whose error is well
under that floor loses nothing the cache keeps.

Where one harvest step's time goes (``pieces_per_forward``): tokenization (packing ``--refresh-batch-size``
contexts from text, timed once on this thread; the harvest runs it on a background thread, so it costs time only
when it is slower than the forward passes), the forward pass, the rest. With ``--e2e-tokens N`` (default 500,000
on a GPU, 0 on a CPU) each precision also builds a real cache of N activations in a temporary folder, through the
exact calls of ``harvest_into``, and reports its tokens/s and ``build_seconds`` (waiting for batches, writing,
fsync; :func:`.cache.build_seconds`).

Model loading is not timed. A GPU run takes about a minute beyond the model's loading; ``--device cpu --contexts
8 --refresh-batch-size 4`` is a short CPU run of the same code (float32 and bfloat16 numbers of a CPU). Writes the
JSON atomically (after each precision, ``"complete": false`` until the end); prints one line per precision.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from dictionary_learning_aligned.dtypes import matmul_precision, tf32_applies
from dictionary_learning_aligned.io import atomic_path

from . import prepare_out
from .common import device_kind, synchronize

#: the precisions timed, in order; float32 is the reference the others are compared with
PRECISIONS = ("float32", "tf32", "bfloat16")
#: float32 matmul precision (``torch.set_float32_matmul_precision``) of each precision's run
MATMUL_PRECISION = {"float32": "highest", "tf32": "high", "bfloat16": "highest"}
#: --model choices: the offline aliases of :func:`.models.load_language_model`
MODELS = {"smollm2": "smollm2-135m-instruct", "gemma-3-270m": "gemma-3-270m"}
#: defaults per device kind
DEFAULTS = {"cuda": dict(contexts=2048, refresh_batch_size=256, warmup=2, e2e_tokens=500_000),
            "cpu": dict(contexts=16, refresh_batch_size=8, warmup=1, e2e_tokens=0)}
DEFAULT_MAX_NORM_MULTIPLE = 10.0


def model_for(precision: str, hf):
    """The Hugging Face model a precision runs: ``hf`` itself (float32, tf32) or a bfloat16 copy of it (``hf`` is
    not changed)."""
    if precision == "bfloat16":
        return copy.deepcopy(hf).to(torch.bfloat16)
    return hf


def draw_contexts(tokenizer, corpus: Optional[str], n: int, ctx_len: int, seed: int = 0) -> tuple[torch.Tensor, float]:
    """The first ``n`` contexts of ``corpus``'s train split as the harvest packs them
    (:func:`.buffer.pack_token_contexts`, 256 documents per tokenizer call, as :class:`.ActivationBuffer`), and the
    seconds the packing took on this thread (opening the corpus excluded).

    Returns:
        ``(contexts [n', ctx_len] long, seconds)`` with ``n' <= n`` (fewer when the text runs out).

    Raises:
        ValueError: no context (the text is shorter than one context), or as :func:`.data.iter_texts`.
    """
    from dictionary_learning_aligned.buffer import pack_token_contexts
    from dictionary_learning_aligned.data import iter_texts

    texts = iter_texts(corpus, split="train", seed=seed)
    first = next(texts)  # opening the corpus (once per harvest) is not timed
    t = time.perf_counter()
    packed = pack_token_contexts(itertools.chain([first], texts), copy.deepcopy(tokenizer), ctx_len,
                                 tokenize_batch=256)
    rows = list(itertools.islice(packed, n))
    seconds = time.perf_counter() - t
    if not rows:
        raise ValueError(f"the corpus holds no context of {ctx_len} tokens")
    return torch.stack(rows), seconds


def harvester(loaded, ctx_len: int, device: str, max_norm_multiple: Optional[float]):
    """An :class:`.ActivationBuffer` of ``loaded`` (a :class:`.pipeline.LoadedModel`) with the harvest's settings
    (output of the layer, BOS removed, the norm filter), over no text: only its :meth:`~.ActivationBuffer.harvest`
    and :meth:`~.ActivationBuffer.rows` are used, on contexts drawn once by :func:`draw_contexts`."""
    from dictionary_learning_aligned.buffer import ActivationBuffer

    return ActivationBuffer(iter(()), loaded.lm, loaded.submodule, d_submodule=loaded.d_model, n_ctxs=1,
                            ctx_len=ctx_len, device=device, remove_bos=True, max_norm_multiple=max_norm_multiple,
                            seed=0)


def time_forwards(buf, batches: list, device: str, warmup: int) -> dict:
    """Time the harvest steps of ``batches`` (each ``[contexts, ctx_len]`` tokens) on ``buf``.

    Returns:
        ``{"forward_s": [s per batch], "rest_s": [s per batch], "acts": [float32 [tokens, d] per batch, BOS
        removed, every token], "peak_memory_gib": GPU peak or None}``; each forward pass and each rest is timed
        between two synchronizations of ``device``.
    """
    from dictionary_learning_aligned.cache import _stored_rows

    cuda = torch.device(device).type == "cuda"
    for b in itertools.islice(itertools.cycle(batches), warmup):
        buf.rows(buf.harvest(b))
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    out = {"forward_s": [], "rest_s": [], "acts": []}
    for b in batches:
        synchronize(device)
        t0 = time.perf_counter()
        h = buf.harvest(b)
        synchronize(device)
        t1 = time.perf_counter()
        rows = buf.rows(h)
        _stored_rows(rows, len(rows), None, torch.float16, "float16")
        synchronize(device)
        out["forward_s"].append(t1 - t0)
        out["rest_s"].append(time.perf_counter() - t1)
        out["acts"].append(h[:, 1:].reshape(-1, h.shape[-1]).float())
    out["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30 if cuda else None
    return out


def errors(acts: torch.Tensor, ref: torch.Tensor) -> dict:
    """Per-token error of ``acts`` against ``ref`` (both ``[tokens, d]``): the relative error ``||a - r|| / ||r||``
    (``rel_err_median``, ``rel_err_p99``, ``rel_err_max``) and the cosine (``cos_median``, ``cos_p01`` (1st
    percentile), ``cos_min``)."""
    a, r = acts.double(), ref.double()
    rel = (a - r).norm(dim=-1) / r.norm(dim=-1)
    cos = torch.nn.functional.cosine_similarity(a, r, dim=-1)
    q = torch.tensor([0.01, 0.5, 0.99], dtype=torch.float64, device=rel.device)
    rq, cq = torch.quantile(rel, q).tolist(), torch.quantile(cos, q).tolist()
    return {"rel_err_median": rq[1], "rel_err_p99": rq[2], "rel_err_max": float(rel.max()),
            "cos_median": cq[1], "cos_p01": cq[0], "cos_min": float(cos.min())}


def drop_decisions(acts: list, ref: list, max_norm_multiple: float) -> dict:
    """How the massive-norm drop (:func:`.buffer.norm_keep_mask`, per forward pass as the buffer applies it)
    decides on ``acts`` and on ``ref`` (lists of ``[tokens, d]``, one per forward pass): ``dropped`` (fraction of
    tokens ``acts`` drops) and ``decision_differs`` (fraction of tokens kept by one and dropped by the other)."""
    from dictionary_learning_aligned.buffer import norm_keep_mask

    keep = torch.cat([norm_keep_mask(a, max_norm_multiple) for a in acts])
    keep_ref = torch.cat([norm_keep_mask(r, max_norm_multiple) for r in ref])
    return {"dropped": float((~keep).float().mean()), "decision_differs": float((keep != keep_ref).float().mean())}


def end_to_end(loaded, corpus: Optional[str], tokens: int, refresh_batch_size: int, device: str,
               max_norm_multiple: Optional[float], folder: Path) -> dict:
    """Build a cache of ``tokens`` activations of ``loaded`` at ``folder`` (removed afterwards) by the calls of
    :func:`.pipeline.harvest_into` (a buffer of :func:`.pipeline.buffer_ctxs` contexts, :func:`.cache.build_cache`).

    Returns:
        ``{"tokens": stored, "harvested": activations the buffer harvested (it fills ahead of the cache), "seconds",
        "tokens_per_s": stored / seconds, "build_seconds": {...}}``.
    """
    import shutil

    from dictionary_learning_aligned import pipeline
    from dictionary_learning_aligned.cache import build_cache, build_seconds

    harvest = pipeline.Harvest(loaded, corpus=corpus, refresh_batch_size=refresh_batch_size, device=device,
                               max_norm_multiple=max_norm_multiple)
    buf = pipeline.activation_buffer(harvest, "train", pipeline.buffer_ctxs(tokens, harvest.ctx_len))
    meta = pipeline.cache_meta(loaded.name, loaded.layer, corpus, harvest.ctx_len, max_norm_multiple)
    t = time.perf_counter()
    try:
        build_cache(buf, folder, tokens, meta)
        seconds = time.perf_counter() - t
        stored = json.loads((folder / "meta.json").read_text())["tokens"]
        split = build_seconds(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {"tokens": stored, "harvested": buf.tokens_harvested, "seconds": seconds,
            "tokens_per_s": stored / seconds, "build_seconds": split}


def run(hf, tokenizer, name: str, layer: int, device: str, contexts: int, refresh_batch_size: int,
        precisions: tuple = PRECISIONS, corpus: Optional[str] = None, ctx_len: int = 128, warmup: int = 1,
        max_norm_multiple: Optional[float] = DEFAULT_MAX_NORM_MULTIPLE, e2e_tokens: int = 0,
        out: Optional[str] = None, command: str = "", say: Callable[[str], None] = print) -> dict:
    """Measure every precision (see the module docstring) on the float32 model ``hf`` (on ``device``; not
    changed) and its ``tokenizer``, reading block ``layer``; float32 runs first, as the reference.

    Returns:
        the results (written as JSON to ``out`` after each precision when given): settings, ``tf32``,
        ``tokenization``, ``float16_storage``, and ``precisions``: per precision ``tokens_per_s`` (activations,
        BOS removed, per second of forward passes), ``step_tokens_per_s`` (forward + rest),
        ``pieces_per_forward`` (seconds: tokenization, forward, rest), ``speedup_vs_float32``, ``peak_memory_gib``,
        ``vs_float32`` (:func:`errors`), ``drop`` (:func:`drop_decisions`) and, with ``e2e_tokens``, ``end_to_end``
        (:func:`end_to_end`).

    Raises:
        ValueError: ``precisions`` without float32 or with an unknown name; a corpus with no context.
    """
    from dictionary_learning_aligned import pipeline

    if "float32" not in precisions or set(precisions) - set(PRECISIONS):
        raise ValueError(f"precisions must include float32 and be among {PRECISIONS}, got {precisions}")
    precisions = ("float32",) + tuple(p for p in PRECISIONS if p in precisions and p != "float32")
    tokens, token_s = draw_contexts(tokenizer, corpus, contexts, ctx_len)
    batches = list(tokens.split(refresh_batch_size))
    cuda = torch.device(device).type == "cuda"
    applies = tf32_applies(device)
    res = {"command": command, "complete": False, "model": name, "layer": layer,
           "device": torch.cuda.get_device_name(torch.device(device)) if cuda else "cpu",
           "torch": torch.__version__, "python": platform.python_version(), "attn_implementation":
           getattr(hf.config, "_attn_implementation", None), "corpus": Path(corpus).name if corpus else "bundled", "contexts": len(tokens),
           "ctx_len": ctx_len, "refresh_batch_size": refresh_batch_size, "forwards": len(batches),
           "activations": len(tokens) * (ctx_len - 1), "warmup": warmup, "max_norm_multiple": max_norm_multiple,
           "tf32": {"applies": applies, "note": "TF32 matmuls (set_float32_matmul_precision('high')) on this GPU" if
                    applies else "TF32 does not exist on this device: the tf32 run is float32 again (a no-op), "
                    "its numbers are not a GPU's"},
           "tokenization": {"seconds": token_s, "contexts_per_s": len(tokens) / token_s,
                            "tokenizers_parallelism": os.environ.get("TOKENIZERS_PARALLELISM"),
                            "note": "packing on this thread, in chunks of 256 documents (a few contexts still cost a "
                                    "whole chunk); the harvest packs on a background thread (prefetch), overlapping "
                                    "the forward passes"},
           "float16_storage": None, "precisions": {}}
    ref = None
    for p in precisions:
        model = model_for(p, hf)
        with matmul_precision(MATMUL_PRECISION[p]):
            loaded = pipeline.wrap_model(name, layer, model, tokenizer)
            timed = time_forwards(harvester(loaded, ctx_len, device, max_norm_multiple), batches, device, warmup)
            row = _row(timed, len(tokens), ctx_len, refresh_batch_size, token_s, res["precisions"].get("float32"))
            row["float32_matmul_precision"] = torch.get_float32_matmul_precision()
            if ref is None:
                ref = timed["acts"]
                res["float16_storage"] = errors(torch.cat(ref).half().float(), torch.cat(ref))
            row["vs_float32"] = errors(torch.cat(timed["acts"]), torch.cat(ref))
            if max_norm_multiple:
                row["drop"] = drop_decisions(timed["acts"], ref, max_norm_multiple)
            if e2e_tokens:
                with tempfile.TemporaryDirectory(prefix="harvest_bench_") as tmp:
                    row["end_to_end"] = end_to_end(loaded, corpus, e2e_tokens, refresh_batch_size, device,
                                                   max_norm_multiple, Path(tmp) / "cache")
        del model, loaded, timed
        res["precisions"][p] = row
        say(format_row(p, row) + (" [TF32 does not exist on this device: a no-op]" if p == "tf32" and not applies
                                  else ""))
        if out:
            _write(out, res)
    res["complete"] = True
    if out:
        _write(out, res)
    return res


def _row(timed: dict, contexts: int, ctx_len: int, refresh_batch_size: int, token_s: float,
         base: Optional[dict]) -> dict:
    """The speed entries of one precision's :func:`time_forwards`."""
    fwd, rest = sum(timed["forward_s"]), sum(timed["rest_s"])
    n = contexts * (ctx_len - 1)
    row = {"tokens_per_s": n / fwd, "step_tokens_per_s": n / (fwd + rest), "forward_s": fwd, "rest_s": rest,
           "pieces_per_forward": {"tokenization": token_s * refresh_batch_size / contexts,
                                  "forward": fwd / len(timed["forward_s"]), "rest": rest / len(timed["rest_s"])},
           "peak_memory_gib": timed["peak_memory_gib"]}
    row["speedup_vs_float32"] = row["tokens_per_s"] / base["tokens_per_s"] if base else 1.0
    return row


def format_row(precision: str, row: dict) -> str:
    """The printed line of one precision."""
    pieces = ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["pieces_per_forward"].items())
    line = (f"{precision:>8}: forward {row['tokens_per_s']:,.0f} tokens/s (x{row['speedup_vs_float32']:.2f}), with "
            f"the rest {row['step_tokens_per_s']:,.0f} tokens/s; per forward: {pieces}; vs float32: relative error "
            f"median {row['vs_float32']['rel_err_median']:.2e}, p99 {row['vs_float32']['rel_err_p99']:.2e}, cosine "
            f"p01 {row['vs_float32']['cos_p01']:.6f}")
    if "drop" in row:
        line += f"; drop decision differs on {row['drop']['decision_differs']:.2e} of tokens"
    if "end_to_end" in row:
        e = row["end_to_end"]
        line += f"; cache build {e['tokens']:,} tokens at {e['tokens_per_s']:,.0f} tokens/s"
    return line


def _write(out: str, res: dict) -> None:
    with atomic_path(out) as t:
        t.write_text(json.dumps(res, indent=1))


def load(model: str, device: str):
    """``(hf, tokenizer)``: the offline model ``model`` (a :data:`MODELS` alias) in float32 on ``device``, as
    :func:`.pipeline.load_model` loads it."""
    from dictionary_learning_aligned import console
    from dictionary_learning_aligned.models import load_language_model

    with console.captured_output(None, stderr=True):
        return load_language_model(MODELS.get(model, model), device=device, dtype=torch.float32)


def main(argv=None) -> int:
    """Command line (see the module docstring); returns 0."""
    ap = argparse.ArgumentParser(prog="python -m benchmarks.harvest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, choices=sorted(MODELS), help="the offline model")
    ap.add_argument("--layer", type=int, help="block read (default: the model's default, 12 or 8)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    ap.add_argument("--corpus", help="text source (default: the bundled corpus); the GPU pipeline's corpus file")
    ap.add_argument("--precisions", default=",".join(PRECISIONS), help="comma list of float32 (always run, the "
                    "reference), tf32, bfloat16")
    for flag, help_ in (("contexts", "contexts of 128 tokens harvested per precision"),
                        ("refresh-batch-size", "contexts per forward pass"),
                        ("warmup", "untimed forward passes before the timed ones"),
                        ("e2e-tokens", "activations of the real cache build per precision (0: none)")):
        key = flag.replace("-", "_")
        ap.add_argument(f"--{flag}", type=int, help=f"{help_} (default: {DEFAULTS['cuda'][key]} on a GPU, "
                        f"{DEFAULTS['cpu'][key]} on a CPU)")
    ap.add_argument("--max-norm-multiple", type=float, default=DEFAULT_MAX_NORM_MULTIPLE,
                    help="the norm filter's multiple of the median (default 10, the harvest's)")
    ap.add_argument("--out", help="write the results as JSON to this file")
    args = ap.parse_args(argv)
    kind = device_kind(ap, args.device, "runs the same measurement on the CPU")
    d = {k: (getattr(args, k) if getattr(args, k) is not None else v) for k, v in DEFAULTS[kind].items()}
    precisions = tuple(args.precisions.split(","))
    if set(precisions) - set(PRECISIONS):
        ap.error(f"--precisions: unknown {sorted(set(precisions) - set(PRECISIONS))}; choose among {PRECISIONS}")
    if min(d["contexts"], d["refresh_batch_size"]) < 1 or min(d["warmup"], d["e2e_tokens"]) < 0:
        ap.error("--contexts and --refresh-batch-size must be >= 1, --warmup and --e2e-tokens >= 0")
    if not args.max_norm_multiple > 1:
        ap.error(f"--max-norm-multiple must be > 1, got {args.max_norm_multiple}")
    if args.out:
        prepare_out(ap, args.out)
    if args.layer is not None and args.layer < 0:
        ap.error(f"--layer must be >= 0, got {args.layer}")
    from dictionary_learning_aligned.pipeline import check_corpus, default_layer

    try:  # an unreadable corpus fails before the model is loaded
        check_corpus(args.corpus, splits=("train",))
    except (OSError, ValueError) as e:
        ap.error(f"--corpus: {e}")
    name = MODELS[args.model]
    layer = default_layer(name) if args.layer is None else args.layer
    t = time.perf_counter()
    hf, tok = load(args.model, args.device)
    print(f"loaded {name} (float32) on {args.device} in {time.perf_counter() - t:.0f} s; layer {layer}")
    run(hf, tok, name, layer, args.device, d["contexts"], d["refresh_batch_size"], ("float32",) + precisions,
        args.corpus, warmup=d["warmup"], max_norm_multiple=args.max_norm_multiple, e2e_tokens=d["e2e_tokens"],
        out=args.out, command="python -m benchmarks.harvest " + " ".join(
            Path(a).name if os.path.isabs(a) else a for a in (argv if argv is not None else sys.argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
