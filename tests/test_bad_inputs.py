"""Bad inputs get clear errors, and nothing a user made is lost or changed."""
import json
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from dictionary_learning_aligned import (AlignedStandardTrainer, AutoEncoder, CheckpointError, Dictionary,
                                         StandardTrainer, trainSAE)
from dictionary_learning_aligned.demo import DemoConfig, run_demo
from dictionary_learning_aligned.evaluation import evaluate
from dictionary_learning_aligned.io import (claim_new_path, prepare_output_dir, read_json, write_json,
                                            write_json_new)

CFG = dict(activation_dim=16, dict_size=32, layer=0, lm_name="m", warmup_steps=1, sparsity_warmup_steps=2, seed=0,
           device="cpu")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_overwrite_never_wipes_current_or_unrelated_folders(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    (work / "results.json").write_text("{}")  # even if it looks like a run
    monkeypatch.chdir(work)
    for target in (".", "", str(tmp_path)):
        with pytest.raises(ValueError, match="refusing to overwrite|empty"):
            prepare_output_dir(target, overwrite=True)
    unrelated = tmp_path / "photos"
    unrelated.mkdir()
    (unrelated / "a.jpg").write_text("x")
    with pytest.raises(ValueError, match="this library did not create it"):
        prepare_output_dir(unrelated, overwrite=True)
    assert (work / "notes.txt").read_text() == "mine" and (unrelated / "a.jpg").exists()
    old_run = prepare_output_dir(tmp_path / "old_run")
    (old_run / "results.json").write_text("{}")
    assert [p.name for p in prepare_output_dir(old_run, overwrite=True).iterdir()] == [".dictionary_learning_aligned"]


def test_output_path_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(NotADirectoryError):
        prepare_output_dir(f)
    with pytest.raises(NotADirectoryError):
        prepare_output_dir(f / "sub")
    assert f.read_text() == "keep"


def test_failed_config_with_overwrite_keeps_the_old_run(tmp_path, lowrank_data):
    out = tmp_path / "run"
    trainSAE(lowrank_data(batch=64, seed=1), [dict(trainer=StandardTrainer, steps=3, **{**CFG, "activation_dim": 32})],
             steps=3, save_dir=out, device="cpu")
    before = snapshot(out)
    for bad in ([dict(trainer="Nope", steps=3, **CFG)], [dict(trainer=StandardTrainer, steps=3, lr=0.0, **CFG)]):
        with pytest.raises(ValueError):
            trainSAE(lowrank_data(), bad, steps=3, save_dir=out, overwrite=True, device="cpu")
    assert snapshot(out) == before


def test_divergence_is_an_error_naming_trainer_and_step_and_nothing_is_saved(tmp_path):
    data = [torch.randn(32, 16) * 1e3 for _ in range(8)]
    with pytest.raises(FloatingPointError, match=r"trainer 0 \(StandardTrainer.*non-finite .* at step \d+"):
        trainSAE(data, [dict(trainer=StandardTrainer, steps=8, **{**CFG, "lr": 1e30})], steps=8,
                 save_dir=tmp_path / "r", save_steps=[0], device="cpu")
    assert not (tmp_path / "r" / "trainer_0" / "ae.safetensors").exists()
    # the checkpoint written before the divergence is still loadable
    Dictionary.from_pretrained(tmp_path / "r" / "trainer_0" / "checkpoints" / "step_0")


def test_nonfinite_batches_can_be_skipped_and_counted(lowrank_data):
    good = [x for _, x in zip(range(4), lowrank_data())]
    data = good[:2] + [torch.full((256, 32), float("nan"))] + good[2:]
    (tr,) = trainSAE(data, [dict(trainer=StandardTrainer, steps=4, **{**CFG, "activation_dim": 32})], steps=4,
                     skip_nonfinite_batches=True, device="cpu")
    assert tr.skipped_batches == 1 and tr.steps_done == 4 and all(torch.isfinite(p).all() for p in tr.ae.parameters())


def test_written_files_have_normal_permissions(tmp_path):
    p = write_json(tmp_path / "x.json", {"a": 1})
    assert stat.S_IMODE(os.stat(p).st_mode) & 0o044 == 0o044  # group/other readable, like any new file
    with pytest.raises(ValueError):
        write_json(tmp_path / "y.json", {"a": float("nan")})
    assert not (tmp_path / "y.json").exists() and not list(tmp_path.glob(".y.json*"))


def test_write_json_new_never_replaces_a_file(tmp_path):
    (tmp_path / "run_5.json").write_text("mine")
    (tmp_path / "run_5_2.json").mkdir()  # a folder holds a name too
    first = write_json_new(tmp_path / "run_5.json", {"a": 1})
    second = write_json_new(tmp_path / "run_5.json", {"a": 2})
    assert (first.name, second.name) == ("run_5_3.json", "run_5_4.json")
    assert (tmp_path / "run_5.json").read_text() == "mine"
    assert [json.loads(p.read_text())["a"] for p in (first, second)] == [1, 2]
    assert claim_new_path(tmp_path / "x.json.gz").name == "x.json.gz"
    assert claim_new_path(tmp_path / "x.json.gz").name == "x_2.json.gz"
    with pytest.raises(ValueError):  # nothing is claimed for a value that cannot be written
        write_json_new(tmp_path / "run_5.json", {"a": float("nan")})
    assert not (tmp_path / "run_5_5.json").exists() and not list(tmp_path.glob(".run_5*"))


def test_claim_new_path_keeps_a_hidden_name_hidden(tmp_path):
    """The number goes before the first dot after a name's leading dots: ``.state.json`` -> ``.state_2.json``, not
    ``_2.state.json`` (a visible name); a name without a suffix gets it at its end."""
    for name, second in ((".state.json", ".state_2.json"), (".json", ".json_2"), ("..x.gz", "..x_2.gz"),
                         ("run", "run_2"), ("a.b.json", "a_2.b.json")):
        assert claim_new_path(tmp_path / name).name == name
        assert claim_new_path(tmp_path / name).name == second


def test_write_json_new_from_many_threads_keeps_every_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: write_json_new(tmp_path / "run_7.json", {"i": i}), range(32)))
    assert len(set(paths)) == 32 and sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)
    assert sorted(json.loads(p.read_text())["i"] for p in paths) == list(range(32))


