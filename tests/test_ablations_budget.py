"""Issue 16 items 2 and 3: the ``ablations`` experiment (alignment modes with the penalty's coefficient in the grid)
and the ``budget`` experiment (one run per dictionary, recorded at step points from its checkpoints), their ids,
the ``reproduce -h`` listing, and their tables and figures on synthetic records; both end to end at smoke scale."""

import math

import numpy as np
import pytest

from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment, parse_alignment, resolve
from dictionary_learning_aligned.records import group_id, iter_records, record_id, write_record
from dictionary_learning_aligned.reproduce.recording import _gid, _rid
from dictionary_learning_aligned.reproduce import build_parser, dictionary_dir, select_runs, trainer_config
from figures import claims_table
from figures.__main__ import main as figures_main
from figures.ablations import ablation_figure, ablation_report, ablation_table
from figures.budget import budget_figure, budget_report, claims_by_budget, draw_budget
from figures.tables import results_table

from .test_figures import make_record

ABLATION_MODES = [(None, None), ("project", None), ("rescale", None), ("projection", None), ("penalty", 0.1),
                  ("penalty", 1.0), ("penalty", 10.0), ("tied", None)]


# ----------------------------------------------------------------------------------------- alignment entries
@pytest.mark.parametrize("entry, expected", [
    (None, (None, None)), ("standard", (None, None)), ("project", ("project", None)), ("tied", ("tied", None)),
    ("rescale", ("rescale", None)), ("projection", ("projection", None)), ("penalty:0.1", ("penalty", 0.1)),
    ("penalty:10", ("penalty", 10.0)), ("penalty: 1e-2", ("penalty", 0.01))])
def test_alignment_entries_are_read_as_mode_and_coefficient(entry, expected):
    assert parse_alignment(entry) == expected


@pytest.mark.parametrize("entry, message", [
    ("penalty", "needs its coefficient, e.g. 'penalty:0.1'"),
    ("penalty:", "must be a finite number > 0, got ''"),
    ("penalty:0", "must be a finite number > 0, got '0'"),
    ("penalty:-1", "must be a finite number > 0"),
    ("penalty:nan", "must be a finite number > 0"),
    ("penalty:inf", "must be a finite number > 0"),
    ("penalty:lots", "must be a finite number > 0, got 'lots'"),
    ("project:1", "only 'penalty' takes a coefficient"),
    ("tied:0.5", "only 'penalty' takes a coefficient"),
    ("projected", "unknown alignment mode 'projected'"),
    ("penalti:0.1", "unknown alignment mode 'penalti'"),
    (0.1, "must be None or a string"),
])
def test_bad_alignment_entries_are_refused_with_the_entry_named(entry, message):
    with pytest.raises(ValueError, match=re_escape(message)) as e:
        parse_alignment(entry)
    assert repr(entry) in str(e.value)
    with pytest.raises(ValueError, match=re_escape(message)):  # refused when the grid is defined, not at run time
        Experiment("bad", figures=(), alignments=(None, entry))


def re_escape(text: str) -> str:
    import re

    return re.escape(text)


def test_repeated_entries_and_bad_eval_steps_are_refused():
    with pytest.raises(ValueError, match="repeated"):
        Experiment("bad", figures=(), alignments=(None, "penalty:1", "penalty:1.0"))
    for bad in ((0,), (2.5,), (True,)):
        with pytest.raises(ValueError, match="eval_steps"):
            Experiment("bad", figures=(), eval_steps={"small": bad})


# ------------------------------------------------------------------------------------------------ the grids
def test_ablations_grid_carries_each_mode_with_its_coefficient():
    plan = resolve("ablations", "small")
    assert len(plan.runs) == 2 * 8 * 3 and {r.dict_size for r in plan.runs} == {16384}
    assert {(r.arch, r.sparsity_value) for r in plan.runs} == {("relu", 0.04), ("topk", 64)}
    assert sorted({(r.alignment, r.alignment_penalty) for r in plan.runs}, key=str) == sorted(ABLATION_MODES, key=str)
    assert len({_rid(r) for r in plan.runs}) == 48 and len({_gid(r) for r in plan.runs}) == 16
    ids = {_gid(r) for r in plan.runs if r.arch == "relu"}
    assert {"ablations__relu__penalty0.1__d16384__l1_penalty0.04", "ablations__relu__penalty1__d16384__l1_penalty0.04",
            "ablations__relu__penalty10__d16384__l1_penalty0.04", "ablations__relu__tied__d16384__l1_penalty0.04",
            "ablations__relu__standard__d16384__l1_penalty0.04"} <= ids
    for r in plan.runs:
        cfg = trainer_config(r, 576, 100, plan)
        assert cfg.get("alignment") == r.alignment and cfg.get("alignment_penalty") == r.alignment_penalty
        assert cfg["trainer"] == ("StandardTrainer" if r.arch == "relu" else "TopKTrainer") if r.alignment is None \
            else cfg["trainer"].startswith("Aligned")
    smoke = resolve("ablations", "smoke")
    assert {r.dict_size for r in smoke.runs} == {256} and len(smoke.runs) == 2 * 8 * 2  # CPU-sized


