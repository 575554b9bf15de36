"""Several experiments trained on one harvest (``reproduce EXPERIMENT --also OTHER``): a dictionary that two
experiments ask for is trained once and recorded for both, under each one's ids and step points; experiments that
read other data are refused before anything is created."""

import pytest

from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import (main, run_experiment, runs_to_train, select_shared_runs,
                                                   shared_plans, training_key, train_steps)


def _union(names, scale="small", **filters):
    plans = shared_plans(names, scale)
    steps = train_steps(plans[0].tokens, plans[0].recipe.batch_size)[0]
    todos = select_shared_runs(plans, _EMPTY, filters.get("archs"), filters.get("dict_sizes"), None,
                               filters.get("sparsity"), steps)
    return plans, todos, runs_to_train(plans, todos, steps)


_EMPTY = "/nonexistent-store"


def test_budget_and_two_thirds_of_tying_are_main_runs():
    _, todos, train = _union(["main", "budget"])
    assert [len(t) for t in todos] == [72, 12] and len(train) == 72
    _, todos, train = _union(["main", "tying"], archs=["relu", "topk"])
    assert [len(t) for t in todos] == [36, 54] and len(train) == 54  # tying's tied runs are its own
    assert {r.alignment for r in train if r.experiment == "tying"} == {"tied"}
    _, todos, train = _union(["budget", "main"], archs=["relu", "topk"])
    assert [len(t) for t in todos] == [12, 36] and len(train) == 36
    assert sum(r.experiment == "budget" for r in train) == 12  # the first experiment's run when it has one
    assert [r.arch for r in train] == sorted((r.arch for r in train), key=["relu", "topk"].index)  # stacks whole


def test_training_key_is_the_trainer_config_not_the_experiment():
    main_plan, budget_plan = shared_plans(["main", "budget"], "small")
    (b,) = [r for r in budget_plan.runs if r.arch == "topk" and r.alignment == "project" and r.seed == 1]
    (m,) = [r for r in main_plan.runs if r.arch == "topk" and r.alignment == "project" and r.seed == 1
            and r.sparsity_value == 64]
    assert b != m and training_key(b, budget_plan, 1000) == training_key(m, main_plan, 1000)
    assert training_key(m, main_plan, 1000) != training_key(m, main_plan, 2000)  # the schedule is in it


def test_filters_pick_from_the_union_of_the_grids():
    _, todos, train = _union(["main", "budget"], archs=["batchtopk"])  # not in budget: budget records nothing
    assert [len(t) for t in todos] == [18, 0] and len(train) == 18
    _, todos, _ = _union(["main", "budget"], archs=["relu"], sparsity=[0.02])  # not budget's L1 value
    assert [len(t) for t in todos] == [6, 0]
    with pytest.raises(ValueError, match=r"arch \['nope'\] not in the main \+ budget grid"):
        _union(["main", "budget"], archs=["nope"])
    with pytest.raises(ValueError, match=r"sparsity \[0.5\] not all in the main \+ budget grid"):
        _union(["main", "budget"], sparsity=[0.5])


