"""``python -m benchmarks run --artifacts DIR``: SAEBench's artifacts (LLM activations, SCR/TPP's LLM probes) kept
under DIR/<key>/ across runs and processes: the key, the reuse, two processes at once, a killed process."""

import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import time
from types import SimpleNamespace

import pytest
import torch

from benchmarks.saebench import artifacts as A

SMOL = "smollm2-135m-instruct"


def _sae(layer=3, model=SMOL, d_sae=128):
    """The part of a SAEBench SAE the key reads (``cfg``); ``d_sae`` stands for everything else of a dictionary."""
    return SimpleNamespace(cfg=SimpleNamespace(model_name=model, hook_name=f"blocks.{layer}.hook_resid_post",
                                               d_in=576, d_sae=d_sae))


def _key(ev="scr", names=("dla-local/bias_in_bios_class_set1",), sae=None, versions=None, **spec):
    from benchmarks.saebench.runner import Budgets, RunSpec

    budgets = Budgets(**spec.pop("budgets", {}))
    rs = RunSpec(dictionaries=[], evals=[ev], out="o", budgets=budgets, **spec)
    inputs = A.key_inputs(rs, ev, sae or _sae(), list(names), {"source": "converted"}, versions or {"torch": "2"})
    return A.key_of(inputs)


def test_key_changes_with_settings_and_data_not_with_the_dictionary(tmp_path):
    base = _key()
    assert _key(sae=_sae(d_sae=4096)) == base  # another dictionary on the same model and hook
    assert _key(budgets={"core_batches": 7, "scr_n_values": (2,)}) == base  # budgets SCR's artifacts don't use
    changed = [_key(budgets={"scr_train": 100}), _key(budgets={"context": 32}), _key(budgets={"llm_batch_size": 4}),
               _key(budgets={"scr_epochs": 3}), _key(dtype="bfloat16"), _key(seed=1), _key(sae=_sae(layer=4)),
               _key(sae=_sae(model="gemma-3-270m")), _key(ev="tpp"), _key(versions={"torch": "3"}),
               _key(names=["dla-local/amazon_reviews_multidomain"]), _key(ev="sparse_probing"), _key(device="cuda")]
    assert len({base, *changed}) == len(changed) + 1
    assert _key(device="cuda:1") == _key(device="cuda")
    # the same dataset name over other local files
    data = tmp_path / "data"
    shutil.copytree(A.D.SAMPLE_DATA_DIR, data)
    assert _key(data_dir=str(data)) == base
    bios = data / "bias_in_bios_sample" / "bios.jsonl.gz"
    bios.write_bytes(bios.read_bytes() + b"\n")  # one byte more
    assert _key(data_dir=str(data)) != base
    sp = dict(ev="sparse_probing", names=["dla-local/ag_news"])
    assert _key(**sp, budgets={"probe_k_values": (1,)}) != _key(**sp) != _key(**sp, budgets={"probe_test": 20})


def test_a_key_json_with_other_settings_is_refused(tmp_path):
    inputs = {"eval": "scr", "model": SMOL}
    with A.claim(tmp_path, "scr", inputs) as (folder, reused):
        assert not reused and folder == tmp_path / A.key_of(inputs) / "saebench"
    key_json = tmp_path / A.key_of(inputs) / "key.json"
    assert json.loads(key_json.read_text()) == inputs
    key_json.write_text(json.dumps({**inputs, "model": "other"}))
    with pytest.raises(ValueError, match="other settings"):
        with A.claim(tmp_path, "scr", inputs):
            pass


@pytest.fixture
def tiny_hooked(tiny_lm, smollm2_tokenizer):
    """``(HookedTransformer, info)`` of the random 3-layer LLaMA (d_model 64), served under SmolLM2's name."""
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    tl, check = hooked_transformer_from_hf(tiny_lm[0], smollm2_tokenizer)
    return tl, {"model_name": SMOL, "source": "converted", "logit_check": check}


@pytest.mark.slow
def test_a_second_run_reuses_the_first_runs_artifacts(tmp_path, tiny_hooked, monkeypatch):
    """Two runs with the same --artifacts: only the first dictionary of the first run computes SCR's LLM
    activations (and probes); the second dictionary and the second run load them."""
    import sae_bench.sae_bench_utils.activation_collection as ac

    from benchmarks.saebench import cli, runner
    from dictionary_learning_aligned.dictionary import AutoEncoder
    from tests.test_saebench import SMALL, _save

    torch.manual_seed(0)
    dicts = [str(_save(AutoEncoder(64, 128), tmp_path / "dicts" / f"trainer_{i}", layer=1)) for i in range(2)]
    real_run, real_collect, calls = runner.run, ac.get_all_llm_activations, []
    monkeypatch.setattr(runner, "run", lambda spec, **kw: real_run(
        type(spec)(**{**vars(spec), "model": tiny_hooked}), **kw))
    monkeypatch.setattr(ac, "get_all_llm_activations", lambda *a, **k: calls.append(1) or real_collect(*a, **k))
    art = tmp_path / "art"

    def run(out, dictionaries):
        calls.clear()
        assert cli.main(["--dictionaries", *dictionaries, "--out", str(tmp_path / out), "--evals", "scr", *SMALL,
                         "--scr-n-values", "2", "--artifacts", str(art)]) == 0
        return len(calls), [json.loads(p.read_text())["harness"]["artifacts"]
                            for p in sorted((tmp_path / out).glob("*/scr.json"))]

    first, used = run("o1", dicts)
    assert first == 4  # train and test split of SCR's 2 class pairs, for the first dictionary only
    assert [u["reused"] for u in used] == [False, True] and used[0]["key"] == used[1]["key"]
    folder = art / used[0]["key"]
    assert json.loads((folder / "key.json").read_text())["eval"] == "scr" and (folder / "scr.done").is_file()
    assert len(list((folder / "saebench" / "scr").rglob("*_activations.pt"))) == 2
    again, used2 = run("o2", dicts[1:])
    assert again == 0 and used2 == [{"key": used[0]["key"], "reused": True}]


