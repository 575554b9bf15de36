"""Two claims tables side by side: the verdict, key numbers and training budget of each claim and setting in two
results stores (e.g. the faithful-budget store next to the 2,442-step one), for a note that says what changed.

``python -m figures claims --results STORE_A --compare STORE_B`` prints :func:`compare_claims`.
"""

from __future__ import annotations

from .records import alignment_key
from .training_budget import budget_line
from .claims import (CLAIMS, INSUFFICIENT, NOT_SUPPORTED, SUPPORTED, SMOKE_LINE, at_full_budget, claims_table,
                     shown_verdict, step_points_line)

_SHORT = {SUPPORTED: "yes", NOT_SUPPORTED: "no", INSUFFICIENT: "n/a"}


def _pct(x) -> str:
    return f"{100 * x:.1f}%"


def key_numbers(row: dict) -> str:
    """The few numbers a claims row's verdict rests on, from its ``values`` (see :func:`figures.claims_table`):

    * (a) mean Sarle's coefficient of the standard records and how many are above 5/9 (and the mean over the
      features that fired, where the records hold it);
    * (b) the largest aligned dead fraction over the sparsity settings (percent), and the standard one;
    * (c) the range of aligned minus standard CE loss recovered and at how many points aligned is lower beyond the
      seed spread; without points, why none was compared (one standard sparsity gives no curve to read at the aligned
      L0, or the aligned L0 lie outside the standard range);
    * (d) mean MCS aligned vs standard over the sparsity settings and at how many aligned is higher;
    * (e) the verdicts of (b), (c), (d) as yes / no / n/a.

    Returns ``"—"`` when the row has no numbers and no reason for their absence (insufficient data)."""
    v, c = row.get("values") or {}, row["claim"]
    if c == "a" and v:
        fired = f"; fired only {v['alive_mean']:.2f}" if v.get("alive_n") else ""
        return f"BC {v['mean']:.2f}, {v['above']}/{v['n']} > 5/9{fired}"
    if c == "b" and v.get("points"):
        ali = max(p["aligned"] for p in v["points"])
        std = [p["standard"] for p in v["points"] if p.get("standard") is not None]
        return f"aligned dead ≤ {_pct(ali)}" + (f" (standard ≤ {_pct(max(std))})" if std else "")
    if c == "c" and v.get("points"):
        d = [p["diff"] for p in v["points"]]
        span = f"{min(d):+.3f}" if len(d) == 1 else f"{min(d):+.3f} to {max(d):+.3f}"
        return f"Δ CE {span}, lower at {v['lower']}/{len(d)}"
    if c == "c" and "n_standard" in v:  # too few standard groups to interpolate at the aligned L0
        if v["n_standard"] == 0:
            return "no standard L0 with CE loss recovered"
        if v["n_standard"] == 1:
            return "one standard sparsity; equal L0 needs a standard curve (2+ sparsities)"
        return f"{v['n_standard']} standard sparsities at one L0; equal L0 needs a standard curve (2+ L0 values)"
    if c == "c" and v.get("outside"):
        return f"aligned L0 outside the standard range [{v['lo']:.1f}, {v['hi']:.1f}], not extrapolated"
    if c == "d" and v.get("points"):
        n = len(v["points"])
        a, s = (sum(p[k] for p in v["points"]) / n for k in ("aligned", "standard"))
        return f"MCS {a:.3f} vs {s:.3f}, higher at {v['higher']}/{n}"
    if c == "e" and v:
        return ", ".join(f"{k} {_SHORT.get(x, x)}" for k, x in v.items())
    return "—"


def _keyed(rows: list[dict]) -> dict:
    """Rows by (claim, experiment, arch, dict_size, step point), with the model added where a store has several
    models for one such key."""
    count: dict = {}
    key = lambda r: (r["claim"], r["experiment"], r["arch"], r["dict_size"], r.get("point"))  # noqa: E731
    for r in rows:
        count[key(r)] = count.get(key(r), 0) + 1
    return {key(r) + ((r["model"],) if count[key(r)] > 1 else ()): r for r in rows}


