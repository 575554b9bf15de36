"""The paper's claims, checked against the records of a results store.

:func:`claims_table` returns one row per claim and setting (experiment, model, architecture, dict_size);
:func:`format_claims` prints it. Verdicts are computed only from the records:

* (a) standard SAEs have bimodal alignment scores: mean over standard records of Sarle's coefficient
  (``alignment_scores.bimodality_coefficient``) above 5/9 (the uniform distribution's value), and, where the
  records hold per-feature scores and firing (``per_feature.alignment_score`` and ``per_feature.fired``), also
  over the features that fired on the held-out tokens. A feature that never fires gets no gradient and keeps
  its initial alignment score (0.1 for ReLU's ``0.1 * W_dec.T`` encoder), so many dead features alone can make a
  second mode; a row whose coefficient is not above 5/9 without them is "not supported" and says so, and a row
  whose records say which features fired but where fewer than 4 fired in each is "insufficient data".
* (b) aligned training leaves near-zero dead features: the aligned dead fraction ``1 - metrics.frac_alive``
  (mean over seeds) is at most ``dead_tol`` (default 1%) at every sparsity setting; the standard value is shown
  for contrast.
* (c) CE loss recovered is at least as high at equal L0: architectures whose sparsity parameter fixes L0
  (TopK/BatchTopK, ``fixed_l0`` in the registry) compare the same ``k``; ReLU and p-anneal (and other penalty
  architectures) interpolate the standard curve (mean L0 -> mean CE loss recovered, linear, no extrapolation) at each
  aligned point's L0. A point counts as "lower" when aligned minus standard is below ``-(std_aligned +
  std_standard)`` (seed spreads); supported when no point is lower.
* (d) higher cross-seed stability: ``stability.mcs`` of the aligned group above the standard group at every
  sparsity setting present for both. The verdict compares equal sparsity settings only. For penalty architectures
  (those without ``fixed_l0``) aligned training is sparser at the same penalty, and sparser dictionaries tend to
  be more stable across seeds, so the row also reads MCS at equal L0 as (c) does for CE loss recovered: the
  standard curve (mean L0 -> MCS, linear, no extrapolation) at each aligned group's L0, with the count of points
  where aligned is higher (``values["equal_l0"]``). That reading is shown, not part of the verdict.
* (e) (b)-(d) hold for TopK, BatchTopK and p-anneal: per setting, supported when (b), (c), (d) all are,
  not supported when one is not, else insufficient data.

Each dictionary is checked at its full training budget: records evaluated at a step point before their run's end
(the ``budget`` experiment's checkpoints, :func:`~figures.records.before_run_end`) are left out, and the header says
how many (:func:`at_full_budget`); ``python -m figures budget`` reads them, one column per step point
(:mod:`figures.budget`, which calls :func:`claims_table` with ``step_points=True``).
"""

from __future__ import annotations

from collections import defaultdict
from typing import NamedTuple, Optional

import numpy as np
import torch

from dictionary_learning_aligned import registry
from dictionary_learning_aligned.alignment import bimodality_coefficient

from .averages import aggregate, fmt_ms, mean_std
from .labels import ARCH_LABEL, ARCH_ORDER, SMOKE_NOTE, SPARSITY_LABEL
from .records import L0, before_run_end, distinct_measurements, field_getter, finite, fired_scores, point_steps
from .training_budget import budget_line, budget_summary

SUPPORTED, NOT_SUPPORTED, INSUFFICIENT = "supported", "not supported", "insufficient data"
#: Sarle's coefficient of a uniform distribution; larger values suggest bimodality
BC_THRESHOLD = 5 / 9
CLAIMS = {
    "a": "standard SAEs have bimodal alignment scores (Sarle's coefficient > 5/9)",
    "b": "aligned training leaves near-zero dead features",
    "c": "aligned CE loss recovered is at least as high as standard at equal L0",
    "d": "aligned training gives higher cross-seed stability (MCS)",
    "e": "claims (b)-(d) hold for TopK, BatchTopK and p-anneal",
}
CE = field_getter("metrics", "frac_recovered")
BC = field_getter("alignment_scores", "bimodality_coefficient")
MCS = field_getter("stability", "mcs")


