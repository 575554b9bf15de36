"""Run SAEBench evals on our dictionaries and write SAEBench-schema JSON (``python -m benchmarks run``).

For each eval, the language model is built once (:mod:`.bridge`) and served to SAEBench's own ``run_eval`` (or
core's ``multiple_evals``), one dictionary at a time. SAEBench writes its JSON into a scratch folder; the harness
checks that a result exists and holds numbers, adds

* ``record_id`` (the results-store record id, when known; figures 9 and 12 match files by it),
* ``dictionary`` (path, class, alignment, trainer class, layer),
* ``data`` (which datasets were used: hub names, or local files and the mapping),
* ``model`` (how the model was obtained, the logit check), ``judge`` (autointerp: the endpoint, and
  ``chance_levels``, what answering "none" or guessing would have scored on the same latents,
  :func:`figures.saebench_results.autointerp_chance_levels`), ``harness`` (command, versions; for sparse
  probing, SCR and TPP ``probe_rng``, :func:`_seeded_probes`), and for sparse probing ``probe_check``
  (:func:`probe_check`: full-SAE probes at exactly chance, scale of the pooled latents),

and writes ``OUT/<name>/<eval>.json`` atomically. Paths in what the harness adds (and in its summary) are
machine-neutral (:func:`dictionary_learning_aligned.records.neutral_json`): relative to the results store with
``--results-store`` (``<store name>/dictionaries/...``), else to the output folder; any other path is its last
component. SAEBench's own fields are kept as written. Non-finite numbers (e.g. the standard deviation of a single
autointerp score) become ``null`` and are listed under ``non_finite_fields``. Any failure raises
:class:`EvalFailed` naming the eval, the dictionary and the cause.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch

from dictionary_learning_aligned import console
from dictionary_learning_aligned.dtypes import as_dtype, check_device
from dictionary_learning_aligned.io import check_output_dir, prepare_output_dir, write_json, write_json_new
from dictionary_learning_aligned.records import neutral_json
from figures.saebench_results import autointerp_chance_levels

from . import data as D

EVALS = ("core", "scr", "tpp", "sparse_probing", "autointerp")
SUMMARY_FILE = "results.json"  # one of io.RUN_MARKERS, so --overwrite may replace an earlier harness output
#: headline metric per eval for the summary table: (label, key path in the result JSON)
HEADLINES = {
    "core": [("FVE", ("eval_result_metrics", "reconstruction_quality", "explained_variance")),
             ("CE score", ("eval_result_metrics", "model_performance_preservation", "ce_loss_score")),
             ("L0", ("eval_result_metrics", "sparsity", "l0"))],
    "scr": [("SCR@20", ("eval_result_metrics", "scr_metrics", "scr_metric_threshold_20"))],
    "tpp": [("TPP@20", ("eval_result_metrics", "tpp_metrics", "tpp_threshold_20_total_metric"))],
    "sparse_probing": [("probe top-1", ("eval_result_metrics", "sae", "sae_top_1_test_accuracy")),
                       ("probe all", ("eval_result_metrics", "sae", "sae_test_accuracy")),
                       ("at chance", ("probe_check", "sae_probe_at_chance_count"))],  # > 0: see probe_check
    "autointerp": [("autointerp", ("eval_result_metrics", "autointerp", "autointerp_score")),
                   ("if 'none'", ("judge", "chance_levels", "all_inactive"))],  # the floor a judge must clear
}
#: fields the harness adds to a result JSON that may name files (made machine-neutral); not ``judge``, whose
#: ``base_url`` is a URL, nor SAEBench's own fields (autointerp's logs quote text of the corpus)
RESULT_PATH_FIELDS = ("dictionary", "data", "model", "harness")
#: fields of the run summary (``results.json`` / ``run_<time>.json``) that may name files
SUMMARY_PATH_FIELDS = ("command", "model", "results")


class EvalFailed(RuntimeError):
    """An eval produced no usable result; the message names the eval, the dictionary and the cause."""


@dataclass
class Budgets:
    """Token/sample budgets per eval (SAEBench's defaults are much larger; see ``python -m benchmarks run -h``).

    core: ``core_batches`` reconstruction batches and ``core_sparsity_batches`` sparsity batches of
    ``core_batch_prompts`` prompts of ``context`` tokens. scr/tpp: probe train/test sizes. sparse probing: probe
    train/test sizes. autointerp: ``autointerp_tokens`` tokens scanned, ``autointerp_latents`` latents judged.
    """

    context: int = 128
    llm_batch_size: int = 32
    core_batches: int = 200
    core_sparsity_batches: int = 2000
    core_batch_prompts: int = 16
    scr_train: int = 4000
    scr_test: int = 1000
    scr_epochs: int = 20
    scr_n_values: tuple = (2, 5, 10, 20, 50, 100, 500)
    probe_train: int = 4000
    probe_test: int = 1000
    probe_k_values: tuple = (1, 2, 5)
    autointerp_tokens: int = 2_000_000
    autointerp_latents: int = 1000


@dataclass
class DictionaryEntry:
    """One dictionary to evaluate: its folder, output name and record id (None outside a results store)."""

    path: Path
    name: str
    record_id: Optional[str] = None


@dataclass
class RunSpec:
    """Everything one harness run needs (the CLI builds it from its arguments)."""

    dictionaries: list
    evals: list
    out: Path
    model_name: Optional[str] = None
    device: str = "cpu"
    dtype: str = "float32"
    offline: bool = True
    data_dir: Optional[str] = None
    text_source: Optional[str] = None
    datasets: dict = field(default_factory=dict)
    scr_pairs: dict = field(default_factory=dict)
    budgets: Budgets = field(default_factory=Budgets)
    judge: Optional[object] = None  # a judge.JudgeConfig; None with autointerp = start the local judge
    seed: int = 42
    overwrite: bool = False
    per_record_layout: bool = False
    command: str = ""
    model: Optional[tuple] = None  # (HookedTransformer, info) built beforehand (e.g. shared by tests)
    results_store: Optional[Path] = None  # the store the dictionaries came from: paths are written relative to it
    artifacts: Optional[Path] = None  # SAEBench's artifacts kept here across runs (:mod:`.artifacts`); None: temporary


def path_root(spec: RunSpec) -> Path:
    """The folder that written paths are made relative to: the results store, else the output folder."""
    return Path(spec.results_store if spec.results_store is not None else spec.out)


def _get(d, path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def _sanitize(obj, path="", bad=None):
    """Replace NaN/inf by None (collecting their paths in ``bad``)."""
    if bad is None:
        bad = []
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(path or "/")
        return None
    if isinstance(obj, dict):
        return {k: _sanitize(v, f"{path}/{k}", bad) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_sanitize(v, f"{path}/{i}", bad) for i, v in enumerate(obj)]
    return obj


@contextlib.contextmanager
def _capture_errors(logger_names):
    """Collect ERROR log records of the given loggers (SAEBench's core logs and swallows its failures)."""
    records = []

    class H(logging.Handler):
        def emit(self, record):
            records.append(self.format(record))

    h = H(level=logging.ERROR)
    loggers = [logging.getLogger(n) for n in logger_names]
    for lg in loggers:
        lg.addHandler(h)
    try:
        yield records
    finally:
        for lg in loggers:
            lg.removeHandler(h)


@contextlib.contextmanager
def _restore_global_state():
    """SAEBench's evals switch autograd off process-wide (``torch.set_grad_enabled(False)``) and reseed the global
    RNGs; restore grad mode and the ``random``/NumPy/torch RNG states afterwards (torch's CUDA ones too, when CUDA
    is initialized: ``torch.manual_seed`` reseeds every device) so the caller's training code is unaffected."""
    import random

    import numpy as np

    grad, py, nprng, trng = torch.is_grad_enabled(), random.getstate(), np.random.get_state(), torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        torch.set_grad_enabled(grad)
        random.setstate(py)
        np.random.set_state(nprng)
        torch.set_rng_state(trng)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch's (CPU and every CUDA device) with ``seed``."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_PROBES = ("sae_bench.evals.sparse_probing.probe_training", "train_probe_on_activations")
_ABLATIONS = ("sae_bench.evals.scr_and_tpp.main", "get_all_node_effects_for_one_sae")
#: per eval, the SAEBench functions (module, name) each of whose calls starts from RNGs seeded with the eval's
#: random_seed (:func:`_seeded_probes`): the probes (sparse probing's LLM and SAE probes, SCR/TPP's LLM probes:
#: one call per dataset or class pair, training one probe per class in turn) and SCR/TPP's ablations of one
#: dictionary on one dataset or class pair (they begin with ``get_all_node_effects_for_one_sae``)
SEEDED_CALLS = {"sparse_probing": (_PROBES,), "scr": (_PROBES, _ABLATIONS), "tpp": (_PROBES, _ABLATIONS)}
_AND_ABLATIONS = "reseeded with the eval's random_seed before each probe and before each dictionary's ablations"
#: what ``harness.probe_rng`` of a result says, per eval of :data:`SEEDED_CALLS` (results without it predate the
#: reseeding of that eval: sparse probing's from commit 786a030 on, SCR's and TPP's later)
PROBE_RNG = {"sparse_probing": "reseeded with the eval's random_seed before each probe",
             "scr": _AND_ABLATIONS, "tpp": _AND_ABLATIONS}


@contextlib.contextmanager
def _seeded_call(seed: int, module, name: str):
    """Within the block, every call of ``module.<name>`` starts from RNGs seeded with ``seed`` (:func:`seed_all`).
    The function is restored on exit, also on an exception (nested blocks restore in order; the patch is
    process-wide, so not for concurrent threads). Callers must look the function up on ``module`` at call time."""
    real = getattr(module, name)

    def seeded(*args, **kwargs):
        seed_all(seed)
        return real(*args, **kwargs)

    setattr(module, name, seeded)
    try:
        yield
    finally:
        setattr(module, name, real)


@contextlib.contextmanager
def _seeded_probes(seed: int, ev: str):
    """Within the block, every call of eval ``ev``'s :data:`SEEDED_CALLS` starts from RNGs seeded with ``seed``
    (:func:`_seeded_call`), so its numbers depend only on its inputs and ``seed``, not on which dictionary computed
    the shared artifacts nor on what the evals did before.

    SAEBench seeds once per dictionary (``run_eval_single_sae`` of sparse probing and of SCR/TPP) and then draws
    from torch's global RNG: each probe its negatives and their order (``prepare_probe_data``, ``torch.randperm``)
    and its batch order per epoch (``train_probe_gpu``, whose epoch count depends on early stopping); SCR/TPP's
    ablations their negatives (``prepare_probe_data`` again, when scoring features and testing the ablated probes).
    The LLM probes of a dataset (sparse probing, TPP) or class pair (SCR) are trained once, by the dictionary that
    creates the artifacts, after that dictionary's work on the datasets or pairs before it: sparse probing's
    full-SAE probes stop after a dictionary-dependent number of epochs; SCR/TPP's ablations draw as often for each
    entry of ``n_values``, from which the harness drops the entries above the dictionary size. That dictionary's SAE
    side drew after the LLM probes, the others' right after the seed. Seeded per call, none of this matters.

    Args:
        seed: 0 to 2**32 - 1 (NumPy's range; :func:`_check_spec` refuses others).
        ev: ``"sparse_probing"``, ``"scr"`` or ``"tpp"``.

    Raises:
        KeyError: ``ev`` has no seeded calls.
    """
    import importlib

    with contextlib.ExitStack() as stack:
        for module, name in SEEDED_CALLS[ev]:
            stack.enter_context(_seeded_call(seed, importlib.import_module(module), name))
        yield


@contextlib.contextmanager
def _jaxtyping_off():
    """Disable jaxtyping's runtime shape checks (as ``JAXTYPING_DISABLE=1``): SAEBench's k-sparse probe
    (``train_sklearn_probe``) is called with positive + negative examples inside a function that bound
    ``train_dataset_size`` to the per-class count, so its own hints fail. Restored on exit."""
    import jaxtyping

    old = jaxtyping.config.jaxtyping_disable
    jaxtyping.config.update("jaxtyping_disable", True)
    try:
        yield
    finally:
        jaxtyping.config.update("jaxtyping_disable", old)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": sys.version.split()[0]}
    for p in ("torch", "transformers", "transformer-lens", "sae-bench", "sae-lens", "datasets"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _datasets_for(spec: RunSpec, ev: str) -> list:
    if ev in spec.datasets:
        names = list(spec.datasets[ev])
    elif spec.offline:  # the defaults whose files are there (the shipped samples hold only some of them)
        names = [n for n in D.LOCAL_DEFAULTS[ev] if D.present_locally(n, spec.data_dir)]
        if not names:
            raise FileNotFoundError(f"{ev}: none of its local datasets {D.LOCAL_DEFAULTS[ev]} has its files under "
                                    f"{spec.data_dir or D.SAMPLE_DATA_DIR} (give --data-dir with the layout of "
                                    f"../shared/data, or name datasets with --{ev.replace('_', '-')}-datasets)")
    else:
        names = list(D.HUB_DATASETS[ev])
    D.check_names(ev, names)
    return names


def pooled_latent_stats(acts: dict) -> dict:
    """Scale of the mean-pooled SAE latents SAEBench's sparse probes are trained on.

    Args:
        acts: ``{class: [n_texts, d_sae]}`` as returned by SAEBench's ``get_sae_meaned_activations``.

    Returns:
        ``{"texts", "max", "mean", "row_norm_median", "frac_nonzero", "frac_nonfinite"}`` over all classes (max,
        mean and norm over the finite values; ``None`` when there are none).
    """
    a = torch.cat([v.detach().float().reshape(len(v), -1).cpu() for v in acts.values()])
    fin = torch.isfinite(a)
    finite = a[fin]
    rows = torch.where(fin, a, torch.zeros_like(a)).norm(dim=1)
    return {"texts": int(a.shape[0]), "max": float(finite.max()) if finite.numel() else None,
            "mean": float(finite.mean()) if finite.numel() else None,
            "row_norm_median": float(rows.median()) if len(rows) else None,
            "frac_nonzero": float((a != 0).float().mean()) if a.numel() else None,
            "frac_nonfinite": float((~fin).float().mean()) if a.numel() else None}


@contextlib.contextmanager
def _pooled_latent_stats():
    """Within the block, every call of SAEBench's ``activation_collection.get_sae_meaned_activations`` (the pooled
    latents of sparse probing, train and test split of each dataset, in that order) appends its
    :func:`pooled_latent_stats` to the yielded list. The function is restored on exit."""
    import sae_bench.sae_bench_utils.activation_collection as ac

    stats, real = [], ac.get_sae_meaned_activations

    def recording(*args, **kwargs):
        acts = real(*args, **kwargs)
        stats.append(pooled_latent_stats(acts))
        return acts

    ac.get_sae_meaned_activations = recording
    try:
        yield stats
    finally:
        ac.get_sae_meaned_activations = real


#: accuracy of a probe that predicts one class on SAEBench's class-balanced test sets
CHANCE = 0.5


def probe_check(res: dict, pooled: list) -> dict:
    """Which of SAEBench's full-SAE probes (``sae_test_accuracy``, a linear probe on all mean-pooled latents,
    AdamW lr 1e-2 on unnormalized inputs) scored exactly chance, and the scale of the latents they saw.

    A probe at exactly 0.5 predicts one class for every balanced test set: it learned nothing (it diverged or
    never left its start), so its accuracy is not a measure of the dictionary. The check does not change
    SAEBench's numbers; it flags them.

    Args:
        res: SAEBench's sparse-probing result (``eval_result_unstructured``: ``{"<dataset>_results":
            {"sae_test_accuracy": {class: accuracy}}}``).
        pooled: :func:`pooled_latent_stats` per call of ``get_sae_meaned_activations`` (train, test per dataset).

    Returns:
        ``{"sae_probe_at_chance": ["<dataset>/<class>", ...], "sae_probe_at_chance_count", "sae_probe_classes",
        "pooled_latents": {"<dataset>": {"train": stats, "test": stats}}}``.
    """
    per = res.get("eval_result_unstructured") or {}
    at_chance, n = [], 0
    for key, vals in per.items():
        for cls, acc in (vals.get("sae_test_accuracy") or {}).items():
            n += 1
            if acc == CHANCE:
                at_chance.append(f"{key.removesuffix('_results')}/{cls}")
    datasets = [k.removesuffix("_results") for k in per]
    by_ds = {}
    if len(pooled) == 2 * len(datasets):
        by_ds = {d: {"train": pooled[2 * i], "test": pooled[2 * i + 1]} for i, d in enumerate(datasets)}
    return {"sae_probe_at_chance": at_chance, "sae_probe_at_chance_count": len(at_chance),
            "sae_probe_classes": n, "pooled_latents": by_ds}


def _run_one(ev: str, spec: RunSpec, sae, name: str, scratch: Path, artifacts: Path, text_name: str,
             judge_cfg) -> tuple[dict, list]:
    """Run eval ``ev`` on one SAE; returns (SAEBench result dict, dataset names). Sparse probing, SCR and TPP run
    with their probes (and SCR/TPP's ablations) reseeded (:func:`_seeded_probes`). Grad mode and RNG states are
    restored afterwards. Unless verbose, what SAEBench prints (probe accuracies, its progress bars, warnings) is
    kept off the console (:func:`~dictionary_learning_aligned.console.captured_output`); errors still raise."""
    seeded = _seeded_probes(spec.seed, ev) if ev in SEEDED_CALLS else contextlib.nullcontext()
    with _restore_global_state(), console.captured_output(None, stderr=True), seeded:
        return _run_one_inner(ev, spec, sae, name, scratch, artifacts, text_name, judge_cfg)


def _run_one_inner(ev, spec, sae, name, scratch, artifacts, text_name, judge_cfg):
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    b = spec.budgets
    out = scratch / ev
    out.mkdir(parents=True, exist_ok=True)
    model_name = sae.cfg.model_name
    if ev == "core":
        import sae_bench.evals.core.main as core

        with _capture_errors(["sae_bench.evals.core.main", core.__name__]) as errors:
            res = core.multiple_evals(
                selected_saes=[(name, sae)], n_eval_reconstruction_batches=b.core_batches,
                n_eval_sparsity_variance_batches=b.core_sparsity_batches, eval_batch_size_prompts=b.core_batch_prompts,
                compute_featurewise_density_statistics=True, compute_featurewise_weight_based_metrics=True,
                exclude_special_tokens_from_reconstruction=True, dataset=text_name, context_size=b.context,
                output_folder=str(out), verbose=False, dtype=spec.dtype, device=spec.device, force_rerun=True)
        if not res:
            raise EvalFailed(f"core returned no result for {name} (SAEBench logged: "
                             f"{' | '.join(errors) or 'nothing'})")
        path, names = get_results_filepath(str(out), name, "custom_sae"), [text_name]
    elif ev in ("scr", "tpp"):
        import sae_bench.evals.scr_and_tpp.main as st

        names = _datasets_for(spec, ev)
        pairs = {**D.scr_pairs(names), **spec.scr_pairs}
        kw = dict(column1_vals_lookup={n: pairs[n] for n in names if n in pairs}) if ev == "scr" else {}
        if ev == "scr":
            missing = [n for n in names if n not in kw["column1_vals_lookup"]]
            default = st.ScrAndTppEvalConfig().column1_vals_lookup
            kw["column1_vals_lookup"].update({n: default[n] for n in missing if n in default})
        n_values = [n for n in b.scr_n_values if n <= sae.cfg.d_sae]
        cfg = st.ScrAndTppEvalConfig(
            model_name=model_name, random_seed=spec.seed, dataset_names=names, perform_scr=(ev == "scr"),
            train_set_size=b.scr_train, test_set_size=b.scr_test, context_length=b.context,
            probe_epochs=b.scr_epochs, llm_batch_size=b.llm_batch_size, llm_dtype=spec.dtype, n_values=n_values,
            sae_batch_size=min(125, b.llm_batch_size * 4), **kw)
        st.run_eval(cfg, [(name, sae)], spec.device, str(out), force_rerun=True, clean_up_activations=False,
                    save_activations=True, artifacts_path=str(artifacts))
        path = get_results_filepath(str(out / ev), name, "custom_sae")
    elif ev == "sparse_probing":
        names, pooled = _datasets_for(spec, ev), []
        path = _run_sparse_probing(spec, sae, name, names, out, artifacts, pooled)
    elif ev == "autointerp":
        import sae_bench.evals.autointerp.main as ai

        from .judge import patch_autointerp

        names = [text_name]
        cfg = ai.AutoInterpEvalConfig(
            model_name=model_name, random_seed=spec.seed, n_latents=min(b.autointerp_latents, sae.cfg.d_sae),
            dataset_name=text_name, llm_context_size=b.context, llm_batch_size=b.llm_batch_size,
            llm_dtype=spec.dtype, total_tokens=b.autointerp_tokens)
        with patch_autointerp(judge_cfg):
            ai.run_eval(cfg, [(name, sae)], spec.device, judge_cfg.api_key, str(out), force_rerun=True,
                        artifacts_path=str(artifacts))
        path = get_results_filepath(str(out), name, "custom_sae")
    else:
        raise ValueError(f"unknown eval {ev!r}; choose from {EVALS}")
    if not Path(path).is_file():
        raise EvalFailed(f"{ev} wrote no result file for {name} (expected {path})")
    import json

    res = json.loads(Path(path).read_text())
    if ev == "autointerp" and not res.get("eval_result_unstructured"):
        raise EvalFailed(f"autointerp scored no latent of {name}: every latent was dead in the "
                         f"{b.autointerp_tokens} tokens scanned or the judge's replies could not be parsed; "
                         f"raise --autointerp-tokens or use a stronger judge")
    if not res.get("eval_result_metrics"):
        raise EvalFailed(f"{ev} result for {name} has no eval_result_metrics ({path})")
    if ev == "sparse_probing":
        res["probe_check"] = probe_check(res, pooled)
    return res, names


def _run_sparse_probing(spec: RunSpec, sae, name: str, names: list, out: Path, artifacts: Path,
                        pooled: list) -> str:
    """SAEBench's sparse probing of ``sae`` on datasets ``names`` (its probes reseeded by :func:`_run_one`); appends
    the :func:`pooled_latent_stats` of each pooling call to ``pooled`` and returns the path of SAEBench's result
    file."""
    import sae_bench.evals.sparse_probing.main as sp
    from sae_bench.sae_bench_utils.general_utils import get_results_filepath

    b = spec.budgets
    cfg = sp.SparseProbingEvalConfig(
        model_name=sae.cfg.model_name, random_seed=spec.seed, dataset_names=names,
        probe_train_set_size=b.probe_train, probe_test_set_size=b.probe_test, context_length=b.context,
        llm_batch_size=b.llm_batch_size, llm_dtype=spec.dtype, k_values=list(b.probe_k_values),
        sae_batch_size=min(125, b.llm_batch_size * 4))
    with _jaxtyping_off(), _pooled_latent_stats() as stats:
        sp.run_eval(cfg, [(name, sae)], spec.device, str(out), force_rerun=True, clean_up_activations=False,
                    save_activations=True, artifacts_path=str(artifacts))
    pooled.extend(stats)
    return get_results_filepath(str(out), name, "custom_sae")


def _describe_dict(d: DictionaryEntry, sae, cfg: dict) -> dict:
    t = cfg.get("trainer", {})
    return {"path": str(d.path), "name": d.name, "dict_class": t.get("dict_class"), "trainer_class":
            t.get("trainer_class"), "alignment": getattr(sae, "alignment", None), "layer": sae.cfg.hook_layer,
            "hook_name": sae.cfg.hook_name, "d_in": sae.cfg.d_in, "d_sae": sae.cfg.d_sae,
            "architecture": sae.cfg.architecture, "lm_name": t.get("lm_name")}


def run(spec: RunSpec, log=print) -> dict:
    """Run every eval of ``spec`` on every dictionary; returns the summary (also written to ``OUT/results.json``,
    or to a new ``STORE/saebench/run_<time>.json`` in a results store: :func:`_write_summary`).

    The steps: check the spec, load every dictionary, prepare the outputs, load the model, then per eval and
    dictionary run it and write its JSON (:func:`_run_and_write`).

    Raises:
        ValueError: bad evals/dictionaries/settings (before anything runs). FileExistsError: output exists and
        ``overwrite`` is off. EvalFailed / ModelBridgeError / the eval's own exception: an eval failed (the
        exception names eval and dictionary; results written before it stay on disk).
    """
    from . import import_saebench
    from .bridge import serve_model

    import_saebench()
    dtype = _check_spec(spec)
    saes, model_name = _load_saes(spec, dtype)  # a bad checkpoint or missing layer fails before any eval runs
    out, targets = _check_outputs(spec, saes)
    tl_model, model_info = _load_model(spec, saes, model_name, dtype, log)
    # created only now: a refused dictionary or model leaves no output folder behind
    if spec.per_record_layout:
        out.mkdir(parents=True, exist_ok=True)
    else:
        prepare_output_dir(out, spec.overwrite)
    summary = {"command": spec.command, "model": model_info, "evals": spec.evals, "results": [],
               "versions": _versions()}
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="saebench_harness_")))
        b = spec.budgets  # general text: enough for the larger of autointerp and core (both passes), ~6 chars/token
        core_tokens = (b.core_batches + b.core_sparsity_batches) * b.core_batch_prompts * b.context
        local = D.LocalData(spec.data_dir, work / "data", spec.text_source,
                            text_chars=max(200_000, 6 * max(b.autointerp_tokens, core_tokens)))
        stack.enter_context(local.patch())
        if "autointerp" in spec.evals and spec.offline and "autointerp" not in spec.datasets:
            check_text_tokens(local, tl_model.tokenizer, b.autointerp_tokens)
        stack.enter_context(serve_model(tl_model, {model_name}))
        judge_cfg = _judge_config(spec, stack)
        for ev in spec.evals:
            _run_and_write(ev, spec, saes, work, local, judge_cfg, model_info, targets, summary, log)
    if judge_cfg is not None and getattr(judge_cfg, "local", False):
        summary["judge_warning"] = judge_cfg.describe()["warning"]
    _write_summary(spec, out, summary)
    log(format_table(summary))
    if summary.get("judge_warning"):
        log(summary["judge_warning"])
    return summary


