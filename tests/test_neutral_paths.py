"""Machine-neutral paths in SAEBench result files (the harness writes them, ``scripts/neutralize_paths.py`` rewrites
stores written before) and :func:`dictionary_learning_aligned.records.neutral_json`."""

import gzip
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from dictionary_learning_aligned import records
from dictionary_learning_aligned.dictionary import AutoEncoder

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "neutralize_paths.py"
RID = "main__relu__standard__d32__l1_penalty0.04__s0"


def test_neutral_json_walks_nested_values_and_keeps_other_fields(tmp_path):
    store = tmp_path / "store"
    value = {"a": {"p": [f"{store}/dictionaries/x", 3, None, True], f"{tmp_path}/k/key.txt": 1.5},
             "quoted": "see /usr/share/doc/readme"}
    assert records.neutral_json(value, store) == {
        "a": {"p": ["store/dictionaries/x", 3, None, True], "key.txt": 1.5}, "quoted": "see readme"}
    assert records.neutral_json(value, store, ("a",))["quoted"] == "see /usr/share/doc/readme"
    assert value["quoted"] == "see /usr/share/doc/readme"  # the caller's value is not changed


def test_machine_roots_map_to_the_store_name(tmp_path):
    store = tmp_path / "reproduce_small"
    text = "--results-store /tmp/store --x /tmp/res/store/dictionaries/d/trainer_3 --data-dir /tmp/sbdata"
    assert records.neutral_paths(text, store, machine_roots=["/tmp/store", "/tmp/res/store"]) == (
        "--results-store reproduce_small --x reproduce_small/dictionaries/d/trainer_3 --data-dir sbdata")
    assert records.neutral_paths(text, store) == "--results-store store --x trainer_3 --data-dir sbdata"


# ---------------------------------------------------------------------------------------------- the harness
def _store(tmp_path):
    """A results store under ``tmp_path`` with one record whose dictionary (layer 3, 16 -> 32) is saved in it."""
    store = tmp_path / "store"
    ae = AutoEncoder(16, 32)
    cfg = {"trainer": {"trainer_class": "StandardTrainer", "dict_class": "AutoEncoder", "layer": 3,
                       "lm_name": "smollm2-135m-instruct", "activation_dim": 16, "dict_size": 32}}
    ae.save(store / "dictionaries" / "main" / "trainer_0", config=cfg)
    rec = {k: None for k in records.REQUIRED}
    rec.update({"schema": 1, "id": RID, "paths": {"dictionary": "dictionaries/main/trainer_0"}})
    (store / "records").mkdir()
    (store / "records" / f"{RID}.json").write_text(json.dumps(rec))
    return store


def _fake_core(ev, spec, sae, name, scratch, artifacts, text_name, judge_cfg):
    """What SAEBench's core would return (a few numbers), without running it."""
    return {"eval_type_id": ev, "eval_config": {"dataset": text_name},
            "eval_result_metrics": {"reconstruction_quality": {"explained_variance": 0.5}}}, [text_name]


def _fake_harness(tmp_path, monkeypatch) -> list:
    """Make ``python -m benchmarks run`` use a tiny model and :func:`_fake_core` instead of SAEBench; returns the
    command-line arguments naming data and text (``tmp_path/sbdata``, ``tmp_path/texts/corpus.jsonl``) outside
    the store."""
    from benchmarks.saebench import data, runner

    (tmp_path / "sbdata").mkdir()
    text = tmp_path / "texts" / "corpus.jsonl"
    text.parent.mkdir()
    text.write_text("\n".join(json.dumps({"text": f"document {i} " * 30}) for i in range(5)))

    class TextFirst(data.LocalData):  # the fake eval reads no text: write it as a real eval would
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self.text_folder()

    model = torch.nn.Linear(1, 1)
    model.cfg = SimpleNamespace(d_model=16, n_layers=4)
    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda spec, **kw: real_run(
        type(spec)(**{**vars(spec), "model": (model, {"model_name": "smollm2-135m-instruct"})}), **kw))
    monkeypatch.setattr(runner, "_run_one", _fake_core)
    monkeypatch.setattr(data, "LocalData", TextFirst)
    return ["--evals", "core", "--data-dir", str(tmp_path / "sbdata"), "--text-source", str(text), "--device", "cpu"]


def test_harness_writes_results_and_summary_with_neutral_paths(tmp_path, monkeypatch):
    """A run over a store under ``tmp_path`` (data and text outside it) writes no ``tmp_path`` into its files."""
    from benchmarks.saebench import cli, data

    store = _store(tmp_path)
    args = _fake_harness(tmp_path, monkeypatch)
    assert cli.main(["--results-store", str(store), *args]) == 0

    written = [store / "saebench" / RID / "core.json", *(store / "saebench").glob("run_*.json")]
    assert len(written) == 2
    for path in written:
        assert str(tmp_path) not in path.read_text(), path
    res = json.loads(written[0].read_text())
    assert res["dictionary"]["path"] == "store/dictionaries/main/trainer_0"
    assert res["data"]["data_dir"] == "sbdata" and res["data"]["datasets"][data.TEXT]["source"] == "corpus.jsonl"
    assert "--results-store store " in res["harness"]["command"]
    assert res["eval_result_metrics"]["reconstruction_quality"]["explained_variance"] == 0.5
    summary = json.loads(written[1].read_text())
    assert summary["results"][0]["file"] == f"store/saebench/{RID}/core.json"