def test_write_json_new_from_many_processes_keeps_every_file(tmp_path):
    """Four processes, started together, each write 8 summaries under one name at the same moment."""
    import subprocess
    import sys
    import time

    io_file = Path(__file__).resolve().parents[1] / "dictionary_learning_aligned" / "io.py"  # stdlib only: starts fast
    child = ("import importlib.util, sys, time\n"
             "spec = importlib.util.spec_from_file_location('dla_io', sys.argv[1])\n"
             "io = importlib.util.module_from_spec(spec); spec.loader.exec_module(io)\n"
             "time.sleep(max(0.0, float(sys.argv[3]) - time.time()))\n"
             "for i in range(8): io.write_json_new(sys.argv[2], {'pid': sys.argv[4], 'i': i})\n")
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", child, str(io_file), str(tmp_path / "run_9.json"), str(start),
                               str(k)]) for k in range(4)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 4
    got = sorted((d["pid"], d["i"]) for d in map(read_json, tmp_path.glob("run_9*.json")))
    assert got == [(str(k), i) for k in range(4) for i in range(8)]


def test_trainer_input_types():
    tr = StandardTrainer(steps=10, **CFG)
    tr.update(0, torch.randn(8, 16, dtype=torch.float64))  # cast, not a dtype crash
    with pytest.raises(TypeError, match="floating-point tensor"):
        tr.update(1, [[0.0] * 16])
    with pytest.raises(ValueError, match="expects activations \\[batch, 16\\]"):
        tr.update(1, torch.randn(16))
    with pytest.raises(ValueError, match="needs an alignment mode"):
        AlignedStandardTrainer(steps=10, alignment="none", **CFG)
    with pytest.raises(ValueError, match="l1_penalty"):
        StandardTrainer(steps=10, l1_penalty=float("inf"), **CFG)