def _write_summary(spec: RunSpec, out: Path, summary: dict) -> Path:
    """Write the run summary (machine paths made neutral); returns its path.

    With ``--out`` it is ``OUT/results.json`` (the folder was prepared for this run). In a results store many
    runs share ``STORE/saebench``, so each writes ``run_<unix time>.json``, or ``run_<time>_2.json``, ... when
    another run of the same second holds that name (:func:`~dictionary_learning_aligned.io.write_json_new`):
    concurrent runs each keep their summary and none replaces another.
    """
    value = neutral_json(summary, path_root(spec), SUMMARY_PATH_FIELDS)
    if spec.per_record_layout:
        return write_json_new(out / f"run_{int(time.time())}.json", value)
    return write_json(out / SUMMARY_FILE, value)


def _check_spec(spec: RunSpec) -> torch.dtype:
    """Check evals, dictionaries, device, budgets, dtype, seed, datasets and the artifacts folder of ``spec``;
    returns the dtype.

    Raises:
        ValueError: the first bad setting, named as its command-line flag.
    """
    bad = [e for e in spec.evals if e not in EVALS]
    if bad or not spec.evals:
        raise ValueError(f"unknown evals {bad}; choose from {', '.join(EVALS)}")
    if not spec.dictionaries:
        raise ValueError("no dictionaries to evaluate")
    check_device(spec.device, "--device")
    for k, v in vars(spec.budgets).items():
        if any(not isinstance(x, int) or isinstance(x, bool) or x < 1 for x in (v if isinstance(v, tuple) else [v])):
            what = "positive integers" if isinstance(v, tuple) else "a positive integer"
            raise ValueError(f"--{k.replace('_', '-')} must be {what}, got {v!r}")
    dtype = as_dtype(spec.dtype, "--dtype")
    if not isinstance(spec.seed, int) or isinstance(spec.seed, bool) or not 0 <= spec.seed < 2**32:
        raise ValueError(f"--seed must be an integer from 0 to 2**32 - 1 (NumPy's seed range), "
                         f"got {spec.seed!r}")
    for ev in spec.evals:
        if ev in D.LOCAL_DEFAULTS:
            _datasets_for(spec, ev)
    if spec.artifacts is not None:
        from .artifacts import check_root

        check_root(spec.artifacts)
    return dtype


