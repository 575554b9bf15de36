"""The reproduction: experiment grids as data, and one tiny grid end to end on the real SmolLM2."""
import json

import pytest

from dictionary_learning_aligned import experiments
from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment, resolve
from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import main, run_experiment, spread_runs, trainer_config


def test_every_paper_experiment_resolves_at_every_scale():
    figs = set()
    for name, exp in EXPERIMENTS.items():
        figs |= set(exp.figures)
        for scale in experiments.SCALES:
            plan = resolve(name, scale)
            assert plan.runs and len({(r.arch, r.alignment, r.alignment_penalty, r.dict_size, r.sparsity_value,
                                       r.seed) for r in plan.runs}) == len(plan.runs)
            if scale == "paper":
                assert plan.model == exp.paper_model and plan.offline_note == ""
            else:
                assert plan.model == exp.offline_model and "offline substitute" in plan.offline_note
    assert figs >= {2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20}
    main_small = resolve("main", "small")
    assert main_small.tokens == 100_000_000 and {r.seed for r in main_small.runs} == {0, 1, 2}
    assert main_small.recipe.name == "saebench" and main_small.recipe.batch_size == 2048
    assert resolve("main", "smoke").recipe.name == "scaled"
    assert {r.arch for r in main_small.runs} == {"relu", "topk", "batchtopk", "panneal"}
    with pytest.raises(ValueError, match="unknown experiment"):
        resolve("nope", "small")
    with pytest.raises(ValueError, match="unknown scale"):
        resolve("main", "huge")


def test_trainer_configs_differ_only_by_alignment():
    plan = resolve("main", "small")
    runs = [r for r in plan.runs if r.arch == "topk" and r.seed == 0 and r.sparsity_value == 64]
    std, ali = (trainer_config(r, 576, 2441, plan) for r in sorted(runs, key=lambda r: r.alignment or ""))
    assert std.pop("trainer") == "TopKTrainer" and ali.pop("trainer") == "AlignedTopKTrainer"
    assert ali.pop("alignment") == "project" and std == ali and std["k"] == 64


def test_saebench_recipe_sets_lr_and_fixed_warmups_capped_for_short_runs():
    plan = resolve("main", "small")
    steps = -(-plan.tokens // plan.recipe.batch_size)
    assert steps == 48_829
    by_arch = {r.arch: trainer_config(r, 576, steps, plan) for r in plan.runs}
    for cfg in by_arch.values():
        assert cfg["lr"] == 3e-4 and cfg["warmup_steps"] == 1000 and cfg["decay_start"] == int(0.8 * steps)
    assert by_arch["relu"]["sparsity_warmup_steps"] == 5000 == by_arch["panneal"]["sparsity_warmup_steps"]
    assert by_arch["topk"]["threshold_start_step"] == 1000 and by_arch["panneal"]["anneal_start"] == 10_000
    short = trainer_config(plan.runs[0], 576, 400, plan)  # a short run keeps a valid schedule
    assert short["warmup_steps"] == 100 and short["sparsity_warmup_steps"] == 100 and short["decay_start"] == 320
    smoke = resolve("main", "smoke")
    assert "lr" not in trainer_config(smoke.runs[0], 64, 24, smoke)  # the scaled recipe keeps trainer defaults
    with pytest.raises(ValueError, match="unknown recipe"):
        run_experiment("main", "smoke", "/nonexistent-store", device="cpu", recipe="fast")


def test_spread_runs_gives_each_process_whole_stacks():
    runs = list(resolve("main", "small").runs)
    shares = [spread_runs(runs, r, 2) for r in range(2)]
    assert sorted(map(id, shares[0] + shares[1])) == sorted(map(id, runs))  # disjoint and complete
    assert [len(s) for s in shares] == [36, 36]
    archs = [{r.arch for r in s} for s in shares]
    assert not archs[0] & archs[1] and all(len(a) == 2 for a in archs)  # two whole stacks each
    assert {"topk", "batchtopk"} - archs[0] and {"topk", "batchtopk"} - archs[1]  # TopK-family on both
    assert spread_runs(runs, 0, 1) == runs
    eight = [spread_runs(runs, r, 8) for r in range(8)]  # fewer stacks than processes: whole seed groups
    assert sum(map(len, eight)) == 72 and all(len(s) == 9 for s in eight)
    assert all(len({(r.arch, r.alignment, r.sparsity_value) for r in s}) * 3 == len(s) for s in eight)
    for bad in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match="rank must be"):
            spread_runs(runs, *bad)


