"""Quiet console output (dictionary_learning_aligned/console.py): progress lines outside a terminal, third-party
warnings hidden or logged, printed chatter captured, --verbose bringing it back."""

import io
import sys
import warnings

import pytest

from dictionary_learning_aligned import console

SITE = "/usr/lib/python3/site-packages/somepkg/mod.py"


@pytest.fixture(autouse=True)
def restore_console():
    saved_state, saved_show = dict(console._state), warnings.showwarning
    yield
    console._state.update(saved_state)
    warnings.showwarning = saved_show


def _warn(message, category, filename):
    warnings.showwarning(message, category, filename, 1)


def test_progress_outside_a_terminal_writes_lines_not_carriage_returns():
    out = io.StringIO()
    bar = console.progress(total=3, desc="training", unit="step", file=out)
    for _ in range(3):
        bar.update(1)
    bar.close()
    text = out.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert lines and all(line.startswith("training") for line in lines)
    assert "3/3" in lines[-1]


def test_line_stream_skips_empty_and_repeated_redraws():
    out = io.StringIO()
    stream = console.LineStream(out)
    for s in ("\rphase 1/3", "\rphase 1/3", "\r", "\rphase 2/3   "):
        stream.write(s)
    assert out.getvalue() == "phase 1/3\nphase 2/3\n"


def test_chatter_classification():
    assert console.is_chatter("LanguageModel is deprecated; use X", UserWarning, "/home/me/demo.py")
    assert console.is_chatter("old", FutureWarning, SITE)
    assert not console.is_chatter("old", FutureWarning, "/home/me/project/figures/saebench_results.py")
    assert not console.is_chatter("bad data", UserWarning, SITE)
    convergence = type("ConvergenceWarning", (UserWarning,), {})
    assert console.is_chatter("no convergence", convergence, SITE)


def _shown_warnings():
    shown = []
    warnings.showwarning = lambda message, *args, **kwargs: shown.append(str(message))
    return shown


def test_quiet_mode_logs_chatter_and_shows_our_warnings(tmp_path):
    log = tmp_path / "run.log"
    shown = _shown_warnings()
    console.configure(verbose=False, log_file=log)
    _warn("LanguageModel is deprecated; use TransformersModel", UserWarning, "/x/demo.py")
    _warn("sklearn says later", FutureWarning, SITE)
    _warn("2 SAEBench files left out", UserWarning, "/x/figures/saebench_results.py")
    assert shown == ["2 SAEBench files left out"]
    logged = log.read_text()
    assert "LanguageModel is deprecated" in logged and "sklearn says later" in logged


def test_verbose_shows_chatter():
    shown = _shown_warnings()
    console.configure(verbose=True)
    assert console.is_verbose()
    _warn("LanguageModel is deprecated; use TransformersModel", UserWarning, "/x/demo.py")
    assert shown == ["LanguageModel is deprecated; use TransformersModel"]


def test_configure_refuses_a_missing_log_folder_and_changes_nothing(tmp_path):
    console.configure(verbose=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        console.configure(verbose=False, log_file=tmp_path / "missing" / "run.log")
    assert console.is_verbose()


def test_captured_output_sends_prints_to_the_log(tmp_path, capsys):
    console.configure(verbose=False)
    log = tmp_path / "run.log"
    with console.captured_output(log):
        print("Test accuracy for 2: 0.5")
    assert "Test accuracy" not in capsys.readouterr().out
    assert "Test accuracy for 2: 0.5" in log.read_text()


def test_captured_output_passes_through_when_verbose(tmp_path, capsys):
    console.configure(verbose=True)
    log = tmp_path / "run.log"
    with console.captured_output(log):
        print("Test accuracy for 2: 0.5")
    assert "Test accuracy for 2: 0.5" in capsys.readouterr().out
    assert not log.exists()


def test_captured_output_restores_stdout_after_an_error(tmp_path):
    console.configure(verbose=False)
    before = sys.stdout
    with pytest.raises(RuntimeError):
        with console.captured_output(tmp_path / "run.log"):
            raise RuntimeError("boom")
    assert sys.stdout is before