def _load_saes(spec: RunSpec, dtype) -> tuple[list, str]:
    """Every dictionary of ``spec`` as (entry, SAEBench SAE, config), and the one model they were trained on.

    Raises:
        ValueError: dictionaries trained on different models (without ``--model``).
    """
    from .adapter import load_saebench_sae

    saes = []
    for d in spec.dictionaries:
        sae, cfg = load_saebench_sae(d.path, model_name=spec.model_name, device=spec.device, dtype=dtype)
        saes.append((d, sae, cfg))
    model_names = {s.cfg.model_name for _, s, _ in saes}
    if len(model_names) != 1:
        raise ValueError(f"dictionaries were trained on different models {sorted(model_names)}; run them "
                         f"separately or pass --model")
    return saes, model_names.pop()


def _check_outputs(spec: RunSpec, saes: list) -> tuple[Path, dict]:
    """The output folder (checked, not yet created) and the result file of every (dictionary name, eval).

    Raises:
        FileExistsError: result files (per-record layout) or a non-empty output folder exist, without
            ``overwrite``.
    """
    out = Path(spec.out)
    targets = {(d.name, ev): out / d.name / f"{ev}.json" for d, _, _ in saes for ev in spec.evals}
    if spec.per_record_layout:
        clash = [str(p) for p in targets.values() if p.exists()]
        if clash and not spec.overwrite:
            raise FileExistsError(f"{len(clash)} result files exist already (e.g. {clash[0]}); pass --overwrite "
                                  f"to replace them")
    else:
        check_output_dir(out, spec.overwrite)
    return out, targets


