"""Command line of the SAEBench harness: ``python -m benchmarks run ...`` (see ``-h``)."""

from __future__ import annotations

import argparse
import fnmatch
import shlex
import sys
from pathlib import Path

from dictionary_learning_aligned.cli import default_device, set_verbosity
from dictionary_learning_aligned.dtypes import comma_list

from .runner import EVALS, Budgets, DictionaryEntry, RunSpec


def find_dictionaries(paths) -> list[DictionaryEntry]:
    """Dictionary folders named by ``paths``: a folder holding ``ae.safetensors`` (or ``ae.pt``) is one dictionary;
    any other folder contributes every such folder below it.

    Raises:
        FileNotFoundError: a path that does not exist or holds no dictionary.
    """
    found = []
    for p in map(Path, paths):
        if not p.is_dir():
            raise FileNotFoundError(f"--dictionaries: {p} is not a folder")
        if (p / "ae.safetensors").is_file() or (p / "ae.pt").is_file():
            found.append(DictionaryEntry(p, f"{p.parent.name}_{p.name}" if p.parent.name else p.name))
            continue
        subs = sorted({w.parent for pat in ("ae.safetensors", "ae.pt") for w in p.rglob(pat)})
        if not subs:
            raise FileNotFoundError(f"--dictionaries: no ae.safetensors under {p}")
        found += [DictionaryEntry(s, "_".join(s.relative_to(p).parts) or s.name) for s in subs]
    names = [d.name for d in found]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise ValueError(f"several dictionaries would write to the same output name {sorted(dup)}")
    return found


def store_dictionaries(store, pattern: str = "*") -> list[DictionaryEntry]:
    """Dictionaries of a results store (``python -m dictionary_learning_aligned.reproduce``): each record's
    ``paths.dictionary`` (relative to the store), named by the record ``id``, filtered by the glob ``pattern``.

    Raises:
        FileNotFoundError: no store, or no record with a dictionary matching ``pattern``.
    """
    from dictionary_learning_aligned.records import iter_records

    store = Path(store)
    out = []
    for rec in iter_records(store):
        rel = (rec.get("paths") or {}).get("dictionary")
        if rel and fnmatch.fnmatch(rec["id"], pattern):
            out.append(DictionaryEntry(store / rel, rec["id"], rec["id"]))
    if not out:
        raise FileNotFoundError(f"no record in {store}/records matches {pattern!r} and names a dictionary")
    missing = [str(d.path) for d in out if not d.path.is_dir()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} record dictionaries are missing (e.g. {missing[0]}); the weights "
                                f"are not committed -- rerun the reproduction or copy them")
    return out


#: probe set sizes used offline unless given: the largest the local labelled datasets support for every
#: default local dataset (the nurse class of the bias-in-bios sample limits them)
OFFLINE_SIZES = {"probe_train": 300, "probe_test": 80, "scr_train": 160, "scr_test": 52}


#: ``--budget smoke``: the budgets of the test suite (every eval runs in seconds to a minute on a CPU; the numbers
#: check the pipeline, they mean nothing); explicit flags still win
SMOKE_BUDGETS = {"context": 64, "core_batches": 2, "core_sparsity_batches": 2, "core_batch_prompts": 4,
                 "scr_train": 60, "scr_test": 12, "probe_train": 20, "probe_test": 10, "autointerp_latents": 3,
                 "autointerp_tokens": 6000}


def _csv(s: str) -> list[str]:
    return comma_list(s)


def _ints(s: str) -> tuple:
    return tuple(comma_list(s, int))