def _absent(records: list[dict], key: tuple, aligned: str) -> str:
    """Why a store has no claims row for ``key`` (see :func:`_keyed`): "not in this store", or, when it holds
    records of that experiment, architecture and dict_size of other alignments only (e.g. the tied dictionaries of
    ``tying``, whose standard and aligned ones a faithful store keeps under ``main``), which alignments those are."""
    _, exp, arch, size = key[:4]
    others = sorted({alignment_key(r) for r in records
                     if (r.get("experiment"), r["arch"], r["dict_size"]) == (exp, arch, size)
                     and r["alignment"] not in (None, aligned)})
    if not others:
        return "not in this store"
    return f"only {', '.join(others)} records here, no standard/{aligned} pair"


def _cell(row, bold: bool, absent: str = "not in this store") -> tuple[str, str]:
    """(verdict, ``[steps] key numbers``) of one store's row, or a dash and ``absent`` (why the store has no such
    row) when it lacks the setting."""
    if row is None:
        return "—", absent
    steps = (row.get("budget") or {}).get("steps")
    return shown_verdict(row, bold=bold), (f"[{steps} steps] " if steps else "") + key_numbers(row)


def compare_claims(records_a: list[dict], records_b: list[dict], labels: tuple[str, str] = ("A", "B"), *,
                   aligned: str = "project", fmt: str = "markdown") -> str:
    """The claims tables of two stores side by side.

    Args:
        records_a, records_b: the records of the two stores.
        labels: their names in the output (e.g. the store folders).
        aligned: the alignment mode compared with standard in both.
        fmt: ``"markdown"`` (one table: claim, setting, then verdict and ``[steps] key numbers`` per store) or
            ``"text"`` (one line per claim and setting).

    Returns:
        the text: :data:`~figures.claims.SMOKE_LINE` first when either store holds smoke records, one budget line
        per store (:func:`~figures.training_budget.budget_line` of the records checked: records at step points before
        their run's end are left out, as in :func:`~figures.claims.claims_table`, and a line per store says how many:
        :func:`~figures.claims.step_points_line`), the table (settings of either store; a setting missing
        from one reads "—" and "not in this store", or, where that store holds the setting's records of other
        alignments only, which ones), the claims' statements, and a last line counting the settings present in both
        whose verdict changed.

    Raises:
        ValueError: unknown ``fmt``.
    """
    if fmt not in ("markdown", "text"):
        raise ValueError(f"unknown format {fmt!r}; choose 'markdown' or 'text'")
    a, b = _keyed(claims_table(records_a, aligned=aligned)), _keyed(claims_table(records_b, aligned=aligned))
    order = list(a) + [k for k in b if k not in a]
    order.sort(key=lambda k: list(CLAIMS).index(k[0]))  # stable: each store's setting order within a claim
    (kept_a, left_a), (kept_b, left_b) = at_full_budget(records_a), at_full_budget(records_b)
    lines = [SMOKE_LINE] if any(r.get("scale") == "smoke" for r in kept_a + kept_b) else []
    for lab, recs, kept, left in zip(labels, (records_a, records_b), (kept_a, kept_b), (left_a, left_b)):
        lines.append(f"{lab}: {len(recs)} records · {budget_line(kept)}")
        lines += [f"{lab}: {step_points_line(left)}"] if left else []
    lines.append("")
    if fmt == "markdown":
        lines += [f"| claim | setting | {labels[0]} | {labels[0]}: [steps] key numbers | {labels[1]} | "
                  f"{labels[1]}: [steps] key numbers |", "|---|---|---|---|---|---|"]
    for k in order:
        ra, rb = a.get(k), b.get(k)
        setting = (ra or rb)["setting"]
        (va, na), (vb, nb) = (_cell(row, fmt == "markdown", _absent(recs, k, aligned) if row is None else "")
                              for row, recs in ((ra, records_a), (rb, records_b)))
        if fmt == "markdown":
            lines.append(f"| ({k[0]}) | {setting} | {va} | {na} | {vb} | {nb} |")
        else:
            lines.append(f"({k[0]}) {setting}: {labels[0]} [{va}] {na} | {labels[1]} [{vb}] {nb}")
    both = [k for k in order if k in a and k in b]
    changed = [k for k in both if a[k]["verdict"] != b[k]["verdict"]]
    lines += ["", *(f"({c}) {s}" for c, s in CLAIMS.items()), "",
              f"verdict changed in {len(changed)} of {len(both)} settings present in both stores"
              + (f"; {len(a) - len(both)} only in {labels[0]}, {len(b) - len(both)} only in {labels[1]}"
                 if len(both) < len(order) else "")]
    return "\n".join(lines)


__all__ = ["compare_claims", "key_numbers"]
