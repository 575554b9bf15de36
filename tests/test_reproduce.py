"""The reproduction: experiment grids as data, and one tiny grid end to end on the real SmolLM2."""
import json

import pytest

from dictionary_learning_aligned import experiments
from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment, resolve
from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import main, run_experiment, trainer_config


def test_every_paper_experiment_resolves_at_every_scale():
    figs = set()
    for name, exp in EXPERIMENTS.items():
        figs |= set(exp.figures)
        for scale in experiments.SCALES:
            plan = resolve(name, scale)
            assert plan.runs and len({(r.arch, r.alignment, r.dict_size, r.sparsity_value, r.seed)
                                      for r in plan.runs}) == len(plan.runs)
            if scale == "paper":
                assert plan.model == exp.paper_model and plan.offline_note == ""
            else:
                assert plan.model == exp.offline_model and "offline substitute" in plan.offline_note
    assert figs >= {2, 3, 4, 5, 6, 7, 8, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20}
    main_small = resolve("main", "small")
    assert main_small.tokens >= 20_000_000 and {r.seed for r in main_small.runs} == {0, 1, 2}
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


@pytest.mark.slow
def test_tiny_grid_end_to_end_and_skip(tmp_path, monkeypatch):
    tiny = Experiment("tiny", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=2,
                      tokens={"smoke": 2048, "small": 2048, "paper": 2048})
    monkeypatch.setitem(EXPERIMENTS, "tiny", tiny)
    ids = run_experiment("tiny", "smoke", str(tmp_path), device="cpu", batch_size=256, eval_batches=2,
                         ce_batches=1, ce_batch_size=2)
    assert len(ids) == 4  # standard and aligned, two seeds
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
    with pytest.raises(ValueError, match="needs a cache"):
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
    from dictionary_learning_aligned.reproduce import _chunks, _gid

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
