"""``python -m benchmarks run`` without ``--verbose``: what SAEBench and the model conversion print (probe
accuracies, their progress bars, warnings) stays off the console, as the flag's help says; ``--verbose`` shows it."""

import sys
from types import SimpleNamespace

import pytest

from benchmarks.saebench import bridge, runner
from dictionary_learning_aligned import console


def _chatter(*args, **kwargs):
    print("Test accuracy for 0: 0.5")
    print("Collecting activations: 100%", file=sys.stderr)


@pytest.fixture
def verbosity():
    """``set(verbose)`` configures the console; the default (quiet) is restored afterwards."""
    yield lambda verbose: console.configure(verbose=verbose)
    console.configure(verbose=False)


@pytest.mark.parametrize("verbose", [False, True])
def test_eval_output_is_shown_only_when_verbose(verbose, verbosity, monkeypatch, capsys):
    verbosity(verbose)
    monkeypatch.setattr(runner, "_run_one_inner", lambda *a: (_chatter(), ({"ok": 1}, ["d"]))[1])
    assert runner._run_one("core", None, None, "trainer_0", None, None, None, None) == ({"ok": 1}, ["d"])
    out, err = capsys.readouterr()
    assert ("Test accuracy" in out, "Collecting activations" in err) == (verbose, verbose)


@pytest.mark.parametrize("verbose", [False, True])
def test_model_conversion_output_is_shown_only_when_verbose(verbose, verbosity, monkeypatch, capsys):
    verbosity(verbose)

    def load(name, device, dtype):
        _chatter()
        return SimpleNamespace(cfg=SimpleNamespace()), {"model_name": name}

    monkeypatch.setattr(bridge, "load_hooked_transformer", load)
    spec = SimpleNamespace(model=None, device="cpu", dtype="float32")
    lines = []
    tl_model, info = runner._load_model(spec, [], "smollm2-135m-instruct", None, lines.append)
    assert info["model_name"] == "smollm2-135m-instruct"
    assert len(lines) == 2 and lines[0].startswith("building")  # the harness's own lines go through its log
    out, err = capsys.readouterr()
    assert ("Test accuracy" in out, "Collecting activations" in err) == (verbose, verbose)
