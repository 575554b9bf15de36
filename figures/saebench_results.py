"""SAEBench results read for the figures and tables: the metrics taken from SAEBench's JSON files (keyed by
record id under a results store's ``saebench/`` folder, or by dictionary name), autointerp's chance levels, and
the caveat for results made without BOS. Nothing here imports matplotlib or SAEBench."""

from __future__ import annotations

import json
import warnings
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from dictionary_learning_aligned.io import read_json

from .records import field_getter, finite

#: where SAEBench JSON output is looked for, relative to the results store
SAEBENCH_DIR = "saebench"
#: SAEBench metrics read from the result files: short name -> key path inside a SAEBench result file. Figures 9
#: and 12 use ``scr`` and ``autointerp``; ``python -m figures table --saebench`` shows them all.
SAEBENCH_METRICS = {
    "core_fve": ("eval_result_metrics", "reconstruction_quality", "explained_variance"),
    # per-token explained variance, averaged over tokens (SAEBench pools the squared errors of all tokens in
    # explained_variance, which a few massive-activation tokens can dominate)
    "core_fve_per_token": ("eval_result_metrics", "reconstruction_quality", "explained_variance_legacy"),
    "core_ce_score": ("eval_result_metrics", "model_performance_preservation", "ce_loss_score"),
    "scr": ("eval_result_metrics", "scr_metrics", "scr_metric_threshold_20"),
    "tpp": ("eval_result_metrics", "tpp_metrics", "tpp_threshold_20_total_metric"),
    "probe_llm": ("eval_result_metrics", "llm", "llm_test_accuracy"),
    "probe_sae": ("eval_result_metrics", "sae", "sae_test_accuracy"),
    "probe_top1": ("eval_result_metrics", "sae", "sae_top_1_test_accuracy"),
    "probe_top5": ("eval_result_metrics", "sae", "sae_top_5_test_accuracy"),
    "autointerp": ("eval_result_metrics", "autointerp", "autointerp_score"),
}


#: values that :func:`load_saebench` derives from autointerp's per-latent details (:func:`autointerp_chance_levels`)
AUTOINTERP_CHANCE = {"autointerp_all_inactive": "all_inactive", "autointerp_random_guess": "random_guess"}


