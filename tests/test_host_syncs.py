"""No host synchronisation in a training step (CPU stand-ins for what a GPU would synchronise on).

A steady-state stacked step builds no tensor from host values (Adam's bias corrections come from a table copied
once per chunk), a ``finite_checked`` data source is not checked for NaN/inf at every batch, and both changes leave
the trained weights bit-identical to the code path they replace.
"""

import pytest
import torch

from dictionary_learning_aligned import stacked
from dictionary_learning_aligned import trainers as T
from dictionary_learning_aligned.stacked import StackedTrainer
from dictionary_learning_aligned.training import trainSAE

D, F, B, STEPS = 16, 48, 64, 12


def _batches(n=STEPS, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, D, generator=g) for _ in range(n)]


def _cfgs(arch):
    common = dict(steps=STEPS, activation_dim=D, dict_size=F, layer=0, lm_name="test", device="cpu", warmup_steps=2,
                  decay_start=8)
    if arch == "relu":
        std, aligned = T.StandardTrainer, T.AlignedStandardTrainer
        extra = dict(l1_penalty=0.05, sparsity_warmup_steps=3)
    elif arch == "panneal":
        std, aligned = T.PAnnealTrainer, T.AlignedPAnnealTrainer
        extra = dict(sparsity_warmup_steps=3, anneal_start=3, anneal_end=10, n_sparsity_updates=3,
                     sparsity_queue_length=2)
    else:
        std, aligned = {"topk": (T.TopKTrainer, T.AlignedTopKTrainer),
                        "batchtopk": (T.BatchTopKTrainer, T.AlignedBatchTopKTrainer)}[arch]
        extra = dict(k=6, threshold_start_step=4, dead_feature_threshold=B * 3)
    return [dict(trainer=std, seed=0, **common, **extra),
            dict(trainer=aligned, seed=1, alignment="project", **common, **extra)]


def _stack(cfgs):
    trs = []
    for c in cfgs:
        c = dict(c)
        trs.append(c.pop("trainer")(**c))
    return StackedTrainer(trs, nan_check_every=5), trs


def _old_bias_row(self, t):
    """The bias corrections as the stacked step built them before the table: a fresh tensor from host values."""
    return torch.tensor([1 - self.beta1 ** t, (1 - self.beta2 ** t) ** 0.5], dtype=torch.float64, device=self.device)


def _state(trs):
    out = []
    for tr in trs:
        out += [v.clone() for v in tr.ae.state_dict().values()]
        for p in tr.ae.parameters():
            st = tr.optimizer.state[p]
            out += [st["exp_avg"].clone(), st["exp_avg_sq"].clone()]
    return out


def test_a_steady_state_stacked_step_builds_no_tensor_from_host_values(monkeypatch):
    eng, _ = _stack(_cfgs("topk"))
    xs = _batches()
    eng.update(0, xs[0])  # the first step builds the schedule and bias tables
    built, make = [], torch.tensor

    def spy(*args, **kwargs):
        built.append(kwargs.get("device"))
        return make(*args, **kwargs)
    monkeypatch.setattr(torch, "tensor", spy)
    for step in range(1, STEPS):
        eng.update(step, xs[step])
    # on a GPU each such tensor is a synchronising copy from host memory
    assert built == [], f"{len(built)} tensors built from host values in {STEPS - 1} steps"


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "panneal"])
def test_bias_table_trains_bit_identically_to_the_per_step_tensor(arch, monkeypatch):
    monkeypatch.setattr(stacked, "TABLE_CHUNK", 5)  # several table refreshes within the run
    xs = _batches()
    results = []
    for bias_row in (_old_bias_row, StackedTrainer._bias_row):
        monkeypatch.setattr(StackedTrainer, "_bias_row", bias_row)
        eng, trs = _stack(_cfgs(arch))
        for step, x in enumerate(xs):
            eng.update(step, x)
        eng.sync_to_trainers(STEPS)
        results.append(_state(trs))
    old, new = results
    assert len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new))


class _Cache:
    """A data source that says its batches are finite (as a preloaded ActivationCache does)."""

    def __init__(self, batches, finite_checked):
        self.batches, self.finite_checked = batches, finite_checked

    def __iter__(self):
        return iter(self.batches)


class _AloneTopK(T.TopKTrainer):
    """A subclass: trains alone, outside the stacks (the single-trainer path)."""


def _mixed_cfgs():
    cfgs = _cfgs("relu") + _cfgs("topk")
    alone = dict(_cfgs("topk")[0], trainer=_AloneTopK, seed=3)
    return cfgs + [alone]


def test_a_finite_checked_source_is_not_checked_at_every_step(monkeypatch):
    calls, isfinite = [], torch.isfinite

    def spy(x):
        calls.append(tuple(x.shape))
        return isfinite(x)
    monkeypatch.setattr(torch, "isfinite", spy)
    cfgs = _cfgs("relu")
    trainSAE(_Cache(_batches(), finite_checked=True), cfgs, STEPS, device="cpu", nan_check_every=0)
    assert (B, D) not in calls  # no batch was checked (the stack's own loss/gradient guard stays on the device)
    calls.clear()
    trainSAE(_Cache(_batches(), finite_checked=False), cfgs, STEPS, device="cpu", nan_check_every=0)
    assert calls.count((B, D)) == STEPS  # any other source: every batch, as before


def test_a_non_finite_batch_of_an_unflagged_source_is_still_refused():
    xs = _batches()
    xs[4] = xs[4].clone()
    xs[4][0, 0] = float("nan")
    with pytest.raises(ValueError, match="step 4 contains NaN"):
        trainSAE(_Cache(xs, finite_checked=False), _cfgs("relu"), STEPS, device="cpu")


@pytest.mark.parametrize("normalize", [False, True])
def test_finite_checked_trains_bit_identically(tmp_path, normalize):
    runs = []
    for flag in (False, True):
        trs = trainSAE(_Cache(_batches(), finite_checked=flag), _mixed_cfgs(), STEPS, device="cpu",
                       normalize_activations=normalize, norm_factor_batches=3, save_dir=tmp_path / f"run{flag}",
                       save_steps=[5], log_steps=4)
        runs.append(_state(trs))
    old, new = runs
    assert len(old) == len(new) and all(torch.equal(a, b) for a, b in zip(old, new))
