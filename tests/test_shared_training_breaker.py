"""A breaker's pass over ``reproduce EXPERIMENT --also OTHER``: a store where one experiment's records exist and
the other's do not, a damaged record at a later step point, and an interruption between two experiments' records.
Existing records are never overwritten, and every record's stability is over all the seeds of its group."""

import json

import pytest

from dictionary_learning_aligned.reproduce import recording
from dictionary_learning_aligned.reproduce import run as reproduce
from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import run_experiment, runs_to_train, shared_plans, training_key
from dictionary_learning_aligned.reproduce.selection import _chunks, spread_runs


def _main_and_budget_with_main_seed0_recorded():
    """What ``main --also budget`` trains (topk, k 32) when main's seed-0 runs are recorded and budget's are not
    (e.g. after ``main --seeds 1``): budget's seed 0 is budget's run, its seed 1 main's."""
    plans = shared_plans(["main", "budget"], "smoke")
    main_plan, budget_plan = plans
    main_todo = [r for r in main_plan.runs if r.arch == "topk" and r.sparsity_value == 32 and r.seed > 0]
    budget_todo = [r for r in budget_plan.runs if r.arch == "topk"]
    return plans, runs_to_train(plans, [main_todo, budget_todo], 24)


def _groups_split(parts):
    """The (alignment) groups whose seeds are in more than one of ``parts``."""
    where = {}
    for j, part in enumerate(parts):
        for r in part:
            where.setdefault(r.alignment, set()).add(j)
    return sorted(str(a) for a, js in where.items() if len(js) > 1)


def test_a_seed_group_made_of_two_experiments_runs_trains_in_one_part_and_one_process():
    plans, train = _main_and_budget_with_main_seed0_recorded()
    assert {r.experiment for r in train} == {"main", "budget"} and len(train) == 4  # the group is mixed
    # --chunk 2: each part one whole group (was: main's seed 1 of both groups, then budget's seed 0 of both,
    # so budget's records each had a group of one seed and no stability)
    assert _groups_split(_chunks(train, 2)) == []
    assert [len(p) for p in _chunks(train, 2)] == [2, 2]
    # two processes and one stack: whole seed groups per process (was: split by experiment as well)
    assert _groups_split([spread_runs(train, rank, 2) for rank in range(2)]) == []
    # one experiment alone is cut as before
    budget_alone = [r for r in plans[1].runs if r.arch == "topk"]
    assert [[r.seed for r in p] for p in _chunks(budget_alone, 1)] == [[0, 1], [0, 1]]


def _damage(store, rid):
    (store / "records").mkdir(parents=True, exist_ok=True)
    (store / "records" / f"{rid}.json").write_text("{")


@pytest.mark.parametrize("names", [["budget"], ["main", "budget"]])
def test_a_damaged_record_at_a_later_step_point_is_refused_before_anything_trains(tmp_path, monkeypatch, names):
    # step 4's record is missing, step 12's damaged: the run was selected at the missing one without reading the
    # damaged one, trained again, and the damaged file overwritten (records.has_record: neither counted nor
    # overwritten, the user decides)
    monkeypatch.setattr(reproduce, "_run_share", lambda *a, **k: pytest.fail("it went on to train"))
    store = tmp_path / "store"
    _damage(store, "budget__topk__standard__d256__k32__step12__s0")
    with pytest.raises(ValueError, match=r"step12__s0.json is not valid JSON.*move it away"):
        run_experiment(names[0], "smoke", str(store), device="cpu", archs=["topk"], tokens=24 * 128,
                       batch_size=128, also=names[1:])
    assert sorted(p.name for p in store.iterdir()) == ["records"]
    assert (store / "records" / "budget__topk__standard__d256__k32__step12__s0.json").read_text() == "{"


@pytest.mark.slow
def test_an_interruption_between_the_experiments_records_is_finished_without_overwriting(tmp_path, monkeypatch):
    settings = dict(device="cpu", archs=["topk"], sparsity=[32], tokens=24 * 128, batch_size=128, eval_batches=1,
                    ce_batches=1, ce_batch_size=2, verbose=False)
    store = tmp_path / "store"
    real = recording.write_record

    def interrupted(st, rec):  # Ctrl-C after main's records at the end of the run, before budget's
        if rec["experiment"] == "budget" and rec["steps"] == 24:
            raise KeyboardInterrupt
        return real(st, rec)

    monkeypatch.setattr(recording, "write_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment("main", "smoke", str(store), also=["budget"], **settings)
    monkeypatch.setattr(recording, "write_record", real)
    before = {p.name: p.read_bytes() for p in (store / "records").iterdir()}
    assert len(before) == 4 + 8  # main's 4; budget's 4 at steps 4 and 12
    written = run_experiment("main", "smoke", str(store), also=["budget"], **settings)
    # only budget's 4 at the end of the run are written; the 12 records of the first call are kept byte for byte
    assert sorted(written) == sorted(f"budget__topk__{a}__d256__k32__step24__s{s}" for a in ("standard", "project")
                                     for s in (0, 1))
    assert {n: (store / "records" / n).read_bytes() for n in before} == before
    recs = {r["id"]: r for r in iter_records(store)}
    assert len(recs) == 16
    for rid in written:  # the group's stability is over both seeds
        assert recs[rid]["stability"]["n_runs"] == 2
    assert run_experiment("main", "smoke", str(store), also=["budget"], **settings) == []
    assert json.loads((store / "records" / f"{written[0]}.json").read_text()) == recs[written[0]]


def test_no_part_starts_once_the_time_limit_has_passed(capsys):
    # the GPU pipeline passes --time-limit 1 when 40 s or fewer are left: the first part started anyway (no pace
    # yet) and trained past the deadline
    import time
    from types import SimpleNamespace

    from dictionary_learning_aligned.reproduce.run import _time_for

    part = list(shared_plans(["main"], "small")[0].runs[:6])
    ctx = SimpleNamespace(time_limit=1.0, t0=time.monotonic() - 30.0, rank=0, world_size=1)
    assert not _time_for(ctx, part, 0.0, [part, part])
    assert ("time limit: 1 s (--time-limit is in seconds) passed before the first part started; 12 dictionaries "
            "are left for a later call of "
            "the same command") in capsys.readouterr().out
    ctx.t0 = time.monotonic()  # within the limit, the first part starts without a pace
    assert _time_for(ctx, part, 0.0, [part])
