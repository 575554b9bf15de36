"""Multi-process training: two CPU processes on the gloo backend (torchrun) give the one-process result."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dictionary_learning_aligned import distributed as dd
from dictionary_learning_aligned import train
from dictionary_learning_aligned.cache import build_cache
from dictionary_learning_aligned.training import trainSAE

ROOT = Path(__file__).resolve().parents[1]
# raw activations (--no-normalize): the tolerances below are absolute, for weights at the activations' own scale
COMMON = ["--batch-size", "64", "--steps", "24", "--warmup-steps", "2", "--log-steps", "4", "--no-normalize"]
# every trainer state that must be global: auxk dead masks (features die after 64 tokens), threshold EMAs (from
# step 4), BatchTopK's batch-level selection, p-annealing's coefficient updates, geometric-median b_dec init
CONFIGS = [
    {"trainer": "AlignedStandardTrainer", "dict_size": 48, "l1_penalty": 0.05, "sparsity_warmup_steps": 4},
    {"trainer": "AlignedTopKTrainer", "dict_size": 48, "k": 4, "threshold_start_step": 3,
     "dead_feature_threshold": 64, "lr": 3e-3},
    {"trainer": "AlignedBatchTopKTrainer", "dict_size": 48, "k": 4, "threshold_start_step": 3,
     "dead_feature_threshold": 64, "lr": 3e-3},
    {"trainer": "AlignedPAnnealTrainer", "dict_size": 48, "anneal_start": 2, "anneal_end": 20,
     "n_sparsity_updates": 4, "sparsity_queue_length": 2, "sparsity_warmup_steps": 4},
    {"trainer": "TopKTrainer", "dict_size": 48, "k": 4, "threshold_start_step": 3, "dead_feature_threshold": 64},
]


@pytest.fixture(scope="module")
def cache_and_config(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dist")
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 16, generator=g)
    batches = [(torch.rand(64, 64, generator=g) * (torch.rand(64, 64, generator=g) < 0.1)) @ dirs + 0.3
               for _ in range(30)]
    cache = build_cache(batches, tmp / "cache", n_tokens=64 * 30, meta={"model": "synthetic", "layer": 0},
                        dtype="float32")
    cfg = tmp / "cfg.json"
    cfg.write_text(json.dumps(CONFIGS))
    return tmp, cache, cfg


def torchrun(args, n=2):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}",
           "-m", "dictionary_learning_aligned.train", *args]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def load_run(out):
    return [(load_file(str(out / f"trainer_{i}" / "ae.safetensors")),
             json.loads((out / f"trainer_{i}" / "log.json").read_text())) for i in range(len(CONFIGS))]


def assert_same(run_a, run_b, atol):
    for i, ((wa, la), (wb, lb)) in enumerate(zip(run_a, run_b)):
        assert set(wa) == set(wb)
        for k in wa:
            torch.testing.assert_close(wa[k].float(), wb[k].float(), atol=atol, rtol=0, msg=f"trainer {i} {k}")
        assert [e["step"] for e in la] == [e["step"] for e in lb] == [0, 4, 8, 12, 16, 20]
        for ea, eb in zip(la, lb):
            for key in ("loss", "mse_loss", "l0", "frac_variance_explained", "auxk_loss", "sparsity_loss"):
                if key in ea:
                    assert ea[key] == pytest.approx(eb[key], abs=atol * 100, rel=1e-4), (i, ea["step"], key)


@pytest.mark.slow
def test_two_process_ddp_and_spread_match_one_process(cache_and_config):
    tmp, cache, cfg = cache_and_config
    args = ["--cache", str(cache), "--config", str(cfg), *COMMON]
    assert train.main([*args, "--out", str(tmp / "one")]) == 0  # one process, no torch.distributed
    torchrun([*args, "--out", str(tmp / "ddp")])
    torchrun([*args, "--out", str(tmp / "spread"), "--placement", "spread"])
    one = load_run(tmp / "one")
    # the statistics that must be global were exercised: dead features in the auxk loss, a learned threshold
    for i in (1, 2, 4):
        assert any(e["auxk_loss"] > 0 for e in one[i][1]) and float(one[i][0]["threshold"]) > 0
    assert_same(one, load_run(tmp / "ddp"), atol=2e-6)
    assert_same(one, load_run(tmp / "spread"), atol=1e-7)
    run = json.loads((tmp / "ddp" / "run.json").read_text())
    assert run["world_size"] == 2 and run["placement"] == "ddp"
    assert run["train_seconds"] > 0 and run["tokens_per_trainer"] == 24 * 64
    assert run["dictionary_tokens_per_s"] == pytest.approx(len(CONFIGS) * 24 * 64 / run["train_seconds"])
    assert json.loads((tmp / "ddp" / "trainer_0" / "config.json").read_text())["run"]["world_size"] == 2
    # the multi-GPU report on these runs: losses agree, timings and efficiency are read from run.json
    from benchmarks import multigpu

    assert multigpu.main(["--one", str(tmp / "one"), "--many", str(tmp / "ddp"), "--labels", "mix",
                          "--sweep-one", str(tmp / "one"), "--sweep-many", str(tmp / "spread"),
                          "--out", str(tmp / "report")]) == 0
    rep = json.loads((tmp / "report" / "multigpu.json").read_text())
    assert len(rep["ddp"]["mix"]["trainers"]) == len(CONFIGS)
    assert all(r["steps_compared"] == 6 and r["max_rel_diff"] < 1e-4 for r in rep["ddp"]["mix"]["trainers"])
    assert rep["ddp"]["mix"]["world_size"] == 2 and rep["sweep"]["placement_many"] == "spread"
    assert rep["sweep"]["efficiency"] == pytest.approx(
        rep["sweep"]["tokens_per_s_many"] / (2 * rep["sweep"]["tokens_per_s_one"]))
    assert (tmp / "report" / "multigpu.pdf").stat().st_size > 0
    assert multigpu.main(["--one", str(tmp / "one"), "--many", str(tmp), "--out", str(tmp / "r2")]) == 2


def test_preloaded_cache_gives_the_same_training(cache_and_config, tmp_path):
    tmp, cache, cfg = cache_and_config
    args = ["--cache", str(cache), "--config", str(cfg), *COMMON]
    assert train.main([*args, "--out", str(tmp_path / "mmap"), "--preload", "no"]) == 0
    assert train.main([*args, "--out", str(tmp_path / "pre"), "--preload", "yes"]) == 0
    assert json.loads((tmp_path / "pre" / "run.json").read_text())["preload"] is True
    assert_same(load_run(tmp_path / "mmap"), load_run(tmp_path / "pre"), atol=0)


def test_cli_grid_single_process(cache_and_config, tmp_path):
    _, cache, _ = cache_and_config
    assert train.main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--arch", "relu,batchtopk",
                       "--alignment", "none,project", "--dict-size", "32", "--k", "4", "--batch-size", "100"]) == 0
    cfgs = [json.loads((tmp_path / "o" / f"trainer_{i}" / "config.json").read_text())["trainer"] for i in range(4)]
    assert [(c["trainer_class"], c["alignment"]) for c in cfgs] == [
        ("StandardTrainer", None), ("AlignedStandardTrainer", "project"), ("BatchTopKTrainer", None),
        ("AlignedBatchTopKTrainer", "project")]
    assert all(c["steps"] == 19 for c in cfgs)  # 1920 tokens in full batches of 100


def test_bad_distributed_inputs(cache_and_config, tmp_path, capsys):
    _, cache, _ = cache_and_config
    with pytest.raises(ValueError, match="divisible by the world size"):
        dd.shard(torch.zeros(5, 3), 0, 2)
    assert torch.equal(dd.shard(torch.arange(6.0)[:, None], 1, 3), torch.tensor([[2.0], [3.0]]))
    cfg = {"trainer": "StandardTrainer", "steps": 2, "activation_dim": 4, "dict_size": 8, "layer": 0,
           "lm_name": "x"}
    with pytest.raises(ValueError, match="process group"):
        trainSAE([torch.randn(4, 4)] * 2, [cfg], steps=2, device="cpu", data_parallel=True)
    assert train.main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--arch", "gated", "--batch-size", "64"]) == 2
    assert "unknown arch" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_builds_a_missing_cache_from_the_default_model(tmp_path):
    """No cache at --cache: rank 0 harvests SmolLM2 layer 12 (bundled corpus) into it first, then trains."""
    cache = tmp_path / "acts"
    assert train.main(["--cache", str(cache), "--tokens", "600", "--ctx-len", "32", "--out", str(tmp_path / "o"),
                       "--arch", "topk", "--alignment", "project", "--dict-size", "64", "--k", "8",
                       "--batch-size", "100", "--sparse-decode"]) == 0
    meta = json.loads((cache / "meta.json").read_text())
    assert meta["tokens"] == 600 and meta["activation_dim"] == 576 and meta["meta"]["layer"] == 12
    cfg = json.loads((tmp_path / "o" / "trainer_0" / "config.json").read_text())
    assert cfg["trainer"]["steps"] == 6 and cfg["run"]["cache"]["meta_model"] == meta["meta"]["model"]


def test_cli_panneal_and_penalty_ablation(cache_and_config, tmp_path, capsys):
    _, cache, _ = cache_and_config
    assert train.main(["--cache", str(cache), "--out", str(tmp_path / "o"), "--arch", "panneal,relu",
                       "--alignment", "none,penalty", "--alignment-penalty", "0.5", "--l1-penalty", "0.03",
                       "--dict-size", "32", "--batch-size", "100"]) == 0
    cfgs = [json.loads((tmp_path / "o" / f"trainer_{i}" / "config.json").read_text())["trainer"] for i in range(4)]
    pan = [c for c in cfgs if c["trainer_class"] == "PAnnealTrainer"]
    assert all(c["initial_sparsity_penalty"] == 0.03 and c["anneal_start"] == 19 // 4 for c in pan)
    assert [c["alignment_penalty"] for c in cfgs if c["alignment"] == "penalty"] == [0.5, 0.5]
    assert train.main(["--cache", str(cache), "--out", str(tmp_path / "p"), "--alignment", "penalty",
                       "--dict-size", "32", "--batch-size", "100"]) == 2
    assert "alignment_penalty" in capsys.readouterr().err


def test_run_json_counts_the_steps_trained_when_data_runs_out(cache_and_config, tmp_path):
    tmp, cache, cfg = cache_and_config
    cfg1 = tmp_path / "one.json"
    cfg1.write_text(json.dumps(CONFIGS[:1]))
    assert train.main(["--cache", str(cache), "--config", str(cfg1), "--batch-size", "64", "--steps", "1000",
                       "--warmup-steps", "2", "--out", str(tmp_path / "o")]) == 0
    run = json.loads((tmp_path / "o" / "run.json").read_text())
    assert run["steps_done"] == 30 and run["tokens_per_trainer"] == 30 * 64  # 30 batches cached, not 1000 steps
    assert run["dictionary_tokens_per_s"] == pytest.approx(30 * 64 / run["train_seconds"])
