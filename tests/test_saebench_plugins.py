"""``python -m benchmarks run --plugins MODULE``: a user's architecture with a dictionary class of its own
(docs/extending.md) is evaluated from the command line, which cannot import the user's module by itself."""

import subprocess
import sys
import textwrap

import pytest

from dictionary_learning_aligned import checkpoints
from dictionary_learning_aligned.checkpoints import CheckpointError

#: a plug-in module whose dictionary class no other module defines (a fresh name: the test process must not know it)
PLUGIN = textwrap.dedent('''
    from dictionary_learning_aligned.dictionary import AutoEncoder, register_dictionary


    @register_dictionary
    class PluginTestAutoEncoder(AutoEncoder):
        """An AutoEncoder under a name of its own, as a user's architecture file would define one."""
''')


class _Stop(Exception):
    """Raised in place of loading the language model: the dictionaries have been loaded by then."""


@pytest.fixture
def plugin_run(tmp_path, monkeypatch):
    """A folder holding ``plugin_test_saes.py`` (on ``sys.path``) and a saved ``PluginTestAutoEncoder`` under
    ``runs/trainer_0``, written by another process, so this one has not imported the module."""
    (tmp_path / "plugin_test_saes.py").write_text(PLUGIN)
    save = ("import plugin_test_saes as m\n"
            "ae = m.PluginTestAutoEncoder(16, 32)\n"
            "ae.save('runs/trainer_0', config={'trainer': {'trainer_class': 'StandardTrainer', 'layer': 3,\n"
            "    'lm_name': 'smollm2-135m-instruct', 'activation_dim': 16, 'dict_size': 32}})\n")
    subprocess.run([sys.executable, "-c", save], cwd=tmp_path, check=True)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "plugin_test_saes", raising=False)
    monkeypatch.setattr(checkpoints, "_DICT_CLASSES", dict(checkpoints._DICT_CLASSES))  # dropped afterwards
    from benchmarks.saebench import runner

    def stop(*args, **kwargs):
        raise _Stop

    monkeypatch.setattr(runner, "_load_model", stop)
    return tmp_path


def _args(folder, *extra):
    return ["--dictionaries", str(folder / "runs"), "--out", str(folder / "sb"), "--evals", "core",
            "--budget", "smoke", "--device", "cpu", *extra]


def test_plugins_import_the_users_dictionary_class_before_loading(plugin_run):
    from benchmarks.saebench import cli

    with pytest.raises(CheckpointError, match="unknown dictionary class 'PluginTestAutoEncoder'"):
        cli.main(_args(plugin_run))  # the command line alone cannot know the class
    with pytest.raises(_Stop):  # loaded: the run went on to the model
        cli.main(_args(plugin_run, "--plugins", "plugin_test_saes"))
    assert "plugin_test_saes" in sys.modules


def test_a_missing_plugin_is_one_error_line(plugin_run, capsys):
    from benchmarks.__main__ import main

    assert main(["run", *_args(plugin_run, "--plugins", "no_such_plugin_module")]) == 2
    err = capsys.readouterr().err
    assert "no_such_plugin_module" in err and "Traceback" not in err
