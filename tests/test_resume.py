"""Checkpoint and resume: a run killed with SIGKILL at a random step and resumed ends with the same weights."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dictionary_learning_aligned import StandardTrainer, trainSAE
from dictionary_learning_aligned.training import complete_checkpoints

ROOT = Path(__file__).resolve().parents[1]
STEPS = 120


def job(out, resume, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "tests.resume_job", str(out), "1" if resume else "0", str(STEPS)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def final_weights(out):
    return [load_file(str(out / f"trainer_{i}" / "ae.safetensors")) for i in range(3)]


def test_sigkill_at_random_step_then_resume_gives_identical_weights(tmp_path):
    full = tmp_path / "full"
    p = job(full, False)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    kill_after = random.Random().randint(30, STEPS - 30)  # after resamplings and p changes, before the end
    killed = tmp_path / "killed"
    p = job(killed, False)
    deadline = time.time() + 600
    while not (killed / "trainer_2" / "checkpoints" / f"step_{kill_after}").exists():
        assert p.poll() is None, f"job ended before step {kill_after}: {p.stderr.read().decode()}"
        assert time.time() < deadline
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "trainer_0" / "ae.safetensors").exists(), "the job finished before it was killed"
    done = [complete_checkpoints(killed / f"trainer_{i}") for i in range(3)]
    assert min(max(d) for d in done) >= kill_after
    p = job(killed, True)
    assert p.wait(timeout=600) == 0, p.stderr.read().decode()
    for a, b in zip(final_weights(full), final_weights(killed)):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{k} differs after resuming from step {kill_after}"
    logs_full = json.loads((full / "trainer_1" / "config.json").read_text())
    assert logs_full["steps_done"] == STEPS


def test_resume_refuses_other_configs_and_missing_runs(tmp_path, lowrank_data):
    cfg = dict(trainer=StandardTrainer, steps=6, activation_dim=32, dict_size=64, layer=0, lm_name="m",
               warmup_steps=1, sparsity_warmup_steps=2, seed=0)
    trainSAE(lowrank_data(), [cfg], steps=6, save_dir=tmp_path / "r", save_steps=[2], device="cpu")
    with pytest.raises(ValueError, match=r"config differs from the saved run in \['l1_penalty'\]"):
        trainSAE(lowrank_data(), [{**cfg, "l1_penalty": 0.5}], steps=6, save_dir=tmp_path / "r", resume=True,
                 device="cpu")
    with pytest.raises(ValueError, match="not found"):
        trainSAE(lowrank_data(), [cfg], steps=6, save_dir=tmp_path / "nothing", resume=True, device="cpu")
    # a half-written checkpoint (no trainer_state.pt) is ignored
    (tmp_path / "r" / "trainer_0" / "checkpoints" / "step_4").mkdir()
    assert complete_checkpoints(tmp_path / "r" / "trainer_0") == [2]
    (tr,) = trainSAE(lowrank_data(), [cfg], steps=6, save_dir=tmp_path / "r", resume=True, device="cpu")
    assert tr.steps_done == 6


def test_resume_after_skipped_batches_reads_the_same_data(tmp_path, lowrank_data):
    cfg = dict(trainer=StandardTrainer, steps=8, activation_dim=32, dict_size=64, layer=0, lm_name="m",
               warmup_steps=1, sparsity_warmup_steps=2, seed=0)
    good = [x for _, x in zip(range(9), lowrank_data())]
    data = good[:2] + [torch.full((256, 32), float("nan"))] + good[2:]
    (full,) = trainSAE(list(data), [cfg], steps=8, skip_nonfinite_batches=True, device="cpu")
    trainSAE(list(data), [cfg], steps=5, save_dir=tmp_path / "r", save_steps=[4], skip_nonfinite_batches=True,
             device="cpu")
    (resumed,) = trainSAE(list(data), [cfg], steps=8, save_dir=tmp_path / "r", resume=True,
                          skip_nonfinite_batches=True, device="cpu")
    for a, b in zip(full.ae.state_dict().values(), resumed.ae.state_dict().values()):
        assert torch.equal(a, b)
