"""Records of a results store for the figures and the claims table: loading them
(:func:`dictionary_learning_aligned.records.iter_records` only), reading their fields, selecting and grouping them,
keeping one record per measurement, telling step points before a run's end, and naming what is missing from an
experiment's grid. Nothing here imports matplotlib."""

from __future__ import annotations

import math
from collections import Counter
from typing import Callable, Iterable, Optional

from dictionary_learning_aligned.records import alignment_tag, iter_records

from .labels import ARCH_LABEL, ARCH_ORDER

#: the paper's main dictionary width; other widths have their own figures (15-18)
MAIN_DICT_SIZE = 4096

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