def test_runs_ending_in_the_same_second_keep_every_summary(tmp_path, monkeypatch):
    """Two runs on one store whose summaries are written in the same second (the clock is frozen) each keep theirs
    under its own ``run_*.json`` name; the first one's file is not replaced."""
    from benchmarks.saebench import cli, runner

    store = _store(tmp_path)
    args = _fake_harness(tmp_path, monkeypatch)
    monkeypatch.setattr(runner, "time", SimpleNamespace(time=lambda: 1_700_000_000.5))
    assert cli.main(["--results-store", str(store), *args]) == 0
    first = (store / "saebench" / "run_1700000000.json").read_bytes()
    assert cli.main(["--results-store", str(store), *args, "--overwrite"]) == 0
    summaries = sorted((store / "saebench").glob("run_*.json"))
    assert [p.name for p in summaries] == ["run_1700000000.json", "run_1700000000_2.json"]
    assert summaries[0].read_bytes() == first
    assert "--overwrite" in json.loads(summaries[1].read_text())["command"]


# ---------------------------------------------------------------------------------------------- the script
def _written_elsewhere(tmp_path):
    """A results store named ``reproduce`` whose files were written at /tmp/res/store on another machine: a record
    from before the rule (absolute corpus), a gzipped SAEBench result and a run summary."""
    store = tmp_path / "reproduce"
    (store / "records").mkdir(parents=True)
    rec = {k: None for k in records.REQUIRED}
    rec.update({"schema": 1, "id": RID, "corpus": "/tmp/gpu/files/mixed.jsonl.gz", "command": "python x"})
    (store / "records" / f"{RID}.json").write_text(json.dumps(rec, indent=2))
    res = {"eval_type_id": "autointerp",
           "eval_result_unstructured": {"0": {"logs": "see https://web.archive.org/web/2/x"}},
           "dictionary": {"path": "/tmp/res/store/dictionaries/d/trainer_3", "layer": 12},
           "data": {"data_dir": "/tmp/sbdata", "datasets": {"dla-local/x": {"files": ["/tmp/sbdata/x/a.jsonl.gz"]}}},
           "harness": {"command": "python -m benchmarks run --results-store /tmp/res/store"},
           "judge": {"base_url": "http://127.0.0.1:4/v1/x"}}
    (store / "saebench" / RID).mkdir(parents=True)
    (store / "saebench" / RID / "autointerp.json.gz").write_bytes(gzip.compress(json.dumps(res, indent=2).encode()))
    summary = {"command": "python -m benchmarks run --results-store /tmp/res/store", "evals": ["autointerp"],
               "results": [{"file": f"/tmp/res/store/saebench/{RID}/autointerp.json"}]}
    (store / "saebench" / "run_1.json").write_text(json.dumps(summary, indent=2))
    return store, res


def _script(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=ROOT)