@pytest.mark.parametrize("names, message", [
    (["main", "gemma"], "gemma cannot share training with main at small scale: its model is 'gemma-3-270m'"),
    (["main", "long"], "long cannot share training with main at small scale: its tokens is 200000000, not "
                       "100000000"),
    (["main", "budget", "main"], "experiment 'main' is named twice"),
    (["main", "nope"], "unknown experiment 'nope'"),
])
def test_experiments_that_read_other_data_are_refused_before_anything_is_created(tmp_path, names, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        run_experiment(names[0], "small", str(tmp_path / "store"), device="cpu", also=names[1:])
    assert not (tmp_path / "store").exists()
    assert main([names[0], "--scale", "small", "--results", str(tmp_path / "store"), "--also",
                 ",".join(names[1:])]) == 2
    assert not (tmp_path / "store").exists()


def test_an_empty_also_is_refused(tmp_path):
    assert main(["main", "--results", str(tmp_path / "store"), "--also", ""]) == 2
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_main_with_budget_trains_once_and_records_both(tmp_path, monkeypatch):
    from dictionary_learning_aligned.reproduce import run as reproduce

    settings = dict(device="cpu", archs=["topk"], tokens=24 * 128, batch_size=128, eval_batches=1, ce_batches=1,
                    ce_batch_size=2)
    judged = []  # the first part is let in (a limit passed while loading starts none); the second is judged

    def first_part_in_time(ctx, runs, pace, left):
        judged.append(pace)
        return len(judged) == 1 or real_time_for(ctx, runs, pace, left)

    real_time_for = reproduce._time_for
    monkeypatch.setattr(reproduce, "_time_for", first_part_in_time)
    first = run_experiment("main", "smoke", str(tmp_path / "both"), also=["budget"], chunk=4, time_limit=1e-3,
                           **settings)  # the time limit stops it after its first part (k 8, main's alone)
    monkeypatch.setattr(reproduce, "_time_for", real_time_for)
    assert len(judged) == 2 and judged[1] > 0
    assert len(first) == 4 and all(i.startswith("main__topk__") and "__k8__" in i for i in first)
    ids = first + run_experiment("main", "smoke", str(tmp_path / "both"), also=["budget"], chunk=4, **settings)
    recs = {r["id"]: r for r in iter_records(tmp_path / "both")}
    assert sorted(ids) == sorted(recs) and len(recs) == 8 + 4 * 3  # main: k 8, 32; budget: k 32 at 4, 12, 24 steps
    main_recs = [r for r in recs.values() if r["experiment"] == "main"]
    budget_recs = [r for r in recs.values() if r["experiment"] == "budget"]
    assert {r["trained_together"] for r in recs.values()} == {4}  # parts of 4: k 8, then k 32
    for m in main_recs:  # checkpoints are saved only in the part whose runs budget records
        has_checkpoints = (tmp_path / "both" / m["paths"]["dictionary"] / "checkpoints").is_dir()
        assert has_checkpoints == (m["sparsity"]["value"] == 32), m["id"]
    for b in budget_recs:
        m = recs[b["id"].replace("budget__", "main__").replace(f"__step{b['steps']}", "")]
        assert b["trained_for"] == m["trained_for"] == ["main", "budget"]
        assert b["checkpoint_of"] == m["paths"]["dictionary"]
        if b["steps"] == 24:  # the end of the run: the same dictionary, the same numbers
            assert b["paths"]["dictionary"] == m["paths"]["dictionary"] and b["metrics"] == m["metrics"]
            assert b["stability"] == m["stability"]
        else:
            assert (tmp_path / "both" / b["paths"]["dictionary"] / "ae.safetensors").is_file()
    assert sum("trained_for" in r for r in main_recs) == 4  # the k 8 runs are main's alone
    # the same as training budget alone
    run_experiment("budget", "smoke", str(tmp_path / "alone"), **settings)
    alone = {r["id"]: r for r in iter_records(tmp_path / "alone")}
    assert sorted(alone) == sorted(b["id"] for b in budget_recs)
    for rid, a in alone.items():
        assert "trained_for" not in a and a["trained_together"] == 4
        for key in ("frac_variance_explained", "l0", "mse"):
            assert recs[rid]["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-4, abs=1e-6), (rid, key)
    # nothing left to do for either; a later budget-only call finds it recorded
    before = sorted(p.name for p in (tmp_path / "both" / "records").iterdir())
    assert main(["budget", "--results", str(tmp_path / "both"), "--archs", "topk", "--tokens", str(24 * 128),
                 "--batch-size", "128"]) == 0
    assert sorted(p.name for p in (tmp_path / "both" / "records").iterdir()) == before


# ------------------------------------------------------------------------------------------------ --time-limit
def _ctx(limit, elapsed):
    import time
    from types import SimpleNamespace

    return SimpleNamespace(time_limit=limit, t0=time.monotonic() - elapsed, rank=0, world_size=1)


def test_a_part_starts_only_when_the_slowest_pace_says_it_ends_in_time(capsys):
    from dictionary_learning_aligned.reproduce.run import _time_for

    plan = shared_plans(["main"], "small")[0]
    part = list(plan.runs[:6])  # 6 dictionaries of 4096: 24,576 features
    assert _time_for(_ctx(None, 1e6), part, 1.0, [part])  # no limit
    assert _time_for(_ctx(10.0, 9.9), part, 0.0, [part])  # no pace yet: the first part always starts
    assert _time_for(_ctx(100.0, 50.0), part, 49.0 / 24_576, [part])
    assert not _time_for(_ctx(100.0, 50.0), part, 51.0 / 24_576, [part, part])
    out = capsys.readouterr().out
    assert "time limit: the next part (6 dictionaries) needs about 51 s and 50 s are left; 12 dictionaries are " \
           "left for a later call of the same command" in out


@pytest.mark.parametrize("bad", [0, -5, float("nan")])
def test_a_time_limit_that_is_not_positive_is_refused(tmp_path, bad):
    with pytest.raises(ValueError, match="--time-limit must be a number of seconds > 0"):
        run_experiment("main", "smoke", str(tmp_path / "store"), device="cpu", time_limit=bad)
    assert not (tmp_path / "store").exists()
    assert main(["main", "--results", str(tmp_path / "store"), "--time-limit", str(bad)]) == 2