def test_penalty_trainer_built_from_the_grid_uses_its_coefficient():
    from dictionary_learning_aligned.training import _prepare_trainers

    plan = resolve("ablations", "smoke")
    runs = [r for r in plan.runs if r.arch == "relu" and r.seed == 0 and r.alignment == "penalty"]
    trainers = _prepare_trainers([dict(trainer_config(r, 16, 10, plan), dict_size=32) for r in runs], "cpu", False)
    assert sorted(t.alignment_penalty for t in trainers) == [0.1, 1.0, 10.0]
    assert all(t.config["alignment"] == "penalty" for t in trainers)


def test_budget_grid_records_every_step_point_of_one_run(tmp_path):
    plan = resolve("budget", "small")
    assert len(plan.runs) == 2 * 2 * 3 and {r.dict_size for r in plan.runs} == {4096}
    assert {(r.alignment, r.alignment_penalty) for r in plan.runs} == {(None, None), ("project", None)}
    steps = -(-plan.tokens // plan.recipe.batch_size)
    assert plan.eval_points(steps) == (2_500, 10_000, 25_000, 48_829)
    assert plan.eval_points(20_000) == (2_500, 10_000, 20_000)  # a shorter --tokens drops later points
    assert resolve("main", "small").eval_points(steps) == (steps,) and not resolve("main", "small").eval_steps
    assert resolve("budget", "paper").eval_points(244_141)[-3:] == (50_000, 100_000, 244_141)
    assert resolve("budget", "smoke").eval_points(24) == (4, 12, 24)
    r = plan.runs[0]
    assert _rid(r, 2_500) == "budget__relu__standard__d4096__l1_penalty0.04__step2500__s0"
    assert _gid(r, 2_500) == "budget__relu__standard__d4096__l1_penalty0.04__step2500"
    assert _rid(r) == record_id("budget", "relu", None, 4096, {"name": "l1_penalty", "value": 0.04}, 0)
    # a run counts as done only when every step point is recorded
    assert len(select_runs(plan, tmp_path)) == 12
    for p in plan.eval_points(steps):
        write_record(tmp_path, _stub(_rid(r, p)))
    assert r not in select_runs(plan, tmp_path) and len(select_runs(plan, tmp_path)) == 11
    (tmp_path / "records" / f"{_rid(r, 10_000)}.json").unlink()
    assert r in select_runs(plan, tmp_path)
    assert len(select_runs(plan, tmp_path, steps=20_000)) == 12  # other points, other ids


def _stub(rid: str) -> dict:
    from dictionary_learning_aligned.records import REQUIRED

    return {**{k: None for k in REQUIRED}, "schema": 1, "id": rid}


def test_checkpoint_folders_of_step_points(tmp_path):
    t = tmp_path / "trainer_3"
    assert dictionary_dir(t, None, 100) == t == dictionary_dir(t, 100, 100)
    assert dictionary_dir(t, 25, 100) == t / "checkpoints" / "step_24"  # trainSAE names a checkpoint by its step index
    for bad in (0, 101):
        with pytest.raises(ValueError, match="outside the run's 1..100 steps"):
            dictionary_dir(t, bad, 100)


def test_ids_of_penalty_and_step_points():
    sp = {"name": "k", "value": 64}
    assert group_id("ablations", "topk", "penalty", 16384, sp, alignment_penalty=0.1) == \
        "ablations__topk__penalty0.1__d16384__k64"
    assert record_id("budget", "topk", "project", 4096, sp, 2, steps=2500) == "budget__topk__project__d4096__k64__step2500__s2"
    assert group_id("main", "topk", "project", 4096, sp) == "main__topk__project__d4096__k64"  # old ids unchanged


def test_reproduce_help_lists_the_new_experiments():
    text = " ".join(build_parser().format_help().split())
    for name in ("ablations", "budget"):
        assert f" {name} relu, topk x (standard, project" in text
    assert "penalty:0.1, penalty:1, penalty:10, tied); dict_size 16384; 3 seed(s)" in text
    assert "the referee's ablations" in text and "checkpoints at smoke 4, 12; small 2,500, 10,000, 25,000" in text
    assert set(EXPERIMENTS) >= {"ablations", "budget"}


# ------------------------------------------------------------------------------- tables and figures (synthetic)
def with_ids(rec, experiment, arch, mode, dict_size, sparsity, seed, **id_fields):
    """``rec`` with the record and group ids that reproduce would give it."""
    rec["id"] = record_id(experiment, arch, mode, dict_size, sparsity, seed, **id_fields)
    rec["group"] = group_id(experiment, arch, mode, dict_size, sparsity, **id_fields)
    return rec


def ablation_records(scale="small"):
    recs = []
    for arch, sval in (("relu", 0.02), ("topk", 8)):
        for mode, lam in ABLATION_MODES:
            for seed in (0, 1, 2):
                sp = {"name": "l1_penalty" if arch == "relu" else "k", "value": sval}
                rec = make_record(arch, mode, sval, seed, experiment="ablations", dict_size=16384, scale=scale,
                                  recipe="saebench", steps=48_829, batch_size=2048, alignment_penalty=lam,
                                  mcs=0.5 + (lam or 0) / 100)
                recs.append(with_ids(rec, "ablations", arch, mode, 16384, sp, seed, alignment_penalty=lam))
    return recs


def test_ablation_table_has_one_row_per_mode_and_architecture():
    recs = ablation_records()
    rows = ablation_table(recs).splitlines()
    assert rows[0] == ("| SAE | dict_size | sparsity | alignment | seeds | FVE | L0 | CE loss recovered | dead fraction "
                       "| MCS | mean a_i |")
    body = rows[2:]
    assert len(body) == 16 and all(" | 3 | " in r for r in body)
    relu = [r.split(" | ")[3] for r in body if r.startswith("| ReLU")]
    assert relu == ["standard", "project (a_i = 1, reparameterized)", "rescale (a_i = 1, reparameterized)",
                    "projection step (a_i = 1 after each step)", "penalty λ=0.1 (soft a_i ≈ 1)",
                    "penalty λ=1 (soft a_i ≈ 1)", "penalty λ=10 (soft a_i ≈ 1)", "tied (W_enc = W_dec^T)"]
    pen10 = next(r for r in body if r.startswith("| ReLU") and "λ=10 " in r)
    assert pen10.split(" | ")[9] == "0.600"  # MCS of that group only: the three penalties are not pooled
    report = ablation_report(recs).splitlines()
    assert report[0].startswith("records: 48 · scale small · model smollm2-135m-instruct · recipe saebench · "
                                "steps 48,829 · batch 2,048")
    smoke = ablation_report(ablation_records("smoke")).splitlines()
    assert smoke[0].startswith("scale smoke: these dictionaries test the pipeline")
    with pytest.raises(ValueError, match="no records of experiment 'ablations'"):
        ablation_table([r for r in recs if False])
    with pytest.raises(ValueError, match="fmt must be"):
        ablation_table(recs, fmt="html")
    assert len(ablation_table(recs, fmt="text").splitlines()) == 17


def test_results_table_keeps_penalty_coefficients_apart():
    text = results_table(ablation_records(), experiment="ablations")
    assert "| ablations | ReLU penalty0.1 |" in text and "| ablations | ReLU penalty10 |" in text
    assert len(text.splitlines()) == 2 + 16


def test_ablation_figure_is_drawn_with_its_budget_line(tmp_path):
    res = ablation_figure(ablation_records(), tmp_path)
    assert res.written and (tmp_path / "ablations.pdf").is_file() and (tmp_path / "ablations.png").is_file()
    from figures.ablations import draw_ablations
    from figures.paper import _annotate

    d = draw_ablations(ablation_records())
    _annotate(d, "ablations", "t")
    assert "steps 48,829" in d.fig.get_supxlabel() and d.fig.get_suptitle().startswith("t\n")
    ticks = [t.get_text() for t in d.fig.axes[0].get_xticklabels()]
    assert ticks == ["standard", "project", "rescale", "projection step", "penalty λ=0.1", "penalty λ=1",
                     "penalty λ=10", "tied"]
    missing = ablation_figure([], tmp_path / "none")
    assert not missing.written and "no records of experiment 'ablations'" in missing.missing


def test_ablation_panels_fit_their_axes_to_the_data():
    """Each ablation panel draws an entry as a marker (mean, std error bar) with its seeds as dots, ReLU and TopK
    side by side in their own colour and marker, a dashed line at each architecture's standard entry, on a y axis
    fitted to the data: FVE (0.76-0.87 here) not from a bar's 0; a dead fraction of 0.1% at most spans 5%."""
    from figures.ablations import draw_ablations

    recs = ablation_records()
    for r in recs:  # dead fraction 0.001 for tied, 0 for the rest
        r["metrics"]["frac_alive"] = 0.999 if r["alignment"] == "tied" else 1.0
    fve_ax, _, _, dead_ax = draw_ablations(recs).fig.axes[:4]
    fve = [r["metrics"]["frac_variance_explained"] for r in recs]
    lo, hi = fve_ax.get_ylim()
    assert lo <= min(fve) and max(fve) <= hi and hi - lo < 1.2 * (max(fve) - min(fve)), (lo, hi, min(fve), max(fve))
    entries = {}  # label -> the markers of its entries (one errorbar each)
    for c in fve_ax.containers:
        entries.setdefault(c.get_label(), []).append(c.lines[0])
    assert set(entries) == {"ReLU", "TopK"} and entries["ReLU"][0].get_marker() != entries["TopK"][0].get_marker()
    relu_x, topk_x = ([m.get_xdata()[0] for m in entries[a]] for a in ("ReLU", "TopK"))
    assert len(relu_x) == len(topk_x) == 8 and all(0 < t - r < 0.5 for r, t in zip(relu_x, topk_x))
    seeds = [line for line in fve_ax.lines if line.get_marker() == "."]
    assert len(seeds) == 16 and all(len(line.get_ydata()) == 3 for line in seeds)
    dashed = [line for line in fve_ax.lines if line.get_linestyle() == "--"]
    standard = {a: np.mean([r["metrics"]["frac_variance_explained"] for r in recs
                            if r["arch"] == a and r["alignment"] is None]) for a in ("relu", "topk")}
    assert sorted(line.get_ydata()[0] for line in dashed) == pytest.approx(sorted(standard.values()))
    dlo, dhi = dead_ax.get_ylim()
    assert dhi - dlo >= 0.05 and dlo <= 0.0 and dhi >= 0.001


def test_ablation_caption_names_dashed_lines_only_with_a_standard_entry():
    """The caption explains the dashed reference lines only when a standard entry draws them."""
    from figures.ablations import draw_ablations

    recs = ablation_records()
    assert "dashed lines" in draw_ablations(recs).note
    without = [r for r in recs if r["alignment"] is not None]
    drawn = draw_ablations(without)
    assert not [line for line in drawn.fig.axes[0].lines if line.get_linestyle() == "--"]
    assert "dashed" not in drawn.note


def test_ablation_axes_never_hide_values_outside_a_metrics_range():
    """A fitted axis is shifted inside the metric's range (FVE <= 1, dead fraction in [0, 1]), but a value outside it
    (a foreign record: FVE 1.3, frac_alive 1.2) is still drawn on the axis, not cut off (the table prints it)."""
    from figures.ablations import draw_ablations

    recs = ablation_records()
    for r in recs:
        r["metrics"]["frac_variance_explained"], r["metrics"]["frac_alive"] = 1.3, 1.2
    fve_ax, _, _, dead_ax = draw_ablations(recs).fig.axes[:4]
    lo, hi = fve_ax.get_ylim()
    assert lo <= 1.3 <= hi and hi - lo < 0.05, (lo, hi)
    dlo, dhi = dead_ax.get_ylim()
    assert dlo <= -0.2 <= dhi and dhi - dlo < 0.1, (dlo, dhi)


def test_an_ablation_panel_without_finite_values_says_no_data():
    """L0 NaN in every record (the other panels drawn): its panel says "no data" rather than showing an empty
    0-1 axis."""
    from figures.ablations import draw_ablations

    recs = ablation_records()
    for r in recs:
        r["metrics"]["l0"] = float("nan")
    fve_ax, l0_ax = draw_ablations(recs).fig.axes[:2]
    assert [t.get_text() for t in l0_ax.texts] == ["no data"] and not l0_ax.lines
    assert not fve_ax.texts


def budget_records(points=(2500, 10000, 48829), scale="small", mcs_gain=0.1, run_steps=None):
    """Standard/aligned ReLU and TopK, 2 seeds, recorded at each step point of one run (its folder
    ``checkpoint_of``, the point's dictionary in ``checkpoints/step_{p - 1}`` below it, the last point's in it); the
    aligned MCS grows with steps past the standard one. ``run_steps``: the runs' planned steps in the trainer
    config (None: the config does not say)."""
    recs = []
    for arch, sval in (("relu", 0.02), ("topk", 8)):
        for al in (None, "project"):
            for seed in (0, 1):
                run = f"dictionaries/budget__small__d4096__x__0/trainer_{arch}_{al}_{seed}"
                for i, p in enumerate(points):
                    sp = {"name": "l1_penalty" if arch == "relu" else "k", "value": sval}
                    mcs = 0.4 + (i * mcs_gain if al else 0.05)
                    folder = run if p == points[-1] else f"{run}/checkpoints/step_{p - 1}"
                    rec = make_record(arch, al, sval, seed, experiment="budget", dict_size=4096, scale=scale,
                                      recipe="saebench", steps=p, batch_size=2048, train_tokens=p * 2048,
                                      checkpoint_of=run, mcs=mcs, ce=0.7 + 0.05 * i, paths={"dictionary": folder},
                                      trainer={"steps": run_steps} if run_steps else {})
                    recs.append(with_ids(rec, "budget", arch, al, 4096, sp, seed, steps=p))
    return recs


def main_twins(budget: list[dict]) -> list[dict]:
    """The ``main`` records of the runs of ``budget`` records: each run's last point recorded again under ``main``
    (``reproduce main --also budget``), without ``checkpoint_of``."""
    out = []
    for r in budget:
        if r["paths"]["dictionary"] == r["checkpoint_of"]:
            twin = {k: v for k, v in r.items() if k != "checkpoint_of"}
            out.append(with_ids(dict(twin, experiment="main"), "main", r["arch"], r["alignment"], r["dict_size"],
                                r["sparsity"], r["seed"]))
    return out


def test_claims_against_budget_one_column_per_step_point():
    recs = budget_records()
    cols, cells = claims_by_budget(recs)
    assert cols == ["2,500 steps", "10,000 steps", "48,829 steps"]
    d_relu = cells["d", "relu", 4096]
    assert [d_relu[c]["verdict"] for c in cols] == ["not supported", "supported", "supported"]
    text = budget_report(recs)
    lines = text.splitlines()
    assert lines[0].startswith("records: 24 · mixed budgets: scale small") and "steps 2,500-48,829" in lines[0]
    assert "checkpoints of one run" in lines[1]
    row = next(ln for ln in lines if ln.startswith("| (d) | ReLU · d=4096 |"))
    assert row == ("| (d) | ReLU · d=4096 | **not supported**: MCS 0.400 vs 0.450, higher at 0/1 | **supported**: "
                   "MCS 0.500 vs 0.450, higher at 1/1 | **supported**: MCS 0.600 vs 0.450, higher at 1/1 |")
    # (c) for ReLU: one L1 penalty per step point, so no standard L0 curve to read at the aligned L0: no verdict,
    # and the cell says why instead of a dash
    c_relu = next(ln for ln in lines if ln.startswith("| (c) | ReLU · d=4096 |"))
    assert c_relu == "| (c) | ReLU · d=4096 |" + " **insufficient data**: one standard sparsity; equal L0 needs a " \
        "standard curve (2+ sparsities) |" * 3
    # claims_table never pools step points: with step_points, one row per claim, setting and step; without (the
    # default, the store's claims table), only the run's end
    rows = claims_table(recs, step_points=True)
    assert [r["point"] for r in rows if r["claim"] == "d" and r["arch"] == "relu"] == [2500, 10000, 48829]
    assert [r["point"] for r in claims_table(recs) if r["claim"] == "d" and r["arch"] == "relu"] == [48829]
    smoke = budget_report(budget_records(scale="smoke"), fmt="text")
    assert smoke.splitlines()[0].startswith("scale smoke:") and "**" not in smoke
    assert "(d) ReLU · d=4096: 2,500 steps: smoke: no verdict (reads not supported)" in smoke
    with pytest.raises(ValueError, match="no standard/project records of experiment 'budget'"):
        budget_report([r for r in recs if r["alignment"] == "tied"])
    with pytest.raises(ValueError, match="unknown format"):
        budget_report(recs, fmt="html")


def _write_store(d, records):
    for r in records:
        write_record(d, r)
    return d


def test_store_claims_check_each_dictionary_at_its_full_budget(tmp_path, capsys):
    """``figures claims`` on a store with ``main`` records and the step points of their runs (``budget``): the rows
    and verdict counts of the store without the budget records; the header says how many were left out."""
    budget = budget_records()
    mains = main_twins(budget)
    both = _write_store(tmp_path / "both", budget + mains)
    alone = _write_store(tmp_path / "main_only", mains)
    for fmt in ("markdown", "text"):
        outs = []
        for store in (both, alone):
            assert figures_main(["claims", "--results", str(store), "--format", fmt]) == 0
            outs.append(capsys.readouterr().out.splitlines())
        with_points, without = outs
        assert with_points[2:-1] == without[1:-1]  # the same table: no step-point rows
        assert "budget ·" not in "\n".join(with_points) and "mixed budgets" not in with_points[0]
        assert with_points[0].startswith("records: 32 (8 of them the same dictionaries as others, recorded under two "
                                         "experiments, counted once) · scale small")
        assert "steps 48,829" in with_points[0]
        assert with_points[1] == ("left out: 16 records evaluated at step points before their run's end (experiment "
                                  "budget, steps 2,500-10,000): each dictionary is checked at its full training "
                                  "budget; `python -m figures budget` reads the step points")
        assert with_points[-1] == without[-1].replace(
            "(8 records)", "(32 records, 16 of them step points before their run's end, left out)")
    # a store of budget records alone: the runs' ends are checked, under budget
    rows = claims_table(budget)
    assert {(r["experiment"], r["point"]) for r in rows} == {("budget", 48829)}
    # two stores side by side: no step-point rows, each store says what it left out
    from figures.compare import compare_claims

    text = compare_claims(budget + mains, mains, ("both", "main only"), fmt="text").splitlines()
    assert text[1].startswith("both: left out: 16 records evaluated at step points") and text[2].startswith(
        "main only: 8 records")
    assert text[-1] == "verdict changed in 0 of 9 settings present in both stores"


def test_step_points_before_the_run_end():
    """A record before its run's end: fewer steps than the trainer config's (the planned run), also when the store
    lacks the run's last point; without the config's steps, fewer than the run's other records."""
    from figures.records import before_run_end

    planned = budget_records(points=(2500, 10000), run_steps=48829)  # the run's end not recorded yet
    assert before_run_end(planned) == [True] * len(planned)
    unplanned = budget_records(points=(2500, 10000))
    assert before_run_end(unplanned) == [r["steps"] == 2500 for r in unplanned]
    ended = budget_records(run_steps=48829)
    assert before_run_end(ended) == [r["steps"] < 48829 for r in ended]
    assert before_run_end(main_twins(ended)) == [False] * 8  # no checkpoint_of: a trained dictionary


def test_step_points_of_records_with_odd_run_fields():
    """A trainer config whose steps are 0, negative or fewer than the run's records reached says nothing about
    the run's end: the run's last record is its end. A ``checkpoint_of`` that is not a string (a hand-edited
    record) still names a run, and does not raise TypeError."""
    from figures.records import before_run_end

    for planned in (0, -3, 5000):
        recs = budget_records(run_steps=planned) if planned else [
            dict(r, trainer={"steps": planned}) for r in budget_records()]
        assert before_run_end(recs) == [r["steps"] < 48829 for r in recs], planned
    listed = [dict(r, checkpoint_of=[r["checkpoint_of"]]) for r in budget_records()]
    assert before_run_end(listed) == [r["steps"] < 48829 for r in listed]


def test_claims_of_a_store_holding_only_step_points_is_refused(tmp_path, capsys):
    """Nothing is at a full training budget: exit 2 and a line saying so and where the step points are read,
    not an empty table (also for either store of --compare)."""
    points = budget_records(points=(2500, 10000), run_steps=48829)  # the runs' ends not recorded
    store = _write_store(tmp_path / "points", points)
    full = _write_store(tmp_path / "full", budget_records())
    for argv in (["--results", str(store)], ["--results", str(full), "--compare", str(store)]):
        assert figures_main(["claims", *argv]) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert err == (f"error: {store} holds only records evaluated at step points before their run's end (16, "
                       f"experiment budget): no dictionary at its full training budget to check; `python -m "
                       f"figures budget --results {store}` reads them\n")


def test_budget_reference_from_another_recipe():
    recs = budget_records()
    old = [make_record(a, al, v, s, experiment="main", dict_size=4096, scale="small", trainer={"steps": 2442},
                       train_tokens=20_000_000) for a, v in (("relu", 0.02), ("topk", 8), ("topk", 32))
           for al in (None, "project", "tied") for s in (0, 1)]
    old += [make_record("topk", al, 8, 0, experiment="long", dict_size=4096, scale="small", trainer={"steps": 7324},
                        train_tokens=60_000_000, mcs=0.9) for al in (None, "project")]  # not the reference's budget
    cols, cells = claims_by_budget(recs, reference=old)
    assert cols[-1] == "2,442 steps, batch 8,192 (recipe unrecorded)"
    assert cells["d", "topk", 4096][cols[-1]]["values"]["points"] == [
        {"sparsity": 8, "aligned": 0.35, "standard": 0.3}]  # only the matching sparsity, no tied
    text = budget_report(recs, reference=old)
    assert "reference (another store, another recipe): 8 records · scale small" in text
    d = draw_budget(recs, reference=old)
    labels = {lab for ax in d.fig.axes for lab in ax.get_legend_handles_labels()[1]}
    assert {"ReLU standard", "ReLU aligned", "TopK standard", "TopK aligned", "TopK aligned, other recipe"} <= labels
    assert "hollow markers: the matching records of another store, 2,442 steps, batch 8,192" in d.note
    for ax in d.fig.axes:  # every panel, L0 included, has the reference's hollow markers
        xs = sorted({x for line in ax.get_lines() for x in line.get_xdata()})
        assert xs == [2442, 2500, 10000, 48829] and ax.get_xscale() == "log", ax.get_title()
    assert [t.get_text() for t in d.fig.axes[0].get_xticklabels()] == ["2.5k", "10k", "48.8k"]


def test_budget_figure_shows_l0_first_on_a_log_axis_when_it_spans_more_than_4x():
    """ReLU's early points are denser (the L1 penalty's warmup): the L0 panel comes before FVE, on a log axis (said
    in its label and the caption) when L0 spans more than 4x, linear otherwise; one legend, right of the panels."""
    recs = budget_records()
    for r in recs:
        if r["arch"] == "relu":
            r["metrics"]["l0"] = {2500: 500.0, 10000: 100.0, 48829: 60.0}[r["steps"]] + (50 if r["alignment"] else 0)
    d = draw_budget(recs)
    assert [ax.get_title() for ax in d.fig.axes] == ["L0", "FVE", "CE loss recovered", "dead fraction",
                                                     "MCS (cross-seed)"]
    l0 = d.fig.axes[0]
    assert l0.get_yscale() == "log" and l0.get_ylabel() == "L0 (log scale)"
    assert "L0 axis logarithmic (values span more than 4x)" in d.note
    assert {y for line in l0.get_lines() for y in line.get_ydata()} >= {500.0, 100.0, 60.0, 550.0, 110.0}
    assert [t.get_text() for t in l0.get_yticklabels() if l0.get_ylim()[0] <= t.get_position()[1] <= l0.get_ylim()[1]
            ] == ["10", "20", "50", "100", "200", "500"]  # plain numbers at 1, 2, 5 x 10^n (TopK's k 8 is drawn too)
    assert [ax.get_legend() is not None for ax in d.fig.axes] == [False] * 4 + [True]
    recs = budget_records()
    for r in recs:  # L0 within 4x (30 to 110)
        r["metrics"]["l0"] = 30.0 + r["steps"] / 600
    flat = draw_budget(recs)
    assert flat.fig.axes[0].get_yscale() == "linear" and flat.fig.axes[0].get_ylabel() == "L0"
    assert "logarithmic" not in flat.note


def test_budget_l0_axis_stays_linear_when_a_value_is_zero():
    """A log axis cannot show an L0 of 0 (a dictionary whose features all stopped firing): the axis stays linear,
    the point is drawn, also when the other values span more than 4x."""
    recs = budget_records()
    for r in recs:
        r["metrics"]["l0"] = {2500: 500.0, 10000: 100.0, 48829: 0.0}[r["steps"]]
    d = draw_budget(recs)
    l0 = d.fig.axes[0]
    assert l0.get_yscale() == "linear" and "logarithmic" not in d.note
    assert l0.get_ylim()[0] <= 0.0 <= l0.get_ylim()[1]


def test_budget_figure_and_cli(tmp_path, capsys):
    store = tmp_path / "store"
    for r in budget_records() + ablation_records():
        write_record(store, r)
    res = budget_figure(list(iter_records(store)), tmp_path / "figs")
    assert res.written and (tmp_path / "figs" / "budget.png").is_file()
    assert figures_main(["budget", "--results", str(store), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "| (d) | TopK · d=4096 |" in out and "budget: written" in out
    assert (tmp_path / "cli" / "budget.pdf").is_file()
    assert figures_main(["ablations", "--results", str(store), "--out", str(tmp_path / "cli")]) == 0
    out = capsys.readouterr().out
    assert "penalty λ=10 (soft a_i ≈ 1)" in out and (tmp_path / "cli" / "ablations.png").is_file()
    assert figures_main(["ablations", "--results", str(tmp_path / "nowhere")]) == 2
    assert figures_main(["budget", "--results", str(store), "--experiment", "main"]) == 2
    assert "no standard/project records of experiment 'main'" in capsys.readouterr().err
    # the paper's claims table of the same store checks the runs' ends only
    assert figures_main(["claims", "--results", str(store)]) == 0
    out = capsys.readouterr().out
    assert "budget · TopK · d=4096 |" in out and "2,500 steps" not in out and "left out: 16 records" in out


# --------------------------------------------------------------------------------------- end to end at smoke
@pytest.mark.slow
def test_ablations_end_to_end_at_smoke_scale(tmp_path):
    from dictionary_learning_aligned.reproduce import run_experiment

    ids = run_experiment("ablations", "smoke", str(tmp_path), device="cpu", archs=["relu"], tokens=2048,
                         batch_size=256, eval_batches=1, ce_batches=1, ce_batch_size=2)
    assert len(ids) == 8 * 2 == len(set(ids))
    recs = {(r["alignment"], r["alignment_penalty"], r["seed"]): r for r in iter_records(tmp_path)}
    assert {k[:2] for k in recs} == set(ABLATION_MODES)
    for (mode, lam, seed), r in recs.items():
        assert r["trainer"].get("alignment") == mode and r["trainer"].get("alignment_penalty") == lam
        assert r["stability"]["n_runs"] == 2 and r["steps"] == 8 and r["dict_size"] == 256
        scores = r["per_feature"]["alignment_score"]
        if mode in ("project", "rescale", "projection", "tied"):  # the constraint holds exactly (tied: unit norm)
            assert max(abs(a - 1) for a in scores) < 1e-3, mode
    assert len({r["group"] for r in recs.values()}) == 8
    report = ablation_report(list(iter_records(tmp_path)))
    assert report.startswith("scale smoke:") and "penalty λ=10 (soft a_i ≈ 1)" in report


@pytest.mark.slow
def test_budget_end_to_end_at_smoke_scale(tmp_path):
    import torch

    from dictionary_learning_aligned.dictionary import Dictionary
    from dictionary_learning_aligned.reproduce import main, run_experiment

    ids = run_experiment("budget", "smoke", str(tmp_path), device="cpu", archs=["topk"], tokens=24 * 128,
                         batch_size=128, eval_batches=1, ce_batches=1, ce_batch_size=2)
    assert len(ids) == 2 * 2 * 3  # standard/aligned x 2 seeds x step points 4, 12, 24
    recs = {(r["alignment"], r["seed"], r["steps"]): r for r in iter_records(tmp_path)}
    assert sorted({k[2] for k in recs}) == [4, 12, 24]
    for (al, seed, steps), r in recs.items():
        assert r["id"].endswith(f"__step{steps}__s{seed}") and r["group"].endswith(f"__step{steps}")
        assert r["checkpoint_of"] == recs[al, seed, 24]["paths"]["dictionary"]  # one run per dictionary
        assert r["train_tokens"] == steps * 128 and all(e["step"] <= steps for e in r["training_log"])
        assert r["stability"]["n_runs"] == 2 and math.isfinite(r["stability"]["mcs"])
        assert r["trainer"]["steps"] == 24  # trained once, for the full budget
        if steps < 24:
            assert r["paths"]["dictionary"] == f"{r['checkpoint_of']}/checkpoints/step_{steps - 1}"
    early = Dictionary.from_pretrained(tmp_path / recs["project", 0, 4]["paths"]["dictionary"])
    final = Dictionary.from_pretrained(tmp_path / recs["project", 0, 24]["paths"]["dictionary"])
    assert not torch.equal(early.W_dec, final.W_dec)
    assert recs["project", 0, 4]["stability"]["mcs"] != recs["project", 0, 24]["stability"]["mcs"]
    before = sorted(p.name for p in (tmp_path / "records").iterdir())
    assert main(["budget", "--results", str(tmp_path), "--archs", "topk", "--tokens", str(24 * 128),
                 "--batch-size", "128"]) == 0  # every step point recorded: nothing to train
    assert sorted(p.name for p in (tmp_path / "records").iterdir()) == before
    text = budget_report(list(iter_records(tmp_path)))
    assert text.startswith("scale smoke:") and "| 4 steps | 12 steps | 24 steps |" in text
