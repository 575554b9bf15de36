"""``python -m figures ablations|budget`` on a store that holds part of an experiment's grid (the faithful store
after the thirteenth session: 12 of the 48 ablation records, ReLU standard/project/rescale/projection, no TopK):
the table and the figure are drawn from what is there and say which grid entries (and which seeds, which step
points) have no record."""

import pytest

from dictionary_learning_aligned.experiments import resolve
from dictionary_learning_aligned.records import alignment_tag
from figures.records import grid_gaps
from figures.__main__ import main as figures_main
from figures.ablations import ablation_report, draw_ablations
from figures.budget import budget_report, draw_budget

from .test_ablations_budget import with_ids
from .test_figures import make_record


def _grid_records(experiment, scale="small", keep=lambda run, point: True):
    """Records of the runs of ``experiment``'s grid at ``scale`` that ``keep(run, step point)`` picks (step points:
    the budget grid's at 48,828 steps; None for an experiment without them)."""
    plan = resolve(experiment, scale)
    points = plan.eval_points(48_828) if plan.eval_steps else (None,)
    recs = []
    for run in plan.runs:
        for p in points:
            if not keep(run, p):
                continue
            sp = {"name": run.sparsity_name, "value": run.sparsity_value}
            extra = {"steps": p, "checkpoint_of": f"dictionaries/x/trainer_{run.seed}"} if p else {"steps": 48_828}
            rec = make_record(run.arch, run.alignment, run.sparsity_value, run.seed, experiment=experiment,
                              dict_size=run.dict_size, scale=scale, recipe="saebench", batch_size=2048,
                              alignment_penalty=run.alignment_penalty, **extra)
            recs.append(with_ids(rec, experiment, run.arch, run.alignment, run.dict_size, sp, run.seed,
                                 alignment_penalty=run.alignment_penalty, steps=p))
    return recs


def _faithful_now(run, point):
    """The faithful store's ablations after the thirteenth session, with one seed of ``projection`` lost."""
    return (run.arch == "relu" and run.alignment in (None, "project", "rescale", "projection")
            and not (run.alignment == "projection" and run.seed == 2))


def test_the_missing_entries_and_seeds_of_a_partial_ablations_grid_are_named():
    recs = _grid_records("ablations", keep=_faithful_now)
    gaps = grid_gaps(recs, "ablations")
    assert gaps.startswith("partial: 11 of the 48 records of the ablations grid at scale small; missing: ")
    assert "TopK (all 24)" in gaps and "ReLU projection: seed 2" in gaps
    assert "ReLU penalty0.1, penalty1, penalty10, tied (all 3 seeds each)" in gaps
    two_lost = [r for r in recs if not (r["alignment"] == "projection" and r["seed"] == 1)]
    assert "ReLU projection: seeds 1, 2" in grid_gaps(two_lost, "ablations")
    report = ablation_report(recs).splitlines()
    assert report[1] == gaps  # under the records' budget line
    d = draw_ablations(recs)
    assert gaps in d.note  # the figure's caption


def test_a_complete_grid_and_an_unknown_experiment_say_nothing():
    recs = _grid_records("ablations")
    assert grid_gaps(recs, "ablations") is None
    assert all(not line.startswith("partial") for line in ablation_report(recs).splitlines())
    renamed = [dict(r, experiment="my_ablations") for r in _grid_records("ablations", keep=_faithful_now)]
    assert grid_gaps(renamed, "my_ablations") is None  # no grid to compare with
    off_grid = [dict(r, dict_size=4096) for r in _grid_records("ablations", keep=_faithful_now)]
    assert grid_gaps(off_grid, "ablations") is None  # none on the grid: records of another grid
    assert ablation_report(renamed, "my_ablations")


def test_records_outside_the_grid_are_counted_not_taken_for_grid_entries():
    recs = _grid_records("ablations", scale="small")
    recs[0] = dict(recs[0], dict_size=4096)  # e.g. a --dict-sizes run of a changed grid
    gaps = grid_gaps(recs, "ablations")
    assert "47 of the 48" in gaps and "1 record outside the grid" in gaps and "ReLU standard: seed 0" in gaps


def test_missing_step_points_of_the_budget_grid_are_named():
    def keep(run, point):
        return not (run.arch == "topk" and run.alignment == "project" and run.seed == 1 and point == 25_000)
    recs = _grid_records("budget", keep=keep)
    gaps = grid_gaps(recs, "budget", modes=("standard", "project"))
    assert gaps.startswith("partial: 47 of the 48 records of the budget grid at scale small")
    assert "TopK project: seed 1 at 25,000 steps" in gaps
    assert budget_report(recs).splitlines()[1] == gaps
    assert gaps in draw_budget(recs).note


def test_the_cli_prints_the_gaps_and_draws_the_partial_figure(tmp_path, capsys):
    from dictionary_learning_aligned.records import write_record

    for r in _grid_records("ablations", keep=_faithful_now):
        write_record(tmp_path / "store", r)
    assert figures_main(["ablations", "--results", str(tmp_path / "store"), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "partial: 11 of the 48 records" in out and (tmp_path / "out" / "ablations.png").is_file()