def _load_model(spec: RunSpec, saes: list, model_name: str, dtype, log) -> tuple:
    """The TransformerLens model (``spec.model``, else built from ``model_name``) and its description.

    Raises:
        ValueError: a dictionary whose layer or width the model does not have.
    """
    from .bridge import load_hooked_transformer

    if spec.model is not None:
        tl_model, model_info = spec.model[0], dict(spec.model[1])
    else:
        log(f"building {model_name} for TransformerLens ({spec.device}, {spec.dtype}) ...")
        t0 = time.time()
        with console.captured_output(None, stderr=True):  # the GGUF conversion's and TransformerLens' output
            tl_model, model_info = load_hooked_transformer(model_name, device=spec.device, dtype=dtype)
        model_info["seconds"] = round(time.time() - t0, 1)
        log(f"model ready in {model_info['seconds']} s: {model_info}")
    for d, sae, _ in saes:
        if sae.cfg.d_in != tl_model.cfg.d_model or not 0 <= sae.cfg.hook_layer < tl_model.cfg.n_layers:
            raise ValueError(f"{d.path}: dictionary reads {sae.cfg.hook_name} with activation_dim {sae.cfg.d_in}, but "
                             f"{model_name} has {tl_model.cfg.n_layers} layers (0..{tl_model.cfg.n_layers - 1}) "
                             f"of width {tl_model.cfg.d_model}")
    # what figures/saebench_results.saebench_bos_caveat reads: results made without it predate commit 5190b3e
    model_info["tokenizer_prepends_bos"] = bool(getattr(tl_model.cfg, "tokenizer_prepends_bos", False))
    return tl_model, model_info


