"""One function per figure of arXiv 2605.18629, drawn from results-store records only.

Every ``figN(records, out, results=None) -> FigureResult`` writes ``out/figN.pdf`` (vector) and ``out/figN.png``
(preview, :data:`PNG_DPI` dpi) and returns the paths, or returns no paths and a ``missing`` reason when the records
lack the data (nothing is faked). ``results`` is the store folder; only figures 9 and 12 use it (SAEBench files
under ``results/saebench/``). :data:`FIGURES` maps names (``"fig1"`` ... ``"fig20"``) to :class:`FigureSpec`;
:func:`render_all` draws a selection from a store folder.

Which records a figure uses: figures 2-8, 11 and 13 the experiment ``"main"`` (its most common model, dict_size
4096 if present else the smallest); 10 experiments ``"main"`` and ``"gemma"`` (one row per model); 14
``"tying"`` (its standard and ``project`` settings from ``"main"``, at the same training budget, where ``"tying"``
has none of them: :func:`with_fallback`); 15-18 ``"sizes"`` and ``"main"`` at dict_size 16384 / 65536; 19-20
``"long"`` (with ``"main"`` runs of the same configuration as the short-run reference). A record may carry an
optional ``training_log`` (the trainer's ``log``: dicts with ``step``, optionally ``tokens``,
``frac_variance_explained``, ``l0``, ``dead_fraction_10M``); figures 19-20 then also draw the training curve.
"""

from __future__ import annotations

import functools
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.legend_handler import HandlerTuple

from .averages import aggregate, mean_std
from .labels import ARCH_LABEL, ARCH_ORDER, SPARSITY_LABEL
from .records import (L0, alignments_in, archs_in, field_getter, finite, fired_scores, load_records, pick_dict_size,
                      primary_model, select)
from .saebench_results import SAEBENCH_DIR, load_saebench, saebench_bos_caveat
from .training_budget import UNRECORDED, budget_line, budget_summary, same_budget

PNG_DPI = 110
REPRODUCE = "python -m dictionary_learning_aligned reproduce"
#: one colour, marker and label per alignment mode, the same in every figure
MODE_STYLE = {None: ("#1f5fa8", "o", "standard"), "project": ("#e0621b", "s", "aligned"),
              "tied": ("#2a9d4b", "^", "tied (W_enc = W_dec^T)"), "rescale": ("#8e44ad", "D", "aligned (rescale)"),
              "penalty": ("#8c564b", "v", "penalty"), "projection": ("#c2417e", "P", "aligned (projection step)")}
STYLE_RC = {"pdf.fonttype": 42, "font.size": 8, "axes.titlesize": 8.5, "axes.labelsize": 8, "legend.fontsize": 7,
            "xtick.labelsize": 7, "ytick.labelsize": 7, "axes.spines.top": False, "axes.spines.right": False,
            "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.5, "lines.linewidth": 1.2,
            "lines.markersize": 4.5, "errorbar.capsize": 2, "legend.frameon": False}
L0_LABEL = "L0 (active features per token)"
CE = field_getter("metrics", "frac_recovered")
FVE = field_getter("metrics", "frac_variance_explained")
ALIVE = field_getter("metrics", "frac_alive")
TOKENS = field_getter("train_tokens")


def DEAD(r):
    """Dead fraction ``1 - metrics.frac_alive`` (None when missing)."""
    a = ALIVE(r)
    return None if a is None else 1.0 - a


#: metrics that are fractions of the features; their axes span at least :data:`FRACTION_SPAN`
FRACTIONS = (ALIVE, DEAD)


def mode_style(alignment: Optional[str]) -> tuple[str, str, str]:
    """(colour, marker, label) of an alignment mode."""
    return MODE_STYLE.get(alignment, ("#7f7f7f", "x", str(alignment)))


@dataclass
class FigureResult:
    """Outcome of one figure: the written ``paths`` (PDF, PNG), or none and the ``missing`` reason."""

    name: str
    title: str
    paths: list = field(default_factory=list)
    missing: Optional[str] = None

    @property
    def written(self) -> bool:
        return bool(self.paths)

    def report(self) -> str:
        """One report line, e.g. ``fig2: written out/fig2.pdf, out/fig2.png``."""
        if self.written:
            return f"{self.name}: written {', '.join(str(p) for p in self.paths)}"
        return f"{self.name}: skipped — {self.missing}"


@dataclass(frozen=True)
class FigureSpec:
    """A registered figure: ``fn(records, out, results=None) -> FigureResult`` saves it; ``draw(records,
    results) -> Drawn`` only builds the matplotlib figure (raising :class:`Missing`), without title or caption."""

    name: str
    title: str
    needs: str
    fn: Callable
    draw: Callable


class Missing(Exception):
    """Raised inside a figure when the records lack its data; the message is the reason."""


class Drawn(NamedTuple):
    """A built figure, the records it shows (for the model line and caption) and a note for the caption."""

    fig: Figure
    records: list
    note: str = ""


FIGURES: dict[str, FigureSpec] = {}


def _register(name: str, title: str, needs: str):
    """Register a drawing function ``draw(records, results) -> Drawn`` as figure ``name``; the registered
    function saves it, adding the title, the model and the offline note."""
    def deco(draw):
        @functools.wraps(draw)
        def fig_fn(records: list[dict], out, results=None) -> FigureResult:
            return save_drawn(lambda: draw(records, results), name, title, out)
        fig_fn.__doc__ = f"Figure {name[3:]}: {title}. Needs {needs}. Returns a :class:`FigureResult`."
        FIGURES[name] = FigureSpec(name, title, needs, fig_fn, draw)
        return fig_fn
    return deco


def check_out_folder(out) -> None:
    """Refuse an output folder ``out`` that is a file (or lies under one), before anything is drawn.

    Raises:
        ValueError: naming the path.
    """
    for p in (Path(out), *Path(out).parents):
        if p.exists() and not p.is_dir():
            raise ValueError(f"--out {out} is a file" + ("" if p == Path(out) else f" under the file {p}")
                             + ", not a folder for the figures")


def _foreign(paths: list[Path]) -> Optional[Path]:
    """The first of ``paths`` that exists and was not drawn by matplotlib (no ``Matplotlib`` producer or software
    tag in it, as every figure written here and every committed one has): a file of the user's under a figure's
    name, which :func:`save_drawn` does not write over. None when there is none."""
    return next((p for p in paths if p.is_file() and b"Matplotlib" not in p.read_bytes()), None)


