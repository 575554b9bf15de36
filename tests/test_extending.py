"""docs/extending.md's example, exactly as written there: a plug-in trainer with its own hyperparameter and its
architecture file, through ``train --config`` (module:Class names), ``benchmarks run --dictionaries`` and
``figures table --saebench``; and a bad ``--config`` name refused before any harvesting."""

import json
import re
from pathlib import Path

import pytest
import torch

from dictionary_learning_aligned import train
from dictionary_learning_aligned.cache import build_cache

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"


def doc_files() -> dict:
    """``{file name: text}`` of the blocks of docs/extending.md preceded by ``<!-- file: NAME -->``."""
    found = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```", DOC.read_text(), flags=re.S)
    return dict(found)


@pytest.fixture
def example(tmp_path, monkeypatch):
    files = doc_files()
    assert set(files) == {"my_saes.py", "decay.json"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _cache(folder, width=576, batches=8, batch=64):
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(batch, width, generator=g) for _ in range(batches)]
    return build_cache(data, folder, n_tokens=batch * batches,
                       meta={"model": "smollm2-135m-instruct", "layer": 3}, dtype="float32")


def test_bad_config_name_is_refused_before_any_harvest(example, capsys):
    bad = example / "bad.json"
    bad.write_text(json.dumps([{"trainer": "my_saes:NoSuchTrainer", "dict_size": 64, "k": 4}]))
    cache = example / "acts"  # no cache there: a good config would start harvesting the default model
    assert train.main(["--cache", str(cache), "--out", str(example / "out"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "trainer config 0" in err and "NoSuchTrainer" in err
    assert not cache.exists() and not (example / "out").exists()


@pytest.mark.slow  # about 3 min on 2 shared CPU cores (SAEBench core on SmolLM2)
def test_plugin_trainer_trains_runs_saebench_and_is_tabulated(example, smollm2_hooked, monkeypatch, capsys):
    from benchmarks.saebench import cli, runner
    from figures.__main__ import main as figures_main

    _cache(example / "acts")
    out = example / "runs"
    small = example / "decay_small.json"  # the doc's configs at dict_size 256 and k 16, to keep the test short
    small.write_text(json.dumps([{**c, "dict_size": 256, "k": 16}
                                 for c in json.loads((example / "decay.json").read_text())]))
    assert train.main(["--cache", str(example / "acts"), "--out", str(out), "--config", str(small),
                       "--steps", "6", "--batch-size", "64", "--warmup-steps", "1"]) == 0
    import my_saes

    cfgs = [json.loads((out / f"trainer_{i}" / "config.json").read_text())["trainer"] for i in range(2)]
    assert [c["trainer_class"] for c in cfgs] == ["DecayingKTopKTrainer", "AlignedDecayingKTopKTrainer"]
    for c in cfgs:  # the subclass's own hyperparameters and the base's, no private attribute involved
        assert (c["k_start_multiple"], c["k_decay_steps"], c["k"], c["auxk_alpha"]) == (4, 50, 16, 1 / 32)
    tr = my_saes.DecayingKTopKTrainer(steps=10, activation_dim=8, dict_size=32, k=2, layer=0, lm_name="t",
                                      k_decay_steps=4, warmup_steps=1, device="cpu")
    ks = [tr.current_k]
    for step in range(5):
        tr.update(step, torch.randn(16, 8))
        ks.append(tr.current_k)
    assert ks == [8, 6, 5, 4, 2, 2] and int(tr.ae.k) == 2  # k decays; the dictionary's buffer follows

    real_run = runner.run
    monkeypatch.setattr(runner, "run", lambda spec, **kw: real_run(
        type(spec)(**{**vars(spec), "model": smollm2_hooked}), **kw))
    sb = example / "sb_decay"
    assert cli.main(["--dictionaries", str(out), "--out", str(sb), "--evals", "core", "--budget", "smoke"]) == 0
    capsys.readouterr()
    assert figures_main(["table", "--saebench", "--results", str(sb)]) == 0
    table = capsys.readouterr().out
    rows = [line for line in table.splitlines() if "DecayingKTopKTrainer" in line]
    assert len(rows) == 2 and all("TopK, decaying k (not in paper)" in r for r in rows)
    core_fve = [r.split("|")[5].strip() for r in rows]
    assert all(re.fullmatch(r"-?\d+\.\d{3}", v) for v in core_fve), table