def _judge_config(spec: RunSpec, stack: contextlib.ExitStack):
    """The autointerp judge: ``spec.judge``, else (autointerp requested) the local SmolLM2 judge, started inside
    ``stack``; None when autointerp is not run."""
    if "autointerp" not in spec.evals or spec.judge is not None:
        return spec.judge
    from dictionary_learning_aligned.models import load_language_model

    from .judge import LocalJudge

    hf, tok = load_language_model(device=spec.device)
    return stack.enter_context(LocalJudge(hf, tok)).config()


def _run_and_write(ev: str, spec: RunSpec, saes: list, work: Path, local, judge_cfg, model_info: dict,
                   targets: dict, summary: dict, log) -> None:
    """Run eval ``ev`` on every dictionary, write each result JSON and add its summary row.

    Raises:
        EvalFailed: the eval failed on a dictionary (naming both).
    """
    from tqdm.auto import tqdm

    tname = None
    if ev in ("core", "autointerp"):  # general text: named, else local or SAEBench's hub dataset
        tname = spec.datasets[ev][0] if ev in spec.datasets else D.TEXT if spec.offline else D.HUB_DATASETS[ev]
    for d, sae, cfg in tqdm(saes, desc=f"SAEBench {ev}", unit="dict", file=sys.stderr):
        t = time.time()
        try:
            with _artifacts(ev, spec, sae, work, local, tname, model_info, summary["versions"]) as (art, reused):
                res, names = _run_one(ev, spec, sae, d.name, work / "scratch" / d.name, art, tname, judge_cfg)
        except EvalFailed:
            raise
        except Exception as e:
            raise EvalFailed(f"{ev} failed on {d.path}: {type(e).__name__}: {e}") from e
        res = _annotate(res, ev, spec, d, sae, cfg, names, local, judge_cfg, model_info, summary["versions"],
                        round(time.time() - t, 1))
        if reused is not None:
            res["harness"]["artifacts"] = {"key": art.parent.name, "reused": reused}
        targets[(d.name, ev)].parent.mkdir(parents=True, exist_ok=True)
        path = write_json(targets[(d.name, ev)], neutral_json(res, path_root(spec), RESULT_PATH_FIELDS))
        row = {"dictionary": d.name, "record_id": d.record_id, "eval": ev, "file": str(path),
               "seconds": res["harness"]["seconds"]}
        row.update({label: _get(res, p) for label, p in HEADLINES[ev]})
        summary["results"].append(row)
        log(f"{ev} on {d.name}: " + ", ".join(f"{label} {_fmt(_get(res, p))}" for label, p in HEADLINES[ev])
            + f" ({row['seconds']} s) -> {path}")