def save_drawn(draw: Callable[[], Drawn], name: str, title: str, out) -> FigureResult:
    """Build a figure with ``draw()`` under the figures' style, annotate it (:func:`_annotate`: title, model,
    budget line, notes) and write ``out/<name>.pdf`` (without a creation date, so that redrawing unchanged records
    changes no committed file) and ``out/<name>.png``; a :class:`Missing` raised by ``draw``, or a file of
    either name there that matplotlib did not draw (:func:`_foreign`), gives a :class:`FigureResult` with the reason
    and no paths (nothing written).

    Raises:
        ValueError: ``out`` is a file (:func:`check_out_folder`).
    """
    out = Path(out)
    check_out_folder(out)
    foreign = _foreign([out / f"{name}.pdf", out / f"{name}.png"])
    if foreign is not None:
        return FigureResult(name, title, missing=f"{foreign} exists and was not drawn by matplotlib (a file of "
                                                 f"yours?): not written over; move it or choose another --out")
    with matplotlib.rc_context(STYLE_RC):
        try:
            d = draw()
        except Missing as e:
            return FigureResult(name, title, missing=str(e))
        _annotate(d, name, title)
        out.mkdir(parents=True, exist_ok=True)
        paths = [out / f"{name}.pdf", out / f"{name}.png"]
        d.fig.savefig(paths[0], metadata={"CreationDate": None})  # no timestamp: the same records give the same bytes
        d.fig.savefig(paths[1], dpi=PNG_DPI)
    return FigureResult(name, title, paths)


def legend_handles(axes) -> tuple[dict, Optional[object]]:
    """``(handles, first)``: the labelled artists of the matplotlib ``axes``, one per label (label -> artist, the
    first seen, in order), and the first of ``axes`` holding one (None when none does); for one legend over many
    panels."""
    handles, first = {}, None
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
            first = first or ax
    return handles, first


def _annotate(d: Drawn, name: str, title: str) -> None:
    """Suptitle (figure number, title, model) and caption: the training budget of the records drawn
    (:func:`~figures.training_budget.budget_line`: scale, recipe, steps, batch size, tokens with unique tokens and
    epochs; ranges when budgets are mixed), the figure's note and the offline note. Adds one legend for the whole
    figure in its first panel with labelled artists, unless the drawing placed its own legends."""
    width = d.fig.get_figwidth()
    models, notes, parts = {}, [], []
    for r in d.records:
        m = r.get("model")
        if r.get("offline_note") and r.get("paper_model"):
            m = f"{m} (offline substitute for {r['paper_model']})"
        models.setdefault(m, None)
        if r.get("offline_note") and r["offline_note"] not in notes:
            notes.append(r["offline_note"])
    if d.records:
        parts.append(budget_line(d.records, model=False))
    if d.note:
        parts.append(d.note)
    head = f"Fig. {name[3:]}: {title}" if name[3:].isdigit() else title  # the paper's figures are numbered
    if models:
        head += "\n" + "; ".join(str(m) for m in models)
    d.fig.suptitle("\n".join(textwrap.fill(t, int(width * 12.5)) for t in head.split("\n")), fontsize=9)
    handles, first = legend_handles(d.fig.axes)  # one legend for the whole figure, in its first panel with data
    if handles and not any(ax.get_legend() for ax in d.fig.axes):
        first.legend(list(handles.values()), list(handles), loc="best")
    caption = "\n".join(textwrap.fill(t, int(width * 17)) for t in [" · ".join(parts), *notes] if t)
    if caption:
        d.fig.supxlabel(caption, fontsize=6.5, color="#444444")


#: the smallest range a fraction axis (alive or dead fraction) spans, so that a 0.1% difference is not drawn as a
#: cliff
FRACTION_SPAN = 0.05


def _fraction_axis(ax, span: float = FRACTION_SPAN) -> None:
    """Widen the y range of a panel of fractions (values in [0, 1]) to at least ``span`` (0 < span <= 1) around its
    data, kept inside [0, 1] plus a margin of 2% of ``span``, so that small differences look small; a panel whose
    data already spans ``span`` or more is left as it is (:func:`_span_axis` with bounds [0, 1])."""
    _span_axis(ax, span, (0.0, 1.0))


def _span_axis(ax, span: float, bounds: tuple[float, float] = (-np.inf, np.inf)) -> None:
    """Widen the y range of a panel to at least ``span`` (y units, > 0) around its data (``ax.dataLim``, error bars
    included), so that small differences look small: the window is centred on the data and shifted inside
    ``bounds`` (lower, upper; the values the metric can take), plus a margin of 2% of ``span``. Data beyond that
    margin (a foreign record's FVE 1.3, dead fraction -0.2) keep the centred window, so that no value is cut off;
    an error bar within it (a dead fraction's std reaching 0.0002 below 0) keeps the axis at the bound. A panel
    without data, or whose data already spans ``span`` or more, is left as it is (matplotlib's range fitted to
    the data)."""
    lo, hi = ax.dataLim.intervaly if ax.has_data() else (np.nan, np.nan)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi - lo >= span:
        return
    margin = 0.02 * span
    lo2, hi2 = (lo + hi - span) / 2, (lo + hi + span) / 2
    if hi2 > bounds[1]:
        lo2, hi2 = lo2 - (hi2 - bounds[1]), bounds[1]
    if lo2 < bounds[0]:
        lo2, hi2 = bounds[0], hi2 + (bounds[0] - lo2)
    if lo < lo2 - margin or hi > hi2 + margin:
        lo2, hi2 = (lo + hi - span) / 2, (lo + hi + span) / 2
    ax.set_ylim(lo2 - margin, hi2 + margin)


def _panels(ncols: int, nrows: int = 1, w: float = 3.0, h: float = 2.5, extra_h: float = 0.9):
    """A constrained-layout figure and a 2-D array of axes."""
    fig = Figure(figsize=(max(w * ncols, 4.2), h * nrows + extra_h), layout="constrained")
    axes = np.atleast_2d(fig.subplots(nrows, ncols, squeeze=False))
    return fig, axes