def autointerp_chance_levels(result: dict) -> Optional[dict]:
    """What SAEBench's autointerp score would be without any reading of the examples, for the latents one result
    scored: the floor a judge has to clear before its score says anything about the dictionary.

    SAEBench (``sae_bench.evals.autointerp``) scores a latent by the fraction of its ``n`` scoring examples
    (``n_top_ex_for_scoring + n_random_ex_for_scoring + n_iw_sampled_ex_for_scoring`` of ``eval_config``; 2 + 10 +
    2 by default, of which the 4 non-random ones activate the latent) whose activity the judge called right. So:

    * ``all_inactive``: mean over latents of ``1 - k/n`` (``k`` active examples), the score of answering "none"
      every time (10/14 = 0.714 with the defaults);
    * ``random_guess``: mean over latents of ``1 - (p (n - k) + k (n - p)) / n**2``, the expected score of naming
      as many examples as the judge named (``p``, counting distinct indices in 1..n, as SAEBench's scoring does),
      chosen uniformly at random.

    Each latent's stored ``score`` (when present) must equal the score its predictions and active examples give
    with this ``n``; that catches a wrong ``eval_config``.

    Args:
        result: a SAEBench autointerp result (``eval_result_unstructured``: ``{latent: {"predictions": [...],
            "correct seqs": [...], "score": ...}}``, examples numbered from 1).

    Returns:
        ``{"all_inactive": float, "random_guess": float, "n_latents": int}``, or None when the result has no
        per-latent details (``eval_result_unstructured`` missing or empty).

    Raises:
        ValueError: the scoring sizes are not non-negative integers with a positive sum, or a latent's entry is
            malformed (not a dict; ``predictions`` / ``correct seqs`` not lists of integers; active examples outside
            1..n or repeated) or disagrees with its stored score (or that score is not a number); the message names
            the latent.
    """
    if not isinstance(result, dict):
        raise ValueError(f"an autointerp result must be a JSON object, got {type(result).__name__}")
    per_latent = result.get("eval_result_unstructured")
    if not per_latent:
        return None
    if not isinstance(per_latent, dict):
        raise ValueError(f"eval_result_unstructured must map latents to their details, got {type(per_latent).__name__}")
    cfg = result.get("eval_config") if isinstance(result.get("eval_config"), dict) else {}
    sizes = [cfg.get(k) for k in ("n_top_ex_for_scoring", "n_random_ex_for_scoring", "n_iw_sampled_ex_for_scoring")]
    if not all(_is_int(x) and x >= 0 for x in sizes) or sum(sizes) <= 0:
        raise ValueError(f"eval_config's scoring sizes (n_top/n_random/n_iw_sampled_ex_for_scoring) must be "
                         f"non-negative integers with a positive sum, got {sizes}")
    n = sum(sizes)
    none, guess = [], []
    for latent, v in per_latent.items():
        where = f"latent {latent}"
        if not isinstance(v, dict):
            raise ValueError(f"{where}: details must be an object, got {type(v).__name__}")
        pred, act = v.get("predictions"), v.get("correct seqs")
        if not isinstance(pred, list) or not all(_is_int(i) for i in pred):
            raise ValueError(f"{where}: 'predictions' must be a list of example numbers, got {pred!r}")
        if not isinstance(act, list) or not all(_is_int(i) and 1 <= i <= n for i in act) or len(set(act)) < len(act):
            raise ValueError(f"{where}: 'correct seqs' must list distinct example numbers in 1..{n}, got {act!r}")
        named, k = {i for i in pred if 1 <= i <= n}, len(act)
        score = v.get("score")
        if score is not None and not (finite(score) and abs(score - (n - len(named ^ set(act))) / n) <= 1e-6):
            raise ValueError(f"{where}: stored score {score!r} is not what its predictions and active examples give "
                             f"with n = {n} scoring examples (eval_config): a wrong eval_config or a corrupt file")
        none.append(1 - k / n)
        guess.append(1 - (len(named) * (n - k) + k * (n - len(named))) / n ** 2)
    return {"all_inactive": float(np.mean(none)), "random_guess": float(np.mean(guess)), "n_latents": len(none)}


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


#: metrics whose values are fractions (an autointerp score or a probe accuracy outside [0, 1] is a corrupt file)
_FRACTIONS = {"autointerp", "probe_llm", "probe_sae", "probe_top1", "probe_top5"}


def load_saebench(results) -> tuple[dict[str, dict[str, float]], int]:
    """SAEBench results under ``results/saebench/`` (any depth, ``*.json`` or gzipped ``*.json.gz``), keyed by record
    id.

    A file is matched to a record by a top-level ``record_id`` field, else ``sae_name``, whose value must be a
    record ``id``; SAEBench writes neither, so add one of them to each output file (``python -m benchmarks run
    --results-store`` does). Values are read from the key paths of :data:`SAEBENCH_METRICS` (e.g. ``scr``:
    ``eval_result_metrics.scr_metrics.scr_metric_threshold_20``, ``autointerp``:
    ``eval_result_metrics.autointerp.autointerp_score``); several files for one record merge.

    Autointerp results also give their chance levels (:func:`autointerp_chance_levels`) as
    ``autointerp_all_inactive`` and ``autointerp_random_guess`` (:data:`AUTOINTERP_CHANCE`).

    Files that cannot be read, have no id or no metric, values that are not finite (or, for scores and
    accuracies, outside [0, 1]) and chance levels that cannot be computed are left out with one warning
    (``UserWarning``) naming each file and why; the harness's own run summaries (``run_*.json`` / ``results.json``)
    are skipped without one.

    Returns:
        ``({record_id: {"scr": x, "autointerp": y, ...}}, number of JSON files found)``, only the metrics found.

    Raises:
        ValueError: two files give the same metric for one record (e.g. ``autointerp.json`` next to
            ``autointerp.json.gz``, or a stale copy in another folder); the message names both.
    """
    return _load_saebench_folder(Path(results) / SAEBENCH_DIR, _record_id_of)


