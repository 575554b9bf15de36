"""Verdicts against the training budget (issue 16 item 3, beyond the paper): the ``budget`` experiment trains
standard and aligned (``project``) dictionaries of ReLU and TopK once for the full budget and records each run at
several step points from its checkpoints (records with ``steps`` and ``checkpoint_of``, the group's cross-seed MCS
at that step). A point is the run's dictionary after that many steps, under the full run's learning-rate schedule
(the ``saebench`` recipe decays over the last 20% of the run): not a separate shorter run.

``python -m figures budget --results DIR [--out DIR] [--reference STORE]`` prints :func:`budget_report` (the claims
that :mod:`figures.claims` checks, one column per step point) and draws :func:`budget_figure` (``budget.pdf`` /
``.png``: L0, FVE, CE loss recovered, dead fraction and MCS against steps, one line per method and architecture;
L0 first because a penalty architecture's early points are not yet sparse: ReLU's L1 penalty ramps up over its
``sparsity_warmup_steps``, so FVE and CE loss recovered at 2,500 steps are those of a denser dictionary).
``--reference`` adds the matching records of the ``main`` experiment of another store (e.g. the 2,442-step
``results/reproduce_small``, batch 8192) as one more point, labelled as another recipe.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Optional

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator

from .averages import mean_std
from .labels import ARCH_LABEL
from .records import L0, alignment_key, archs_in, field_getter, grid_gaps, primary_model
from .training_budget import budget_line, fmt_tokens, record_budget
from .claims import CLAIMS, SMOKE_LINE, claims_table, shown_verdict
from .compare import key_numbers
from .paper import (CE, DEAD, FRACTION_SPAN, FVE, Drawn, FigureResult, Missing, _fraction_axis, _panels,
                    legend_handles, mode_style, save_drawn)

EXPERIMENT = "budget"
#: (panel title, getter) of the figure
PANELS = (("L0", L0), ("FVE", FVE), ("CE loss recovered", CE), ("dead fraction", DEAD),
          ("MCS (cross-seed)", field_getter("stability", "mcs")))
#: the L0 panel's y axis is logarithmic when its largest drawn value is more than this many times its smallest
L0_LOG_RATIO = 4.0
ARCH_LINE = {"relu": ("-", "o"), "topk": ("--", "s")}
#: the experiment of a reference store whose records give the other recipe's point
REFERENCE_EXPERIMENT = "main"
NOTE = ("step points are checkpoints of one run per dictionary, under the full run's learning-rate schedule, not "
        "separate shorter runs")


def _steps(record: dict) -> Optional[int]:
    """A record's steps (recorded, or derived for old records: :func:`~figures.training_budget.record_budget`)."""
    return record_budget(record)["steps"]


def budget_records(records: list[dict], aligned: str = "project", experiment: str = EXPERIMENT) -> list[dict]:
    """The standard and ``aligned`` records of ``experiment`` (of its most common model) that have steps.

    Raises:
        ValueError: none (the message says how to make them).
    """
    recs = [r for r in records if r.get("experiment") == experiment and r["alignment"] in (None, aligned)
            and _steps(r) is not None]
    if not recs:
        raise ValueError(f"no standard/{aligned} records of experiment {experiment!r} with steps; run `python -m "
                         f"dictionary_learning_aligned reproduce {experiment} --scale smoke|small|paper --results "
                         f"DIR` first")
    model = primary_model(recs)
    return [r for r in recs if r.get("model") == model]


def matching_reference(reference: list[dict], recs: list[dict], aligned: str = "project",
                       experiment: str = REFERENCE_EXPERIMENT) -> list[dict]:
    """The records of ``experiment`` in another store (``reference``; default ``main``: one experiment, so that
    the reference is one budget, not e.g. ``main`` mixed with ``long``) with the model, architecture, dict_size,
    sparsity and alignment (standard or ``aligned``) of some budget record of ``recs``: the other recipe's point
    of each line."""
    want = {(r.get("model"), r["arch"], r["dict_size"], r["sparsity"]["name"], float(r["sparsity"]["value"]))
            for r in recs}
    return [r for r in reference if r.get("experiment") == experiment and r["alignment"] in (None, aligned) and (
        r.get("model"), r["arch"], r["dict_size"], r["sparsity"]["name"], float(r["sparsity"]["value"])) in want]


def _gaps(records: list[dict], aligned: str, experiment: str) -> Optional[str]:
    """The standard and ``aligned`` entries (and step points) of ``experiment``'s grid without records, in one line
    (:func:`~figures.records.grid_gaps`), None when none is missing."""
    return grid_gaps(records, experiment, modes=("standard", alignment_key({"alignment": aligned})))


def _reference_label(refs: list[dict]) -> str:
    """``2,442 steps, batch 8,192 (recipe unrecorded)``: the other recipe's budget, from its records."""
    b = [record_budget(r) for r in refs]
    steps = "/".join(f"{s:,}" for s in sorted({x["steps"] for x in b if x["steps"]}))
    batch = "/".join(f"{s:,}" for s in sorted({x["batch_size"] for x in b if x["batch_size"]}))
    return f"{steps} steps, batch {batch} (recipe {'/'.join(sorted({x['recipe'] for x in b}))})"