def _hint(experiment: str, archs=()) -> str:
    """`` — run `reproduce EXPERIMENT [--archs A,B] --scale ... --results DIR` ...``: how to get the missing
    records (``archs``: only those architectures, added to a store that has the experiment's others)."""
    scale = "small|paper" if experiment == "sizes" else "smoke|small|paper"
    if archs:
        return (f" — run `{REPRODUCE} {experiment} --archs {','.join(archs)} --scale {scale} --results DIR` (the "
                "store's scale and folder) to add them")
    return f" — run `{REPRODUCE} {experiment} --scale {scale} --results DIR` first"


def _scope(records, *, experiments, archs=ARCH_ORDER, dict_size="main") -> list[dict]:
    """Records of ``experiments`` and ``archs`` for the most common model at one dict_size (``"main"``: 4096 if
    present, else the smallest); raises :class:`Missing` naming what is absent and how to get it."""
    exp_txt = " or ".join(repr(e) for e in experiments)
    hint = _hint(experiments[0])
    recs = select(records, experiments=experiments)
    if not recs:
        raise Missing(f"no records of experiment {exp_txt} in the store{hint}")
    in_experiment, recs = recs, select(recs, archs=archs)
    if not recs:
        order = {a: i for i, a in enumerate(ARCH_ORDER)}
        present = sorted({r["arch"] for r in in_experiment}, key=lambda a: (order.get(a, len(order)), a))
        has = ", ".join(ARCH_LABEL.get(a, a) for a in present)
        raise Missing(f"no {'/'.join(ARCH_LABEL[a] for a in archs)} records of experiment {exp_txt} (the store's "
                      f"{exp_txt} has {has} only){_hint(experiments[0], archs)}")
    recs = select(recs, model=primary_model(recs))
    size = pick_dict_size(recs) if dict_size == "main" else dict_size
    recs = select(recs, dict_size=size)
    if not recs:
        raise Missing(f"no records with dict_size {size} of experiment {exp_txt}{hint} (scale smoke trains "
                      "dict_size 256 only)")
    return recs


def _seed_note(records) -> str:
    seeds = {r["group"]: 0 for r in records}
    for r in records:
        seeds[r["group"]] += 1
    n = sorted(set(seeds.values()))
    if max(n, default=1) == 1:
        return "one seed per point"
    return f"markers: mean over {'/'.join(map(str, n))} seeds, error bars: std over seeds"


def _xy(ax, records, y, ylabel, title, x=L0, xlabel=L0_LABEL) -> int:
    """One line per alignment mode of ``y`` against ``x`` (means over seeds, std error bars); returns the number
    of points drawn."""
    pts = aggregate(records, y, x)
    for a in alignments_in(records):
        ps = sorted((p for p in pts if p.alignment == a), key=lambda p: p.x)
        if not ps:
            continue
        color, marker, label = mode_style(a)
        several = any(p.n > 1 for p in ps)
        ax.errorbar([p.x for p in ps], [p.y for p in ps], yerr=[p.y_std for p in ps] if several else None,
                    xerr=[p.x_std for p in ps] if several else None, color=color, marker=marker, label=label)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.ticklabel_format(useOffset=False)
    if pts:  # a (near-)constant x, e.g. TopK's L0 = k: show a readable range around it
        lo, hi = min(p.x - p.x_std for p in pts), max(p.x + p.x_std for p in pts)
        mid, half = (lo + hi) / 2, max(0.05 * abs((lo + hi) / 2), 0.5)
        if hi - lo < half:
            ax.set_xlim(mid - half, mid + half)
    if not pts:
        ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
    return len(pts)


def _vs_l0(records, archs, rows, *, experiments=("main",), dict_size="main") -> Drawn:
    """Panels of metric vs L0: one column per architecture present, one row per ``(getter, label)`` of
    ``rows``."""
    recs = _scope(records, experiments=experiments, archs=archs, dict_size=dict_size)
    present = archs_in(recs, archs)
    fig, axes = _panels(len(present), len(rows))
    n = 0
    for i, (y, label) in enumerate(rows):
        for j, arch in enumerate(present):
            rs = select(recs, archs=[arch])
            n += _xy(axes[i, j], rs, y, label, f"{ARCH_LABEL[arch]}, dict_size {rs[0]['dict_size']}")
            if y in FRACTIONS:
                _fraction_axis(axes[i, j])
    if n == 0:
        raise Missing(f"the selected records have no {' / '.join(l for _, l in rows)} values")
    spans = any(y in FRACTIONS for y, _ in rows)
    return Drawn(fig, recs, _seed_note(recs) + (f"; fraction axes span at least {FRACTION_SPAN:.0%}" if spans else ""))


def _bars(ax, records, value, ylabel, title) -> int:
    """Grouped bars: x = sparsity setting, one bar per alignment mode (mean over seeds, std error bars, dots per
    seed); returns the number of bars."""
    pts = aggregate(records, value, x=lambda r: r["sparsity"]["value"])
    svals = sorted({p.sparsity for p in pts})
    modes = alignments_in(records)
    width = 0.8 / max(len(modes), 1)
    for j, a in enumerate(modes):
        color, _, label = mode_style(a)
        ps = [(i, p) for i, s in enumerate(svals) for p in pts if p.alignment == a and p.sparsity == s]
        if not ps:
            continue
        xs = [i + (j - (len(modes) - 1) / 2) * width for i, _ in ps]
        several = any(p.y_std > 0 for _, p in ps)
        ax.bar(xs, [p.y for _, p in ps], width * 0.92, yerr=[p.y_std for _, p in ps] if several else None,
               color=color, alpha=0.85, label=label, capsize=2)
        for xx, (_, p) in zip(xs, ps):
            vals = [value(r) for r in p.records]
            ax.plot([xx] * len(vals), vals, ".", color="k", ms=2.5, zorder=3)
    top = max((value(r) for p in pts for r in p.records), default=0)
    ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)  # room for the legend
    name = records[0]["sparsity"]["name"] if records else ""
    ax.set_xticks(range(len(svals)), [f"{s:g}" for s in svals])
    ax.set(title=title, xlabel=SPARSITY_LABEL.get(name, name), ylabel=ylabel)
    return len(pts)


def _bar_panels(records, rows, *, experiments=("main",)) -> Drawn:
    recs = _scope(records, experiments=experiments)
    present = archs_in(recs)
    fig, axes = _panels(len(present), len(rows), w=2.8)
    n = 0
    for i, (value, label) in enumerate(rows):
        for j, arch in enumerate(present):
            rs = select(recs, archs=[arch])
            n += _bars(axes[i, j], rs, value, label, f"{ARCH_LABEL[arch]}, dict_size {rs[0]['dict_size']}")
    if n == 0:
        raise Missing(f"the selected records have no {' / '.join(l for _, l in rows)} values")
    return Drawn(fig, recs)


