"""Command line of the SAEBench harness: ``python -m benchmarks run ...`` (see ``-h``).

Its flags are the fields of :class:`RunConfig`, a dataclass with a docstring per field, parsed by simple-parsing
as the library's own commands are (:func:`dictionary_learning_aligned.cli.config_parser`); the budget flags are
generated from the table :data:`BUDGET_FLAGS` over :class:`~.runner.Budgets`."""

from __future__ import annotations

import fnmatch
import shlex
import sys
from dataclasses import dataclass, make_dataclass
from pathlib import Path
from typing import Optional

from simple_parsing.helpers import choice
from simple_parsing.helpers import field as sp_field

from dictionary_learning_aligned.cli import config_parser, default_device, parse_config, set_verbosity
from dictionary_learning_aligned.dtypes import comma_list
from dictionary_learning_aligned.registry import import_plugins

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


#: the budget flags (``--context`` ...): field of :class:`~.runner.Budgets` -> help; the type and default come from
#: ``Budgets`` (tuples are comma lists of integers), the ``--budget smoke`` value from :data:`SMOKE_BUDGETS` and the
#: offline default from :data:`OFFLINE_SIZES`
BUDGET_FLAGS = {
    "context": "tokens per prompt in every eval",
    "llm_batch_size": "prompts per language-model forward pass",
    "core_batches": "core: reconstruction batches",
    "core_sparsity_batches": "core: batches for the feature-density statistics",
    "core_batch_prompts": "core: prompts per batch",
    "scr_train": "SCR/TPP probe train set size",
    "scr_test": "SCR/TPP probe test set size",
    "scr_epochs": "SCR/TPP probe training epochs",
    "scr_n_values": "SCR/TPP: numbers of latents ablated, a comma list",
    "probe_train": "sparse-probing train set size",
    "probe_test": "sparse-probing test set size",
    "probe_k_values": "sparse probing: numbers of latents per probe, a comma list",
    "autointerp_tokens": "autointerp: tokens scanned for activating examples",
    "autointerp_latents": "autointerp: latents explained and judged",
}


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _budget_help(name: str, default) -> str:
    """A budget flag's help: its description, its default (online and offline where they differ) and its smoke
    value."""
    if name in OFFLINE_SIZES:
        where = f"default {_show(default)} with --online, {OFFLINE_SIZES[name]} offline"
    else:
        where = f"default {_show(default)}"
    return f"{BUDGET_FLAGS[name]} ({where}; --budget smoke: {_show(SMOKE_BUDGETS.get(name, default))})"


def _budget_flags_class() -> type:
    """The dataclass of the budget flags, one field per :data:`BUDGET_FLAGS` entry (None: not given, then
    :func:`resolve_budgets` picks the smoke, offline or ``Budgets`` default)."""
    b = Budgets()
    fields = [(name, Optional[str] if isinstance(getattr(b, name), tuple) else Optional[int],
               sp_field(None, help=_budget_help(name, getattr(b, name)))) for name in BUDGET_FLAGS]
    cls = make_dataclass("BudgetFlags", fields)
    cls.__doc__ = ("Budgets of the evals (SAEBench's defaults are much larger). Given flags win over --budget "
                   "smoke, which wins over the defaults.")
    cls.__module__ = __name__
    return cls


BudgetFlags = _budget_flags_class()


def resolve_budgets(flags, smoke: bool, online: bool) -> Budgets:
    """The :class:`~.runner.Budgets` of a run: each flag given wins, then the ``--budget smoke`` preset
    (:data:`SMOKE_BUDGETS`), then the offline probe sizes (:data:`OFFLINE_SIZES`, unless ``online``), then
    ``Budgets``' defaults.

    Raises:
        ValueError: a comma list (``--scr-n-values``, ``--probe-k-values``) that is not integers.
    """
    b, values = Budgets(), {}
    for name in BUDGET_FLAGS:
        v = getattr(flags, name)
        if v is None:
            v = SMOKE_BUDGETS.get(name) if smoke else None
        if v is None:
            v = OFFLINE_SIZES[name] if name in OFFLINE_SIZES and not online else getattr(b, name)
        if isinstance(getattr(b, name), tuple) and isinstance(v, str):
            v = tuple(comma_list(v, int, "--" + name.replace("_", "-")))
        values[name] = v
    return Budgets(**values)