def test_evaluate_inputs():
    ae = AutoEncoder(16, 32)
    x = torch.randn(64, 16)
    assert evaluate(ae, x)["n_tokens"] == 64  # a bare tensor is one batch, not 64 batches of one row
    assert evaluate(ae, x) == evaluate(ae, [x])
    assert evaluate(ae, torch.ones(5, 16))["frac_variance_explained"] is None
    with pytest.raises(ValueError, match="NaN"):
        evaluate(ae, torch.full((4, 16), float("nan")))
    with pytest.raises(ValueError, match="shape"):
        evaluate(ae, torch.randn(2, 3, 15))


def test_checkpoint_with_absurd_config_fails_fast(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = AutoEncoder(8, 16).save(tmp_path / "a")
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["dictionary_config"] = json.dumps({"activation_dim": 10**6, "dict_size": 10**7, "alignment": None})
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="shape"):
        Dictionary.from_pretrained(path)
    meta["format_version"] = "abc"
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="format_version"):
        Dictionary.from_pretrained(path)
    text = tmp_path / "t"
    text.mkdir()
    (text / "ae.pt").write_text("hello")
    (text / "config.json").write_text('{"activation_dim": 8, "dict_size": 16}')
    with pytest.raises(CheckpointError, match="not a (readable torch file|torch checkpoint)"):
        Dictionary.from_pretrained(text)
    good = AutoEncoder(8, 16).save(tmp_path / "g")
    assert Dictionary.from_pretrained(good, dtype="float16").W_dec.dtype == torch.float16
    with pytest.raises(ValueError, match="dtype"):
        Dictionary.from_pretrained(good, dtype="int8")
    with pytest.raises(ValueError, match="invalid device"):
        Dictionary.from_pretrained(good, device="bogus")


@pytest.mark.parametrize("kw,msg", [
    (dict(device="bogus"), "invalid device"),
    (dict(device="cuda:0"), "no CUDA GPU") if not torch.cuda.is_available() else (dict(ctx_len=1), "ctx_len"),
    (dict(ctx_len=1), "ctx_len must be >= 2"),
    (dict(eval_batches=0), "eval_batches"),
    (dict(ce_batch_size=0), "ce_batch_size"),
    (dict(ce_batches=-1), "ce_batches"),
    (dict(tokens=100), "need at least 2"),
    (dict(dict_size=0), "dict_size"),
    (dict(l1_penalty=-1.0), "l1_penalty"),
    (dict(lr=0.0), "lr must be"),
    (dict(corpus=""), "corpus is empty"),
    (dict(model=""), "model name is empty"),
    (dict(max_norm_multiple=0.5), "max_norm_multiple"),
    (dict(arch="relu,bogus"), "unknown arch"),
])
def test_demo_settings_fail_before_anything_is_written(tmp_path, kw, msg):
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=msg):
        run_demo(DemoConfig(out=str(out), **kw))
    assert not out.exists()


@pytest.mark.parametrize("content,msg", [("", "contains no text"), (b"\xff\xfe bad", "not valid UTF-8"),
                                          ('{"title": "x"}\n', "no string 'text' field")])
def test_demo_bad_corpus_fails_before_anything_is_written(tmp_path, content, msg):
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=msg):
        run_demo(DemoConfig(out=str(tmp_path / "out"), corpus=str(corpus)))
    assert not (tmp_path / "out").exists()


def test_demo_corpus_without_held_out_text(tmp_path):
    corpus = tmp_path / "one.jsonl"
    corpus.write_text(json.dumps({"text": "a single document of text"}) + "\n")
    with pytest.raises(ValueError, match="contains no text"):
        run_demo(DemoConfig(out=str(tmp_path / "out"), corpus=str(corpus)))
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# A suite of bad inputs aimed at an existing run: each is refused with a clear error and the run is unchanged.

RUN_CFG = dict(trainer=StandardTrainer, steps=6, activation_dim=32, dict_size=64, layer=0, lm_name="m",
               warmup_steps=1, sparsity_warmup_steps=2, seed=0)


@pytest.fixture
def existing_run(tmp_path, lowrank_data):
    out = tmp_path / "run"
    trainSAE(lowrank_data(), [RUN_CFG], steps=6, save_dir=out, save_steps=[2], device="cpu")
    return out