# ----------------------------------------------------------------------------------------------------- figures


@_register("fig1", "the aligned constraint for one feature (schematic, not data)", "nothing (a drawing)")
def fig1(records, results):
    fig, axes = _panels(1, w=5.0, h=3.6, extra_h=0.3)
    ax = axes[0, 0]
    aligned_c, std_c, grey = MODE_STYLE["project"][0], MODE_STYLE[None][0], "#666666"
    d = np.array([1.0, 0.0])                      # decoder direction d_i (unit norm)
    v = np.array([-0.15, 0.9])                    # free parameter v_i
    e = v + (1 - v @ d) * d / (d @ d)             # aligned encoder: <e_i, d_i> = 1
    e_std = np.array([0.55, -0.6])                # a standard encoder with a_i = 0.55

    def arrow(p, q, color, ls="-", lw=1.6):
        ax.annotate("", xy=q, xytext=p, arrowprops=dict(arrowstyle="-|>", color=color, lw=lw, ls=ls,
                                                        shrinkA=0, shrinkB=0))

    ax.axvline(1.0, color=aligned_c, lw=1.2, alpha=0.6)
    ax.text(1.05, 1.16, r"$\{e : \langle e, d_i\rangle = 1\}$", color=aligned_c, fontsize=8)
    ax.plot([e_std[0]] * 2, [e_std[1], 0], ":", color=std_c, lw=0.9)
    arrow((0, 0), d, "k")
    ax.text(0.97, 0.04, r"$d_i$ (decoder)", fontsize=8.5, ha="right", va="bottom")
    arrow((0, 0), v, grey, lw=1.2)
    ax.text(v[0] - 0.04, v[1] - 0.02, r"$v_i$ (free)", color=grey, fontsize=8.5, ha="right")
    arrow(v, e, grey, ls="--", lw=0.9)
    ax.text((v[0] + e[0]) / 2, v[1] + 0.04, r"$+\,(1-\langle v_i,d_i\rangle)\,d_i/\|d_i\|^2$", color=grey,
            fontsize=7.5, ha="center", va="bottom")
    arrow((0, 0), e, aligned_c)
    ax.text(e[0] + 0.05, e[1] - 0.1, "aligned $e_i$:\n" r"$a_i = \langle e_i, d_i\rangle = 1$", color=aligned_c,
            fontsize=8.5)
    arrow((0, 0), e_std, std_c)
    ax.text(e_std[0] - 0.12, e_std[1] - 0.06, "standard $e_i$:\n" r"$a_i = \langle e_i, d_i\rangle = 0.55 < 1$",
            color=std_c, fontsize=8.5, va="top", ha="center")
    ax.plot(0, 0, "ko", ms=3)
    ax.set_aspect("equal")
    ax.set(xlim=(-0.75, 1.8), ylim=(-1.05, 1.25))
    ax.set_axis_off()
    ax.set_title(r"$e_i = v_i + (1 - \langle v_i, d_i\rangle)\, d_i / \|d_i\|^2$ always lies on the line "
                 r"$\langle e, d_i\rangle = 1$", fontsize=8)
    return Drawn(fig, [], "schematic in 2-D with a unit-norm d_i; the component of v_i orthogonal to d_i is "
                 "kept, only its component along d_i is set")


@_register("fig2", "ReLU (and p-anneal): CE loss recovered vs L0", "main records of relu/panneal with "
           "metrics.frac_recovered and metrics.l0")
def fig2(records, results):
    return _vs_l0(records, ("relu", "panneal"), [(CE, "CE loss recovered")])


@_register("fig3", "TopK and BatchTopK: CE loss recovered vs L0", "main records of topk/batchtopk with "
           "metrics.frac_recovered and metrics.l0")
def fig3(records, results):
    return _vs_l0(records, ("topk", "batchtopk"), [(CE, "CE loss recovered")])


@_register("fig4", "ReLU (and p-anneal): dead features vs L0", "main records of relu/panneal with "
           "metrics.frac_alive and metrics.l0")
def fig4(records, results):
    return _vs_l0(records, ("relu", "panneal"), [(DEAD, "dead fraction (1 - alive)")])


@_register("fig5", "TopK and BatchTopK: dead features vs L0", "main records of topk/batchtopk with "
           "metrics.frac_alive and metrics.l0")
def fig5(records, results):
    return _vs_l0(records, ("topk", "batchtopk"), [(DEAD, "dead fraction (1 - alive)")])


@_register("fig6", "cross-seed stability per architecture", "main records with stability (several seeds)")
def fig6(records, results):
    stable = [r for r in records if r.get("stability") and r.get("experiment") == "main"]
    if not stable:
        raise Missing("no records of experiment 'main' with stability (it needs several seeds per configuration)"
                      + _hint("main"))
    d = _bar_panels(stable,
                    [(field_getter("stability", "mcs"), "MCS (mean max cos)"),
                     (field_getter("stability", "frac_above_0.7"), "features with max cos > 0.7")])
    runs = sorted({r["stability"].get("n_runs") for r in d.records if r.get("stability")} - {None})
    return Drawn(d.fig, d.records, f"stability over {'/'.join(map(str, runs))} seeds per configuration "
                 "(decoder max cosine to the other seeds); dots: the records")


@_register("fig7", "fraction of variance explained vs L0", "main records with metrics.frac_variance_explained")
def fig7(records, results):
    return _vs_l0(records, ARCH_ORDER, [(FVE, "fraction of variance explained")])


@_register("fig8", "MSE and cosine similarity vs L0", "main records with metrics.mse (and metrics.cossim)")
def fig8(records, results):
    rows = [(field_getter("metrics", "mse"), "MSE per element")]
    if any(finite(field_getter("metrics", "cossim")(r)) for r in records):
        rows.append((field_getter("metrics", "cossim"), "cosine similarity (x, x̂)"))
    return _vs_l0(records, ARCH_ORDER, rows)


@_register("fig9", "spurious correlation removal (SAEBench SCR, threshold 20) vs L0",
           f"SAEBench SCR JSON files under DIR/{SAEBENCH_DIR}/ with a record_id or sae_name field")
