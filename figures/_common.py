"""Data helpers shared by the figures and the claims table: selecting, grouping and averaging records, and reading
SAEBench results. Nothing here imports matplotlib; records come from
:func:`dictionary_learning_aligned.records.iter_records` only, and the architectures' names, order and labels from
the architecture registry (:mod:`dictionary_learning_aligned.registry`)."""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import numpy as np

from dictionary_learning_aligned import registry
from dictionary_learning_aligned.io import read_json
from dictionary_learning_aligned.records import alignment_tag, iter_records

#: registered architectures in registration order: the paper's four first, then the extensions
ARCH_ORDER = tuple(registry.names())
#: label per architecture; architectures that arXiv 2605.18629 does not evaluate say so
class _ArchLabels(dict):
    """Figure and table labels of the registered architectures, read from the registry at each lookup, so that an
    architecture registered after this module was imported (a user's plug-in) is labelled too; extensions that
    arXiv 2605.18629 does not evaluate are marked "(not in paper)". Unknown names raise KeyError."""

    def __missing__(self, name):
        arch = next((a for a in registry.architectures() if a.name == name), None)
        if arch is None:
            raise KeyError(name)
        return arch.label if arch.in_paper else f"{arch.label} (not in paper)"

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


ARCH_LABEL = _ArchLabels()
SPARSITY_LABEL = {"l1_penalty": "L1 penalty", "k": "k", "initial_sparsity_penalty": "initial penalty",
                  "target_l0": "target L0"}
#: the paper's main dictionary width; other widths have their own figures (15-18)
MAIN_DICT_SIZE = 4096
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

Getter = Callable[[dict], Optional[float]]


def load_records(results) -> list[dict]:
    """All records of the store ``results`` (raises FileNotFoundError when there is no store)."""
    return list(iter_records(results))


def field_getter(*keys) -> Getter:
    """A function returning ``record[k1][k2]...`` or None when a level is missing (keys may contain dots,
    e.g. ``field_getter("stability", "frac_above_0.7")``)."""
    def get(rec):
        for k in keys:
            if not isinstance(rec, dict) or rec.get(k) is None:
                return None
            rec = rec[k]
        return rec
    return get


L0 = field_getter("metrics", "l0")


def finite(x) -> bool:
    """Whether ``x`` is a real finite number (not None, not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


#: what a table or claims output of records of scale smoke says first
SMOKE_NOTE = "scale smoke: these dictionaries test the pipeline, not the paper"


def fired_scores(record: dict) -> Optional[tuple[list, list]]:
    """The per-feature alignment scores of ``record`` and whether each feature fired on its held-out tokens:
    ``(per_feature.alignment_score, [bool per feature])`` from ``per_feature.fired`` (booleans, or numbers such as
    0/1 or counts: nonzero is fired). None when the record lacks them or they are unusable: ``per_feature`` not a
    dict, either array not a list, lists of other lengths, or a ``fired`` entry neither a bool nor a finite number
    (a string such as ``"false"`` would read as fired)."""
    pf = record.get("per_feature")
    if not isinstance(pf, dict):
        return None
    scores, fired = pf.get("alignment_score"), pf.get("fired")
    if not isinstance(scores, list) or not isinstance(fired, list) or len(scores) != len(fired):
        return None
    if not all(isinstance(f, bool) or finite(f) for f in fired):
        return None
    return scores, [bool(f) for f in fired]


def mode_name(alignment: Optional[str]) -> str:
    """``"standard"`` for None, else the alignment mode."""
    return alignment or "standard"


def alignment_key(record: dict) -> str:
    """The alignment of a record as its ids name it: ``"standard"``, the mode, or ``"penalty<lambda>"`` for the
    soft constraint with its coefficient (``alignment_penalty``; records of the ``ablations`` experiment)."""
    return alignment_tag(record.get("alignment"), record.get("alignment_penalty"))


def point_steps(record: dict) -> Optional[int]:
    """The steps of a record evaluated at a step point of a longer run (one with ``checkpoint_of``: the ``budget``
    experiment), else None (a record of a trained dictionary: records of different step points must not be averaged
    together, records of ordinary runs keep their groups)."""
    return record.get("steps") if record.get("checkpoint_of") else None


def before_run_end(records: list[dict]) -> list[bool]:
    """Per record of ``records``, whether it was evaluated at a step point before its run's end: it has
    ``checkpoint_of`` and fewer ``steps`` than the full run's. The full run's steps are the most steps of a record of
    the same run (``checkpoint_of``) among ``records``, or the trainer config's ``steps`` (the run's planned length,
    which the recorder gives its last point) when larger: a store may lack the run's last point. A record at the
    run's end is the run's dictionary itself (a ``budget`` record that ``reproduce --also`` also wrote under
    ``main``): False.

    Returns:
        one bool per record, in order.
    """
    def run(r):
        return str(r["checkpoint_of"])  # hashable whatever JSON a hand-edited record holds there

    def run_steps(r):
        planned = r["trainer"].get("steps") if isinstance(r.get("trainer"), dict) else None
        return max(planned, last[run(r)]) if finite(planned) else last[run(r)]

    points = [r for r in records if r.get("checkpoint_of") and finite(r.get("steps"))]
    last: dict = {}
    for r in points:
        last[run(r)] = max(last.get(run(r), r["steps"]), r["steps"])
    early = {id(r) for r in points if r["steps"] < run_steps(r)}
    return [id(r) in early for r in records]


def _experiment_rank(name) -> int:
    """Position of experiment ``name`` in :data:`dictionary_learning_aligned.experiments.EXPERIMENTS` (the paper's
    experiments first); unknown names after all of them."""
    from dictionary_learning_aligned.experiments import EXPERIMENTS
    order = list(EXPERIMENTS)
    return order.index(name) if name in order else len(order)


def _grid_key(arch, dict_size, value, mode: str, seed, point) -> tuple:
    """One entry of an experiment's grid as :func:`grid_gaps` compares them (sparsity values as floats)."""
    return (arch, dict_size, float(value), mode, seed, point)


