"""The results table: one row per group of a results store (records that differ only by seed), with mean ± std
over seeds of the main metrics. ``python -m figures table --results DIR [--experiment main] [--format ...]``."""

from __future__ import annotations

from typing import Iterable, Optional

from ._common import ARCH_LABEL, ARCH_ORDER, SPARSITY_LABEL, field_getter, mean_std, mode_name

#: (column title, getter, digits) of the table
COLUMNS = (
    ("L0", field_getter("metrics", "l0"), 1),
    ("FVE", field_getter("metrics", "frac_variance_explained"), 3),
    ("CE loss recovered", field_getter("metrics", "frac_recovered"), 3),
    ("alive", field_getter("metrics", "frac_alive"), 3),
    ("mean a_i", field_getter("alignment_scores", "mean"), 3),
    ("a_i < 0.5", field_getter("alignment_scores", "frac_below_0.5"), 3),
    ("MCS", field_getter("stability", "mcs"), 3),
    ("max cos > 0.7", field_getter("stability", "frac_above_0.7"), 3),
)


def _cell(values: list, digits: int) -> str:
    m, s, n = mean_std(values)
    if n == 0:
        return "n/a"
    return f"{m:.{digits}f}" if n == 1 or s < 0.5 * 10 ** -digits else f"{m:.{digits}f} ± {s:.{digits}f}"


def results_table(records: Iterable[dict], experiment: Optional[str] = None, fmt: str = "markdown") -> str:
    """Mean (± population std over seeds, omitted when it rounds to 0) of L0, FVE, CE loss recovered, alive
    fraction, alignment-score mean and fraction below 0.5, and the group's MCS / fraction of features with max
    cosine > 0.7 to the other seeds, per group (experiment, architecture, alignment, dict_size, sparsity).

    Args:
        records: results-store records (:mod:`dictionary_learning_aligned.records`).
        experiment: keep only this experiment's records.
        fmt: ``"markdown"`` or ``"text"`` (tab-separated).

    Raises:
        ValueError: an unknown ``fmt``, or no records left to show.
    """
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt must be 'markdown' or 'text', got {fmt!r}")
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if experiment is None or r["experiment"] == experiment:
            key = (r["experiment"], ARCH_ORDER.index(r["arch"]) if r["arch"] in ARCH_ORDER else 99, r["arch"],
                   r["dict_size"], r["sparsity"]["name"], r["sparsity"]["value"], mode_name(r["alignment"]))
            groups.setdefault(key, []).append(r)
    if not groups:
        raise ValueError(f"no records{f' of experiment {experiment!r}' if experiment else ''} to tabulate")
    head = ["experiment", "SAE", "dict_size", "sparsity", "seeds", "train tokens"] + [c[0] for c in COLUMNS]
    rows = []
    for (exp, _, arch, d, sname, sval, mode), recs in sorted(groups.items(), key=lambda kv: kv[0][:6] + (
            kv[0][6] != "standard", kv[0][6])):
        toks = sorted({r.get("train_tokens") for r in recs})
        rows.append([exp, f"{ARCH_LABEL.get(arch, arch)} {mode}", str(d), f"{SPARSITY_LABEL.get(sname, sname)} {sval:g}",
                     str(len(recs)), "/".join(f"{t / 1e6:g}M" for t in toks if t)]
                    + [_cell([get(r) for r in recs], digits) for _, get, digits in COLUMNS])
    if fmt == "text":
        return "\n".join("\t".join(r) for r in [head] + rows)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])