def _bad_version(out):
    cfg = json.loads((out / "trainer_0" / "config.json").read_text())
    cfg["library_version"] = "7.0.0"
    (out / "trainer_0" / "config.json").write_text(json.dumps(cfg))


BAD_RUNS = {
    "unknown trainer": (dict(trainer_configs=[{**RUN_CFG, "trainer": "Nope"}], overwrite=True), ValueError, "unknown trainer"),
    "zero lr": (dict(trainer_configs=[{**RUN_CFG, "lr": 0.0}], overwrite=True), ValueError, "lr must be"),
    "negative steps": (dict(steps=-3, overwrite=True), ValueError, "steps must be a positive"),
    "float steps": (dict(steps=2.5, overwrite=True), ValueError, "steps must be a positive"),
    "k out of range": (dict(trainer_configs=[{**{k: v for k, v in RUN_CFG.items() if k != "sparsity_warmup_steps"},
                                              "trainer": "TopKTrainer", "k": 65}], overwrite=True),
                       ValueError, "k must be an integer"),
    "argument of another trainer": (dict(trainer_configs=[{**RUN_CFG, "trainer": "TopKTrainer", "k": 4}],
                                         overwrite=True), ValueError, "bad arguments for TopKTrainer"),
    "alignment typo": (dict(trainer_configs=[{**RUN_CFG, "alignment": "projct"}], overwrite=True), ValueError,
                       "unknown alignment mode"),
    "resume with other config": (dict(trainer_configs=[{**RUN_CFG, "seed": 1}], resume=True), ValueError,
                                 "config differs"),
    "resume with more trainers": (dict(trainer_configs=[RUN_CFG, RUN_CFG], resume=True), ValueError, "not found"),
    "no overwrite": (dict(), FileExistsError, "already exists"),
    "wrong activation width": (dict(data=[torch.randn(8, 31)] * 6, overwrite=True), ValueError, "expect activations"),
    "NaN activations": (dict(data=[torch.full((8, 32), float("nan"))] * 6, overwrite=True), ValueError, "NaN"),
    "integer activations": (dict(data=[torch.ones(8, 32, dtype=torch.long)] * 6, overwrite=True), TypeError,
                            "floating-point"),
    "empty data with normalization": (dict(data=[], normalize_activations=True, overwrite=True), ValueError,
                                      "activation data is empty"),
    "config.json of another version": (dict(resume=True, _prepare=_bad_version), ValueError, "version 7.0.0"),
}


@pytest.mark.parametrize("name", list(BAD_RUNS))
def test_bad_inputs_leave_an_existing_run_unchanged(existing_run, lowrank_data, name):
    kwargs, exc, msg = BAD_RUNS[name]
    kwargs = dict(kwargs)
    prepare = kwargs.pop("_prepare", None)
    if prepare:
        prepare(existing_run)
    before = snapshot(existing_run)
    args = dict(data=lowrank_data(seed=3), trainer_configs=[RUN_CFG], steps=6, save_dir=existing_run, device="cpu")
    args.update(kwargs)
    with pytest.raises(exc, match=msg):
        trainSAE(**args)
    assert snapshot(existing_run) == before


def test_disk_full_during_checkpoint_keeps_the_previous_one(existing_run, lowrank_data, monkeypatch):
    import errno

    import safetensors.torch

    before = snapshot(existing_run)
    real = safetensors.torch.save_file

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    with pytest.raises(OSError, match="No space left"):
        trainSAE(lowrank_data(), [RUN_CFG], steps=6, save_dir=existing_run, save_steps=[4], resume=True,
                 device="cpu")
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert snapshot(existing_run) == before  # no partial checkpoint, nothing else touched
    assert not list((existing_run / "trainer_0" / "checkpoints").glob(".tmp*"))
    Dictionary.from_pretrained(existing_run / "trainer_0" / "checkpoints" / "step_2")


def test_unwritable_output_folder(tmp_path):
    with pytest.raises((PermissionError, NotADirectoryError)):
        prepare_output_dir("/proc/self/no_such_dir/out")
    with pytest.raises(PermissionError, match="cannot"):
        prepare_output_dir("/proc/dla_test_out")