def grid_gaps(records: Iterable[dict], experiment: str, modes: Optional[Iterable[str]] = None) -> Optional[str]:
    """One line naming the entries of ``experiment``'s grid (:func:`dictionary_learning_aligned.experiments.resolve`
    at the scale of most of its records) that have no record among ``records`` of that scale and model, e.g.
    ``partial: 12 of the 48 records of the ablations grid at scale small; missing: ReLU penalty0.1, tied (all 3
    seeds each); TopK (all 24); ReLU projection: seed 2``. For an experiment with step points (``budget``), the
    points are those of its records; a point missing from some runs is named with them (``seed 1 at 25,000
    steps``). Records outside the grid (another dict_size or sparsity value) are counted, not taken for entries.

    Args:
        modes: only these alignment tags of the grid (:func:`alignment_key`; ``budget``'s figure shows standard
            and one aligned mode), None: all.

    Returns:
        the line, or None when the grid is complete, no record is of ``experiment`` or none is on its grid, or
        ``experiment`` or the records' scale is not one the reproduction knows (a renamed experiment has no grid
        to compare with).
    """
    from dictionary_learning_aligned.experiments import EXPERIMENTS, SCALES, resolve

    recs = [r for r in records if r.get("experiment") == experiment]
    scales = Counter(r.get("scale") for r in recs)
    scale = min(scales, key=lambda s: (-scales[s], str(s))) if scales else None
    if experiment not in EXPERIMENTS or scale not in SCALES:
        return None
    plan = resolve(experiment, scale)
    model = primary_model([r for r in recs if r.get("scale") == scale])
    recs = [r for r in recs if r.get("scale") == scale and r.get("model") == model]
    have = {_grid_key(r["arch"], r["dict_size"], r["sparsity"]["value"], alignment_key(r), r["seed"],
                      point_steps(r)) for r in recs}
    points = sorted({point_steps(r) for r in recs}, key=lambda p: (p is not None, p or 0))
    runs = [u for u in plan.runs if modes is None or alignment_tag(u.alignment, u.alignment_penalty) in modes]
    want = {_grid_key(u.arch, u.dict_size, u.sparsity_value, alignment_tag(u.alignment, u.alignment_penalty),
                      u.seed, p): u for u in runs for p in points}
    outside, held = len(have - set(want)), len(set(want) & have)
    if not held or held == len(want):  # none on the grid: records of another grid (hand-made, or a changed one)
        return None
    line = f"partial: {held} of the {len(want)} records of the {experiment} grid at scale {scale}"
    if outside:
        line += f" ({outside} record{'s' if outside > 1 else ''} outside the grid)"
    return f"{line}; missing: {_describe_missing([k for k in want if k not in have], set(want))}"


