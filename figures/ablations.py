"""The referee's ablations (issue 16 item 2, not a figure of the paper): is it the constraint ``a_i = 1`` or the
parameterization that changes the dictionaries? The ``ablations`` experiment trains, per architecture (ReLU, TopK)
at one sparsity and dict_size 16384, a standard SAE and five ways of aligning it: the reparameterizations
``project`` and ``rescale`` (``a_i = 1`` exactly at every step), the ``projection`` step (``a_i = 1`` after each
optimizer step), the soft ``penalty`` ``lambda * sum_i (a_i - 1)^2`` at three coefficients, and ``tied``
(``W_enc = W_dec^T``).

``python -m figures ablations --results DIR [--out DIR]`` prints :func:`ablation_report` (the budget line of the
records, then one row per architecture and mode: FVE, L0, CE loss recovered, dead fraction, MCS, mean alignment
score, mean ± std over seeds) and draws :func:`ablation_figure` (``ablations.pdf`` / ``.png``).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from .labels import ARCH_LABEL, SPARSITY_LABEL
from .averages import mean_std
from .records import alignment_key, archs_in, field_getter, finite, grid_gaps, primary_model
from .training_budget import budget_line
from .claims import SMOKE_LINE
from .paper import DEAD, FRACTION_SPAN, Drawn, FigureResult, Missing, _panels, _span_axis, save_drawn
from .tables import _cell

EXPERIMENT = "ablations"
#: the modes in the order they are shown, with what each one is
MODE_ORDER = ("standard", "project", "rescale", "projection", "penalty", "tied")
MODE_LABEL = {
    "standard": "standard",
    "project": "project (a_i = 1, reparameterized)",
    "rescale": "rescale (a_i = 1, reparameterized)",
    "projection": "projection step (a_i = 1 after each step)",
    "penalty": "penalty λ={lam:g} (soft a_i ≈ 1)",
    "tied": "tied (W_enc = W_dec^T)",
}
#: (column title, getter, digits): the metrics of the table and the panels of the figure
METRICS = (
    ("FVE", field_getter("metrics", "frac_variance_explained"), 3),
    ("L0", field_getter("metrics", "l0"), 1),
    ("CE loss recovered", field_getter("metrics", "frac_recovered"), 3),
    ("dead fraction", DEAD, 3),
    ("MCS", field_getter("stability", "mcs"), 3),
    ("mean a_i", field_getter("alignment_scores", "mean"), 3),
)
#: (colour, marker) per architecture; :data:`OTHER_STYLE` for the others
ARCH_STYLE = {"relu": ("#1f5fa8", "o"), "topk": ("#e0621b", "s")}
OTHER_STYLE = ("#7f7f7f", "D")
#: the smallest span of the y axis of a metric of order 1 (FVE, CE loss recovered, MCS, mean a_i)
METRIC_SPAN = 0.02
#: panel title -> (smallest span of its y axis, (lower, upper) bounds of the metric) for
#: :func:`~figures.paper._span_axis`: each axis is fitted to the data (not to 0 or [0, 1]) but spans at least this
#: much, so that a 0.1% difference is not drawn as a cliff
AXIS_SPAN = {"FVE": (METRIC_SPAN, (-np.inf, 1.0)), "L0": (4.0, (0.0, np.inf)),
             "CE loss recovered": (METRIC_SPAN, (-np.inf, np.inf)), "dead fraction": (FRACTION_SPAN, (0.0, 1.0)),
             "MCS": (METRIC_SPAN, (-np.inf, 1.0)), "mean a_i": (METRIC_SPAN, (-np.inf, np.inf))}


def mode_sort_key(record: dict) -> tuple:
    """Where a record's alignment stands in :data:`MODE_ORDER` (penalties by coefficient; unknown modes last)."""
    mode = record.get("alignment") or "standard"
    return (MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER), record.get("alignment_penalty") or 0,
            mode)


def mode_label(record: dict) -> str:
    """The table label of a record's alignment (:data:`MODE_LABEL`; the penalty with its coefficient)."""
    mode = record.get("alignment") or "standard"
    if mode == "penalty":
        lam = record.get("alignment_penalty")
        return MODE_LABEL["penalty"].format(lam=lam) if lam is not None else "penalty (λ unrecorded)"
    return MODE_LABEL.get(mode, mode)