@dataclass
class RunConfig:
    """Settings of ``python -m benchmarks run`` (one flag per field, ``--results-store`` for ``results_store``);
    exactly one of ``dictionaries`` and ``results_store`` is given."""

    dictionaries: Optional[list] = sp_field(None, nargs="+", metavar="DIR", type=str)
    """dictionary folders or folders holding them (this or --results-store)"""
    results_store: Optional[str] = sp_field(None, metavar="DIR")
    """evaluate every record's dictionary of this results store; output goes to DIR/saebench/<record id>/<eval>.json
    with record_id (figures 9, 12)"""
    records: str = "*"
    """glob on record ids with --results-store (default all)"""
    evals: str = ",".join(EVALS)
    """comma-separated subset of core,scr,tpp,sparse_probing,autointerp (default: all five)"""
    out: Optional[str] = None
    """output folder (required with --dictionaries; default STORE/saebench)"""
    overwrite: bool = sp_field(False, action="store_true")
    """replace earlier outputs"""
    model: Optional[str] = None
    """model name (default: each dictionary's trainer.lm_name); TransformerLens names load as SAEBench loads them,
    others (e.g. smollm2-135m-instruct) are converted"""
    device: Optional[str] = None
    """device for the model and the dictionaries (default: cuda when available, else cpu)"""
    dtype: str = "float32"
    """LLM and SAE dtype (float32, bfloat16; default float32)"""
    online: bool = sp_field(False, action="store_true")
    """use SAEBench's hub datasets instead of local substitutes"""
    data_dir: Optional[str] = None
    """folder of local labelled datasets, one subfolder per dataset laid out as benchmarks/saebench/sample_data (see
    its README; default: those tiny bundled samples)"""
    text_source: Optional[str] = None
    """general text for core/autointerp offline (file/folder/HF name; default the bundled corpus's held-out split,
    ~80k tokens)"""
    sparse_probing_datasets: Optional[str] = None
    """dataset names for sparse_probing, comma list (hub names or dla-local/...; default per --online)"""
    scr_datasets: Optional[str] = None
    """dataset names for scr, comma list (hub names or dla-local/...; default per --online)"""
    tpp_datasets: Optional[str] = None
    """dataset names for tpp, comma list (hub names or dla-local/...; default per --online)"""
    core_datasets: Optional[str] = None
    """dataset names for core, comma list (hub names or dla-local/...; default per --online)"""
    autointerp_datasets: Optional[str] = None
    """dataset names for autointerp, comma list (hub names or dla-local/...; default per --online)"""
    budget: str = choice("default", "smoke", default="default")
    """smoke: tiny budgets for a quick CPU check of the pipeline (see each budget flag); given flags override them"""
    budgets: BudgetFlags = sp_field(default_factory=BudgetFlags)
    """the budget flags (--context ... --autointerp-latents)"""
    judge_url: Optional[str] = None
    """OpenAI-compatible base URL (e.g. https://api.openai.com/v1); default: start the local SmolLM2-135M judge"""
    judge_model: str = "gpt-4o-mini"
    """judge model name at --judge-url (default gpt-4o-mini, the paper's)"""
    judge_key_env: str = "OPENAI_API_KEY"
    """environment variable holding the API key"""
    seed: int = 42
    """random seed of every eval (default 42)"""
    artifacts: Optional[str] = sp_field(None, metavar="DIR")
    """keep SAEBench's artifacts (the LLM activations of the probing/SCR/TPP datasets, SCR/TPP's LLM probes,
    autointerp's tokens) in DIR/<key>/ across runs and parallel processes, key a hash of everything they depend on
    (written to DIR/<key>/key.json; see benchmarks/saebench/artifacts.py); default: a temporary folder per run"""
    plugins: Optional[str] = sp_field(None, metavar="MODULES")
    """comma list of Python modules to import first (from the current folder or PYTHONPATH), such as the file of
    your own architecture (docs/extending.md): a dictionary class of its own loads only once its module has
    registered it"""
    verbose: bool = sp_field(False, action="store_true")
    """show the evals' own output (probe accuracies, third-party warnings); default: a progress line per eval and
    the summary"""