@pytest.mark.slow
def test_grid_spread_over_two_processes_matches_one_process(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    job = str(root / "tests" / "spread_job.py")
    for cmd in ([sys.executable, job, str(tmp_path / "one"), str(tmp_path / "cache_one")],
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", job,
                 str(tmp_path / "two"), str(tmp_path / "cache_two")]):
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    one = {r["id"]: r for r in iter_records(tmp_path / "one")}
    two = {r["id"]: r for r in iter_records(tmp_path / "two")}
    assert len(one) == 8 + 2 * 2 * 2 and set(one) == set(two)  # tinysteps: standard/aligned x 2 seeds x 2 points
    assert {(r["trained_on"]["process"], r["arch"]) for r in two.values()} == {(0, "relu"), (1, "topk")}
    for rid, r in two.items():  # the shared ReLU runs were trained once, in process 0, and recorded for both
        assert ("trained_for" in r) == (r["arch"] == "relu"), rid
        if r["experiment"] == "tinysteps" and r["steps"] == 8:
            twin = two[rid.replace("tinysteps__", "tinyspread__").replace("__step8", "")]
            assert r["paths"]["dictionary"] == twin["paths"]["dictionary"] and r["metrics"] == twin["metrics"]
    assert len(list((tmp_path / "cache_two").glob("*/meta.json"))) == 1  # harvested once, by process 0
    for rid, a in one.items():
        b = two[rid]
        assert b["trained_on"]["processes"] == 2 and a["trained_on"]["processes"] == 1
        for key in ("frac_variance_explained", "l0", "mse"):
            if key in a["metrics"]:
                assert b["metrics"][key] == pytest.approx(a["metrics"][key], rel=1e-5, abs=1e-7), (rid, key)
        assert b["stability"]["mcs"] == pytest.approx(a["stability"]["mcs"], abs=1e-6)


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_skip(tmp_path, monkeypatch, capsys):
    tiny = Experiment("tiny", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=2,
                      tokens={"smoke": 2048, "small": 2048, "paper": 2048})
    monkeypatch.setitem(EXPERIMENTS, "tiny", tiny)
    ids = run_experiment("tiny", "smoke", str(tmp_path), device="cpu", batch_size=256, eval_batches=2,
                         ce_batches=1, ce_batch_size=2, time_limit=1e6)
    assert len(ids) == 4  # standard and aligned, two seeds
    # one part and a time limit: the log says the limit cannot stop inside it, and how to cut it
    assert "time limit: this call trains one part, which starts or not as a whole; --chunk N" in capsys.readouterr().out
    recs = list(iter_records(tmp_path))
    assert {r["alignment"] for r in recs} == {None, "project"}
    for r in recs:
        assert r["train_tokens"] == 2048 and r["metrics"]["l0"] > 0 and r["stability"]["n_runs"] == 2
        assert len(r["per_feature"]["alignment_score"]) == 256 == len(r["per_feature"]["max_cos_other_seeds"])
        assert (tmp_path / r["paths"]["dictionary"] / "ae.safetensors").is_file()
        assert "offline substitute" in r["offline_note"]
    aligned = [r for r in recs if r["alignment"]]
    assert all(abs(a - 1) < 1e-4 for r in aligned for a in r["per_feature"]["alignment_score"])
    before = {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()}
    assert main(["tiny", "--scale", "smoke", "--results", str(tmp_path)]) == 0  # nothing left to do
    assert {p.name: p.read_bytes() for p in (tmp_path / "records").iterdir()} == before
    assert main(["tiny", "--scale", "smoke", "--results", str(tmp_path), "--archs", "relu"]) == 2  # not in grid