def _alive_bc(r):
    """Sarle's coefficient of the alignment scores of the features of record ``r`` that fired on its held-out
    tokens (:func:`fired_scores`); None without usable per-feature data, or when it is undefined (fewer than 4
    such features, or all of one score)."""
    found = fired_scores(r)
    if found is None:
        return None
    alive = [float(a) for a, f in zip(*found) if f and finite(a)]
    return bimodality_coefficient(torch.tensor(alive, dtype=torch.float64)) if len(alive) >= 4 else None


def _dead(r):
    a = field_getter("metrics", "frac_alive")(r)
    return None if a is None else 1.0 - a


def at_full_budget(records: list[dict]) -> tuple[list[dict], list[dict]]:
    """``(kept, left_out)``: the records checked at their dictionaries' full training budget, and those evaluated at
    a step point before their run's end (:func:`~figures.records.before_run_end`), each in their order."""
    early = before_run_end(records)
    return [r for r, e in zip(records, early) if not e], [r for r, e in zip(records, early) if e]


def claims_table(records: list[dict], *, aligned: str = "project", dead_tol: float = 0.01,
                 step_points: bool = False) -> list[dict]:
    """Check claims (a)-(e) per setting (experiment, model, arch, dict_size, and for records of a run with step
    points, ``checkpoint_of``, their steps: records of different step points are never pooled). A dictionary
    recorded under several experiments counts once (:func:`~figures.records.distinct_measurements`).

    Args:
        records: results-store records.
        aligned: the alignment mode compared with standard (None) records.
        dead_tol: the largest dead fraction counted as "near zero" in claim (b).
        step_points: also check records evaluated at a step point before their run's end (one row per step point;
            :mod:`figures.budget` checks each point's records alone). False (the default): they are left out
            (:func:`at_full_budget`), so each dictionary is checked at its full training budget.

    Returns:
        rows ordered by claim, then setting, each a dict with ``claim`` (letter), ``statement``, ``setting``,
        ``arch``, ``dict_size``, ``experiment``, ``model``, ``measured`` (text with mean ± std over seeds),
        ``values`` (the numbers), ``verdict`` (``"supported"``, ``"not supported"`` or
        ``"insufficient data"``: what the numbers read, also for smoke records), ``budget``
        (:func:`~figures.training_budget.budget_summary` of the setting's records: steps, batch size, recipe, tokens)
        ``smoke`` (whether a record of the setting is of scale smoke: :func:`format_claims` then prints the
        verdict as no verdict) and ``point`` (the steps of a step-point setting, else None).
    """
    if not step_points:
        records = at_full_budget(records)[0]
    settings = defaultdict(list)
    for r in distinct_measurements(records)[0]:
        if r["alignment"] in (None, aligned):
            settings[(r.get("experiment"), r.get("model"), r["arch"], r["dict_size"], point_steps(r) or 0)].append(r)
    several_models = len({k[1] for k in settings}) > 1
    order = sorted(settings, key=lambda k: (str(k[0]), str(k[1]), ARCH_ORDER.index(k[2])
                                            if k[2] in ARCH_ORDER else 99, k[3], k[4]))
    rows = defaultdict(list)
    for key in order:
        exp, model, arch, size, point = key
        recs = settings[key]
        std = [r for r in recs if r["alignment"] is None]
        ali = [r for r in recs if r["alignment"] == aligned]
        base = dict(setting=f"{exp} · {ARCH_LABEL.get(arch, arch)} · d={size}"
                    + (f" · {model}" if several_models else ""), arch=arch, dict_size=size, experiment=exp,
                    model=model, budget=budget_summary(recs), smoke=any(r.get("scale") == "smoke" for r in recs),
                    point=point or None)
        found = {"a": _claim_a(std), "b": _claim_b(std, ali, dead_tol), "c": _claim_c(std, ali, arch),
                 "d": _claim_d(std, ali, arch)}
        if arch in ("topk", "batchtopk", "panneal"):
            found["e"] = _claim_e({c: found[c] for c in "bcd"})
        for c, (verdict, measured, values) in found.items():
            rows[c].append(dict(claim=c, statement=CLAIMS[c], **base, measured=measured, values=values,
                                verdict=verdict))
    return [row for c in CLAIMS for row in rows[c]]