def ablation_groups(records: list[dict], experiment: str = EXPERIMENT) -> list[tuple[dict, list[dict]]]:
    """The records of ``experiment`` (of its most common model) grouped by architecture, dict_size, sparsity and
    alignment (with the penalty's coefficient), in architecture then :data:`MODE_ORDER` order: ``[(first record,
    records of its seeds)]``.

    Raises:
        ValueError: no record of ``experiment``.
    """
    recs = [r for r in records if r.get("experiment") == experiment]
    if not recs:
        raise ValueError(f"no records of experiment {experiment!r}; run `python -m dictionary_learning_aligned "
                         f"reproduce {experiment} --scale smoke|small|paper --results DIR` first")
    model = primary_model(recs)
    groups: dict[tuple, list[dict]] = {}
    for r in recs:
        if r.get("model") == model:
            groups.setdefault((r["arch"], r["dict_size"], r["sparsity"]["value"], alignment_key(r)), []).append(r)
    order = archs_in(recs)
    ranked = sorted(groups.values(), key=lambda g: (order.index(g[0]["arch"]) if g[0]["arch"] in order else 99,
                                                    g[0]["dict_size"], g[0]["sparsity"]["value"], mode_sort_key(g[0])))
    return [(g[0], g) for g in ranked]


def ablation_table(records: list[dict], experiment: str = EXPERIMENT, fmt: str = "markdown") -> str:
    """One row per architecture and alignment mode of ``experiment``: FVE, L0, CE loss recovered, dead fraction,
    MCS (cross-seed stability of the group) and mean alignment score, each the mean ± population std over seeds
    (:data:`METRICS`; the std left out when it rounds to 0, ``(n=2)`` when some seeds lack the value).

    Args:
        records: results-store records. experiment: the experiment to tabulate (default ``ablations``).
        fmt: ``"markdown"`` or ``"text"`` (tab-separated).

    Raises:
        ValueError: no record of ``experiment``, or an unknown ``fmt``.
    """
    if fmt not in ("markdown", "text"):
        raise ValueError(f"fmt must be 'markdown' or 'text', got {fmt!r}")
    head = ["SAE", "dict_size", "sparsity", "alignment", "seeds"] + [t for t, _, _ in METRICS]
    rows = []
    for r0, recs in ablation_groups(records, experiment):
        sname = r0["sparsity"]["name"]
        rows.append([ARCH_LABEL.get(r0["arch"], r0["arch"]), str(r0["dict_size"]),
                     f"{SPARSITY_LABEL.get(sname, sname)} {r0['sparsity']['value']:g}", mode_label(r0), str(len(recs))]
                    + [_cell([get(r) for r in recs], digits) for _, get, digits in METRICS])
    if fmt == "text":
        return "\n".join("\t".join(r) for r in [head] + rows)
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def ablation_report(records: list[dict], experiment: str = EXPERIMENT, fmt: str = "markdown") -> str:
    """What ``python -m figures ablations`` prints: the smoke warning first for smoke records
    (:data:`~figures.claims.SMOKE_LINE`), ``records: N · <budget line>`` (:func:`~figures.training_budget.budget_line`:
    scale, model, recipe, steps, batch size, tokens), for a store holding part of the grid the line naming what
    is missing (:func:`~figures.records.grid_gaps`), a blank line and :func:`ablation_table`.

    Raises:
        ValueError: as :func:`ablation_table`.
    """
    table = ablation_table(records, experiment, fmt)
    recs = [r for g in ablation_groups(records, experiment) for r in g[1]]
    lines = [SMOKE_LINE] if any(r.get("scale") == "smoke" for r in recs) else []
    gaps = grid_gaps(records, experiment)
    return "\n".join(lines + [f"records: {len(recs)} · {budget_line(recs)}", *([gaps] if gaps else []), "", table])


def _entry(ax, x: float, vals: list[float], arch: str) -> None:
    """One grid entry on a panel at ``x``: the mean over seeds as the architecture's marker (:data:`ARCH_STYLE`)
    with the population std as error bar (none for one seed), and each seed's value as a small dot just right of
    it."""
    color, marker = ARCH_STYLE.get(arch, OTHER_STYLE)
    m, s, n = mean_std(vals)
    ax.errorbar(x, m, yerr=s if n > 1 else None, color=color, marker=marker, ms=5, ls="none",
                label=ARCH_LABEL.get(arch, arch), zorder=3)
    ax.plot([x + 0.15] * n, vals, ".", color=color, ms=2.5, alpha=0.7, zorder=4)