def _describe_missing(missing: list[tuple], want: set) -> str:
    """The grid entries ``missing`` (keys of :func:`_grid_key`, in grid order) of the grid ``want``, short: an
    architecture with none of its records (``TopK (all 24)``), settings with none (``ReLU penalty1, tied (all 3
    seeds each)``), then single seeds (``ReLU projection: seed 2``) and step points (``seed 1 at 25,000 steps``)."""
    def setting(k):
        return k[:4]

    per_arch = Counter(k[0] for k in want)
    gone_arch = [a for a in per_arch if sum(k[0] == a for k in missing) == per_arch[a]]
    per_setting = Counter(setting(k) for k in want)
    left = [k for k in missing if k[0] not in gone_arch]
    whole = list(dict.fromkeys(setting(k) for k in left
                               if sum(setting(m) == setting(k) for m in left) == per_setting[setting(k)]))
    parts = []
    for arch in dict.fromkeys(s[0] for s in whole):
        tags = [s[3] for s in whole if s[0] == arch]
        seeds = {k[4] for k in want if setting(k) in whole and k[0] == arch}
        parts.append(f"{ARCH_LABEL.get(arch, arch)} {', '.join(tags)} (all {len(seeds)} seed"
                     f"{'s' if len(seeds) > 1 else ''}{' each' if len(tags) > 1 else ''})")
    parts = [f"{ARCH_LABEL.get(a, a)} (all {per_arch[a]})" for a in gone_arch] + parts
    for s in dict.fromkeys(setting(k) for k in left if setting(k) not in whole):
        ks = [k for k in left if setting(k) == s]
        by_seed: dict = {}
        for k in ks:
            by_seed.setdefault(k[4], []).append(k[5])
        n_points = len({k[5] for k in want})
        whole_seeds = [seed for seed, pts in by_seed.items() if pts == [None] or len(pts) == n_points]
        shown = [f"seed{'s' if len(whole_seeds) > 1 else ''} {', '.join(map(str, whole_seeds))}"] if whole_seeds else []
        shown += [f"seed {seed} at {', '.join(f'{p:,}' for p in pts)} steps" for seed, pts in by_seed.items()
                  if seed not in whole_seeds]
        parts.append(f"{ARCH_LABEL.get(s[0], s[0])} {s[3]}: {'; '.join(shown)}")
    return "; ".join(parts)


def _measurement_key(record: dict) -> Optional[tuple]:
    """What identifies one measurement: the trained dictionary (``paths.dictionary``), the step it was evaluated
    at, its scale, data and settings; None for a record that names no dictionary (it is never taken for a copy)."""
    path = (record.get("paths") or {}).get("dictionary")
    if not path:
        return None
    sparsity = record.get("sparsity") or {}
    return (path, record.get("steps"), record.get("scale"), record.get("train_tokens"), record.get("model"),
            record.get("layer"), record.get("corpus"), record.get("arch"), record.get("alignment"),
            record.get("alignment_penalty"), record.get("dict_size"), sparsity.get("name"),
            sparsity.get("value"), record.get("seed"))


def distinct_measurements(records: Iterable[dict]) -> tuple[list[dict], int]:
    """Keep one record per measurement. ``reproduce --also`` records one trained dictionary under several
    experiments (``sizes``' ReLU pair at 16384 is also the ``ablations``' standard and ``project`` entries; a
    ``budget`` run's last step is also its ``main`` record): counting both would count one dictionary twice. Of
    records with the same ``paths.dictionary``, step and settings, the one of the experiment listed first in
    :data:`~dictionary_learning_aligned.experiments.EXPERIMENTS` is kept (the paper's experiments before the
    ones beyond it).

    Returns:
        (the kept records in their original order, how many were dropped as copies)
    """
    records = list(records)
    keys = [_measurement_key(r) for r in records]
    ranks = [_experiment_rank(r.get("experiment")) for r in records]
    best: dict[tuple, int] = {}  # key -> index of the record kept for it
    for i, key in enumerate(keys):
        if key is not None and (key not in best or ranks[i] < ranks[best[key]]):
            best[key] = i
    kept = [r for i, (r, key) in enumerate(zip(records, keys)) if key is None or best[key] == i]
    return kept, len(records) - len(kept)


def archs_in(records: Iterable[dict], among: Iterable[str] = ARCH_ORDER) -> list[str]:
    """Architectures of ``among`` present in ``records``, in the canonical order."""
    present = {r["arch"] for r in records}
    return [a for a in among if a in present]


def alignments_in(records: Iterable[dict]) -> list[Optional[str]]:
    """Alignment modes present, standard first, then by name."""
    present = {r["alignment"] for r in records}
    return sorted(present, key=lambda a: (a is not None, a or ""))


def select(records: Iterable[dict], *, experiments=None, archs=None, alignments=None, dict_size=None,
           model=None) -> list[dict]:
    """Records matching every given filter (``None`` means no filter; lists mean "one of")."""
    out = []
    for r in records:
        if experiments is not None and r.get("experiment") not in experiments:
            continue
        if archs is not None and r["arch"] not in archs:
            continue
        if alignments is not None and r["alignment"] not in alignments:
            continue
        if dict_size is not None and r["dict_size"] != dict_size:
            continue
        if model is not None and r.get("model") != model:
            continue
        out.append(r)
    return out