def build_parser() -> argparse.ArgumentParser:
    b = Budgets()
    p = argparse.ArgumentParser(prog="python -m benchmarks run", description=(
        "Run SAEBench evals (core, scr, tpp, sparse_probing, autointerp) on dictionaries of this library and "
        "write SAEBench-schema JSON per dictionary and eval plus a summary table. Offline by default: SmolLM2 from "
        "its GGUF file, local datasets (--data-dir), a local 135M judge for autointerp (far weaker than the "
        "paper's gpt-4o-mini)."))
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--dictionaries", nargs="+", metavar="DIR", help="dictionary folders or folders holding them")
    src.add_argument("--results-store", metavar="DIR", help="evaluate every record's dictionary of this results "
                     "store; output goes to DIR/saebench/<record id>/<eval>.json with record_id (figures 9, 12)")
    p.add_argument("--records", default="*", help="glob on record ids with --results-store (default all)")
    p.add_argument("--evals", default="core,scr,tpp,sparse_probing,autointerp", type=_csv,
                   help=f"comma-separated subset of {','.join(EVALS)}")
    p.add_argument("--out", help="output folder (required with --dictionaries; default STORE/saebench)")
    p.add_argument("--overwrite", action="store_true", help="replace earlier outputs")
    p.add_argument("--model", help="model name (default: each dictionary's trainer.lm_name); TransformerLens names "
                   "load as SAEBench loads them, others (e.g. smollm2-135m-instruct) are converted")
    p.add_argument("--device", default=None, help="device for the model and the dictionaries (default: cuda when "
                   "available, else cpu)")
    p.add_argument("--dtype", default="float32", help="LLM and SAE dtype (float32, bfloat16; default float32)")
    p.add_argument("--online", action="store_true", help="use SAEBench's hub datasets instead of local substitutes")
    p.add_argument("--data-dir", help="folder of local labelled datasets, one subfolder per dataset laid out as "
                   "benchmarks/saebench/sample_data (see its README; default: those tiny bundled samples)")
    p.add_argument("--text-source", help="general text for core/autointerp offline (file/folder/HF name; default "
                   "the bundled corpus's held-out split, ~80k tokens)")
    for ev in ("sparse_probing", "scr", "tpp", "core", "autointerp"):
        p.add_argument(f"--{ev.replace('_', '-')}-datasets", type=_csv, help=f"dataset names for {ev} "
                       "(hub names or dla-local/...; default per --online)")
    p.add_argument("--budget", choices=("default", "smoke"), default="default", help="smoke: tiny budgets for a "
                   "quick CPU check of the pipeline (" + ", ".join(f"{k}={v}" for k, v in SMOKE_BUDGETS.items())
                   + "); explicit flags override them")
    p.add_argument("--context", type=int, default=b.context, help=f"tokens per prompt in every eval (default "
                   f"{b.context})")
    p.add_argument("--llm-batch-size", type=int, default=b.llm_batch_size, help="prompts per language-model forward "
                   f"pass (default {b.llm_batch_size})")
    p.add_argument("--core-batches", type=int, default=b.core_batches, help="core: reconstruction batches (default "
                   f"{b.core_batches})")
    p.add_argument("--core-sparsity-batches", type=int, default=b.core_sparsity_batches, help="core: batches for "
                   f"the feature-density statistics (default {b.core_sparsity_batches})")
    p.add_argument("--core-batch-prompts", type=int, default=b.core_batch_prompts, help="core: prompts per batch "
                   f"(default {b.core_batch_prompts})")
    p.add_argument("--scr-train", type=int, help=f"SCR/TPP probe train set size (default {b.scr_train} with "
                   f"--online, {OFFLINE_SIZES['scr_train']} offline: the local bias-in-bios sample is small)")
    p.add_argument("--scr-test", type=int, help=f"SCR/TPP probe test set size (default {b.scr_test} online, "
                   f"{OFFLINE_SIZES['scr_test']} offline)")
    p.add_argument("--scr-epochs", type=int, default=b.scr_epochs, help="SCR/TPP probe training epochs (default "
                   f"{b.scr_epochs})")
    p.add_argument("--scr-n-values", type=_ints, default=b.scr_n_values, help="SCR/TPP: numbers of latents ablated "
                   f"(comma list; default {','.join(map(str, b.scr_n_values))})")
    p.add_argument("--probe-train", type=int, help=f"sparse-probing train set size (default {b.probe_train} "
                   f"online, {OFFLINE_SIZES['probe_train']} offline)")
    p.add_argument("--probe-test", type=int, help=f"sparse-probing test set size (default {b.probe_test} online, "
                   f"{OFFLINE_SIZES['probe_test']} offline)")
    p.add_argument("--probe-k-values", type=_ints, default=b.probe_k_values, help="sparse probing: numbers of "
                   f"latents per probe (comma list; default {','.join(map(str, b.probe_k_values))})")
    p.add_argument("--autointerp-tokens", type=int, default=b.autointerp_tokens, help="autointerp: tokens scanned "
                   f"for activating examples (default {b.autointerp_tokens})")
    p.add_argument("--autointerp-latents", type=int, default=b.autointerp_latents, help="autointerp: latents "
                   f"explained and judged (default {b.autointerp_latents})")
    p.add_argument("--judge-url", help="OpenAI-compatible base URL (e.g. https://api.openai.com/v1); default: start "
                   "the local SmolLM2-135M judge")
    p.add_argument("--judge-model", default="gpt-4o-mini", help="judge model name at --judge-url (default "
                   "gpt-4o-mini, the paper's)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--seed", type=int, default=42, help="random seed of every eval (default 42)")
    p.add_argument("--verbose", action="store_true", help="show the evals' own output (probe accuracies, "
                   "third-party warnings); default: a progress line per eval and the summary")
    return p


