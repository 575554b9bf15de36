"""The sweep benchmark (benchmarks/sweep.py) on the CPU: a point is timed and profiled; bad flags are refused."""
import pytest

from benchmarks import sweep


def test_a_point_is_timed_and_its_profile_written(tmp_path):
    prof = tmp_path / "one_stacked_8.txt"
    row = sweep.time_grid("one", "stacked", 8, "cpu", steps=1, warmup=1, profile=str(prof))
    assert row["dictionaries"] == 1 and row["dict_size"] == 4096 and row["step_ms"] > 0
    table = prof.read_text()
    assert "Name" in table and "aten::" in table  # the operator table of the profiled steps


def test_grids_name_their_dictionaries():
    assert len(sweep.grid("main", 100)) == 72 and len(sweep.grid("main:relu", 100)) == 18
    assert {c["alignment"] for c in sweep.grid("main:topk:project", 100)} == {"project"}


@pytest.mark.parametrize("argv", [["--grids", "huge"], ["--modes", "fast"], ["--steps", "0"],
                                  ["--batches", "2048,x"]])
def test_bad_flags_are_refused(argv, capsys):
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", *argv])
    assert e.value.code == 2 and "error" in capsys.readouterr().err


def test_profile_path_that_is_a_file_is_refused(tmp_path, capsys):
    f = tmp_path / "prof"
    f.write_text("mine")
    with pytest.raises(SystemExit) as e:
        sweep.main(["--device", "cpu", "--grids", "one", "--profile", str(f)])
    assert e.value.code == 2 and "is a file" in capsys.readouterr().err and f.read_text() == "mine"