def fig9(records, results):
    return _saebench_vs_l0(records, results, "scr", "SCR (top 20 latents)")


#: the widest alignment-score axis Fig. 10 draws; scores beyond it are counted in the caption
FIG10_MAX_RANGE = (-3.0, 5.0)


def _per_feature_scores(records) -> "np.ndarray | None":
    """Every record's ``per_feature.alignment_score`` pooled (finite values only); None when a record lacks it, or
    has no finite one while its stored histogram (``alignment_scores.n``) counts some."""
    out = []
    for r in records:
        pf = r.get("per_feature")
        scores = pf.get("alignment_score") if isinstance(pf, dict) else None
        if not isinstance(scores, list):
            return None
        kept = [float(a) for a in scores if finite(a)]
        if not kept and (r.get("alignment_scores") or {}).get("n"):
            return None
        out += kept
    return np.array(out, float)


def _fig10_edges(records) -> "np.ndarray | None":
    """Bin edges for Fig. 10 from the records' per-feature scores: the stored histograms' bin width, starting from
    their range (``alignment.HIST_RANGE``) and widened in whole bins to cover every score up to
    :data:`FIG10_MAX_RANGE`; None when some record lacks per-feature scores (then the stored histograms are drawn)."""
    scores = _per_feature_scores(records)
    if scores is None or not len(scores):
        return None
    edges = np.array(records[0]["alignment_scores"]["hist_edges"], float)
    width = edges[1] - edges[0]
    lo_target = max(min(edges[0], scores.min()), FIG10_MAX_RANGE[0])
    hi_target = min(max(edges[-1], scores.max()), FIG10_MAX_RANGE[1])
    lo = edges[0] - np.ceil(round((edges[0] - lo_target) / width, 9)) * width
    hi = edges[-1] + np.ceil(round((hi_target - edges[-1]) / width, 9)) * width
    return np.linspace(lo, hi, int(round((hi - lo) / width)) + 1)


def _fig10_counts(rs, edges) -> tuple[np.ndarray, float, int]:
    """Pooled histogram of the records ``rs`` of one panel and method: ``(counts, total, outside)`` with counts over
    ``edges`` from the per-feature scores when ``edges`` is given, else the stored ``alignment_scores`` histograms
    (their ``underflow``/``overflow`` give ``outside``)."""
    if edges is not None:
        scores = _per_feature_scores(rs)
        counts = np.histogram(scores, bins=edges)[0].astype(float)
        return counts, float(len(scores)) or 1.0, int(((scores < edges[0]) | (scores > edges[-1])).sum())
    counts = np.sum([r["alignment_scores"]["hist_counts"] for r in rs], axis=0).astype(float)
    total = sum(r["alignment_scores"].get("n", 0) for r in rs) or counts.sum()
    outside = sum(int(r["alignment_scores"].get("underflow") or 0) + int(r["alignment_scores"].get("overflow") or 0)
                  for r in rs)
    return counts, float(total), outside


@_register("fig10", "alignment-score histograms across models and architectures",
           "main/gemma records with alignment_scores.hist_counts and hist_edges")
def fig10(records, results):
    recs = [r for r in select(records, experiments=("main", "gemma"))
            if (r.get("alignment_scores") or {}).get("hist_counts")]
    if not recs:
        raise Missing("no records of experiment 'main' or 'gemma' with alignment_scores.hist_counts" + _hint("main"))
    models = sorted({r["model"] for r in recs})
    archs = archs_in(recs)
    fig, axes = _panels(len(archs), len(models), w=2.8, h=2.2)
    per_model = {m: select(recs, model=m) for m in models}
    used = [r for m, rm in per_model.items() for r in select(rm, dict_size=pick_dict_size(rm))]
    common = _fig10_edges(used)
    hidden = []
    for i, m in enumerate(models):
        rm = select(used, model=m)
        for j, arch in enumerate(archs):
            ax, ra = axes[i, j], select(rm, archs=[arch])
            ax.set(title=f"{ARCH_LABEL[arch]}" + (f", dict_size {ra[0]['dict_size']}" if ra else ""),
                   xlabel="alignment score a_i = <e_i, d_i>",
                   ylabel=f"{m.split('/')[-1]}\nfraction of features" if j == 0 else "")
            if not ra:
                ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", color="gray")
                ax.set(xticks=[], yticks=[])
                continue
            ax.set_yscale("log")
            floors = []
            for a in alignments_in(ra):
                rs = select(ra, alignments=[a])
                edges = common if common is not None else np.array(rs[0]["alignment_scores"]["hist_edges"])
                counts, total, outside = _fig10_counts(rs, common)
                color, _, label = mode_style(a)
                if outside:
                    hidden.append(f"{m.split('/')[-1]} {ARCH_LABEL[arch]} {label} {outside / total:.1%}")
                floor = min(0.3 / total, 1e-3)  # zero bins drawn at the floor of the log axis
                ax.stairs(np.where(counts > 0, counts / total, floor), edges, baseline=floor, color=color,
                          label=label, lw=1.2)
                floors.append(floor)
                dead = _never_fired_scores(rs) if a is None else None
                if dead is not None and len(dead):  # where the standard histogram's features never fired
                    d = np.histogram(dead, bins=edges)[0] / total
                    ax.stairs(np.where(d > 0, d, floor), edges, baseline=floor, color="gray", ls=":", lw=1.2,
                              label=f"{label}, never fired")
            ax.set(xlim=(edges[0], edges[-1]), ylim=(min(floors), 1.5))
    lo, hi = (common[0], common[-1]) if common is not None else (edges[0], edges[-1])
    outside_note = (f"scores outside [{lo:.3f}, {hi:.3f}] not drawn: " + "; ".join(hidden)) if hidden \
        else f"every score lies in [{lo:.3f}, {hi:.3f}]"
    return Drawn(fig, used, "histograms pooled over seeds and sparsity settings, "
                 + ("from the per-feature scores" if common is not None else "from the records' stored histograms")
                 + f"; {outside_note}; dotted gray: the standard features that never fired on the held-out tokens "
                 "(one dead from the start keeps its initial score: 0.1 for ReLU, 1 for the TopK family)")