def _claim_a(std):
    vals = [BC(r) for r in std if finite(BC(r))]
    m, s, n = mean_std(vals)
    if n == 0:
        return INSUFFICIENT, "no standard records with a bimodality coefficient", {}
    above = sum(v > BC_THRESHOLD for v in vals)
    values = dict(mean=m, std=s, n=n, above=above)
    measured = f"standard BC {fmt_ms(m, s, n)}; {above}/{n} records > 5/9"
    verdict = SUPPORTED if m > BC_THRESHOLD else NOT_SUPPORTED
    checked = [r for r in std if fired_scores(r) is not None]
    alive = [v for v in (_alive_bc(r) for r in checked) if finite(v)]
    if alive:
        am, as_, an = mean_std(alive)
        values.update(alive_mean=am, alive_std=as_, alive_n=an)
        measured += f"; over features that fired: BC {fmt_ms(am, as_, an)}"
        if verdict == SUPPORTED and am <= BC_THRESHOLD:
            verdict = NOT_SUPPORTED
            measured += " (not above 5/9 without the features that never fired)"
    elif checked and verdict == SUPPORTED:  # the coefficient rests on features that never fired
        verdict = INSUFFICIENT
        measured += (f"; over features that fired: undefined in all {len(checked)} records that say which fired "
                     f"(fewer than 4 features fired, or all of one score)")
    return verdict, measured, values


def _pairs(std, ali, value, x=lambda r: 0.0):
    """[(sparsity value, aligned Point, standard Point)] for sparsity settings present in both."""
    s = {p.sparsity: p for p in aggregate(std, value, x)}
    a = {p.sparsity: p for p in aggregate(ali, value, x)}
    return [(v, a[v], s[v]) for v in sorted(set(s) & set(a))]


def _sp(records) -> str:
    name = records[0]["sparsity"]["name"] if records else ""
    return SPARSITY_LABEL.get(name, name)


def _claim_b(std, ali, tol):
    pairs = _pairs(std, ali, _dead)
    if not pairs:
        only = aggregate(ali, _dead, x=lambda r: 0.0)
        if not only:
            return INSUFFICIENT, "no aligned records with metrics.frac_alive", {}
        pairs = [(p.sparsity, p, None) for p in only]
    parts, vals = [], []
    for v, a, s in pairs:
        parts.append(f"{_sp(ali)} {v:g}: aligned {fmt_ms(a.y, a.y_std, a.n)}"
                     + (f" vs standard {fmt_ms(s.y, s.y_std, s.n)}" if s else " (no standard)"))
        vals.append(dict(sparsity=v, aligned=a.y, aligned_std=a.y_std, standard=s.y if s else None,
                         standard_std=s.y_std if s else None))
    ok = all(a.y <= tol for _, a, _ in pairs)
    return (SUPPORTED if ok else NOT_SUPPORTED, f"dead fraction (≤ {tol:g} = near zero): " + "; ".join(parts),
            dict(points=vals, tol=tol))


def _fixes_l0(arch: str) -> bool:
    """Whether a registered architecture's sparsity parameter fixes L0 (False for unregistered names)."""
    return arch in registry.names() and registry.get(arch).fixed_l0


class _AtStandardL0(NamedTuple):
    """Aligned groups read against the standard curve at their own L0 (:func:`_at_standard_l0`)."""

    compared: list  # [(aligned Point, interpolated standard mean, interpolated standard seed std)]
    outside: list  # aligned mean L0 values outside [lo, hi], not compared
    lo: Optional[float]  # lowest / highest standard mean L0; None when there are fewer than 2 distinct ones
    hi: Optional[float]
    n_standard: int  # standard groups with both L0 and the value


def _at_standard_l0(std, ali, value) -> _AtStandardL0:
    """Interpolate the standard groups' curve (mean L0 -> mean ``value`` and its seed std, linear) at each aligned
    group's mean L0 (in aligned groups' L0 order); no extrapolation: aligned L0 outside the standard range are
    listed in ``outside``. With fewer than 2 distinct standard L0 values nothing is compared (``lo`` is None)."""
    curve = aggregate(std, value)  # x = mean L0
    xs = np.array([p.x for p in curve])
    if len(set(xs.round(9))) < 2:
        return _AtStandardL0([], [], None, None, len(curve))
    order = np.argsort(xs)
    xs, ys, ss = xs[order], np.array([p.y for p in curve])[order], np.array([p.y_std for p in curve])[order]
    compared, outside = [], []
    for a in aggregate(ali, value):
        if xs[0] <= a.x <= xs[-1]:
            compared.append((a, float(np.interp(a.x, xs, ys)), float(np.interp(a.x, xs, ss))))
        else:
            outside.append(a.x)
    return _AtStandardL0(compared, outside, float(xs[0]), float(xs[-1]), len(curve))