def _lines(ax, recs: list[dict], get, refs: list[dict]) -> list[float]:
    """One line per (architecture, method) of ``get`` against steps (mean over seeds, std error bars); the
    reference records as hollow markers at their steps. Returns the means drawn (one per point)."""
    drawn = []
    for arch in archs_in(recs + refs):
        for al in (None, next((r["alignment"] for r in recs if r["alignment"]), "project")):
            color, _, method = mode_style(al)
            ls, marker = ARCH_LINE.get(arch, (":", "^"))
            pts = defaultdict(list)
            for r in recs:
                if r["arch"] == arch and r["alignment"] == al and get(r) is not None:
                    pts[_steps(r)].append(get(r))
            if pts:
                xs = sorted(pts)
                stats = [mean_std(pts[x]) for x in xs]
                ax.errorbar(xs, [m for m, _, _ in stats], yerr=[s for _, s, _ in stats], color=color, ls=ls,
                            marker=marker, label=f"{ARCH_LABEL.get(arch, arch)} {method}")
                drawn += [m for m, _, _ in stats]
            ref = [(_steps(r), get(r)) for r in refs if r["arch"] == arch and r["alignment"] == al
                   and get(r) is not None and _steps(r)]
            for x in sorted({x for x, _ in ref}):
                m, s, _ = mean_std([v for xx, v in ref if xx == x])
                ax.errorbar([x], [m], yerr=[s], color=color, marker=marker, mfc="white", ls="none",
                            label=f"{ARCH_LABEL.get(arch, arch)} {method}, other recipe")
                drawn.append(m)
    return drawn


def _log_if_wide(ax, values: list[float], ratio: float = L0_LOG_RATIO) -> bool:
    """Make ``ax``'s y axis logarithmic, ticks at 1, 2 and 5 times powers of ten printed as plain numbers, when the
    finite ``values`` are all positive and span more than ``ratio`` times (largest / smallest); a value of 0 or
    below keeps the axis linear (a log axis would not show its point). Returns whether it did."""
    shown = [v for v in values if math.isfinite(v)]
    if not shown or min(shown) <= 0 or max(shown) <= ratio * min(shown):
        return False
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def _legend_right(axes) -> None:
    """One legend for all panels, right of the last one, outside it: the L0 line of a penalty architecture falls
    across its whole panel, so a legend inside the first panel covered it."""
    handles = legend_handles(axes)[0]
    axes[-1].legend(list(handles.values()), list(handles), loc="upper left", bbox_to_anchor=(1.02, 1))


def draw_budget(records: list[dict], reference: Optional[list[dict]] = None, aligned: str = "project",
                experiment: str = EXPERIMENT) -> Drawn:
    """Five panels in one row against steps (log axis): L0 (log y axis when it spans more than
    :data:`L0_LOG_RATIO` times: ReLU's early points, still in the L1 penalty's warmup, are several times denser than
    its end, which FVE and CE loss recovered alone do not show), FVE, CE loss recovered, dead fraction (axis spanning
    at least :data:`~figures.paper.FRACTION_SPAN`) and the group's MCS; solid lines ReLU, dashed TopK, colours
    standard / aligned; ``reference`` records (another store) matching a budget line drawn as hollow markers.

    Raises:
        Missing: no budget records, or none with any of the metrics.
    """
    try:
        recs = budget_records(records, aligned, experiment)
    except ValueError as e:
        raise Missing(str(e)) from None
    refs = matching_reference(reference or [], recs, aligned)
    fig, axes = _panels(len(PANELS), 1, w=2.5, h=2.7)
    n, log_l0 = 0, False
    ticks = sorted({_steps(r) for r in recs})  # the reference's steps are named in the legend and caption
    for ax, (title, get) in zip(axes.flat, PANELS):
        drawn = _lines(ax, recs, get, refs)
        n += len(drawn)
        ax.set(title=title, xlabel="steps (log scale)", ylabel=title, xscale="log")
        ax.set_xticks(ticks, [fmt_tokens(t) for t in ticks], rotation=45 if len(ticks) > 4 else 0)
        ax.xaxis.set_minor_locator(NullLocator())
        if get is DEAD:
            _fraction_axis(ax)
        if get is L0 and _log_if_wide(ax, drawn):
            log_l0 = True
            ax.set_ylabel("L0 (log scale)")
    if not n:
        raise Missing(f"the {experiment!r} records have none of {', '.join(t for t, _ in PANELS)}")
    _legend_right(axes.flat)
    gaps = _gaps(records, aligned, experiment)
    note = (f"{gaps}; " if gaps else "") + (f"{NOTE}; mean over seeds, error bars: std; "
                                            + (f"L0 axis logarithmic (values span more than {L0_LOG_RATIO:g}x); "
                                               if log_l0 else "")
                                            + f"dead-fraction axis spans at least {FRACTION_SPAN:.0%}")
    if refs:
        note += f"; hollow markers: the matching records of another store, {_reference_label(refs)}"
    return Drawn(fig, recs, note)