#: SAEBench evals whose inputs are texts tokenized by TransformerLens's copy of the tokenizer (core adds its own BOS)
BOS_SENSITIVE_EVALS = ("sparse_probing", "scr", "tpp", "autointerp")


def made_without_bos(d: dict) -> bool:
    """Whether a SAEBench result ``d`` (as ``benchmarks run`` writes it) is a sparse-probing, SCR, TPP or autointerp
    result on SmolLM2 made before the harness made TransformerLens's tokenizer prepend BOS (commit 5190b3e): its
    ``model`` block lacks ``tokenizer_prepends_bos: true``. SAEBench then kept each text's first token, SmolLM2's
    attention sink (about 164x the median norm), in its pooled features, so such numbers are not measurements of
    the dictionaries (docs/saebench.md). Results on other models are never flagged (Gemma's tokenizer adds BOS)."""
    model = d.get("model") if isinstance(d.get("model"), dict) else {}
    name = str(model.get("model_name") or (d.get("eval_config") or {}).get("model_name") or "")
    return (d.get("eval_type_id") in BOS_SENSITIVE_EVALS and "smollm2" in name.lower()
            and model.get("tokenizer_prepends_bos") is not True)


def saebench_bos_caveat(results, metrics: Optional[Iterable[str]] = None) -> Optional[str]:
    """One sentence for a table or caption when SAEBench results under ``results/saebench/`` were made without BOS
    (:func:`made_without_bos`); None when none were. ``metrics`` (e.g. ``["scr"]``) limits the check to the evals
    that give them (``scr``, ``tpp``, ``autointerp``, or any ``probe_*`` for sparse probing)."""
    wanted = None
    if metrics is not None:
        wanted = {"sparse_probing" if m.startswith("probe_") else m for m in metrics}
    n = 0
    for _, d, err in saebench_files(Path(results) / SAEBENCH_DIR):
        # unreadable files (err) are named by load_saebench
        if isinstance(d, dict) and made_without_bos(d) and (wanted is None or d.get("eval_type_id") in wanted):
            n += 1
    if not n:
        return None
    return (f"{n} SAEBench sparse-probing/SCR/TPP/autointerp result(s) here were made before the harness prepended "
            f"BOS for SmolLM2 (fixed in commit 5190b3e): their inputs kept the attention-sink first token, so they "
            f"check the pipeline and do not measure the dictionaries (docs/saebench.md)")