def _metric_panel(ax, groups, modes: list[str], archs: list[str], get) -> int:
    """One metric's panel: per architecture (side by side around each mode's x) every mode's :func:`_entry` and a
    dashed line at its standard entry's mean, or "no data" when no record has a finite value; returns the number
    of entries drawn."""
    drawn = 0
    for j, arch in enumerate(archs):
        dx = (j - (len(archs) - 1) / 2) * 0.8 / len(archs)
        for r0, recs in groups:
            vals = [v for v in map(get, recs) if finite(v)]
            if r0["arch"] != arch or not vals:
                continue
            if alignment_key(r0) == "standard":
                ax.axhline(np.mean(vals), color=ARCH_STYLE.get(arch, OTHER_STYLE)[0], ls="--", lw=0.8, alpha=0.6,
                           zorder=1)
            _entry(ax, modes.index(alignment_key(r0)) + dx, vals, arch)
            drawn += 1
    if not drawn:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
    return drawn


def draw_ablations(records: list[dict], experiment: str = EXPERIMENT) -> Drawn:
    """One panel per metric of :data:`METRICS`: x = alignment mode (:data:`MODE_ORDER`), per architecture a marker
    (mean over seeds, std error bars, a dot per seed) side by side and a dashed line at its standard entry; each y
    axis fitted to the data, spanning at least :data:`AXIS_SPAN` (dead fraction
    :data:`~figures.paper.FRACTION_SPAN`). The caption names the grid entries without records
    (:func:`~figures.records.grid_gaps`).

    Raises:
        Missing: no record of ``experiment`` or none with any of the metrics.
    """
    try:
        groups = ablation_groups(records, experiment)
    except ValueError as e:
        raise Missing(str(e)) from None
    modes = list(dict.fromkeys(alignment_key(r0) for r0, _ in sorted(groups, key=lambda g: mode_sort_key(g[0]))))
    labels = {alignment_key(r0): mode_label(r0).split(" (")[0] for r0, _ in groups}
    archs = list(dict.fromkeys(r0["arch"] for r0, _ in groups))
    fig, axes = _panels(3, 2, w=3.4, h=2.6)
    drawn = 0
    for ax, (title, get, _) in zip(axes.flat, METRICS):
        drawn += _metric_panel(ax, groups, modes, archs, get)
        ax.set_xticks(range(len(modes)), [labels[m] for m in modes], rotation=35, ha="right")
        ax.set_xlim(-0.6, len(modes) - 0.4)
        ax.set(title=title, ylabel=title)
        ax.ticklabel_format(axis="y", useOffset=False)
        _span_axis(ax, *AXIS_SPAN.get(title, (0.0, (-np.inf, np.inf))))
    if not drawn:
        raise Missing(f"the {experiment!r} records have none of {', '.join(t for t, _, _ in METRICS)}")
    recs = [r for _, g in groups for r in g]
    gaps = grid_gaps(records, experiment)
    dashed = "dashed lines: each architecture's standard entry; " if "standard" in modes else ""
    return Drawn(fig, recs, (f"{gaps}; " if gaps else "") + "markers: mean over seeds, error bars: std, dots: seeds, "
                 f"{dashed}y axes fitted to the data (not to 0), spanning at least {METRIC_SPAN:g} "
                 f"(L0 {AXIS_SPAN['L0'][0]:g}, dead fraction {FRACTION_SPAN:.0%}); MCS: "
                 "mean max cosine of each feature to the other seeds' features")


def ablation_figure(records: list[dict], out, experiment: str = EXPERIMENT,
                    name: Optional[str] = None) -> FigureResult:
    """Draw :func:`draw_ablations` with its title, model and budget line into ``out/<name>.pdf`` and ``.png``
    (``name`` default: the experiment's name); a :class:`~figures.paper.FigureResult` without paths and with the
    reason when the records lack the data."""
    title = "the referee's ablations: the constraint a_i = 1 or the parameterization? (not a figure of the paper)"
    return save_drawn(lambda: draw_ablations(records, experiment), name or experiment, title, out)


__all__ = ["ablation_table", "ablation_report", "ablation_groups", "draw_ablations", "ablation_figure", "METRICS",
           "MODE_ORDER", "mode_label"]