def _contents(store):
    return {p: p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_script_rewrites_a_store_in_place_keeping_gzip(tmp_path):
    store, res = _written_elsewhere(tmp_path)
    before = _contents(store)
    dry = _script(store, "--machine-root", "/tmp/res/store", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert _contents(store) == before  # --dry-run changes nothing
    assert "3 of 3 files would change" in dry.stdout and "/tmp/sbdata -> sbdata" in dry.stdout

    done = _script(store, "--machine-root", "/tmp/res/store")
    assert done.returncode == 0, done.stderr
    assert "3 of 3 files changed" in done.stdout
    for p in _contents(store):
        text = gzip.decompress(p.read_bytes()).decode() if p.suffix == ".gz" else p.read_text()
        assert "/tmp/" not in text, p
    new = json.loads(gzip.decompress((store / "saebench" / RID / "autointerp.json.gz").read_bytes()))
    assert new["dictionary"]["path"] == "reproduce/dictionaries/d/trainer_3"
    assert new["data"]["datasets"]["dla-local/x"]["files"] == ["a.jsonl.gz"]
    assert new["harness"]["command"] == "python -m benchmarks run --results-store reproduce"
    # SAEBench's own text and the judge's URL are kept; nothing else changes
    assert new["eval_result_unstructured"] == res["eval_result_unstructured"] and new["judge"] == res["judge"]
    assert {k: v for k, v in new.items() if k not in ("dictionary", "data", "harness")} == \
        {k: v for k, v in res.items() if k not in ("dictionary", "data", "harness")}
    rec = json.loads((store / "records" / f"{RID}.json").read_text())
    assert rec["corpus"] == "mixed.jsonl.gz"
    summary = json.loads((store / "saebench" / "run_1.json").read_text())
    assert summary["results"][0]["file"] == f"reproduce/saebench/{RID}/autointerp.json"

    again = _script(store, "--machine-root", "/tmp/res/store")  # a second pass finds nothing to do
    assert again.returncode == 0 and "0 of 3 files changed" in again.stdout


def test_script_refuses_a_folder_that_is_not_a_results_store(tmp_path):
    (tmp_path / "saebench").mkdir()
    (tmp_path / "saebench" / "x.json").write_text('{"command": "/tmp/a/b"}')
    proc = _script(tmp_path)
    assert proc.returncode == 2
    assert "not a results store" in proc.stderr and "records" in proc.stderr
    assert (tmp_path / "saebench" / "x.json").read_text() == '{"command": "/tmp/a/b"}'


def test_script_rejects_a_relative_machine_root(tmp_path):
    (tmp_path / "records").mkdir()
    proc = _script(tmp_path, "--machine-root", "tmp/store")
    assert proc.returncode == 2 and "absolute" in proc.stderr


def _corrupt_gzip() -> bytes:
    """Gzip data whose deflate stream is damaged (``zlib.error`` when read, not ``EOFError``)."""
    data = bytearray(gzip.compress(bytes(range(256)).hex().encode() * 20))
    data[30:60] = bytes(b ^ 0xFF for b in data[30:60])
    return bytes(data)


@pytest.mark.parametrize("name,content", [("z_bad.json", b'{"schema": 1, "id": "x"'),
                                          ("z_bad.json.gz", _corrupt_gzip()),
                                          ("z_nan.json", b'{"schema": 1, "id": "x", "corpus": "/tmp/res/store/a", '
                                                         b'"loss": NaN}')])
def test_script_refusing_one_file_changes_no_file(tmp_path, name, content):
    store, _ = _written_elsewhere(tmp_path)
    (store / "records" / name).write_bytes(content)  # sorted after the record that would be rewritten
    before = _contents(store)
    proc = _script(store, "--machine-root", "/tmp/res/store")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert name in proc.stderr and "nothing was changed" in proc.stderr
    assert _contents(store) == before


def test_script_refuses_the_root_as_machine_root(tmp_path):
    store, _ = _written_elsewhere(tmp_path)
    before = _contents(store)
    proc = _script(store, "--machine-root", "/")
    assert proc.returncode == 2 and "file-system root" in proc.stderr
    assert _contents(store) == before


def test_script_leaves_links_and_foreign_json_alone_and_keeps_permissions(tmp_path):
    store, _ = _written_elsewhere(tmp_path)
    outside = tmp_path / "elsewhere.json"
    outside.write_text('{"schema": 1, "id": "y", "corpus": "/tmp/res/store/a/b"}')
    (store / "records" / "linked.json").symlink_to(outside)
    foreign = store / "records" / "other_tool.json"
    foreign.write_text('{"command": "/usr/bin/tool --in /data/x"}')
    rec = store / "records" / f"{RID}.json"
    rec.chmod(0o640)
    proc = _script(store, "--machine-root", "/tmp/res/store")
    assert proc.returncode == 0, proc.stderr
    assert "skipped records/linked.json" in proc.stdout and "skipped records/other_tool.json" in proc.stdout
    assert (store / "records" / "linked.json").is_symlink()
    assert outside.read_text() == '{"schema": 1, "id": "y", "corpus": "/tmp/res/store/a/b"}'
    assert foreign.read_text() == '{"command": "/usr/bin/tool --in /data/x"}'
    assert json.loads(rec.read_text())["corpus"] == "mixed.jsonl.gz" and rec.stat().st_mode & 0o777 == 0o640


def test_script_refuses_to_replace_a_read_only_file(tmp_path):
    store, _ = _written_elsewhere(tmp_path)
    rec = store / "records" / f"{RID}.json"
    rec.chmod(0o444)
    before = _contents(store)
    proc = _script(store, "--machine-root", "/tmp/res/store")
    assert proc.returncode == 2 and "read-only" in proc.stderr and rec.name in proc.stderr
    assert _contents(store) == before and rec.stat().st_mode & 0o777 == 0o444
    assert _script(store, "--machine-root", "/tmp/res/store", "--dry-run").returncode == 0  # a dry run may look


def test_script_refuses_a_machine_root_that_matches_no_path(tmp_path):
    store, _ = _written_elsewhere(tmp_path)
    before = _contents(store)
    proc = _script(store, "--machine-root", "/tmp/res/stor")  # mistyped: the paths would lose their folders
    assert proc.returncode == 2 and "/tmp/res/stor matched no path" in proc.stderr
    assert _contents(store) == before
    dry = _script(store, "--machine-root", "/tmp/res/stor", "--dry-run")
    assert dry.returncode == 0 and "warning: --machine-root /tmp/res/stor matched no path" in dry.stdout