DESCRIPTION = ("Run SAEBench evals (core, scr, tpp, sparse_probing, autointerp) on dictionaries of this library "
               "and write SAEBench-schema JSON per dictionary and eval plus a summary table. Offline by default: "
               "SmolLM2 from its GGUF file, local datasets (--data-dir), a local 135M judge for autointerp (far "
               "weaker than the paper's gpt-4o-mini).")


def build_parser(prog: str = "python -m benchmarks run"):
    """The command line of ``benchmarks run``: a :func:`dictionary_learning_aligned.cli.config_parser` over
    :class:`RunConfig` (the budget flags from :data:`BUDGET_FLAGS`)."""
    return config_parser(prog, RunConfig, DESCRIPTION)


def parse_run_config(argv=None, prog: str = "python -m benchmarks run") -> RunConfig:
    """:class:`RunConfig` from ``argv``; exits with status 2 and a usage message for a bad flag, or when not exactly
    one of ``--dictionaries`` and ``--results-store`` is given (as argparse's mutually exclusive group did)."""
    parser = build_parser(prog)
    cfg = parse_config(parser, argv)
    if cfg.dictionaries is None and cfg.results_store is None:
        parser.error("one of the arguments --dictionaries --results-store is required")
    if cfg.dictionaries is not None and cfg.results_store is not None:
        parser.error("argument --results-store: not allowed with argument --dictionaries")
    return cfg


def _sources(cfg: RunConfig) -> tuple:
    """``(dictionaries, output folder, per-record layout)`` of a run.

    Raises:
        ValueError: ``--dictionaries`` without ``--out``. FileNotFoundError: no dictionary found.
    """
    if cfg.results_store:
        dicts = store_dictionaries(cfg.results_store, cfg.records)
        return dicts, Path(cfg.out or Path(cfg.results_store) / "saebench"), True
    if not cfg.out:
        raise ValueError("--out is required with --dictionaries")
    return find_dictionaries(cfg.dictionaries), Path(cfg.out), False


def run_spec(cfg: RunConfig, command: str = "") -> RunSpec:
    """The :class:`~.runner.RunSpec` of a parsed :class:`RunConfig` (finds the dictionaries, resolves the device,
    budgets, datasets and judge).

    Raises:
        ValueError, FileNotFoundError: see :func:`_sources`, :func:`find_dictionaries`, :func:`store_dictionaries`
            and :func:`resolve_budgets`.
    """
    import os

    from .judge import JudgeConfig

    budgets = resolve_budgets(cfg.budgets, cfg.budget == "smoke", cfg.online)  # bad flags before any file is read
    dicts, out, per_record = _sources(cfg)
    datasets = {ev: comma_list(getattr(cfg, f"{ev}_datasets")) for ev in EVALS if getattr(cfg, f"{ev}_datasets")}
    judge = None
    if cfg.judge_url:
        judge = JudgeConfig(base_url=cfg.judge_url, model=cfg.judge_model,
                            api_key=os.environ.get(cfg.judge_key_env, "none"))
    return RunSpec(dictionaries=dicts, evals=comma_list(cfg.evals), out=out, model_name=cfg.model,
                   device=cfg.device or default_device(), dtype=cfg.dtype, offline=not cfg.online,
                   data_dir=cfg.data_dir, text_source=cfg.text_source, datasets=datasets,
                   budgets=budgets, judge=judge,
                   seed=cfg.seed, overwrite=cfg.overwrite, per_record_layout=per_record, command=command,
                   results_store=Path(cfg.results_store) if cfg.results_store else None,
                   artifacts=Path(cfg.artifacts) if cfg.artifacts else None)


def main(argv=None) -> int:
    """Entry point of ``python -m benchmarks run``; returns 0 on success (errors propagate with their cause: the
    caller, ``python -m benchmarks``, reports a user's error as one line, see
    :func:`dictionary_learning_aligned.cli.run_reporting_errors`)."""
    from .runner import run

    cfg = parse_run_config(argv)
    set_verbosity(cfg.verbose)
    import_plugins(cfg.plugins)
    command = " ".join(shlex.quote(a) for a in ["python", "-m", "benchmarks", "run", *(argv or sys.argv[2:])])
    run(run_spec(cfg, command))
    return 0
