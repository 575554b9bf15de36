"""The command lines: one dispatcher, config dataclasses parsed by simple-parsing, every flag described, the old
entry points and flag names still accepted, the same device default everywhere."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest

from dictionary_learning_aligned import __main__ as dla_main
from dictionary_learning_aligned import cli
from dictionary_learning_aligned import reproduce, train
from dictionary_learning_aligned.demo import DemoConfig

ROOT = Path(__file__).resolve().parents[1]


def _help(capsys, fn, argv) -> str:
    with pytest.raises(SystemExit) as e:
        fn(argv)
    assert e.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("cls", [DemoConfig, train.TrainConfig, reproduce.ReproduceConfig])
def test_every_config_field_has_a_docstring_shown_as_help(cls, capsys):
    from simple_parsing.docstring import get_attribute_docstring

    missing = [f.name for f in dataclasses.fields(cls)
               if not get_attribute_docstring(cls, f.name).docstring_below.strip()]
    assert not missing, f"{cls.__name__} fields without a docstring: {missing}"
    text = _help(capsys, cli.config_parser("prog", cls).parse_args, ["--help"])
    for f in dataclasses.fields(cls):  # the docstring's first words are the flag's help
        words = " ".join(get_attribute_docstring(cls, f.name).docstring_below.split()[:3])
        assert words in " ".join(text.split()), (f.name, words)


@pytest.mark.parametrize("command", ["demo", "train", "reproduce"])
def test_each_command_describes_its_flags(command, capsys):
    out = _help(capsys, dla_main.main, [command, "--help"])
    assert f"python -m dictionary_learning_aligned {command}" in out
    assert "--batch-size" in out and "--device" in out and "--verbose" in out


def test_top_level_help_lists_the_commands(capsys):
    out = _help(capsys, dla_main.main, ["--help"])
    for name in ("demo", "train", "reproduce", "evaluate", "export"):
        assert f"{name}:" in out
    with pytest.raises(SystemExit) as e:
        dla_main.main(["nonsense"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_reproduce_help_describes_the_experiments_and_scales(capsys):
    out = _help(capsys, reproduce.main, ["--help"])
    for name in reproduce.EXPERIMENTS:
        assert f"\n  {name} " in out
    assert "--scale" in out and "smoke (minutes on a CPU" in out and "--batch-size" in out


def test_old_flag_names_parse_to_the_same_settings():
    parse = lambda argv: cli.parse_config(train.build_parser(), argv)  # noqa: E731
    cfg = parse(["--cache", "c", "--out", "o", "--k", "32", "--dict-size", "64,128", "--overwrite", "--compile",
                 "--sparse-decode", "--l1-penalty", "0.1", "--save-steps", "3,6", "--preload", "no"])
    assert (cfg.k, cfg.dict_size, cfg.overwrite, cfg.compile, cfg.sparse_decode, cfg.l1_penalty, cfg.save_steps,
            cfg.preload) == (32, "64,128", True, True, True, 0.1, "3,6", "no")
    assert parse(["--cache", "c", "--out", "o"]).normalize is True  # as the committed results were trained
    assert parse(["--cache", "c", "--out", "o", "--normalize"]).normalize is True
    assert parse(["--cache", "c", "--out", "o", "--no-normalize"]).normalize is False
    rcfg = cli.parse_config(reproduce.build_parser(), ["--no-preload", "main", "--scale", "small", "--chunk", "4"])
    assert (rcfg.experiment, rcfg.scale, rcfg.no_preload, rcfg.chunk) == ("main", "small", True, 4)
    dcfg = cli.parse_config(cli.config_parser("demo", DemoConfig), ["--k", "8", "--dict-size", "64", "--overwrite"])
    assert (dcfg.k, dcfg.dict_size, dcfg.overwrite) == (8, 64, True)


def test_bad_choice_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:
        train.main(["--cache", "c", "--out", "o", "--placement", "everywhere"])
    assert e.value.code == 2 and "invalid choice: 'everywhere'" in capsys.readouterr().err


def test_reproduce_unknown_experiment_is_refused_before_anything_is_written(tmp_path, capsys):
    assert reproduce.main(["nosuch", "--results", str(tmp_path / "store")]) == 2
    assert "unknown experiment 'nosuch'" in capsys.readouterr().err and not (tmp_path / "store").exists()


def test_export_without_its_module_says_so(monkeypatch, capsys):
    import importlib

    real = importlib.import_module

    def fake(name, *a, **k):
        if name == "dictionary_learning_aligned.interop":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert dla_main.main(["export", "--format", "saelens", "a", "b"]) == 2
    assert "needs dictionary_learning_aligned.interop" in capsys.readouterr().err


def test_device_default_is_cuda_when_available(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert cli.default_device() == "cuda" and cli.default_device(local_rank=1) == "cuda:1"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert cli.default_device() == "cpu" and cli.default_device(local_rank=1) == "cpu"
    from benchmarks.saebench.cli import build_parser

    assert build_parser().get_default("device") is None  # resolved by cli.default_device at run time


@pytest.mark.parametrize("argv", [["-m", "benchmarks", "--help"], ["-m", "dictionary_learning_aligned.train", "-h"],
                                  ["-m", "dictionary_learning_aligned.reproduce", "-h"],
                                  ["-m", "benchmarks.massive_tokens", "-h"]])
def test_module_entry_points_answer_help(argv):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout
