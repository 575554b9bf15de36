"""``reproduce --alignments``: train only some alignment entries of an experiment's grid (e.g. ``tying``'s tied
runs, whose standard and ``project`` runs are ``main``'s), spelled as in the grid and read by ``parse_alignment``;
an entry that is malformed or in none of the grids is refused before anything loads."""

import re

import pytest

from dictionary_learning_aligned.experiments import resolve
from dictionary_learning_aligned.reproduce import (build_parser, command, main, run_config, runs_to_train,
                                                   select_runs, select_shared_runs, shared_plans, train_steps)
from dictionary_learning_aligned.reproduce.selection import seed_group

_EMPTY = "/nonexistent-store"


def test_tied_picks_only_the_tied_runs_of_tying_in_whole_seed_groups():
    plan = resolve("tying", "smoke")
    picked = select_runs(plan, _EMPTY, alignments=["tied"])
    assert picked and {r.alignment for r in picked} == {"tied"}
    assert len(picked) == len(plan.runs) // 3 == 8  # relu, topk x 2 sparsities x 2 seeds
    groups = {seed_group(r) for r in picked}
    assert all(sum(seed_group(r) == g for r in plan.runs) == sum(seed_group(r) == g for r in picked) for g in groups)


@pytest.mark.parametrize("penalty", ["penalty:0.1", "penalty:0.10", " penalty:1e-1"])
def test_standard_and_one_penalty_of_the_ablations(penalty):
    plan = resolve("ablations", "smoke")
    picked = select_runs(plan, _EMPTY, alignments=["standard", penalty])
    assert {(r.alignment, r.alignment_penalty) for r in picked} == {(None, None), ("penalty", 0.1)}
    assert len(picked) == 8  # 2 archs x 1 sparsity x 2 seeds x 2 entries
    assert len(select_runs(plan, _EMPTY, alignments=["standard", penalty], archs=["topk"], seeds=1)) == 2


@pytest.mark.parametrize("entry, message", [
    ("bogus", r"alignment entry 'bogus': unknown alignment mode 'bogus'"),
    ("penalty", r"alignment entry 'penalty': the penalty needs its coefficient"),
    ("rescale", r"alignment \['rescale'\] not in the tying grid's entries \['project', 'standard', 'tied'\]"),
    ("penalty:0.2", r"alignment \['penalty:0.2'\] not in the tying grid's entries"),
])
def test_an_entry_malformed_or_not_in_the_grid_is_refused(entry, message):
    with pytest.raises(ValueError, match=message):
        select_runs(resolve("tying", "smoke"), _EMPTY, alignments=["tied", entry])


def test_the_grid_entries_are_named_as_spelled_in_the_experiment():
    with pytest.raises(ValueError, match=r"\['penalty:0.1', 'penalty:1', 'penalty:10', 'project', 'projection', "
                                         r"'rescale', 'standard', 'tied'\]"):
        select_runs(resolve("ablations", "smoke"), _EMPTY, alignments=["penalty:2"])


def test_with_also_the_entries_pick_from_the_union_of_the_grids():
    plans = shared_plans(["main", "tying"], "small")
    steps = train_steps(plans[0].tokens, plans[0].recipe.batch_size)[0]
    todos = select_shared_runs(plans, _EMPTY, ["relu", "topk"], None, None, None, steps, ["tied"])
    assert [len(t) for t in todos] == [0, 18]  # main has no tied runs: it records nothing
    assert len(runs_to_train(plans, todos, steps)) == 18
    todos = select_shared_runs(plans, _EMPTY, ["relu", "topk"], None, None, None, steps, ["standard"])
    assert [len(t) for t in todos] == [18, 18] and len(runs_to_train(plans, todos, steps)) == 18  # shared
    with pytest.raises(ValueError, match=r"alignment \['rescale'\] not in the main \+ tying grid's entries "
                                         r"\['project', 'standard', 'tied'\]"):
        select_shared_runs(plans, _EMPTY, None, None, None, None, steps, ["rescale"])


@pytest.mark.parametrize("flag, expected", [("tied", ["tied"]), ("standard,penalty:0.1", ["standard", "penalty:0.1"]),
                                            (None, None)])
def test_the_flag_becomes_the_filter(monkeypatch, flag, expected):
    seen = {}
    monkeypatch.setattr(command, "run_experiment", lambda *a, **kw: seen.update(kw) or [])
    argv = ["tying", "--scale", "smoke"] + (["--alignments", flag] if flag else [])
    from dictionary_learning_aligned.cli import parse_config

    cfg = parse_config(build_parser(), argv)
    assert cfg.alignments == flag
    run_config(cfg)
    assert seen["alignments"] == expected


@pytest.mark.parametrize("flag, message", [
    ("bogus", "alignment entry 'bogus': unknown alignment mode"),
    ("rescale", r"alignment ['rescale'] not in the tying grid's entries ['project', 'standard', 'tied']"),
    (",", "--alignments must be a comma list"),
])
def test_the_command_refuses_a_bad_entry_before_anything_loads(tmp_path, capsys, flag, message):
    store = tmp_path / "store"
    assert main(["tying", "--results", str(store), "--device", "cpu", "--alignments", flag]) == 2
    assert message in capsys.readouterr().err
    assert not store.exists()  # refused before the store (or the model) is touched


@pytest.mark.parametrize("names, filters, shown", [
    (["main", "tying"], dict(archs=["batchtopk"], alignments=["tied"]), "--archs batchtopk --alignments tied"),
    (["main", "ablations"], dict(archs=["panneal"], alignments=["rescale"]), "--archs panneal --alignments rescale"),
    (["main", "ablations"], dict(archs=["batchtopk"], dict_sizes=[16384]), "--archs batchtopk --dict-sizes 16384"),
])
def test_with_also_filters_that_no_grid_has_together_are_refused(names, filters, shown):
    """Each value is in one of the grids (so check_grid_filters lets it pass), but no grid has them together: the
    call would train nothing, say ``0 to record`` for every experiment and exit 0."""
    plans = shared_plans(names, "small")
    steps = train_steps(plans[0].tokens, plans[0].recipe.batch_size)[0]
    with pytest.raises(ValueError, match=re.escape(f"{shown} pick no run of the {' + '.join(names)} grids")):
        select_shared_runs(plans, _EMPTY, filters.get("archs"), filters.get("dict_sizes"), None, None, steps,
                           filters.get("alignments"))


def test_the_command_refuses_filters_no_grid_has_together_before_the_store_is_made(tmp_path, capsys):
    store = tmp_path / "store"
    argv = ["main", "--also", "tying", "--archs", "batchtopk", "--alignments", "tied", "--results", str(store),
            "--device", "cpu"]
    assert main(argv) == 2
    assert "--archs batchtopk --alignments tied pick no run of the main + tying grids" in capsys.readouterr().err
    assert not store.exists()
