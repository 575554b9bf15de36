"""The sweep benchmark (benchmarks/sweep.py) on the CPU: a point is timed and profiled; the steady state with dead
features times the auxiliary-k loss; bad flags are refused."""
import pytest
import torch

from benchmarks import sweep


def test_a_point_is_timed_and_its_profile_written(tmp_path):
    prof = tmp_path / "one_stacked_8.txt"
    row = sweep.time_grid("one", "stacked", 8, "cpu", steps=1, warmup=1, profile=str(prof))
    assert row["dictionaries"] == 1 and row["dict_size"] == 4096 and row["step_ms"] > 0
    table = prof.read_text()
    assert "Name" in table and "aten::" in table  # the operator table of the profiled steps


@pytest.mark.parametrize("dead,fast", [(0.05, True), (0.2, False)])
def test_dead_fraction_times_the_auxiliary_loss(dead, fast, monkeypatch):
    # 0.05 * 4096 = 205 dead features <= k_aux = 288: the dead-set path; 0.2: the top-k path
    from dictionary_learning_aligned.trainers.top_k import TopKStackRule

    plans, plan = [], TopKStackRule._plan_aux

    def spy(rule, batch):
        plan(rule, batch)
        plans.append((rule.engine.step, rule.aux_on, rule.aux_fast))
    monkeypatch.setattr(TopKStackRule, "_plan_aux", spy)
    row = sweep.time_grid("one", "stacked", 8, "cpu", steps=2, warmup=1, dead=dead)
    assert row["dead"] == dead and "dead" in sweep.format_row(row)
    assert plans == [(1001, True, fast), (1002, True, fast), (1003, True, fast)]  # past threshold_start_step 1000


def test_mark_dead_marks_every_nth_dictionary_and_they_stay_dead():
    from benchmarks.speed import dictionary_learning_trainers
    from dictionary_learning_aligned.trainers import AlignedTopKTrainer, StandardTrainer

    kw = dict(steps=10, activation_dim=16, dict_size=64, layer=0, lm_name="t", device="cpu", warmup_steps=2)
    trs = [AlignedTopKTrainer(k=4, alignment="project", seed=j, **kw) for j in range(7)]
    trs.append(StandardTrainer(seed=9, sparsity_warmup_steps=None, **kw))
    lib, _ = dictionary_learning_trainers()
    if lib is not None:  # dictionary_learning's trainers keep their counters and bias under other names
        trs.append(lib.TopKTrainer(k=4, **kw))
    assert sweep.mark_dead(trs, 0.1, every=3) == len(trs[::3])
    for j, tr in enumerate(trs):
        counters = getattr(tr, "tokens_since_fired", getattr(tr, "num_tokens_since_fired", None))
        bias = tr.ae.b_enc if hasattr(tr.ae, "b_enc") else tr.ae.encoder.bias
        assert int((counters >= 10_000_000).sum()) == (6 if j % 3 == 0 else 0)
        assert int((bias == sweep.DEAD_BIAS).sum()) == (6 if j % 3 == 0 else 0)
    x = torch.randn(32, 16)
    for step in range(3):  # they stay dead
        trs[0].update(step, x)
    assert int((trs[0].tokens_since_fired >= 10_000_000).sum()) == 6
    with pytest.raises(ValueError, match="fraction"):
        sweep.mark_dead(trs, -0.1)


def test_grids_name_their_dictionaries():
    assert len(sweep.grid("main", 100)) == 72 and len(sweep.grid("main:relu", 100)) == 18
    assert {c["alignment"] for c in sweep.grid("main:topk:project", 100)} == {"project"}
    # the ablations' TopK stack: 6 x 16384, k 64 only (wide:topk mixes k 32, 64 and 128)
    abl = sweep.grid("ablations:topk", 100)
    assert len(abl) == 6 and {(c["k"], c["dict_size"]) for c in abl} == {(64, 16384)}
    assert sorted(str(c.get("alignment")) for c in abl) == ["None"] * 3 + ["project"] * 3
    # the sizes grid's TopK stack: 4 x 65536 (standard and aligned x 2 seeds), k 64
    sizes = sweep.grid("sizes:topk", 100)
    assert len(sizes) == 4 and {(c["k"], c["dict_size"]) for c in sizes} == {(64, 65536)}
    assert sorted((str(c.get("alignment")), c["seed"]) for c in sizes) == [("None", 0), ("None", 1), ("project", 0),
                                                                           ("project", 1)]


@pytest.mark.parametrize("argv", [["--grids", "huge"], ["--modes", "fast"], ["--steps", "0"],
                                  ["--batches", "2048,x"]])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", *argv])
    assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_dead_fraction_out_of_range_is_refused(capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", "--grids", "one", "--dead", "1.5"])
    assert e.value.code == 2 and "--dead must be a fraction in [0, 1]" in capsys.readouterr().err


def test_profile_path_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "prof"
    f.write_text("mine")
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", "--grids", "one", "--profile", str(f)])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err and f.read_text() == "mine"


def test_grids_of_different_stack_sizes_compile_afresh_in_one_process(monkeypatch, caplog):
    # two small grids (stacks of 4 and of 2 ReLU dictionaries) compiled one after the other, as `--grids main,one`
    # does; Dynamo's eager backend (tracing and guards as with Inductor, no code generation) keeps it quick, and a
    # recompile limit of 1 makes any version left over from the first grid refuse the second (without the reset
    # between points the second grid hit the limit and ran eagerly)
    from benchmarks import common
    from dictionary_learning_aligned.stacked import StackedTrainer

    monkeypatch.setattr(common, "matmul_peak", lambda device: 1.0)  # minutes of 8192^3 products on a CPU
    monkeypatch.setitem(sweep.GRIDS, "pairs", (("relu",), 64, 2, 16, "default"))
    monkeypatch.setitem(sweep.GRIDS, "single", (("relu",), 64, 1, 16, "default"))
    monkeypatch.setattr(StackedTrainer, "_compile", staticmethod(
        lambda fn, mode: fn if mode is None else torch.compile(fn, backend="eager", dynamic=False)))
    # Dynamo's own patch (monkeypatch's undo left torch._dynamo.config without recompile_limit: later compiles in
    # the process failed with "recompile_limit does not exist")
    with torch._dynamo.config.patch(recompile_limit=1, fail_on_recompile_limit_hit=True):
        res = sweep.run(["pairs", "single"], ["stacked-compiled"], [8], "cpu", steps=2, warmup=1,
                        check_parity=False)
    assert [r.get("dictionaries") for r in res["rows"]] == [4, 2], res["rows"]
    assert not [r["error"] for r in res["rows"] if "error" in r]
    assert "recompile_limit" not in caplog.text


@pytest.mark.parametrize("out", ["{tmp}", "{tmp}/file.json/x.json"])
def test_out_that_is_a_folder_or_under_a_file_is_refused_before_timing(out, tmp_path, monkeypatch, capsys):
    """As benchmarks.syncs and benchmarks.speed: refused at once (it failed after the first point's work)."""
    (tmp_path / "file.json").write_text("{}")
    monkeypatch.setattr(sweep, "run", lambda *a, **k: pytest.fail("the sweep ran"))
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", "--out", out.format(tmp=tmp_path)])
    assert e.value.code == 2 and "--out" in capsys.readouterr().err


def test_out_folder_is_made_before_timing(tmp_path, monkeypatch):
    out = tmp_path / "new" / "sweep.json"
    monkeypatch.setattr(sweep, "run", lambda *a, **k: {"rows": [{}]})
    assert sweep.main(["--device", "cpu", "--out", str(out)]) == 0 and out.parent.is_dir()