def primary_model(records: list[dict]) -> Optional[str]:
    """The most common ``model`` of the records (ties: alphabetical), None for no records."""
    counts = Counter(r.get("model") for r in records)
    return min(counts, key=lambda m: (-counts[m], str(m))) if counts else None


def pick_dict_size(records: list[dict], prefer: int = MAIN_DICT_SIZE) -> Optional[int]:
    """``prefer`` if some record has it, else the smallest dict_size present (None for no records)."""
    sizes = {r["dict_size"] for r in records}
    return prefer if prefer in sizes else (min(sizes) if sizes else None)


@dataclass
class Point:
    """One configuration (record group) averaged over its seeds: ``x``/``y`` means, ``*_std`` population std
    (ddof 0; 0 for one seed), ``n`` seeds with both values."""

    group: str
    arch: str
    alignment: Optional[str]
    dict_size: int
    sparsity: float
    n: int
    x: float
    x_std: float
    y: float
    y_std: float
    records: list = field(default_factory=list, repr=False)


def aggregate(records: Iterable[dict], y: Getter, x: Getter = L0) -> list[Point]:
    """Average ``x(record)`` and ``y(record)`` over the seeds of each record group.

    Records where either value is missing or non-finite are left out. Points are sorted by (arch, alignment,
    dict_size, x).
    """
    groups = defaultdict(list)
    for r in records:
        if finite(x(r)) and finite(y(r)):
            groups[r["group"]].append(r)
    pts = []
    for g, rs in groups.items():
        xs, ys = np.array([x(r) for r in rs], float), np.array([y(r) for r in rs], float)
        r0 = rs[0]
        pts.append(Point(g, r0["arch"], r0["alignment"], r0["dict_size"], float(r0["sparsity"]["value"]), len(rs),
                         float(xs.mean()), float(xs.std()), float(ys.mean()), float(ys.std()), rs))
    return sorted(pts, key=lambda p: (p.arch, mode_name(p.alignment), p.dict_size, p.x))


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    """(mean, population std, n) of the finite values; (nan, nan, 0) when there are none."""
    v = np.array([x for x in values if finite(x)], float)
    return (float(v.mean()), float(v.std()), len(v)) if len(v) else (math.nan, math.nan, 0)


def fmt_ms(m: float, s: float, n: int, digits: int = 3) -> str:
    """``"m ± s (n)"`` (just ``"m"`` for n == 1, ``"n/a"`` for n == 0)."""
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" if n == 1 else f"{m:.{digits}f} ± {s:.{digits}f} (n={n})"


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


# ----------------------------------------------------------------------------------------------- training budget

#: what a record that predates the ``recipe`` field says about its recipe
UNRECORDED = "unrecorded"


def fmt_tokens(n: float) -> str:
    """A token count in short form: ``24.6k``, ``20M``, ``2B`` (three significant digits)."""
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


def _derived_batch(train_tokens, steps) -> Optional[int]:
    """``train_tokens / steps`` rounded to the power of two within 0.5% of it (a run whose last batch was cut short
    reads 8,190 for 8,192), else to the nearest integer; None when either is missing or steps is not positive."""
    if not (finite(train_tokens) and finite(steps)) or steps <= 0 or train_tokens <= 0:
        return None
    b = train_tokens / steps
    p2 = 2 ** round(math.log2(b))
    return int(p2) if abs(b - p2) <= 0.005 * p2 else int(round(b))


def record_budget(record: dict) -> dict:
    """The training budget of one record, from its own fields where it has them.

    Records written before the budget fields (``recipe``, ``steps``, ``batch_size``) existed get them derived:
    ``steps`` from the trainer config's ``steps``, ``batch_size`` from ``train_tokens / steps``
    (:func:`_derived_batch`), ``recipe`` :data:`UNRECORDED`.

    Returns:
        ``{"scale", "model", "recipe", "steps", "batch_size", "train_tokens", "unique_tokens", "epochs",
        "derived"}``; numbers are None when neither recorded nor derivable, ``derived`` lists the fields that were
        derived (e.g. ``["steps", "batch_size"]``).
    """
    derived = []
    steps = record.get("steps")
    if not finite(steps):
        steps = (record.get("trainer") or {}).get("steps") if isinstance(record.get("trainer"), dict) else None
        steps = steps if finite(steps) else None
        derived += ["steps"] if steps is not None else []
    batch = record.get("batch_size")
    if not finite(batch):
        batch = _derived_batch(record.get("train_tokens"), steps)
        derived += ["batch_size"] if batch is not None else []
    tokens = record.get("train_tokens")
    return {"scale": record.get("scale"), "model": record.get("model"), "recipe": record.get("recipe") or UNRECORDED,
            "steps": steps, "batch_size": batch, "train_tokens": tokens if finite(tokens) else None,
            "unique_tokens": record.get("unique_tokens") if finite(record.get("unique_tokens")) else None,
            "epochs": record.get("epochs") if finite(record.get("epochs")) else None, "derived": derived}