def _never_fired_scores(records) -> "np.ndarray | None":
    """The alignment scores of the features of ``records`` that never fired on their held-out tokens
    (``per_feature.alignment_score`` where ``per_feature.fired`` is false), pooled; None when a record lacks
    those arrays."""
    out = []
    for r in records:
        found = fired_scores(r)
        if found is None:
            return None
        out += [a for a, f in zip(*found) if not f and finite(a)]
    return np.array(out, float)


@_register("fig11", "per-feature stability vs alignment score (standard SAEs)",
           "main records of standard SAEs with per_feature.max_cos_other_seeds (several seeds)")
def fig11(records, results):
    recs = [r for r in _scope(records, experiments=("main",))
            if r["alignment"] is None and (r.get("per_feature") or {}).get("max_cos_other_seeds")]
    if not recs:
        raise Missing("no standard records of experiment 'main' with per_feature.max_cos_other_seeds "
                      "(needs several seeds)")
    from scipy.stats import pearsonr
    archs = archs_in(recs)
    fig, axes = _panels(len(archs), w=2.9, h=2.7)
    for ax, arch in zip(axes[0], archs):
        xs, ys = [], []
        for r in select(recs, archs=[arch]):
            pf = r["per_feature"]
            for a, c in zip(pf["alignment_score"], pf["max_cos_other_seeds"]):
                if finite(a) and finite(c):
                    xs.append(a), ys.append(c)
        xs, ys = np.array(xs), np.array(ys)
        if len(xs) > 3000:
            ax.hexbin(xs, ys, gridsize=45, bins="log", cmap="Blues", mincnt=1)
        else:
            ax.scatter(xs, ys, s=4, alpha=0.5, color=MODE_STYLE[None][0], lw=0)
        ok = len(xs) > 2 and np.ptp(xs) > 0 and np.ptp(ys) > 0
        r_txt = f"Pearson r = {pearsonr(xs, ys)[0]:.2f}" if ok else "Pearson r undefined"
        ax.set(title=f"{ARCH_LABEL[arch]} standard\n{r_txt}, {len(xs)} features", xlabel="alignment score a_i",
               ylabel="max cos to other seeds")
    return Drawn(fig, recs, "each point a feature of a standard SAE, pooled over seeds and sparsity settings")


@_register("fig12", "autointerp score vs alignment (SAEBench)",
           f"SAEBench autointerp JSON files under DIR/{SAEBENCH_DIR}/ with a record_id or sae_name field")
def fig12(records, results):
    sb = _saebench(results, "autointerp")
    recs = [r for r in records if "autointerp" in sb.get(r["id"], {})]
    if not recs:
        raise Missing(f"SAEBench autointerp results in {results}/{SAEBENCH_DIR} match no record id")
    recs = select(recs, model=primary_model(recs))
    score = lambda r: sb[r["id"]]["autointerp"]  # noqa: E731
    fig, axes = _panels(2, w=3.7)
    size_key = lambda d: (0, d, "") if finite(d) else (1, 0, str(d))  # noqa: E731  (numbers first, in order)
    cats = sorted({(r["arch"], r["dict_size"]) for r in recs},
                  key=lambda c: (ARCH_ORDER.index(c[0]) if c[0] in ARCH_ORDER else 99, str(c[0]), size_key(c[1])))
    modes = alignments_in(recs)
    width = 0.8 / len(modes)
    legend = {}  # label -> its artists: a mode's bar and marker, a floor line
    for j, a in enumerate(modes):
        color, marker, label = mode_style(a)
        rs = select(recs, alignments=[a])
        for i, (arch, d) in enumerate(cats):
            m, s, n = mean_std(score(r) for r in select(rs, archs=[arch], dict_size=d))
            if n:
                bar = axes[0, 0].bar(i + (j - (len(modes) - 1) / 2) * width, m, width * 0.92,
                                     yerr=s if n > 1 else None, color=color, alpha=0.85)
                legend.setdefault(label, [bar.patches[0]])
        pts = [(r["alignment_scores"].get("mean"), score(r)) for r in rs]
        pts = [(x, y) for x, y in pts if finite(x)]
        dots = axes[0, 1].scatter([x for x, _ in pts], [y for _, y in pts], color=color, marker=marker, s=18)
        legend.setdefault(label, []).append(dots)
    # the floor: a judge that answers "none" for every scoring example (autointerp_chance_levels), per bar group
    # and, on the right, per dict_size (SAEBench's scoring sizes may differ between runs)
    def floor(rs):
        return mean_std(sb[r["id"]].get("autointerp_all_inactive") for r in rs)[0]

    for i, (arch, d) in enumerate(cats):
        f = floor(select(recs, archs=[arch], dict_size=d))
        if finite(f):
            line = axes[0, 0].hlines(f, i - 0.45, i + 0.45, color="0.3", ls="--", lw=1)
            legend.setdefault("judge answering 'none'", [line])
    floors = {d: floor(select(recs, dict_size=d)) for d in sorted({d for _, d in cats}, key=size_key)}
    floors = {d: f for d, f in floors.items() if finite(f)}
    if floors and max(floors.values()) - min(floors.values()) > 0.01:  # visibly different floors
        for d, f in floors.items():
            legend[f"judge answering 'none', d={d}"] = [axes[0, 1].axhline(f, color="0.3", ls="--", lw=1)]
    elif floors:
        line = axes[0, 1].axhline(float(np.mean(list(floors.values()))), color="0.3", ls="--", lw=1)
        legend.setdefault("judge answering 'none'", [line])
    axes[0, 0].set_xticks(range(len(cats)), [f"{ARCH_LABEL.get(a, a)}\n{d}" for a, d in cats])
    axes[0, 0].set(ylabel="autointerp score", title="per architecture and dict_size\n(mean ± std over SAEs)")
    axes[0, 1].set(xlabel="mean alignment score of the SAE", ylabel="autointerp score", title="per SAE")
    # one legend for both panels, right of them (inside the bar panel it covered bars): each mode's bar and marker,
    # the floor line(s)
    axes[0, 1].legend([tuple(h) for h in legend.values()], list(legend), loc="upper left", bbox_to_anchor=(1.02, 1),
                      borderaxespad=0, handler_map={tuple: HandlerTuple(ndivide=None)})
    caveat = saebench_bos_caveat(results, ["autointerp"])
    return Drawn(fig, recs, "SAEBench eval_result_metrics.autointerp.autointerp_score; dashed: the score of "
                 "answering 'none' to every example" + (f" · {caveat}" if caveat else ""))