@pytest.mark.slow
def test_cached_activations_are_harvested_once(tmp_path, monkeypatch):
    tiny = Experiment("tinyc", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=1,
                      dict_sizes=(128, 256), tokens={"smoke": 1024, "small": 1024, "paper": 1024})
    monkeypatch.setitem(EXPERIMENTS, "tinyc", tiny)
    # dict sizes are not shrunk at smoke scale for this check: resolve at "small"
    ids = run_experiment("tinyc", "small", str(tmp_path / "a"), device="cpu", batch_size=256, eval_batches=1,
                         ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"))
    assert len(ids) == 4
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    stamp = meta.stat().st_mtime_ns
    assert json.loads(meta.read_text())["tokens"] == 1024
    run_experiment("tinyc", "small", str(tmp_path / "b"), device="cpu", batch_size=256, eval_batches=1,
                   ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"))
    assert meta.stat().st_mtime_ns == stamp  # reused, not rebuilt
    recs = list(iter_records(tmp_path / "b"))
    assert {r["dict_size"] for r in recs} == {128, 256} and all(r["train_tokens"] == 1024 for r in recs)


@pytest.mark.slow
def test_longer_run_over_epochs_of_a_cache_and_seed_subset(tmp_path, monkeypatch):
    tiny = Experiment("tinye", figures=(), archs=("topk",), sparsity={"topk": (8, 32)}, seeds=2,
                      tokens={"smoke": 512, "small": 512, "paper": 512})
    monkeypatch.setitem(EXPERIMENTS, "tinye", tiny)
    with pytest.raises(ValueError, match=r"sparsity \[16\] not all in the tinye grid's values \[8.0, 32.0\]"):
        run_experiment("tinye", "smoke", str(tmp_path), device="cpu", sparsity=[16])
    assert main(["tinye", "--results", str(tmp_path), "--sparsity", "8,x"]) == 2
    for empty in (",", ""):  # not "no filter" (the whole grid)
        assert main(["tinye", "--results", str(tmp_path), "--sparsity", empty]) == 2
    with pytest.raises(ValueError, match="needs --cache"):
        run_experiment("tinye", "smoke", str(tmp_path), device="cpu", epochs=2)
    with pytest.raises(ValueError, match="seeds must be"):
        run_experiment("tinye", "smoke", str(tmp_path), device="cpu", seeds=3)
    ids = run_experiment("tinye", "smoke", str(tmp_path), device="cpu", batch_size=256, eval_batches=1,
                         ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"), tokens=1536, epochs=3,
                         seeds=1, sparsity=[8])
    assert len(ids) == 2  # seed 0 and k 8 only, standard and aligned
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    assert json.loads(meta.read_text())["tokens"] == 512  # 1536 tokens = 3 passes over 512 harvested
    for r in iter_records(tmp_path):
        assert (r["train_tokens"], r["unique_tokens"], r["epochs"], r["plan_tokens"]) == (1536, 512, 3, 512)
        assert r["seed"] == 0 and r["stability"] is None and r["sparsity"]["value"] == 8


def test_gzipped_records_are_read_and_count_as_done(tmp_path):
    import gzip

    from dictionary_learning_aligned.records import REQUIRED, has_record, write_record

    rec = {k: None for k in REQUIRED}
    rec.update({"schema": 1, "id": "x__topk__standard__d8__k4__s0", "experiment": "x", "arch": "topk"})
    path = write_record(tmp_path, rec)
    assert [r["id"] for r in iter_records(tmp_path)] == [rec["id"]]
    path.with_suffix(".json.gz").write_bytes(gzip.compress(path.read_bytes()))
    with pytest.raises(ValueError, match="same record"):
        list(iter_records(tmp_path))
    path.unlink()
    assert has_record(tmp_path, rec["id"]) and [r["id"] for r in iter_records(tmp_path, arch="topk")] == [rec["id"]]
    (tmp_path / "records" / "bad.json.gz").write_bytes(b"not gzip")
    with pytest.raises(ValueError, match="bad.json.gz is not valid JSON"):
        list(iter_records(tmp_path))


def test_chunks_keep_seed_groups_together():
    from dictionary_learning_aligned.experiments import resolve
    from dictionary_learning_aligned.reproduce.recording import _gid
    from dictionary_learning_aligned.reproduce.selection import _chunks

    runs = [r for r in resolve("main", "small").runs if r.arch == "topk"]  # 3 k x 2 alignments x 3 seeds
    assert [len(p) for p in _chunks(runs, None)] == [18]
    for n, sizes in ((6, [6, 6, 6]), (7, [6, 6, 6]), (2, [3] * 6), (9, [9, 9])):
        parts = _chunks(runs, n)
        assert [len(p) for p in parts] == sizes
        assert [r for p in parts for r in p] == runs  # same order, nothing lost
        for p in parts:  # a group's seeds are never split
            for r in p:
                assert sum(_gid(q) == _gid(r) for q in p) == 3
    with pytest.raises(ValueError, match="chunk must be >= 1"):
        run_experiment("main", "smoke", "/nonexistent-store", device="cpu", chunk=0)


def test_refused_inputs_are_named_before_the_model_loads_and_create_nothing(tmp_path, monkeypatch):
    from dictionary_learning_aligned import models
    from dictionary_learning_aligned.reproduce.recording import _rid

    monkeypatch.setattr(models, "load_language_model", lambda *a, **k: pytest.fail("model loaded"))
    with pytest.raises(ValueError, match="arch"):  # a refused grid filter leaves no store behind
        run_experiment("main", "smoke", str(tmp_path / "new"), device="cpu", archs=["nope"])
    assert not (tmp_path / "new").exists()
    (tmp_path / "afile").write_text("mine")
    with pytest.raises(ValueError, match="is a file, not a results store folder"):
        run_experiment("main", "smoke", str(tmp_path / "afile"), device="cpu")
    with pytest.raises(FileExistsError, match="is a file, not a folder of activation caches"):
        run_experiment("main", "smoke", str(tmp_path / "s1"), device="cpu", cache=str(tmp_path / "afile"))
    plan = resolve("main", "smoke")
    foreign = tmp_path / "cache" / f"{plan.model}_L{plan.layer}_bundled_{plan.tokens}"
    foreign.mkdir(parents=True)
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not an activation cache"):
        run_experiment("main", "smoke", str(tmp_path / "s2"), device="cpu", cache=str(tmp_path / "cache"))
    assert (foreign / "notes.txt").read_text() == "mine" and (tmp_path / "afile").read_text() == "mine"
    assert not (tmp_path / "s1").exists() and not (tmp_path / "s2").exists()
    store = tmp_path / "s3"
    (store / "records").mkdir(parents=True)
    damaged = store / "records" / f"{_rid(plan.runs[0])}.json"
    damaged.write_text('{"schema": 1, "id": "tru')  # a truncated record is not counted as finished
    with pytest.raises(ValueError, match=f"{damaged.name} is not valid JSON.*move it away"):
        run_experiment("main", "smoke", str(store), device="cpu")
    assert damaged.read_text() == '{"schema": 1, "id": "tru'


def test_a_user_error_on_process_0_is_the_same_kind_on_the_others():
    from dictionary_learning_aligned.pipeline import _same_kind

    e = _same_kind("FileExistsError", "x exists")
    assert type(e) is FileExistsError and "x exists" in str(e) and "process 0" in str(e)
    assert type(_same_kind("ValueError", "bad")) is ValueError
    assert type(_same_kind("KeyError", "k")) is RuntimeError and type(_same_kind("Nope", "?")) is RuntimeError


def test_demo_reads_gemma_at_the_gemma_experiments_layer():
    from dictionary_learning_aligned.experiments import GEMMA3_LAYER
    from dictionary_learning_aligned.pipeline import default_layer

    assert default_layer("gemma-3-270m") == GEMMA3_LAYER == 8 and default_layer("smollm2-135m-instruct") == 12


def test_the_recorded_command_names_the_torchrun_launcher(monkeypatch, tmp_path):
    from dictionary_learning_aligned.reproduce import command as reproduce_cli

    seen = []
    monkeypatch.setattr(reproduce_cli, "run_config", lambda cfg, command: seen.append(command) or [])
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert reproduce_cli.main(["main", "--scale", "small", "--results", str(tmp_path)]) == 0
    assert seen == [f"torchrun --nproc_per_node 2 -m dictionary_learning_aligned reproduce main --scale small "
                    f"--results {tmp_path}"]


def test_help_says_how_smoke_shrinks_the_grids():
    """``reproduce -h`` lists the small/paper grids; it also says what smoke trains instead, and that matches the
    smoke plans (a newcomer read "dict_size 4096; 3 seed(s)" and expected that on a CPU)."""
    from dictionary_learning_aligned.experiments import EXPERIMENTS, resolve
    from dictionary_learning_aligned.reproduce import experiments_help

    text = " ".join(experiments_help().split())
    assert "shrink to one dict_size of 256, at most 2 seeds and the two extreme sparsity values" in text
    for name in EXPERIMENTS:
        plan = resolve(name, "smoke")
        assert {r.dict_size for r in plan.runs} == {256} and max(r.seed for r in plan.runs) <= 1
        for arch in {r.arch for r in plan.runs}:
            assert len({r.sparsity_value for r in plan.runs if r.arch == arch}) <= 2