def main(argv=None) -> int:
    """Entry point of ``python -m benchmarks run``; returns 0 on success (errors propagate with their cause)."""
    import os

    from .judge import JudgeConfig
    from .runner import run

    parser = build_parser()
    if "smoke" in (parser.parse_known_args(argv)[0].budget,):
        parser.set_defaults(**SMOKE_BUDGETS)
    args = parser.parse_args(argv)
    set_verbosity(args.verbose)
    if args.device is None:
        args.device = default_device()
    if args.results_store:
        dicts = store_dictionaries(args.results_store, args.records)
        out, per_record = Path(args.out or Path(args.results_store) / "saebench"), True
    else:
        if not args.out:
            raise ValueError("--out is required with --dictionaries")
        dicts, out, per_record = find_dictionaries(args.dictionaries), Path(args.out), False
    b = Budgets()
    for k in OFFLINE_SIZES:
        if getattr(args, k) is None:
            setattr(args, k, getattr(b, k) if args.online else OFFLINE_SIZES[k])
    budgets = Budgets(context=args.context, llm_batch_size=args.llm_batch_size, core_batches=args.core_batches,
                      core_sparsity_batches=args.core_sparsity_batches, core_batch_prompts=args.core_batch_prompts,
                      scr_train=args.scr_train, scr_test=args.scr_test, scr_epochs=args.scr_epochs,
                      scr_n_values=args.scr_n_values, probe_train=args.probe_train, probe_test=args.probe_test,
                      probe_k_values=args.probe_k_values, autointerp_tokens=args.autointerp_tokens,
                      autointerp_latents=args.autointerp_latents)
    datasets = {ev: getattr(args, f"{ev}_datasets") for ev in EVALS if getattr(args, f"{ev}_datasets")}
    judge = None
    if args.judge_url:
        judge = JudgeConfig(base_url=args.judge_url, model=args.judge_model,
                            api_key=os.environ.get(args.judge_key_env, "none"))
    spec = RunSpec(dictionaries=dicts, evals=args.evals, out=out, model_name=args.model, device=args.device,
                   dtype=args.dtype, offline=not args.online, data_dir=args.data_dir, text_source=args.text_source,
                   datasets=datasets, budgets=budgets, judge=judge, seed=args.seed, overwrite=args.overwrite,
                   per_record_layout=per_record,
                   command=" ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", "run", *(argv or sys.argv[2:])]))
    run(spec)
    return 0