def _claim_c(std, ali, arch):
    if _fixes_l0(arch):
        pairs = [(f"k {v:g} (L0 {a.x:.1f} vs {s.x:.1f})", a.y, a.y_std, s.y, s.y_std, a.n, s.n)
                 for v, a, s in _pairs(std, ali, CE, L0)]
        outside = []
        if not pairs:
            return INSUFFICIENT, "no k with CE loss recovered and L0 for both standard and aligned", {}
    else:
        eq = _at_standard_l0(std, ali, CE)
        if eq.lo is None:
            return (INSUFFICIENT, f"not enough points: {eq.n_standard} standard L0 value(s), need 2 to "
                    f"interpolate", dict(n_standard=eq.n_standard))
        pairs = [(f"L0 {a.x:.1f}", a.y, a.y_std, ys_, ss_, a.n, None) for a, ys_, ss_ in eq.compared]
        outside = [f"{x:.1f}" for x in eq.outside]
        if not pairs:
            return (INSUFFICIENT, f"aligned L0 ({', '.join(outside) or 'none with CE'}) outside the standard L0 "
                    f"range [{eq.lo:.1f}, {eq.hi:.1f}]; no extrapolation", dict(outside=outside, lo=eq.lo, hi=eq.hi))
    parts, vals, lower = [], [], 0
    for label, ya, sa, ys_, ss_, na, ns in pairs:
        diff = ya - ys_
        low = diff < -(sa + ss_)
        lower += low
        std_txt = fmt_ms(ys_, ss_, ns) if ns else f"{ys_:.3f} ± {ss_:.3f} (interpolated)"
        parts.append(f"{label}: aligned {fmt_ms(ya, sa, na)} vs standard {std_txt} (Δ {diff:+.3f})")
        vals.append(dict(at=label, aligned=ya, aligned_std=sa, standard=ys_, standard_std=ss_, diff=diff))
    if outside:
        parts.append(f"aligned L0 {', '.join(outside)} outside the standard L0 range, not compared")
    verdict = NOT_SUPPORTED if lower else SUPPORTED
    return (verdict, f"CE loss recovered, aligned lower beyond seed spread at {lower}/{len(pairs)}: "
            + "; ".join(parts), dict(points=vals, lower=lower, outside=outside))


def _separating_digits(xs, bounds, most: int = 3) -> int:
    """Decimals (1 to ``most``) at which no value of ``xs`` prints the same as one of ``bounds``: an L0 just
    outside a range should not print as its end (4.074 beside a range starting at 4.083 reads 4.07, not 4.1)."""
    for d in range(1, most):
        if not {f"{x:.{d}f}" for x in xs} & {f"{b:.{d}f}" for b in bounds}:
            return d
    return most


def _mcs_at_equal_l0(std, ali) -> tuple[str, dict]:
    """Claim (d)'s second reading for penalty architectures: the standard MCS interpolated at each aligned
    group's mean L0 (:func:`_at_standard_l0`). Returns (text, values) with values ``points`` (``l0``,
    ``aligned``, ``standard``), ``higher`` (points where aligned MCS is above), ``outside`` (aligned L0 not
    compared). Not part of the verdict."""
    eq = _at_standard_l0(std, ali, MCS)
    values = dict(points=[dict(l0=a.x, aligned=a.y, standard=s) for a, s, _ in eq.compared],
                  higher=sum(a.y > s for a, s, _ in eq.compared), outside=eq.outside)
    if eq.lo is None:
        return f"at equal L0: not compared ({eq.n_standard} standard L0 value(s), need 2 to interpolate)", values
    parts = [f"L0 {a.x:.1f}: {a.y:.3f} vs {s:.3f} (interpolated)" for a, s, _ in eq.compared]
    if eq.outside:
        d = _separating_digits(eq.outside, (eq.lo, eq.hi))
        parts.append(f"aligned L0 {', '.join(f'{x:.{d}f}' for x in eq.outside)} outside the standard L0 range "
                     f"[{eq.lo:.{d}f}, {eq.hi:.{d}f}], not compared")
    if eq.compared:
        parts.append(f"aligned higher at {values['higher']}/{len(eq.compared)}")
    return "at equal L0: " + "; ".join(parts), values


