"""``train``'s default harvest layer follows the model (one rule, :func:`.pipeline.default_layer`, shared with the
demo), an explicit ``--layer`` wins, and the chosen layer is printed with the run's settings."""

import json
import sys

import pytest
import torch

from dictionary_learning_aligned import cli, pipeline, train


def _parse(*argv):
    return cli.parse_config(train.build_parser(), ["--cache", "acts", "--out", "runs/x", *argv])


@pytest.mark.parametrize("argv, layer", [
    (["--model", "gemma-3-270m"], 8),            # the paper's relative depth for Gemma-3-270M
    (["--model", "Google/Gemma-3-270M"], 8),     # the same model by its Hugging Face name, any case
    (["--model", "gemma-3-270m", "--layer", "5"], 5),  # an explicit --layer wins
    ([], 12),                                    # the offline default SmolLM2-135M-Instruct
    (["--model", "smollm2-135m-instruct"], 12),
    (["--model", "some/other-model"], 12),
])
def test_harvest_layer_of_the_parsed_config_follows_the_model(argv, layer):
    args = _parse(*argv)
    assert train.harvest_layer(args) == layer
    assert args.layer == (None if "--layer" not in argv else layer)  # None: not checked against an existing cache


def test_demo_and_train_share_one_default_layer():
    from dictionary_learning_aligned.demo import DemoConfig, trainer_configs

    for model in ("gemma-3-270m", "smollm2-135m-instruct"):
        demo_layer = trainer_configs(DemoConfig(model=model, arch="relu"), 16, 10)[0][1]["layer"]
        assert demo_layer == train.harvest_layer(_parse("--model", model)) == pipeline.default_layer(model)


def test_missing_cache_is_harvested_at_the_models_default_layer(tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_load(name, layer, *a, **k):  # stops harvest_cache before any model is read
        seen.update(name=name, layer=layer)
        raise ValueError("stop before loading")

    monkeypatch.setattr(pipeline, "load_model", fake_load)
    code = train.main(["--cache", str(tmp_path / "acts"), "--out", str(tmp_path / "out"), "--model", "gemma-3-270m",
                       "--device", "cpu"])
    assert code == 2 and seen == {"name": "gemma-3-270m", "layer": 8}
    assert "of gemma-3-270m layer 8 over the bundled corpus" in capsys.readouterr().out


def test_settings_line_names_the_caches_layer(tmp_path, capsys):
    from dictionary_learning_aligned.cache import build_cache

    g = torch.Generator().manual_seed(0)
    cache = build_cache([torch.randn(256, 32, generator=g) for _ in range(2)], tmp_path / "cache", 512,
                        {"model": "m", "layer": 3})
    assert train.main(["--cache", str(cache), "--out", str(tmp_path / "out"), "--batch-size", "256",
                       "--alignment", "none", "--dict-size", "64", "--steps", "2", "--device", "cpu"]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("train: cache ") and "(m layer 3, " in line and "1 trainer(s) x 2 steps" in line


#: a user's architecture file (docs/extending.md) under names no other module registers
PLUGIN = '''
from dictionary_learning_aligned.registry import Architecture, register
from dictionary_learning_aligned.trainers import StandardTrainer, make_aligned
from dictionary_learning_aligned.trainers.standard import relu_schedule


class PluginTrainTestTrainer(StandardTrainer):
    """ReLU training under a name of its own."""


register(Architecture(name="plugin_train_test", label="plugin test", trainer=PluginTrainTestTrainer,
                      aligned_trainer=make_aligned(PluginTrainTestTrainer), sparsity_param="l1_penalty",
                      sparsity_values=(0.04,), default_sparsity=0.04, schedule=relu_schedule, in_paper=False))
'''


@pytest.fixture
def plugin_folder(tmp_path, monkeypatch):
    """``tmp_path`` holding ``plugin_train_test_saes.py`` (on ``sys.path``, not yet imported) and a tiny cache;
    the registry is restored afterwards."""
    from dictionary_learning_aligned import registry
    from dictionary_learning_aligned.cache import build_cache

    (tmp_path / "plugin_train_test_saes.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plugin_train_test_saes", raising=False)
    registry.names()  # the built-ins registered before the copy
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    g = torch.Generator().manual_seed(0)
    build_cache([torch.randn(256, 32, generator=g) for _ in range(2)], tmp_path / "cache", 512,
                {"model": "m", "layer": 3})
    return tmp_path


def _train_plugin(folder, *extra):
    return train.main(["--cache", str(folder / "cache"), "--out", str(folder / "out"), "--batch-size", "256",
                       "--arch", "plugin_train_test", "--dict-size", "64", "--steps", "2", "--device", "cpu",
                       "--overwrite", *extra])


def test_plugins_make_a_users_architecture_an_arch_value(plugin_folder, capsys):
    """``train --plugins MODULE`` imports the user's architecture file first, so its registered name is an
    ``--arch`` value (without it: the built-ins only, and the error says so), as ``benchmarks run --plugins``."""
    assert _train_plugin(plugin_folder) == 2
    err = capsys.readouterr().err
    assert "unknown architecture 'plugin_train_test'" in err and "--plugins MODULE" in err, err
    assert _train_plugin(plugin_folder, "--plugins", "plugin_train_test_saes") == 0
    classes = [json.loads((plugin_folder / "out" / f"trainer_{i}" / "config.json").read_text())["trainer"]
               ["trainer_class"] for i in range(2)]
    assert classes == ["PluginTrainTestTrainer", "AlignedPluginTrainTestTrainer"]
    assert "--plugins plugin_train_test_saes" in json.loads((plugin_folder / "out" / "run.json").read_text())[
        "command"]


def test_a_missing_plugin_is_one_error_line_before_any_harvest(plugin_folder, capsys):
    assert _train_plugin(plugin_folder, "--cache", str(plugin_folder / "no_cache"),
                         "--plugins", "no_such_plugin_module") == 2
    err = capsys.readouterr().err
    assert "--plugins" in err and "no_such_plugin_module" in err and "Traceback" not in err
    assert not (plugin_folder / "no_cache").exists() and not (plugin_folder / "out").exists()