@_register("fig13", "alive features per architecture", "main records with metrics.frac_alive")
def fig13(records, results):
    d = _bar_panels(records, [(ALIVE, "alive fraction")])
    return Drawn(d.fig, d.records, "bars: mean over seeds, error bars: std over seeds, dots: the seeds")


@_register("fig14", "weight tying vs aligned training", "records of experiment 'tying' (alignment 'tied', "
           "'project' and standard; standard and 'project' from 'main', at the same training budget, where 'tying' "
           "has none of them) with metrics.frac_recovered, frac_alive, l0")
def fig14(records, results):
    if not any(r["alignment"] == "tied" for r in select(records, experiments=("tying",))):
        raise Missing("no records with alignment 'tied' of experiment 'tying'" + _hint("tying") + " (a store "
                      "with 'main' needs only `--alignments tied`: Fig. 14 takes standard and aligned from 'main')")
    recs, source = with_fallback(records, "tying", "main", (None, "project"))
    if not any(r["alignment"] == "tied" for r in recs):  # tied records of another model or dict_size only
        tied = select(records, experiments=("tying",), alignments=["tied"])
        raise Missing(f"no records with alignment 'tied' of experiment 'tying' with model {recs[0].get('model')}, "
                      f"dict_size {recs[0]['dict_size']}, the setting of its other records that the figure draws "
                      f"(its tied records: model {', '.join(sorted({str(r.get('model')) for r in tied}))}, "
                      f"dict_size {', '.join(map(str, sorted({r['dict_size'] for r in tied})))})")
    d = _vs_l0(recs, ARCH_ORDER, [(CE, "CE loss recovered"), (ALIVE, "alive fraction")],
               experiments=("tying", "main"))
    return d._replace(note="; ".join(t for t in (source, d.note) if t))


def _modes_text(settings: list[tuple], archs: list[str]) -> str:
    """``"standard and aligned"``: the alignment modes of ``settings`` ((arch, alignment) pairs), each followed by
    its architectures (``"standard (ReLU)"``) when it is not that of all ``archs``."""
    by_mode: dict = {}
    for arch, a in settings:
        by_mode.setdefault(a, []).append(arch)
    return " and ".join(("tied" if a == "tied" else mode_style(a)[2])
                        + ("" if len(xs) == len(archs) else f" ({', '.join(ARCH_LABEL.get(x, x) for x in xs)})")
                        for a, xs in by_mode.items())


def with_fallback(records: list[dict], primary: str, fallback: str, alignments) -> tuple[list[dict], str]:
    """The records of experiment ``primary`` (:func:`_scope`: its most common model, dict_size 4096 if present,
    else its smallest) and, per architecture of them and alignment mode of ``alignments`` (None: standard) that
    ``primary`` has no record of, the records of experiment ``fallback`` of that setting with the same model and
    dict_size and the same layer and corpus (each where both records state it: the same activations, trained on
    and evaluated on), when every one of them was trained on the budget of every ``primary`` record of the
    architecture (:func:`~figures.training_budget.same_budget`: scale, recipe, steps, batch size, training
    tokens). A setting that ``primary`` has is never topped up (no run of one setting drawn twice), and one whose
    ``fallback`` records are of another budget is left out, not mixed in. (``tying``'s standard and ``project``
    dictionaries are ``main``'s training configs, so a store may train only ``tying``'s tied ones.)

    Returns:
        ``(records, note)``: ``primary``'s records, then those taken from ``fallback``; the note for the caption
        names which settings came from ``fallback``, which were left out and why, and which neither experiment
        has ("" when none).

    Raises:
        Missing: ``primary`` has no records (:func:`_scope`, naming the command that trains them).
    """
    own = _scope(records, experiments=(primary,))
    model, size, archs = own[0].get("model"), own[0]["dict_size"], archs_in(own)
    other = [r for r in select(records, experiments=(fallback,), model=model, dict_size=size)
             if all(_same_data(r, o) for o in own)]
    taken, kept, left, absent = [], [], [], []
    for arch in archs:
        ref = select(own, archs=[arch])
        for a in alignments:
            if select(ref, alignments=[a]):
                continue
            cand = select(other, archs=[arch], alignments=[a])
            if not cand:
                absent.append((arch, a))
                continue
            same = all(same_budget(c, r) for c in cand for r in ref)
            (taken if same else left).append((arch, a))
            kept += cand if same else []
    notes = []
    if taken:
        rest = [(r["arch"], r["alignment"]) for r in own]
        notes.append(f"{_modes_text(taken, archs)} from '{fallback}' (same training config; '{primary}' has none "
                     f"of them); {_modes_text(list(dict.fromkeys(rest)), archs)} from '{primary}'")
    if left:
        def budget(recs):
            b = budget_summary(recs)
            return (f"steps {b['steps'] or UNRECORDED}, recipe {', '.join(b['recipes'])}, "
                    f"{b['train_tokens'] or UNRECORDED} training tokens")
        theirs = budget([r for r in other if (r["arch"], r["alignment"]) in left])
        notes.append(f"{_modes_text(left, archs)} left out: '{primary}' has none and '{fallback}''s are of another "
                     f"training budget ({theirs}; '{primary}''s: {budget(own)})")
    if absent:
        notes.append(f"no {_modes_text(absent, archs)}: neither '{primary}' nor '{fallback}' has records of them "
                     f"with model {model}, dict_size {size} (and the same layer and corpus)")
    return own + kept, "; ".join(notes)


def _same_data(a: dict, b: dict) -> bool:
    """Whether records ``a`` and ``b`` were trained and evaluated on the same activations: the same ``layer`` and
    ``corpus``, each compared only where both records state it."""
    return all(a.get(k) is None or b.get(k) is None or a.get(k) == b.get(k) for k in ("layer", "corpus"))


def _sizes(records, dict_size, y, label):
    return _vs_l0(records, ARCH_ORDER, [(y, label)], experiments=("sizes", "main"), dict_size=dict_size)


@_register("fig15", "CE loss recovered vs L0 at dict_size 16384", "sizes/main records with dict_size 16384")
def fig15(records, results):
    return _sizes(records, 16384, CE, "CE loss recovered")


@_register("fig16", "dead features vs L0 at dict_size 16384", "sizes/main records with dict_size 16384")
def fig16(records, results):
    return _sizes(records, 16384, DEAD, "dead fraction (1 - alive)")