def test_checkpoint_from_a_newer_format_is_refused(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = AutoEncoder(8, 16).save(tmp_path / "a")
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={**meta, "format_version": "99"})
    with pytest.raises(CheckpointError, match="newer format version 99"):
        Dictionary.from_pretrained(path)


# ---------------------------------------------------------------------------------------------------------------
# Command lines: python -m dictionary_learning_aligned.train


@pytest.fixture
def small_cache(tmp_path):
    from dictionary_learning_aligned.cache import build_cache

    g = torch.Generator().manual_seed(0)
    return build_cache([torch.randn(256, 32, generator=g) for _ in range(4)], tmp_path / "cache", 1024,
                       {"model": "m", "layer": 3})


def _train(cache, out, *extra):
    from dictionary_learning_aligned import train

    return train.main(["--cache", str(cache), "--out", str(out), "--batch-size", "256", "--alignment", "none",
                       "--dict-size", "64", "--steps", "2", *extra])


def test_train_cli_spread_overwrite_with_a_bad_config_keeps_the_old_run(small_cache, tmp_path, capsys):
    out = tmp_path / "run"
    assert _train(small_cache, out, "--placement", "spread") == 0
    before = snapshot(out)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"trainer": "Nope", "dict_size": 64}]))
    for placement in ("spread", "ddp"):
        assert _train(small_cache, out, "--placement", placement, "--overwrite", "--config", str(bad)) == 2
        assert "unknown trainer 'Nope'" in capsys.readouterr().err
        assert snapshot(out) == before