def test_without_artifacts_the_runs_temporary_folder_is_used(tmp_path):
    from benchmarks.saebench import runner

    spec = runner.RunSpec(dictionaries=[], evals=["scr"], out=tmp_path / "o")
    with runner._artifacts("scr", spec, _sae(), tmp_path / "work", None, None, {}, {}) as (folder, reused):
        assert folder == tmp_path / "work" / "artifacts" and reused is None
    spec.artifacts = tmp_path / "art"
    with runner._artifacts("core", spec, _sae(), tmp_path / "work", None, None, {}, {}) as (folder, reused):
        assert folder == tmp_path / "work" / "artifacts" and reused is None  # core stores no artifacts
    assert not spec.artifacts.exists()


def _compute_or_read(root, inputs, barrier, log):
    """One of two processes started together: computes the artifacts slowly (a file written in two halves, 1 s
    apart) or reads them, and logs which it did and what it read."""
    barrier.wait()
    with A.claim(root, "scr", inputs) as (folder, reused):
        path = folder / "scr" / "acts.pt"
        if not reused:
            path.parent.mkdir(parents=True)
            with open(path, "w") as f:
                f.write("first half;")
                f.flush()
                time.sleep(1.0)
                f.write("second half")
        text = path.read_text()
    with open(log, "a") as f:
        f.write(f"{'read' if reused else 'computed'} {text}\n")


def _spawn(target, *args):
    p = multiprocessing.get_context("spawn").Process(target=target, args=args)
    p.start()
    return p


def test_two_processes_started_together_compute_once(tmp_path):
    inputs, log = {"eval": "scr", "model": SMOL}, tmp_path / "log.txt"
    barrier = multiprocessing.get_context("spawn").Barrier(2)
    procs = [_spawn(_compute_or_read, tmp_path / "art", inputs, barrier, log) for _ in range(2)]
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert sorted(log.read_text().splitlines()) == ["computed first half;second half", "read first half;second half"]


def _killed_while_computing(root, inputs, inside):
    with A.claim(root, "scr", inputs) as (folder, _):
        (folder / "scr").mkdir(parents=True)
        (folder / "scr" / "acts.pt").write_text("first half;")
        inside.set()
        time.sleep(600)


def test_a_killed_process_leaves_a_lock_the_next_one_recovers(tmp_path):
    inputs, root = {"eval": "scr", "model": SMOL}, tmp_path / "art"
    inside = multiprocessing.get_context("spawn").Event()
    p = _spawn(_killed_while_computing, root, inputs, inside)
    assert inside.wait(120)
    os.kill(p.pid, signal.SIGKILL)
    p.join(60)
    folder = root / A.key_of(inputs)
    assert (folder / "scr.lock").is_file() and not (folder / "scr.done").exists()
    with open(folder / "scr.lock") as f:  # the lock went with the process: taking it does not block
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    with A.claim(root, "scr", inputs) as (saebench, reused):
        assert not reused and not (saebench / "scr" / "acts.pt").exists()  # the half-written file was removed
    assert (folder / "scr.done").is_file()
    with A.claim(root, "scr", inputs) as (_, reused):
        assert reused


@pytest.mark.parametrize("under", [False, True])
def test_an_artifacts_path_that_is_a_file_is_refused_before_the_model_loads(tmp_path, capsys, monkeypatch, under):
    """--artifacts naming a file (or a path under one) exits 2 with one line before anything runs; the file and the
    output folder are left as they were."""
    from benchmarks.__main__ import main
    from benchmarks.saebench import bridge
    from dictionary_learning_aligned.dictionary import AutoEncoder

    monkeypatch.setattr(bridge, "load_hooked_transformer", lambda *a, **k: pytest.fail("model loaded"))
    d = tmp_path / "dicts" / "trainer_0"
    AutoEncoder(16, 32).save(d)
    (d / "config.json").write_text(json.dumps({"trainer": {"lm_name": "m", "layer": 0}}))
    user_file = tmp_path / "notes.txt"
    user_file.write_text("mine")
    art = user_file / "art" if under else user_file
    assert main(["run", "--dictionaries", str(d), "--out", str(tmp_path / "out"), "--evals", "core,scr",
                 "--artifacts", str(art)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --artifacts") and "not a folder" in err and "\n" not in err, err
    assert user_file.read_text() == "mine" and not (tmp_path / "out").exists()


def test_check_root_accepts_a_missing_folder_without_creating_it(tmp_path):
    assert A.check_root(tmp_path / "a" / "b") == tmp_path / "a" / "b"
    assert not (tmp_path / "a").exists()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="not a folder"):
        A.check_root(tmp_path / "dangling")