def _span(values, fmt: Callable[[float], str]) -> Optional[str]:
    """``"a"`` when the values print alike (``fmt`` formats one number), ``"lo-hi"`` otherwise, None for none."""
    v = sorted({x for x in values if x is not None})
    if not v:
        return None
    lo, hi = fmt(v[0]), fmt(v[-1])
    return lo if lo == hi else f"{lo}-{hi}"


def budget_summary(records: Iterable[dict]) -> dict:
    """The budgets (:func:`record_budget`) of ``records`` summarized: ``{"scales", "models", "recipes"}`` (sorted
    distinct names), ``{"steps", "batch_size", "train_tokens", "unique_tokens", "epochs"}`` (``"a"`` or ``"lo-hi"``
    text, None when no record has the value), ``"mixed"`` (whether the steps, batch sizes, token counts or recipes
    differ between records, counts by more than 0.1%), ``"derived"`` (fields derived for some record) and ``"n"`` (records)."""
    budgets = [record_budget(r) for r in records]
    col = lambda k: [b[k] for b in budgets]  # noqa: E731
    names = lambda k: sorted({str(x) for x in col(k)})  # noqa: E731
    out = {"scales": names("scale"), "models": names("model"), "recipes": names("recipe"), "n": len(budgets),
           "steps": _span(col("steps"), lambda x: f"{x:,.0f}"),
           "batch_size": _span(col("batch_size"), lambda x: f"{x:,.0f}"),
           "train_tokens": _span(col("train_tokens"), fmt_tokens),
           "unique_tokens": _span(col("unique_tokens"), fmt_tokens),
           "epochs": _span(col("epochs"), lambda x: f"{x:g}"),
           "derived": sorted({d for b in budgets for d in b["derived"]})}
    out["mixed"] = len(out["recipes"]) > 1 or any(_differ(col(k)) for k in ("steps", "batch_size", "train_tokens"))
    return out


#: budgets closer than this (relative) are one budget: the faithful store's 48,828 and 48,829 steps (one 64-row
#: epoch-end batch dropped from the ninth session on) are not a mixture
SAME_BUDGET_RTOL = 1e-3


def _differ(values: list) -> bool:
    """Whether the known (not None) ``values`` differ by more than :data:`SAME_BUDGET_RTOL` of the largest."""
    known = [float(v) for v in values if v is not None]
    return bool(known) and max(known) - min(known) > SAME_BUDGET_RTOL * max(abs(v) for v in known)


def budget_line(records: Iterable[dict], *, model: bool = True) -> str:
    """One line stating what the records were trained on, for a figure's caption or a table's caption, e.g.
    ``scale small · model smollm2-135m-instruct · recipe unrecorded · steps 2,442 · batch 8,192 (derived from
    tokens/steps) · 20M training tokens (20M unique, 1 epoch)``; records of different budgets give ranges and
    start with ``mixed budgets:`` (``mixed budgets: ... steps 2,442-48,829 ...``). ``model=False`` leaves the
    model out (figures name it in their title). Empty for no records."""
    s = budget_summary(records)
    if not s["n"]:
        return ""
    parts = [f"scale {', '.join(s['scales'])}"]
    if model:
        parts.append(f"model {', '.join(s['models'])}")
    parts.append(f"recipe {', '.join(s['recipes'])}")
    parts.append(f"steps {s['steps'] or UNRECORDED}")
    parts.append(f"batch {s['batch_size'] or UNRECORDED}"
                 + (" (derived from tokens/steps)" if "batch_size" in s["derived"] else ""))
    tokens = f"{s['train_tokens'] or UNRECORDED} training tokens"
    if s["unique_tokens"] or s["epochs"]:
        epochs = s["epochs"] or UNRECORDED
        tokens += (f" ({s['unique_tokens'] or UNRECORDED} unique, {epochs} epoch"
                   + ("" if epochs == "1" else "s") + ")")
    parts.append(tokens)
    return ("mixed budgets: " if s["mixed"] else "") + " · ".join(parts)