def _artifacts(ev: str, spec: RunSpec, sae, work: Path, local, text_name, model_info: dict, versions: dict):
    """Where eval ``ev`` keeps SAEBench's artifacts on ``sae``: a context manager yielding ``(folder, reused)``.

    Without ``spec.artifacts``, and for core (which stores none), the run's temporary ``work/artifacts``, shared by
    its dictionaries (``reused`` None); else :func:`.artifacts.claim` of ``spec.artifacts`` with this eval's
    :func:`.artifacts.key_inputs` (``reused``: whether complete artifacts were found)."""
    from . import artifacts as A

    if spec.artifacts is None or ev not in A.ARTIFACT_EVALS:
        return contextlib.nullcontext((work / "artifacts", None))
    names = [text_name] if ev == "autointerp" else _datasets_for(spec, ev)
    text = local.text_folder() / "train.jsonl" if ev == "autointerp" and text_name == D.TEXT else None
    return A.claim(spec.artifacts, ev, A.key_inputs(spec, ev, sae, names, model_info, versions, text))


def _annotate(res: dict, ev: str, spec: RunSpec, d, sae, cfg, names, local, judge_cfg, model_info: dict,
              versions: dict, seconds: float) -> dict:
    """SAEBench's result ``res`` made JSON-safe (non-finite fields listed) and extended with where it came from:
    record id, dictionary, datasets used, model, judge (with autointerp's chance levels), harness settings."""
    bad = []
    res = _sanitize(res, bad=bad)
    used = {n: (local.used.get(n) or local.used.get(D.SCR_SETS.get(n, {}).get("base"))
                if n.startswith(D.PREFIX) else {"source": "Hugging Face hub"}) for n in names}
    offline = any(n.startswith(D.PREFIX) for n in names)
    res.update({
        "record_id": d.record_id,
        "dictionary": _describe_dict(d, sae, cfg),
        "data": {"offline_substitutes": offline, "data_dir": str(local.data_dir) if offline else None,
                 "datasets": used},
        "model": model_info,
        "judge": judge_cfg.describe() if ev == "autointerp" else None,
        "harness": {"command": spec.command, "seconds": seconds, "budgets": vars(spec.budgets), "versions": versions},
        "non_finite_fields": bad,
    })
    if ev in PROBE_RNG:
        res["harness"]["probe_rng"] = PROBE_RNG[ev]
    if ev == "autointerp":  # what answering "none" / guessing would have scored on these latents
        try:
            res["judge"]["chance_levels"] = autointerp_chance_levels(res)
        except ValueError as e:  # SAEBench wrote something unexpected: say so, keep the result
            res["judge"]["chance_levels"] = {"error": str(e)}
    return res