def saebench_files(folder: Path) -> Iterator[tuple[Path, object, Optional[str]]]:
    """Every ``*.json`` / ``*.json.gz`` file under ``folder`` (any depth, sorted), read: ``(path, value, None)``, or
    ``(path, None, "<exception class>")`` for a file that cannot be read as JSON. Nothing when ``folder`` is
    missing."""
    files = sorted([*folder.rglob("*.json"), *folder.rglob("*.json.gz")]) if folder.is_dir() else []
    for p in files:
        try:
            yield p, read_json(p), None
        except (OSError, EOFError, zlib.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            yield p, None, type(e).__name__


def _record_id_of(d: dict, path: Path) -> Optional[str]:
    """A result file's record id: its ``record_id``, else ``sae_name`` (None when neither is a string)."""
    rid = d.get("record_id") or d.get("sae_name")
    return rid if isinstance(rid, str) else None


def _dictionary_name_of(d: dict, path: Path) -> Optional[str]:
    """A result file's dictionary name: ``dictionary.name`` (``benchmarks run --dictionaries``), else SAEBench's own
    ``{sae_lens_release_id}_{sae_lens_id}`` (the stem of the ``..._eval_results.json`` files SAEBench writes, one
    folder per eval: their folder names the eval, not the SAE), else the file's folder."""
    name = (d.get("dictionary") or {}).get("name") if isinstance(d.get("dictionary"), dict) else None
    if isinstance(name, str):
        return name
    release, sae_id = d.get("sae_lens_release_id"), d.get("sae_lens_id")
    if isinstance(release, str) and isinstance(sae_id, str):
        return f"{release}_{sae_id}"
    return path.parent.name


def _saebench_description(d: dict) -> Optional[dict]:
    """The ``dictionary`` description of a result (written by ``benchmarks run``), else the little SAEBench's own
    ``sae_cfg_dict`` says (``dict_class``: its architecture, ``d_sae``); None when neither is there."""
    if isinstance(d.get("dictionary"), dict):
        return d["dictionary"]
    cfg = d.get("sae_cfg_dict")
    if isinstance(cfg, dict):
        return {"dict_class": cfg.get("architecture"), "d_sae": cfg.get("d_sae")}
    return None


def _metrics_of(d: dict, p: Path, skipped: list) -> dict:
    """The :data:`SAEBENCH_METRICS` (and autointerp chance levels) of one result ``d`` read from ``p``; values
    left out are described in ``skipped``."""
    found = {}
    for name, path in SAEBENCH_METRICS.items():
        v = field_getter(*path)(d)
        if v is None:
            continue
        if not finite(v) or (name in _FRACTIONS and not 0 <= v <= 1):
            skipped.append(f"{p}: {name} = {v!r} left out")
            continue
        found[name] = float(v)
    if d.get("eval_type_id") == "autointerp":
        try:
            chance = autointerp_chance_levels(d)
        except ValueError as e:  # autointerp_chance_levels checks every field it reads
            chance = None
            skipped.append(f"{p}: no chance levels ({e})")
        found.update({name: chance[key] for name, key in AUTOINTERP_CHANCE.items()} if chance else {})
    if not found:
        skipped.append(f"{p}: no SAEBench metric this library reads")
    return found


def _load_saebench_folder(folder: Path, key_of: Callable[[dict, Path], Optional[str]], describe: bool = False):
    """Every SAEBench result under ``folder`` (see :func:`load_saebench`), keyed by ``key_of(result, path)``;
    results without a key are left out with the warning. Returns ``(results by key, number of JSON files)``.
    With ``describe``, each entry also holds the files' ``dictionary`` description (written by ``benchmarks run``)
    under the key ``"dictionary"``.

    Raises:
        ValueError: two files give the same metric for one key.
    """
    out: dict[str, dict] = {}
    source: dict[tuple[str, str], Path] = {}
    skipped: list[str] = []
    n_files = 0
    for p, d, err in saebench_files(folder):
        n_files += 1
        if err is not None:
            skipped.append(f"{p}: unreadable ({err})")
            continue
        if isinstance(d, dict) and isinstance(d.get("results"), list) and "evals" in d:
            continue  # a summary of `python -m benchmarks run`
        rid = key_of(d, p) if isinstance(d, dict) else None
        if rid is None:
            skipped.append(f"{p}: no record_id or sae_name")
            continue
        for name, v in _metrics_of(d, p, skipped).items():
            if (rid, name) in source:
                raise ValueError(f"two SAEBench files give {name} for record {rid}: {source[rid, name]} and {p}; "
                                 f"remove the stale one")
            source[rid, name] = p
            out.setdefault(rid, {})[name] = v
        description = _saebench_description(d) if describe and rid in out else None
        if description is not None:
            out[rid].setdefault("dictionary", description)
    if skipped:
        warnings.warn(f"{len(skipped)} SAEBench file(s) or value(s) under {folder} left out:\n  "
                      + "\n  ".join(skipped[:20]) + (f"\n  ... and {len(skipped) - 20} more" if len(skipped) > 20 else ""),
                      stacklevel=3)
    return out, n_files


def load_saebench_dictionaries(folder) -> tuple[dict[str, dict], int]:
    """SAEBench results written by ``python -m benchmarks run --dictionaries ... --out folder``
    (``folder/<name>/<eval>.json``), keyed by dictionary name (the files' ``dictionary.name``, else their folder).

    Returns:
        ``({name: {"scr": x, ..., "dictionary": {path, dict_class, trainer_class, alignment, d_sae, ...}}},
        number of JSON files found)``; values are read and checked as :func:`load_saebench` does.

    Raises:
        ValueError: two files give the same metric for one dictionary.
    """
    return _load_saebench_folder(Path(folder), _dictionary_name_of, describe=True)
