"""benchmarks.multigpu on hand-made run folders: bad input is a one-line error (exit status 2), never a traceback."""

import json

import pytest

from benchmarks import multigpu


def make_run(path, world=1, losses=(1.0, 0.5, 0.25), tps=1000.0, k=8):
    path.mkdir(parents=True)
    (path / "run.json").write_text(json.dumps({
        "command": "x", "placement": "ddp", "world_size": world, "steps": 10, "cache": {"batch_size": 8},
        "trainers": [{"trainer": "T", "k": k}], "train_seconds": 1.0, "dictionary_tokens_per_s": tps}))
    (path / "trainer_0").mkdir()
    (path / "trainer_0" / "log.json").write_text(json.dumps(
        [{"step": 2 * i, "loss": v, "mse_loss": v} for i, v in enumerate(losses)]))
    return str(path)


def test_bad_runs_and_outputs_are_one_line_errors(tmp_path, capsys):
    one, many = make_run(tmp_path / "one"), make_run(tmp_path / "many", world=2)
    out = tmp_path / "report"
    assert multigpu.main(["--one", one, "--many", many, "--out", str(out)]) == 0
    assert multigpu.main(["--one", one, "--many", many, "--out", str(out)]) == 2  # no silent overwrite
    assert multigpu.main(["--one", one, "--many", many, "--out", str(out), "--overwrite"]) == 0
    (tmp_path / "file").write_text("x")
    bad = {"out is a file": ["--one", one, "--many", many, "--out", str(tmp_path / "file")],
           "swapped": ["--one", many, "--many", one, "--out", str(tmp_path / "r1")],
           "other trainer": ["--one", one, "--many", make_run(tmp_path / "k4", world=2, k=4),
                             "--out", str(tmp_path / "r2")],
           "zero tokens/s": ["--one", make_run(tmp_path / "z", tps=0.0), "--many", many, "--out", str(tmp_path / "r3")],
           "empty log": ["--one", one, "--many", make_run(tmp_path / "e", world=2, losses=()),
                         "--out", str(tmp_path / "r4")],
           "same labels": ["--one", one, one, "--many", many, many, "--labels", "a,a", "--out", str(tmp_path / "r5")]}
    for what, argv in bad.items():
        capsys.readouterr()
        assert multigpu.main(argv) == 2, what
        err = capsys.readouterr().err
        assert err.startswith("error: ") and err.count("\n") == 1, (what, err)
    (tmp_path / "nw").mkdir()
    (tmp_path / "nw" / "run.json").write_text(json.dumps({"train_seconds": 1}))
    assert multigpu.main(["--one", one, "--many", str(tmp_path / "nw"), "--out", str(tmp_path / "r6")]) == 2


def test_a_diverged_run_is_not_reported_as_agreeing(tmp_path):
    one = make_run(tmp_path / "one", losses=(1.0, 0.5, 0.0))
    many = make_run(tmp_path / "many", world=2, losses=(1.0, float("nan"), 0.0))
    assert multigpu.main(["--one", one, "--many", many, "--out", str(tmp_path / "r")]) == 0  # zero loss: no crash
    row = json.loads((tmp_path / "r" / "multigpu.json").read_text())["ddp"]["one"]["trainers"][0]
    assert row["max_abs_diff"] == pytest.approx(float("inf"))