def _claim_d(std, ali, arch):
    std, ali = [r for r in std if r.get("stability")], [r for r in ali if r.get("stability")]
    pairs = _pairs(std, ali, MCS)
    if not pairs:
        return INSUFFICIENT, "no sparsity setting with stability.mcs for both standard and aligned", {}
    higher = sum(a.y > s.y for _, a, s in pairs)
    runs = sorted({r["stability"].get("n_runs") for r in std + ali} - {None})
    ma, sa, n = mean_std(a.y for _, a, _ in pairs)
    ms, ss, _ = mean_std(s.y for _, _, s in pairs)
    parts = "; ".join(f"{_sp(ali)} {v:g}: {a.y:.3f} vs {s.y:.3f}" for v, a, s in pairs)
    measured = (f"MCS aligned vs standard ({'/'.join(map(str, runs))} seeds), aligned higher at "
                f"{higher}/{len(pairs)}: " + parts
                + (f"; mean over settings {fmt_ms(ma, sa, n)} vs {fmt_ms(ms, ss, n)}" if n > 1 else ""))
    values = dict(points=[dict(sparsity=v, aligned=a.y, standard=s.y) for v, a, s in pairs], higher=higher)
    if not _fixes_l0(arch):  # a penalty sets L0 only indirectly: read the standard curve at the aligned L0 too
        text, values["equal_l0"] = _mcs_at_equal_l0(std, ali)
        measured += "; " + text
    return SUPPORTED if higher == len(pairs) else NOT_SUPPORTED, measured, values


def _claim_e(found: dict):
    verdicts = {c: v[0] for c, v in found.items()}
    if NOT_SUPPORTED in verdicts.values():
        verdict = NOT_SUPPORTED
    elif INSUFFICIENT in verdicts.values():
        verdict = INSUFFICIENT
    else:
        verdict = SUPPORTED
    return verdict, "; ".join(f"({c}) {v}" for c, v in verdicts.items()), verdicts


#: the first line of the claims output when records of scale smoke are among those checked
SMOKE_LINE = (f"{SMOKE_NOTE}; the rows below give no verdicts (train with --scale small or paper for evidence "
              f"about the method)")


def shown_verdict(row: dict, bold: bool = False) -> str:
    """The verdict cell of a claims row: the verdict (in ``**bold**`` with ``bold``), or for a smoke row
    ``smoke: no verdict (reads <verdict>)``, never bold."""
    if row.get("smoke"):
        return f"smoke: no verdict (reads {row['verdict']})"
    return f"**{row['verdict']}**" if bold else row["verdict"]


def _setting(row: dict, with_steps: bool) -> str:
    """The setting label, with the setting's steps when ``with_steps`` (rows of different budgets)."""
    steps = (row.get("budget") or {}).get("steps")
    return row["setting"] + (f" · {steps} steps" if with_steps and steps else "")


def _mixed_steps(rows: list[dict]) -> bool:
    """Whether the rows' records were trained for different numbers of steps."""
    return len({(r.get("budget") or {}).get("steps") for r in rows}) > 1


def format_claims(rows: list[dict], fmt: str = "markdown") -> str:
    """The claims table as a markdown table (``fmt="markdown"``) or plain text lines (``fmt="text"``).

    Verdicts of smoke rows (``row["smoke"]``) are printed as no verdict and never in bold (:func:`shown_verdict`);
    when the rows' records differ in steps (``row["budget"]["steps"]``), each setting names its steps.

    Raises:
        ValueError: unknown ``fmt``.
    """
    steps = _mixed_steps(rows)
    if fmt == "markdown":
        lines = ["| claim | setting | measured | verdict |", "|---|---|---|---|"]
        lines += [f"| ({r['claim']}) {r['statement']} | {_setting(r, steps)} | {r['measured'].replace('|', '/')} | "
                  f"{shown_verdict(r, bold=True)} |" for r in rows]
        return "\n".join(lines)
    if fmt == "text":
        out, last = [], None
        for r in rows:
            if r["claim"] != last:
                out.append(f"({r['claim']}) {r['statement']}")
                last = r["claim"]
            out.append(f"  [{shown_verdict(r)}] {_setting(r, steps)}: {r['measured']}")
        return "\n".join(out)
    raise ValueError(f"unknown format {fmt!r}; choose 'markdown' or 'text'")