@_register("fig17", "CE loss recovered vs L0 at dict_size 65536", "sizes/main records with dict_size 65536")
def fig17(records, results):
    return _sizes(records, 65536, CE, "CE loss recovered")


@_register("fig18", "dead features vs L0 at dict_size 65536", "sizes/main records with dict_size 65536")
def fig18(records, results):
    return _sizes(records, 65536, DEAD, "dead fraction (1 - alive)")


@_register("fig19", "long training run: reconstruction vs training tokens", "records of experiment 'long' "
           "(optional training_log for the curve)")
def fig19(records, results):
    return _long(records, [(CE, "CE loss recovered"), (FVE, "fraction of variance explained")],
                 ("frac_variance_explained", "fraction of variance explained (training batch)"))


@_register("fig20", "long training run: alive features vs training tokens", "records of experiment 'long' "
           "(optional training_log for the curve)")
def fig20(records, results):
    return _long(records, [(ALIVE, "alive fraction")], ("dead_fraction_10M", "dead fraction (trainer's window)"))


# ----------------------------------------------------------------------------------------------------- helpers


def _saebench(results, metric: str) -> dict:
    """SAEBench values of ``metric`` keyed by record id; raises :class:`Missing` when there are none."""
    if results is None:
        raise Missing("no results folder given, so no SAEBench results to read")
    sb, n_files = load_saebench(results)
    where = Path(results) / SAEBENCH_DIR
    if not any(metric in v for v in sb.values()):
        hint = (f"{n_files} JSON files there, none with {metric} and a record_id/sae_name field" if n_files
                else f"run `python -m benchmarks run --results-store {results} --evals {metric}` (it writes "
                     "SAEBench JSON with a record_id field there; SAEBench installs with `bash scripts/install.sh "
                     "--saebench`)")
        raise Missing(f"no SAEBench {metric.upper() if metric == 'scr' else metric} results in {where} — {hint}")
    return sb


def _saebench_vs_l0(records, results, metric, label) -> Drawn:
    sb = _saebench(results, metric)
    recs = [r for r in records if metric in sb.get(r["id"], {})]
    if not recs:
        raise Missing(f"SAEBench {metric} results in {results}/{SAEBENCH_DIR} match no record id")
    recs = select(recs, model=primary_model(recs))
    recs = select(recs, dict_size=pick_dict_size(recs))
    archs = archs_in(recs)
    fig, axes = _panels(len(archs))
    for ax, arch in zip(axes[0], archs):
        _xy(ax, select(recs, archs=[arch]), lambda r: sb[r["id"]][metric], label, ARCH_LABEL[arch])
    caveat = saebench_bos_caveat(results, [metric])
    return Drawn(fig, recs, _seed_note(recs) + (f" · {caveat}" if caveat else ""))


def _long(records, rows, curve) -> Drawn:
    """Final metrics of the 'long' runs (and 'main' runs of the same configuration) against training tokens,
    plus the training curve ``curve = (log key, label)`` when records carry ``training_log``."""
    long = select(records, experiments=("long",))
    if not long:
        raise Missing("no records of experiment 'long' in the store" + _hint("long"))
    long = select(long, model=primary_model(long))
    configs = {(r["arch"], r["dict_size"], r["sparsity"]["value"]) for r in long}
    ref = [r for r in select(records, experiments=("main",), model=long[0]["model"])
           if (r["arch"], r["dict_size"], r["sparsity"]["value"]) in configs]
    logged = [r for r in long if r.get("training_log")]
    fig, axes = _panels(len(rows) + bool(logged), w=3.1)
    n = 0
    for ax, (y, label) in zip(axes[0], rows):
        n += _xy(ax, long + ref, y, label, label, x=TOKENS, xlabel="training tokens")
        ax.set_xscale("log")
        if y in FRACTIONS:
            _fraction_axis(ax)
    if logged:
        ax, (key, label) = axes[0, -1], curve
        for r in logged:
            pts = [(e.get("tokens", e.get("step")), e.get(key)) for e in r["training_log"] if e.get("step") != 0]
            pts = [(x, v) for x, v in pts if finite(x) and finite(v)]
            color, _, lab = mode_style(r["alignment"])
            ax.plot(*zip(*pts), color=color, label=f"{lab} s{r['seed']}") if pts else None
        x_is_tokens = any("tokens" in e for r in logged for e in r["training_log"])
        ax.set(title="training curve", xlabel="training tokens" if x_is_tokens else "step", ylabel=label)
        if key.startswith("dead_fraction"):
            _fraction_axis(ax)
    if n == 0 and not logged:
        raise Missing(f"the 'long' records have no {' / '.join(l for _, l in rows)} values and no training_log")
    cfg = ", ".join(f"{ARCH_LABEL[a]} d={d} {v:g}" for a, d, v in sorted(configs))
    reps = sorted({(r.get("unique_tokens"), r.get("epochs")) for r in long if (r.get("epochs") or 1) > 1})
    rep = "".join(f"; the long run saw {u / 1e6:g}M distinct tokens {e} times" for u, e in reps if u)
    return Drawn(fig, long + ref, f"configuration {cfg}; shorter points: the 'main' runs of it{rep}; training "
                                  "curve from step 1 (step 0 is the initialization)")


def render_all(results, out, only=None, *, verbose_errors: bool = True) -> list[FigureResult]:
    """Draw the figures ``only`` (names, default all) from the store ``results`` into ``out``.

    A figure that raises is reported as missing with the error (and its traceback printed when
    ``verbose_errors``), so one broken figure does not stop the others.

    Raises:
        FileNotFoundError: ``results`` holds no results store.
        KeyError: an unknown figure name.
        ValueError: ``out`` is a file (:func:`check_out_folder`).
    """
    check_out_folder(out)
    records = load_records(results)
    names = list(FIGURES) if only is None else list(only)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise KeyError(f"unknown figures {unknown}; choose from {list(FIGURES)}")
    res = []
    for name in names:
        spec = FIGURES[name]
        try:
            res.append(spec.fn(records, out, results))
        except Exception as e:  # a bug in one figure must not hide the others
            if verbose_errors:
                traceback.print_exc()
            res.append(FigureResult(name, spec.title, missing=f"FAILED with {type(e).__name__}: {e}"))
    return res


FIGURE_ORDER = sorted(FIGURES, key=lambda n: int(n[3:]))
FIGURES = {n: FIGURES[n] for n in FIGURE_ORDER}
