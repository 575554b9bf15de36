import json

import pytest

from benchmarks import speed


def test_speed_benchmark_runs_and_reports(tmp_path):
    out = tmp_path / "speed.json"
    assert speed.main(["--device", "cpu", "--dict-sizes", "64", "--batch", "32", "--steps", "2", "--peak-n", "64",
                       "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert {r["arch"] for r in res["train"]} == {"relu", "topk", "batchtopk"}
    for r in res["train"]:
        assert r["standard"]["tokens_per_s"] > 0 and r["aligned"]["tokens_per_s"] > 0
        assert abs(r["standard"]["tflops"] - 12 * 576 * 64 * r["standard"]["tokens_per_s"] / 1e12) < 1e-9
    assert res["matmul_peak_tflops"] > 0 and "benchmarks.speed" in res["command"]
    # another width (e.g. 2304 for a Gemma-2-2B-sized dictionary)
    assert speed.main(["--device", "cpu", "--dict-sizes", "64", "--batch", "16", "--steps", "1", "--warmup", "0",
                       "--peak-n", "64", "--archs", "topk", "--activation-dim", "48", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["activation_dim"] == 48
    assert abs(res["train"][0]["standard"]["tflops"] - 12 * 48 * 64 * res["train"][0]["standard"]["tokens_per_s"]
               / 1e12) < 1e-9
    assert speed.main(["--device", "cpu", "--activation-dim", "0"]) == 2


def test_speed_benchmark_paths_and_dictionary_learning_comparison(tmp_path, monkeypatch, capsys):
    args = ["--device", "cpu", "--dict-sizes", "64", "--batch", "32", "--steps", "1", "--warmup", "1",
            "--peak-n", "64", "--archs", "relu,topk", "--paths", "plain,sparse", "--compare-dictionary-learning"]
    monkeypatch.setattr(speed, "dictionary_learning_trainers", lambda: (None, "dictionary-learning not importable"))
    out = tmp_path / "a.json"
    assert speed.main(args + ["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert [(r["arch"], r["path"]) for r in res["train"]] == [("relu", "plain"), ("relu", "sparse"),
                                                              ("topk", "plain"), ("topk", "sparse")]
    assert "not importable" in res["dictionary_learning_missing"] and "skipping" in capsys.readouterr().out
    assert all("dictionary_learning" not in r for r in res["train"])


def test_speed_benchmark_compares_with_dictionary_learning(tmp_path):
    trainers, version = speed.dictionary_learning_trainers()
    if trainers is None:
        pytest.skip(f"the comparison needs dictionary-learning 0.1.0 (scripts/install.sh installs it --no-deps): "
                    f"{version}")
    out = tmp_path / "a.json"
    args = ["--device", "cpu", "--dict-sizes", "64", "--batch", "32", "--steps", "1", "--warmup", "1",
            "--peak-n", "64", "--archs", "relu,topk", "--paths", "plain", "--compare-dictionary-learning"]
    assert speed.main(args + ["--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert "dictionary_learning_missing" not in res and len(res["train"]) == 2
    for r in res["train"]:
        assert r["dictionary_learning"]["tokens_per_s"] > 0 and r["speedup_vs_dl"]["standard"] > 0


def test_end_to_end_benchmark_harvests_once_and_trains_every_arch(tmp_path):
    out = tmp_path / "e2e.json"
    assert speed.main(["--device", "cpu", "--dict-sizes", "64", "--batch", "64", "--steps", "1", "--warmup", "1",
                       "--peak-n", "64", "--archs", "relu,batchtopk", "--e2e-tokens", "192", "--e2e-dict-size", "64",
                       "--out", str(out)]) == 0
    e = json.loads(out.read_text())["end_to_end"]["default"]
    assert e["tokens"] == 192 and e["dictionaries"] == 4 and e["tokens_per_s"] > 0


def test_failing_grid_point_is_recorded_and_partial_results_are_saved(tmp_path, monkeypatch, capsys):
    out = tmp_path / "s.json"
    real = speed.step_throughput
    saved = []

    def flaky(name, extra, *a, **k):  # the sparse decoder "has no kernel"; everything else runs
        if extra.get("sparse_decode"):
            raise RuntimeError("no kernel for this dtype")
        return real(name, extra, *a, **k)

    monkeypatch.setattr(speed, "step_throughput", flaky)
    write = speed.Path.write_text
    monkeypatch.setattr(speed.Path, "write_text", lambda self, s: (saved.append(json.loads(s)), write(self, s))[1])
    assert speed.main(["--device", "cpu", "--dict-sizes", "64", "--batch", "16", "--steps", "1", "--warmup", "0",
                       "--peak-n", "64", "--archs", "topk", "--paths", "plain,sparse", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    plain, sparse = res["train"]
    assert plain["standard"]["tokens_per_s"] > 0 and "no kernel" in sparse["error"] and "standard" not in sparse
    assert "failed: RuntimeError: no kernel" in capsys.readouterr().out
    assert res["complete"] is True
    # a file was written after each row, marked incomplete, before the final one
    assert [len(s["train"]) for s in saved] == [1, 2, 2] and [s["complete"] for s in saved] == [False, False, True]


TINY = ["--device", "cpu", "--dict-sizes", "64", "--batch", "16", "--steps", "1", "--warmup", "0", "--peak-n", "64",
        "--archs", "relu"]


def test_bad_arguments_fail_before_any_measurement(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speed, "matmul_peak", lambda *a, **k: (_ for _ in ()).throw(AssertionError("measured")))
    for extra in (["--steps", "0"], ["--peak-n", "0"], ["--batch", "0"], ["--paths", "bogus"], ["--e2e-paths", "x"],
                  ["--archs", "relu,nope"], ["--e2e-tokens", "8"], ["--out", str(tmp_path)]):
        assert speed.main(TINY + extra) == 2, extra
        assert "error:" in capsys.readouterr().err
    out = tmp_path / "new" / "dir" / "s.json"  # parent directories are created up front
    monkeypatch.undo()
    assert speed.main(TINY + ["--out", str(out)]) == 0 and json.loads(out.read_text())["complete"] is True


def test_failing_dictionary_learning_row_and_end_to_end_path_do_not_stop_the_run(tmp_path, monkeypatch, capsys):
    class Broken:  # dictionary_learning's trainers, all failing
        def __getattr__(self, name):
            def cls(**kw):
                raise RuntimeError("DL broke\nsecond line")
            return cls

    monkeypatch.setattr(speed, "dictionary_learning_trainers", lambda: (Broken(), "0.1.0"))

    def e2e(device, tokens, dict_size, archs, batch, paths_opts=None, corpus=None):
        if paths_opts.get("compile"):
            raise RuntimeError("no compiler\nhere")
        return {"tokens": 16, "dictionaries": 2, "dict_size": dict_size, "seconds": 1.0, "tokens_per_s": 16.0,
                "load_s": 0.0}

    monkeypatch.setattr(speed, "end_to_end_throughput", e2e)
    out = tmp_path / "s.json"
    assert speed.main(TINY + ["--compare-dictionary-learning", "--e2e-tokens", "16", "--e2e-paths", "compile,default",
                              "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    (row,) = res["train"]
    assert row["standard"]["tokens_per_s"] > 0 and "DL broke" in row["dictionary_learning_error"]
    assert "no compiler" in res["end_to_end"]["compile"]["error"] and res["end_to_end"]["default"]["tokens"] == 16
    assert res["complete"] is True
    table = capsys.readouterr().out
    assert "end to end (compile): failed: RuntimeError: no compiler here" in table


def test_all_rows_failing_exits_nonzero_with_one_line_per_row(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(speed, "step_throughput", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("a\nb")))
    out = tmp_path / "s.json"
    assert speed.main(TINY + ["--dict-sizes", "64,128", "--out", str(out)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[:2] for ln in lines[2:]] == [["relu", "64"], ["relu", "128"]]
    assert all(ln.endswith("failed: RuntimeError: a b") for ln in lines[2:])
    assert len(json.loads(out.read_text())["train"]) == 2 and not list(tmp_path.glob("*.tmp"))