def _fmt(v) -> str:
    return f"{v:.4g}" if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def check_text_tokens(local, tokenizer, needed: int) -> int:
    """Tokens of the local general text that autointerp reads; SAEBench asserts (with no message) when it has
    fewer than ``--autointerp-tokens``, so this says so before any eval runs. It asks for 10% + 1,024 tokens more
    than ``needed``, since SAEBench packs the text into whole contexts and drops what is left over.

    Returns:
        the number of tokens (the tokenizer's count over the written documents).

    Raises:
        ValueError: fewer than ``needed`` tokens.
    """
    folder = local.text_folder()
    n = 0
    with open(folder / "train.jsonl", encoding="utf-8") as f:
        for line in f:
            n += len(tokenizer(json.loads(line)["text"], add_special_tokens=False)["input_ids"])
            if n > 1.1 * needed + 1024:  # margin: SAEBench packs the text into whole contexts and drops the rest
                return n
    src = local.used.get(D.TEXT, {}).get("source", local.text_source)
    raise ValueError(f"autointerp needs --autointerp-tokens {needed:,} tokens of general text (plus a margin for "
                     f"packing), but the local text ({src}) has {n:,}: pass a larger --text-source or lower "
                     f"--autointerp-tokens")


def format_table(summary: dict) -> str:
    """A plain-text table: one row per dictionary, one column per headline metric, and a note naming how many
    dictionaries had a full-SAE probe at exactly chance (column ``at chance``)."""
    cols, rows = [], {}
    for r in summary["results"]:
        for label, _ in HEADLINES[r["eval"]]:
            if label not in cols:
                cols.append(label)
            rows.setdefault(r["dictionary"], {})[label] = r.get(label)
    width = max([len("dictionary")] + [len(k) for k in rows])
    lines = ["  ".join(["dictionary".ljust(width)] + [c.rjust(11) for c in cols])]
    for k, vals in rows.items():
        lines.append("  ".join([k.ljust(width)] + [_fmt(vals.get(c)).rjust(11) for c in cols]))
    flagged = [k for k, vals in rows.items() if (vals.get("at chance") or 0) > 0]
    if flagged:
        lines.append(f"note: 'at chance' counts classes whose full-SAE probe ('probe all') scored exactly "
                     f"{CHANCE} (one class predicted for every text) in {len(flagged)} dictionaries; those probes "
                     f"learned nothing; see probe_check in their sparse_probing.json")
    return "\n".join(lines)


__all__ = ["run", "RunSpec", "Budgets", "DictionaryEntry", "EvalFailed", "EVALS", "format_table"]