def step_points_line(left_out: list[dict]) -> Optional[str]:
    """The header line saying that the records ``left_out`` (step points before their run's end:
    :func:`at_full_budget`) are not checked and where they are read, e.g. ``left out: 18 records evaluated at step
    points before their run's end (experiment budget, steps 2,500-25,000): ...``; None when there are none."""
    if not left_out:
        return None
    experiments = ", ".join(sorted({str(r.get("experiment")) for r in left_out}))
    return (f"left out: {len(left_out)} records evaluated at step points before their run's end (experiment "
            f"{experiments}, steps {budget_summary(left_out)['steps']}): each dictionary is checked at its full "
            f"training budget; `python -m figures budget` reads the step points")


def claims_header(records: list[dict]) -> list[str]:
    """The lines printed above the claims table: :data:`SMOKE_LINE` first when some record checked is of scale
    smoke (with how many when not all are), then the caption ``records: N · <budget line>`` (N: all records; the
    budget line of those checked: scale, model, recipe, steps, batch size, training tokens with unique tokens and
    epochs; ranges when budgets are mixed: :func:`~figures.training_budget.budget_line`), saying how many records were
    copies counted once, and, when some were left out as step points before their run's end,
    :func:`step_points_line`."""
    kept, left_out = at_full_budget(records)
    lines = []
    smoke = sum(r.get("scale") == "smoke" for r in kept)
    if smoke:
        lines.append(SMOKE_LINE + ("" if smoke == len(kept) else f" ({smoke} of {len(kept)} records are smoke)"))
    copies = distinct_measurements(kept)[1]
    note = f" ({copies} of them the same dictionaries as others, recorded under two experiments, counted once)" \
        if copies else ""
    lines.append(f"records: {len(records)}{note} · {budget_line(kept)}")
    lines += [step_points_line(left_out)] if left_out else []
    return lines


def summary_counts(rows: list[dict]) -> dict[str, int]:
    """How many rows have each verdict (smoke rows included: they have a verdict, only not a shown one)."""
    out = {SUPPORTED: 0, NOT_SUPPORTED: 0, INSUFFICIENT: 0}
    for r in rows:
        out[r["verdict"]] += 1
    return out


def summary_line(rows: list[dict], n_records: int, left_out: int = 0) -> str:
    """The last line of the claims output: how many rows have each verdict and how many records were read (and,
    ``left_out``, how many of them were step points before their run's end, not checked); smoke rows are counted
    apart as no verdicts."""
    real = [r for r in rows if not r.get("smoke")]
    smoke = [r for r in rows if r.get("smoke")]
    parts = [", ".join(f"{n} {v}" for v, n in summary_counts(real).items())] if real else []
    if smoke:
        parts.append(f"{len(smoke)} smoke rows without verdicts (they read "
                     + ", ".join(f"{n} {v}" for v, n in summary_counts(smoke).items()) + ")")
    left = f", {left_out} of them step points before their run's end, left out" if left_out else ""
    return "; ".join(parts) + f" ({n_records} records{left})"


def claims_report(records: list[dict], *, aligned: str = "project", fmt: str = "markdown") -> str:
    """What ``python -m figures claims`` prints: :func:`claims_header`, a blank line, the table
    (:func:`format_claims`; records at step points before their run's end left out), a blank line and
    :func:`summary_line`.

    Raises:
        ValueError: unknown ``fmt``.
    """
    rows = claims_table(records, aligned=aligned)
    left_out = len(at_full_budget(records)[1])
    return "\n".join([*claims_header(records), "", format_claims(rows, fmt), "",
                      summary_line(rows, len(records), left_out)])


__all__ = ["claims_table", "at_full_budget", "format_claims", "claims_header", "claims_report", "summary_line",
           "summary_counts", "step_points_line", "shown_verdict", "SMOKE_LINE", "CLAIMS", "BC_THRESHOLD",
           "SUPPORTED", "NOT_SUPPORTED", "INSUFFICIENT"]