def budget_figure(records: list[dict], out, reference: Optional[list[dict]] = None, aligned: str = "project",
                  experiment: str = EXPERIMENT) -> FigureResult:
    """Draw :func:`draw_budget` with its title, model and budget line into ``out/budget.pdf`` and ``.png``; a
    :class:`~figures.paper.FigureResult` without paths and with the reason when the records lack the data."""
    title = "verdicts against training length: metrics at checkpoints of one run (not a figure of the paper)"
    return save_drawn(lambda: draw_budget(records, reference, aligned, experiment), experiment, title, out)


def _by_setting(rows: list[dict]) -> dict:
    """Claims rows keyed by (claim, arch, dict_size)."""
    return {(r["claim"], r["arch"], r["dict_size"]): r for r in rows}


def claims_by_budget(records: list[dict], reference: Optional[list[dict]] = None, aligned: str = "project",
                     experiment: str = EXPERIMENT) -> tuple[list[str], dict]:
    """The claims of :func:`figures.claims_table` at every step point of the budget records, and of the matching
    reference records.

    Returns:
        ``(columns, cells)``: column names (``"2,500 steps"``, ..., and the reference's
        ``"2,442 steps, batch 8,192 (recipe ...)"``), and ``{(claim, arch, dict_size): {column: claims row}}``.

    Raises:
        ValueError: no budget records (:func:`budget_records`).
    """
    recs = budget_records(records, aligned, experiment)
    columns, cells = [], defaultdict(dict)
    for steps in sorted({_steps(r) for r in recs}):
        col = f"{steps:,} steps"
        columns.append(col)
        at_point = [r for r in recs if _steps(r) == steps]
        for key, row in _by_setting(claims_table(at_point, aligned=aligned, step_points=True)).items():
            cells[key][col] = row
    refs = matching_reference(reference or [], recs, aligned)
    if refs:
        col = _reference_label(refs)
        columns.append(col)
        for key, row in _by_setting(claims_table(refs, aligned=aligned)).items():
            cells[key][col] = row
    return columns, dict(cells)


def budget_report(records: list[dict], reference: Optional[list[dict]] = None, aligned: str = "project",
                  experiment: str = EXPERIMENT, fmt: str = "markdown") -> str:
    """The claims-versus-budget table: one row per claim and setting (architecture, dict_size), one column per step
    point (and the reference's budget), each cell the verdict (:func:`~figures.claims.shown_verdict`: none for
    smoke records) and its key numbers (:func:`~figures.compare.key_numbers`). Above it the smoke warning when
    needed (:data:`~figures.claims.SMOKE_LINE`), ``records: N · <budget line>`` of the budget records (and of the
    reference's), and what a step point is; below it the claims' statements.

    Raises:
        ValueError: no budget records, or an unknown ``fmt`` (``"markdown"`` or ``"text"``).
    """
    if fmt not in ("markdown", "text"):
        raise ValueError(f"unknown format {fmt!r}; choose 'markdown' or 'text'")
    recs = budget_records(records, aligned, experiment)
    refs = matching_reference(reference or [], recs, aligned)
    columns, cells = claims_by_budget(records, reference, aligned, experiment)
    lines = [SMOKE_LINE] if any(r.get("scale") == "smoke" for r in recs + refs) else []
    lines.append(f"records: {len(recs)} · {budget_line(recs)}")
    gaps = _gaps(records, aligned, experiment)
    lines += [gaps] if gaps else []
    if refs:
        lines.append(f"reference (another store, another recipe): {len(refs)} records · {budget_line(refs)}")
    lines += [f"{NOTE}; cells: verdict: key numbers", ""]
    order = sorted(cells, key=lambda k: (list(CLAIMS).index(k[0]), k[1] != "relu", k[1], k[2]))
    if fmt == "markdown":
        lines += ["| claim | setting | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    for key in order:
        setting = f"{ARCH_LABEL.get(key[1], key[1])} · d={key[2]}"
        vals = [f"{shown_verdict(r, bold=fmt == 'markdown')}: {key_numbers(r)}" if r else "—"
                for r in (cells[key].get(c) for c in columns)]
        if fmt == "markdown":
            lines.append(f"| ({key[0]}) | {setting} | " + " | ".join(v.replace("|", "/") for v in vals) + " |")
        else:
            lines.append(f"({key[0]}) {setting}: " + " | ".join(f"{c}: {v}" for c, v in zip(columns, vals)))
    lines += ["", *(f"({c}) {s}" for c, s in CLAIMS.items())]
    return "\n".join(lines)


__all__ = ["budget_records", "matching_reference", "draw_budget", "budget_figure", "claims_by_budget",
           "budget_report", "PANELS"]
