"""``--out`` of ``python -m figures``, ``figures ablations`` and ``figures budget``: a path that is a file is an
error naming it (exit 2, no traceback), and a file of the user's under a figure's name (``ablations.pdf`` in a
paper's folder) is never written over; figures drawn before (by matplotlib, as every committed figure) are."""

import pytest

from dictionary_learning_aligned.records import write_record
from figures.__main__ import main as figures_main
from figures.ablations import ablation_figure

from .test_ablations_budget import ablation_records


@pytest.fixture
def store(tmp_path):
    for r in ablation_records():
        write_record(tmp_path / "store", r)
    return tmp_path / "store"


@pytest.mark.parametrize("argv", [["ablations"], ["budget"], ["--only", "fig2"]])
def test_out_that_is_a_file_is_an_error_naming_it(tmp_path, store, capsys, argv):
    mine = tmp_path / "notes.txt"
    mine.write_text("mine")
    code = figures_main([*argv, "--results", str(store), "--out", str(mine)])
    err = capsys.readouterr().err
    assert code == 2 and f"--out {mine} is a file" in err and "Traceback" not in err
    assert mine.read_text() == "mine"


def test_a_users_file_under_a_figures_name_is_not_written_over(tmp_path, capsys):
    out = tmp_path / "paper"
    out.mkdir()
    (out / "ablations.pdf").write_bytes(b"%PDF-1.5 my own figure, made by hand")
    res = ablation_figure(ablation_records(), out)
    assert not res.written and "ablations.pdf" in res.missing and "not drawn by matplotlib" in res.missing
    assert (out / "ablations.pdf").read_bytes() == b"%PDF-1.5 my own figure, made by hand"
    assert not (out / "ablations.png").exists()  # neither file of the pair is written


def test_a_figure_drawn_before_is_redrawn(tmp_path):
    first = ablation_figure(ablation_records(), tmp_path)
    again = ablation_figure(ablation_records()[:-3], tmp_path)  # e.g. after more records came in
    assert first.written and again.written and again.paths == first.paths


def test_help_usage_names_the_subcommands(capsys):
    """`python -m figures --help` shows every subcommand in its usage line, not only in the prose below it."""
    with pytest.raises(SystemExit) as e:
        figures_main(["--help"])
    assert e.value.code == 0
    usage = capsys.readouterr().out.split("\n\n")[0]
    for sub in ("claims", "table", "ablations", "budget"):
        assert sub in usage, (sub, usage)
