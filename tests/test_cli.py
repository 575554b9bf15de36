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


def _run_config():
    from benchmarks.saebench.cli import RunConfig

    return RunConfig


@pytest.mark.parametrize("cls", [DemoConfig, train.TrainConfig, reproduce.ReproduceConfig, _run_config()])
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
    from benchmarks.saebench.cli import parse_run_config

    # benchmarks run: resolved by cli.default_device at run time
    assert parse_run_config(["--dictionaries", "d", "--out", "o"]).device is None


# every flag of `benchmarks run` before it became a dataclass, with a value (None: a switch)
RUN_FLAGS = {"--records": "x*", "--evals": "core,scr", "--out": "o", "--overwrite": None, "--model": "m",
             "--device": "cpu", "--dtype": "bfloat16", "--online": None, "--data-dir": "d", "--text-source": "t",
             "--sparse-probing-datasets": "a,b", "--scr-datasets": "a", "--tpp-datasets": "a", "--core-datasets": "a",
             "--autointerp-datasets": "a", "--budget": "smoke", "--context": "7", "--llm-batch-size": "3",
             "--core-batches": "1", "--core-sparsity-batches": "1", "--core-batch-prompts": "2", "--scr-train": "9",
             "--scr-test": "8", "--scr-epochs": "1", "--scr-n-values": "2,5", "--probe-train": "6", "--probe-test": "5",
             "--probe-k-values": "1,2", "--autointerp-tokens": "100", "--autointerp-latents": "2",
             "--judge-url": "http://u", "--judge-model": "j", "--judge-key-env": "K", "--seed": "3", "--verbose": None}


def test_benchmarks_run_keeps_every_flag_and_budget_precedence(monkeypatch):
    from benchmarks.saebench import cli as run_cli
    from benchmarks.saebench.runner import Budgets

    monkeypatch.setattr(run_cli, "find_dictionaries", lambda paths: list(paths))
    argv = ["--dictionaries", "d1", "d2"] + [a for k, v in RUN_FLAGS.items() for a in ([k] if v is None else [k, v])]
    cfg = run_cli.parse_run_config(argv)
    spec = run_cli.run_spec(cfg)
    assert spec.dictionaries == ["d1", "d2"] and spec.evals == ["core", "scr"] and spec.overwrite
    assert spec.budgets == Budgets(7, 3, 1, 1, 2, 9, 8, 1, (2, 5), 6, 5, (1, 2), 100, 2)
    assert spec.datasets["sparse_probing"] == ["a", "b"] and not spec.offline and spec.judge.model == "j"
    assert (spec.device, spec.dtype, spec.seed, spec.model_name) == ("cpu", "bfloat16", 3, "m")
    # no flag: offline probe sizes, else Budgets'; --budget smoke: the smoke table; a given flag wins over both
    plain = run_cli.run_spec(run_cli.parse_run_config(["--dictionaries", "d", "--out", "o"]))
    assert plain.budgets.probe_train == run_cli.OFFLINE_SIZES["probe_train"]
    assert plain.budgets.core_batches == Budgets().core_batches
    smoke = run_cli.run_spec(run_cli.parse_run_config(["--dictionaries", "d", "--out", "o", "--budget", "smoke",
                                                       "--context", "99", "--online"]))
    assert smoke.budgets.context == 99 and smoke.budgets.probe_train == run_cli.SMOKE_BUDGETS["probe_train"]
    online = run_cli.run_spec(run_cli.parse_run_config(["--dictionaries", "d", "--out", "o", "--online"]))
    assert online.budgets == Budgets()


def test_benchmarks_run_flags_help_and_bad_input(capsys):
    from benchmarks.saebench import cli as run_cli

    text = " ".join(_help(capsys, run_cli.parse_run_config, ["--help"]).split())
    for name, words in run_cli.BUDGET_FLAGS.items():  # the budget flags come from the table
        assert f"--{name.replace('_', '-')}" in text and words in text
    for argv, msg in ((["--out", "o"], "one of the arguments --dictionaries --results-store is required"),
                      (["--dictionaries", "d", "--results-store", "s"], "not allowed with")):
        with pytest.raises(SystemExit) as e:
            run_cli.parse_run_config(argv)
        assert e.value.code == 2 and msg in capsys.readouterr().err
    from benchmarks.__main__ import main as bench_main

    assert bench_main(["run", "--dictionaries", "d"]) == 2  # --out missing: one line, no traceback
    assert capsys.readouterr().err.strip() == "error: --out is required with --dictionaries"
    assert bench_main(["run", "--dictionaries", "d", "--out", "o", "--probe-k-values", "1,x"]) == 2
    assert "--probe-k-values must be a comma list of integers" in capsys.readouterr().err


def test_run_reporting_errors_is_the_one_error_handler(capsys):
    def fail(cfg):
        raise FileNotFoundError(f"no {cfg}")

    assert cli.run_reporting_errors(fail, "thing") == 2
    assert capsys.readouterr().err == "error: no thing\n"
    assert cli.run_reporting_errors(lambda cfg: 3, None) == 3 and cli.run_reporting_errors(lambda cfg: True, 0) == 0
    with pytest.raises(KeyError):  # not a user's error: the traceback stays
        cli.run_reporting_errors(lambda cfg: {}[cfg], "k")
    with pytest.raises(TypeError):  # outside the narrower set of train and benchmarks run
        cli.run_reporting_errors(lambda cfg: len(cfg), 1, cli.SETTING_ERRORS)


@pytest.mark.parametrize("argv", [["-m", "benchmarks", "--help"], ["-m", "dictionary_learning_aligned.train", "-h"],
                                  ["-m", "dictionary_learning_aligned.reproduce", "-h"],
                                  ["-m", "benchmarks.massive_tokens", "-h"]])
def test_module_entry_points_answer_help(argv):
    r = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "usage:" in r.stdout


@pytest.mark.parametrize("argv", [["main", "--time-limit", "--archs", "topk"], ["main", "--archs", "topk", "--also"],
                                  ["main", "--seeds", "--chunk", "4"]])
def test_an_optional_setting_given_without_its_value_is_refused(capsys, argv):
    # argparse reads a bare optional flag as "not set": the run went on with no time limit, or main alone
    with pytest.raises(SystemExit) as e:
        cli.parse_config(reproduce.build_parser(), argv)
    flag = next(a for a, b in zip(argv, argv[1:] + [None]) if a.startswith("--") and (b is None or b.startswith("--")))
    assert e.value.code == 2 and f"{flag} needs a value" in capsys.readouterr().err


def test_boolean_flags_still_stand_alone():
    cfg = cli.parse_config(train.build_parser(), ["--cache", "c", "--out", "o", "--normalize", "--steps", "5"])
    assert cfg.normalize is True and cfg.steps == 5
    assert cli.parse_config(train.build_parser(), ["--cache", "c", "--out", "o", "--no-normalize"]).normalize is False