@pytest.mark.parametrize("args,msg", [
    (["--device", "bogus"], "--device: invalid device 'bogus'"),
    (["--device", "cuda:0"], "no CUDA GPU") if not torch.cuda.is_available() else (["--tokens", "0"], "--tokens"),
    (["--tokens", "0"], "--tokens must be >= 1"),
    (["--dict-size", "abc"], "--dict-size must be a comma list of int"),
    (["--seeds", "0,x"], "--seeds must be a comma list of int"),
    (["--save-steps", "1,x"], "--save-steps must be a comma list of int"),
    (["--config", "no_such.json"], "--config no_such.json: cannot read"),
    (["--model", "another-model"], "model='m', not 'another-model'"),
    (["--layer", "5"], "layer=3, not 5"),
])
def test_train_cli_bad_arguments_fail_with_one_line_before_any_work(small_cache, tmp_path, capsys, monkeypatch, args,
                                                                    msg):
    from dictionary_learning_aligned import train

    monkeypatch.setattr(train, "harvest_cache", lambda *a, **k: pytest.fail("harvested despite a bad argument"))
    before = snapshot(small_cache)
    assert _train(small_cache, tmp_path / "out", *args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err
    assert not (tmp_path / "out").exists() and snapshot(small_cache) == before


def test_train_cli_cache_path_that_is_not_a_cache_is_refused_before_loading_a_model(tmp_path, capsys, monkeypatch):
    from dictionary_learning_aligned import train

    monkeypatch.setattr(train, "harvest_cache", lambda *a, **k: pytest.fail("harvested into a folder of the user's"))
    afile = tmp_path / "afile"
    afile.write_text("keep")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    for cache in (afile, mine):
        assert _train(cache, tmp_path / "out", "--tokens", "100") == 2
        assert "is not an activation cache" in capsys.readouterr().err
    assert afile.read_text() == "keep" and (mine / "notes.txt").read_text() == "keep"
    assert _train(tmp_path / "c", afile) == 2  # --out is a file
    assert "not a folder" in capsys.readouterr().err and afile.read_text() == "keep"


# ---------------------------------------------------------------------------------------------------------------
# python -m figures on broken results stores


@pytest.mark.parametrize("content,msg", [("[1, 2]", "not a record .*JSON list"),
                                          ('{"schema": 1, "id": "x"}', "not a complete record: it lacks")])
def test_figures_cli_record_that_is_not_a_record(tmp_path, capsys, content, msg):
    from figures.__main__ import main

    (tmp_path / "records").mkdir(parents=True)
    (tmp_path / "records" / "x.json").write_text(content)
    for argv in (["table"], ["claims"], ["--out", str(tmp_path / "figs")]):
        assert main([*argv, "--results", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "x.json" in err and "\n" not in err and re.search(msg, err)


# ---------------------------------------------------------------------------------------------------------------
# python -m benchmarks run: user mistakes exit 2 with one line, before any model is loaded


def test_benchmarks_cli_user_mistakes_exit_2_with_one_line(tmp_path, capsys, monkeypatch):
    from benchmarks.__main__ import main
    from benchmarks.saebench import bridge

    monkeypatch.setattr(bridge, "load_hooked_transformer", lambda *a, **k: pytest.fail("model loaded"))
    ae = AutoEncoder(16, 32)
    d = tmp_path / "dicts" / "trainer_0"
    ae.save(d)
    (d / "config.json").write_text(json.dumps({"trainer": {"lm_name": "m", "layer": 0}}))
    empty_store = tmp_path / "store"
    (empty_store / "records").mkdir(parents=True)
    (tmp_path / "nodict").mkdir()
    out = ["--out", str(tmp_path / "out")]
    cases = [
        (["--dictionaries", str(tmp_path / "missing"), *out], "is not a folder"),
        (["--dictionaries", str(tmp_path / "nodict"), *out], "no ae.safetensors"),
        (["--dictionaries", str(d)], "--out is required"),
        (["--results-store", str(empty_store)], "no record"),
        (["--dictionaries", str(d), *out, "--evals", "bogus"], "unknown evals"),
        (["--dictionaries", str(d), *out, "--evals", "core", "--device", "bogus"], "invalid device"),
        (["--dictionaries", str(d), *out, "--evals", "core", "--dtype", "int8"], "--dtype"),
        (["--dictionaries", str(d), *out, "--evals", "core", "--context", "0"], "--context must be a positive"),
        (["--dictionaries", str(d), *out, "--evals", "core", "--scr-n-values", "0,2"], "--scr-n-values"),
    ]
    for argv, msg in cases:
        assert main(["run", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and "\n" not in err, (argv, err)
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------
# python -m dictionary_learning_aligned.reproduce: bad settings fail before the model is loaded


@pytest.mark.parametrize("args,msg", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--eval-batches", "0"], "--eval-batches must be >= 1"),
    (["--ce-batches", "-1"], "--ce-batches must be >= 0"),
    (["--ce-batch-size", "0"], "--ce-batch-size must be >= 1"),
    (["--device", "bogus"], "invalid device 'bogus'"),
    (["--dict-sizes", "abc"], "--dict-sizes must be a comma list of integers"),
    (["--tokens", "0"], "tokens must be >= 1"),
    (["--epochs", "2"], "needs --cache"),
])
def test_reproduce_cli_bad_settings_fail_before_loading_the_model(tmp_path, capsys, monkeypatch, args, msg):
    from dictionary_learning_aligned import models, reproduce

    monkeypatch.setattr(models, "load_language_model", lambda *a, **k: pytest.fail("model loaded"))
    assert reproduce.main(["main", "--scale", "smoke", "--results", str(tmp_path / "store"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg in err and "\n" not in err


def test_shared_argument_parsers():
    import torch

    from dictionary_learning_aligned.dtypes import autocast_dtype, comma_list

    assert comma_list(" 4096, 16384 ,", int, "--dict-sizes") == [4096, 16384]
    assert comma_list("relu,,topk") == ["relu", "topk"] and comma_list("") == []
    assert comma_list("0.02,64", float) == [0.02, 64.0]
    with pytest.raises(ValueError, match="--seeds must be a comma list of integers, got '0,x'"):
        comma_list("0,x", int, "--seeds")
    with pytest.raises(ValueError, match="--sparsity must be a comma list of numbers, got ','"):
        comma_list(",", float, "--sparsity", allow_empty=False)
    assert autocast_dtype("auto", "cpu") == torch.float32 and autocast_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="autocast must be one of"):
        autocast_dtype("float16", "cpu")
