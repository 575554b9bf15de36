"""Reproduce an experiment of the paper: ``python -m dictionary_learning_aligned.reproduce EXPERIMENT --scale
smoke|small|paper [--device cuda] [--results DIR]``.

For each dictionary size of the experiment's grid (:mod:`.experiments`), activations are harvested once and every
dictionary still missing from the results store is trained on the same batches; each is then evaluated on
held-out text and written as one record (:mod:`.records`), with its group's cross-seed stability. Re-running skips
finished entries.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from .dtypes import autocast_dtype, check_device, comma_list
from .experiments import EXPERIMENTS, SCALES, Plan, Run, resolve
from .records import SCHEMA_VERSION, group_id, has_record, record_id, write_record

#: trainer classes per (architecture, aligned?)
_TRAINERS = {"relu": ("StandardTrainer", "AlignedStandardTrainer"), "topk": ("TopKTrainer", "AlignedTopKTrainer"),
             "batchtopk": ("BatchTopKTrainer", "AlignedBatchTopKTrainer"),
             "panneal": ("PAnnealTrainer", "AlignedPAnnealTrainer")}


def trainer_config(run: Run, activation_dim: int, steps: int, plan: Plan) -> dict:
    """The ``trainSAE`` config of one run: the architecture's trainer (its aligned version when ``alignment`` is
    set), schedules scaled to ``steps`` (lr warmup 5%, sparsity warmup 10%, decay from 80%)."""
    standard, aligned = _TRAINERS[run.arch]
    cfg = dict(trainer=aligned if run.alignment else standard, steps=steps, activation_dim=activation_dim,
               dict_size=run.dict_size, layer=plan.layer, lm_name=plan.model, seed=run.seed,
               warmup_steps=max(1, steps // 20), decay_start=max(2, int(0.8 * steps)) if steps > 10 else None,
               submodule_name=f"layers.{plan.layer}")
    if run.alignment:
        cfg["alignment"] = run.alignment
    value = run.sparsity_value
    if run.arch in ("topk", "batchtopk"):
        cfg.update(k=int(value), threshold_start_step=max(1, steps // 10))
    else:
        cfg["sparsity_warmup_steps"] = max(1, steps // 10)
        cfg[run.sparsity_name] = value
        if run.arch == "panneal":
            cfg.update(anneal_start=max(1, steps // 4), anneal_end=max(2, steps - 2) if steps > 3 else None)
    return cfg


def run_experiment(name: str, scale: str, results: str, device: Optional[str] = None, corpus: Optional[str] = None,
                   batch_size: Optional[int] = None, autocast: str = "auto", eval_batches: int = 10,
                   ce_batches: int = 4, ce_batch_size: int = 8, archs: Optional[list] = None,
                   dict_sizes: Optional[list] = None, cache: Optional[str] = None, tokens: Optional[int] = None,
                   epochs: int = 1, seeds: Optional[int] = None, preload: Optional[bool] = None,
                   sparsity: Optional[list] = None, chunk: Optional[int] = None) -> list[str]:
    """Train, evaluate and record every missing dictionary of an experiment; returns the ids written.

    Args:
        name, scale: see :func:`.experiments.resolve`.
        results: the results store folder (created if missing; existing records are kept and skipped).
        device: default ``cuda`` when available, else ``cpu``.
        corpus: training text for smoke/small (default: bundled corpus).
        batch_size: activations per step (default 1024 for smoke, 8192 otherwise).
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
            are harvested and each is seen ``epochs`` times (recorded as ``unique_tokens`` and ``epochs``).
        seeds: train only the first ``seeds`` seeds of the grid now.
        chunk: train at most this many dictionaries together (whole seed groups; default all of one size), and
            write their records before the next part starts: a run stopped by a time limit keeps what finished.
        sparsity: train only the grid points with these sparsity values now (L1 penalties, k values or p-anneal
            coefficients, as listed in :mod:`.experiments`).
        preload: hold the whole cache on ``device`` (default: on a GPU) instead of reading batches from disk.

    Raises:
        ValueError: unknown experiment/scale, a bad device, bad tokens/epochs/seeds/batch and evaluation sizes, or
            ``epochs > 1`` without ``cache`` (all checked before the model is loaded).
    """
    from nnsight import LanguageModel

    from .alignment import alignment_scores
    from .buffer import ActivationBuffer
    from .data import iter_texts
    from .dictionary import Dictionary
    from .evaluation import ce_losses, collect_eval_data, evaluate
    from .models import get_layer, load_language_model
    from .stability import stability
    from .training import trainSAE

    plan = resolve(name, scale, corpus)
    if tokens is not None and tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    if epochs < 1 or (epochs > 1 and cache is None):
        raise ValueError(f"epochs must be >= 1 and epochs > 1 needs a cache folder (got epochs={epochs}, "
                         f"cache={cache!r})")
    if seeds is not None and not 1 <= seeds <= plan.experiment.seeds:
        raise ValueError(f"seeds must be in 1..{plan.experiment.seeds} for {name}, got {seeds}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    total_tokens = tokens or plan.tokens
    unique_tokens = -(-total_tokens // epochs)
    for flag, v, low in (("batch_size", batch_size, 1), ("eval_batches", eval_batches, 1),
                         ("ce_batches", ce_batches, 0), ("ce_batch_size", ce_batch_size, 1)):
        if v is not None and v < low:
            raise ValueError(f"{flag} must be >= {low}, got {v}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_device(device, "--device")
    batch_size = batch_size or (1024 if scale == "smoke" else 8192)
    amp = autocast_dtype(autocast, device)
    store = Path(results)
    store.mkdir(parents=True, exist_ok=True)
    for name_, chosen, allowed in (("arch", archs, {r.arch for r in plan.runs}),
                                   ("dict_size", dict_sizes, {r.dict_size for r in plan.runs})):
        if chosen and not set(chosen) <= allowed:
            raise ValueError(f"{name_} {sorted(set(chosen) - allowed)} not in the {name} grid {sorted(allowed)}")
    values = sorted({float(r.sparsity_value) for r in plan.runs if not archs or r.arch in archs})
    if sparsity and not all(_among(v, values) for v in sparsity):
        raise ValueError(f"sparsity {sorted(sparsity)} not all in the {name} grid's values {values} "
                         f"(of the chosen architectures)")
    todo = [r for r in plan.runs if not has_record(store, _rid(r)) and (not archs or r.arch in archs)
            and (not dict_sizes or r.dict_size in dict_sizes) and (seeds is None or r.seed < seeds)
            and (not sparsity or _among(r.sparsity_value, sparsity))]
    print(f"{name} @ {scale}: {len(plan.runs)} dictionaries in the grid, {len(todo)} to train"
          + (f" ({plan.offline_note})" if plan.offline_note else ""))
    if not todo:
        return []
    hf, tok = load_language_model(plan.model, device=device)
    lm = LanguageModel(hf, tokenizer=copy.deepcopy(tok))
    submodule = get_layer(lm, plan.layer)  # the layer's envoy
    d_model = hf.config.hidden_size
    steps = -(-total_tokens // batch_size)  # whole batches covering at least the budget
    preload = torch.device(device).type == "cuda" if preload is None else preload

    def buffer(split, n_ctxs):
        return ActivationBuffer(iter_texts(plan.corpus, split=split, seed=0), lm, submodule, d_submodule=d_model,
                                n_ctxs=n_ctxs, ctx_len=128, refresh_batch_size=32 if scale == "smoke" else 256,
                                out_batch_size=batch_size, device=device, remove_bos=True, max_norm_multiple=10.0,
                                seed=0)

    def train_data():
        if cache is None:
            return buffer("train", min(8000, max(64, total_tokens // 128 // 4)))
        from .cache import ActivationCache, build_cache, clear_unfinished

        meta = {"model": plan.model, "layer": plan.layer, "io": "out", "corpus": plan.corpus or "bundled",
                "split": "train", "ctx_len": 128, "remove_bos": True, "max_norm_multiple": 10.0}
        tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{plan.model}_L{plan.layer}_"
                      f"{Path(str(plan.corpus)).name if plan.corpus else 'bundled'}_{unique_tokens}")
        path = Path(cache) / tag
        if not clear_unfinished(path):  # an interrupted build of ours is started again; nothing else is deleted
            build_cache(buffer("train", min(8000, max(64, unique_tokens // 128 // 4))), path, unique_tokens, meta)
        return ActivationCache(path, batch_size=batch_size, seed=0, device=device, expect=meta, epochs=epochs,
                               preload=preload)

    written = []
    eval_buf = buffer("test", (eval_batches * batch_size) // 128 + 1)
    acts, ce_tokens = collect_eval_data(eval_buf, eval_batches, ce_batches, ce_batch_size)
    ce_ref = [ce_losses(lm, submodule, None, t) for t in ce_tokens]
    parts = [part for d in sorted({r.dict_size for r in todo})
             for part in _chunks([r for r in todo if r.dict_size == d], chunk)]
    for j, runs in enumerate(parts):
        dict_size = runs[0].dict_size
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = store / "dictionaries" / f"{name}__{scale}__d{dict_size}__{stamp}__{j}"
        t0 = time.time()
        trainers = trainSAE(train_data(),
                            [trainer_config(r, d_model, steps, plan) for r in runs], steps, save_dir=run_dir,
                            normalize_activations=True, device=device, autocast_dtype=amp, verbose=True,
                            log_steps=max(1, steps // 10),
                            run_cfg={"experiment": name, "scale": scale, "model": plan.model,
                                     "corpus": plan.corpus or "bundled"})
        train_s = time.time() - t0
        dictionaries, metrics = {}, {}
        for i, r in enumerate(runs):
            ae = Dictionary.from_pretrained(run_dir / f"trainer_{i}", device=device)
            dictionaries[r] = ae
            metrics[r] = evaluate(ae, acts, n_batches=len(acts), model=lm, submodule=submodule, ce_tokens=ce_tokens,
                                  ce_reference=ce_ref, skip_first=True, per_feature=True)
        groups: dict[str, list[Run]] = {}
        for r in runs:
            groups.setdefault(_gid(r), []).append(r)
        for gid, members in groups.items():
            stab = stability([dictionaries[r] for r in members]) if len(members) > 1 else None
            for j, r in enumerate(members):
                m = dict(metrics[r])
                summary, fired = m.pop("alignment"), m.pop("fired")

                rec = {
                    "schema": SCHEMA_VERSION, "id": _rid(r), "experiment": name, "scale": scale,
                    "model": plan.model, "paper_model": plan.experiment.paper_model,
                    "offline_note": plan.offline_note, "layer": plan.layer, "corpus": plan.corpus or "bundled",
                    "train_tokens": trainers[runs.index(r)].tokens_seen, "plan_tokens": plan.tokens,
                    "unique_tokens": min(unique_tokens, trainers[runs.index(r)].tokens_seen),
                    "epochs": epochs, "arch": r.arch,
                    "alignment": r.alignment, "dict_size": r.dict_size,
                    "sparsity": {"name": r.sparsity_name, "value": r.sparsity_value}, "seed": r.seed,
                    "group": gid, "trainer": trainers[runs.index(r)].config, "metrics": m,
                    "alignment_scores": summary,
                    "per_feature": {
                        "alignment_score": [round(v, 5) for v in alignment_scores(dictionaries[r]).cpu().tolist()],
                        "max_cos_other_seeds": ([round(v, 4) for v in stab["per_feature_max_cos"][j]]
                                                if stab else None),
                        "fired": fired},
                    "stability": None if stab is None else {k: stab[k] for k in (
                        "n_runs", "mcs", "frac_above_0.7", "frac_above_0.9", "hungarian_mean_cos")},
                    "training_log": trainers[runs.index(r)].log,
                    "paths": {"dictionary": str((run_dir / f"trainer_{runs.index(r)}").relative_to(store))},
                    "train_seconds_all_dictionaries_of_this_size": round(train_s, 1),  # of its part with --chunk
                    "trained_together": len(runs),
                    "command": " ".join([Path(sys.executable).name, "-m", "dictionary_learning_aligned.reproduce"]
                                        + sys.argv[1:]),
                    "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                }
                write_record(store, rec)
                written.append(rec["id"])
    return written


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


def _rid(r: Run) -> str:
    return record_id(r.experiment, r.arch, r.alignment, r.dict_size, {"name": r.sparsity_name, "value": r.sparsity_value},
                     r.seed)


def _gid(r: Run) -> str:
    return group_id(r.experiment, r.arch, r.alignment, r.dict_size, {"name": r.sparsity_name, "value": r.sparsity_value})


def main(argv=None) -> int:
    """Command line of the reproduction (see the module docstring)."""
    ap = argparse.ArgumentParser(prog="python -m dictionary_learning_aligned.reproduce", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment", choices=sorted(EXPERIMENTS))
    ap.add_argument("--scale", choices=SCALES, default="smoke")
    ap.add_argument("--results", default="results/store", help="results store folder (default: results/store)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--corpus", default=None, help="training text for smoke/small (default: the bundled corpus)")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--archs", default=None, help="comma-separated subset of the grid's architectures to train now")
    ap.add_argument("--dict-sizes", default=None, help="comma-separated subset of the grid's dictionary sizes")
    ap.add_argument("--cache", default=None, help="harvest the training activations once into this folder and "
                    "reuse them for every dictionary size and later invocation")
    ap.add_argument("--tokens", type=int, default=None, help="training tokens per dictionary instead of the "
                    "scale's budget (recorded with each result)")
    ap.add_argument("--epochs", type=int, default=1, help="passes over the cached activations (needs --cache): "
                    "ceil(tokens/epochs) distinct tokens are harvested")
    ap.add_argument("--seeds", type=int, default=None, help="train only the first N seeds of the grid now")
    ap.add_argument("--chunk", type=int, default=None, help="train at most N dictionaries together (whole seed "
                    "groups) and record them before the next part, so a run cut short keeps what finished")
    ap.add_argument("--sparsity", default=None, help="comma list: train only the grid points with these sparsity "
                    "values now (L1 penalty, k or p-anneal coefficient)")
    ap.add_argument("--eval-batches", type=int, default=10, help="held-out batches for reconstruction metrics")
    ap.add_argument("--ce-batches", type=int, default=4, help="held-out batches of contexts for CE losses")
    ap.add_argument("--ce-batch-size", type=int, default=8, help="contexts per CE batch")
    ap.add_argument("--no-preload", action="store_true", help="read cached batches from disk even on a GPU")
    args = ap.parse_args(argv)
    try:
        ids = run_experiment(args.experiment, args.scale, args.results, device=args.device, corpus=args.corpus,
                             batch_size=args.batch_size,
                             archs=args.archs.split(",") if args.archs else None,
                             dict_sizes=comma_list(args.dict_sizes, int, "--dict-sizes") if args.dict_sizes else None,
                             cache=args.cache, tokens=args.tokens, epochs=args.epochs, seeds=args.seeds,
                             preload=False if args.no_preload else None, eval_batches=args.eval_batches,
                             ce_batches=args.ce_batches, ce_batch_size=args.ce_batch_size,
                             sparsity=comma_list(args.sparsity, float, "--sparsity", allow_empty=False) if args.sparsity is not None else None,
                             chunk=args.chunk)
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(ids)} record(s) to {Path(args.results) / 'records'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
