"""The stacked sweep engine (dictionary_learning_aligned.stacked) against one-by-one training.

N dictionaries trained as one stack and the same N trained one at a time by their own trainers, with the same seeds
on the same batches (CPU, float32), must agree in weights, optimizer state, trainer state and logged losses within
1e-4 relative, for every architecture and alignment mode (the extensions JumpReLU and Matryoshka BatchTopK included),
with per-dictionary k / L1 / target_l0 values in one stack, and across a resume from a mid-run checkpoint.
"""

import copy

import pytest
import torch

from dictionary_learning_aligned import trainers as T
from dictionary_learning_aligned.stacked import StackedTrainer, plan_stacks
from dictionary_learning_aligned.trainers.base import NonFiniteError
from dictionary_learning_aligned.training import trainSAE

D, F, B, STEPS = 16, 48, 64, 30
MODES = [None, "project", "rescale", "projection", "penalty"]


def _batches(n=STEPS, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(8, D, generator=g)
    out = []
    for _ in range(n):
        codes = torch.relu(torch.randn(B, 8, generator=g))
        out.append(scale * (codes @ base + 0.1 * torch.randn(B, D, generator=g)))
    return out


def _common(steps=STEPS):
    return dict(steps=steps, activation_dim=D, dict_size=F, layer=0, lm_name="test", device="cpu")


def _cfg(arch, mode, seed, **kw):
    std, aligned = {"relu": (T.StandardTrainer, T.AlignedStandardTrainer), "topk": (T.TopKTrainer, T.AlignedTopKTrainer),
                    "batchtopk": (T.BatchTopKTrainer, T.AlignedBatchTopKTrainer),
                    "panneal": (T.PAnnealTrainer, T.AlignedPAnnealTrainer),
                    "jumprelu": (T.JumpReluTrainer, T.AlignedJumpReluTrainer),
                    "matryoshka": (T.MatryoshkaBatchTopKTrainer, T.AlignedMatryoshkaBatchTopKTrainer)}[arch]
    cfg = dict(trainer=aligned if mode else std, seed=seed, **_common(), **kw)
    if mode:
        cfg["alignment"] = mode
    if mode == "penalty":
        cfg["alignment_penalty"] = 0.5
    if arch == "relu":
        cfg.setdefault("l1_penalty", 0.05)
        cfg.update(warmup_steps=3, sparsity_warmup_steps=5, decay_start=20)
    elif arch == "jumprelu":
        # a wide kernel and a large lr, so that the thresholds (trained only through the kernel) move in 30 steps
        cfg.setdefault("target_l0", 8.0)
        cfg.setdefault("bandwidth", 0.2)
        cfg.update(warmup_steps=3, sparsity_warmup_steps=5, decay_start=20, lr=3e-3)
    elif arch == "panneal":
        cfg.update(warmup_steps=3, sparsity_warmup_steps=5, anneal_start=4, anneal_end=25, n_sparsity_updates=4,
                   sparsity_queue_length=3, initial_sparsity_penalty=cfg.pop("l1", 0.05))
    else:
        cfg.setdefault("k", 6)
        cfg.update(warmup_steps=3, threshold_start_step=5, decay_start=20, dead_feature_threshold=B * 4)
    return cfg


def _build(cfgs):
    out = []
    for c in cfgs:
        c = dict(c)
        out.append(c.pop("trainer")(**c))
    return out


def _train_alone(cfgs, batches):
    trs = _build(cfgs)
    for step, x in enumerate(batches):
        for tr in trs:
            tr.update(step, x)
    return trs


def _train_stacked(cfgs, batches, nan_check_every=7):
    trs = _build(cfgs)
    eng = StackedTrainer(trs, nan_check_every=nan_check_every)
    for step, x in enumerate(batches):
        eng.update(step, x)
    eng.check_finite()
    eng.sync_to_trainers(len(batches))
    return trs


def _close(a, b, what, rtol=1e-4, atol=1e-6):
    a, b = torch.as_tensor(a).double(), torch.as_tensor(b).double()
    err = ((a - b).abs() / (b.abs().max().clamp_min(atol))).max()
    assert err <= rtol, f"{what}: max relative difference {float(err):.3g}"


def _compare(alone, stacked, batch):
    for i, (a, s) in enumerate(zip(alone, stacked)):
        for (name, pa), (_, ps) in zip(a.ae.state_dict().items(), s.ae.state_dict().items()):
            _close(ps, pa, f"trainer {i} {name}")
        for pa, ps in zip(a.ae.parameters(), s.ae.parameters()):
            sa, ss = a.optimizer.state[pa], s.optimizer.state[ps]
            assert float(sa["step"]) == float(ss["step"])
            _close(ss["exp_avg_sq"], sa["exp_avg_sq"], f"trainer {i} exp_avg_sq", rtol=1e-3)
        assert torch.equal(a.tokens_since_fired, s.tokens_since_fired), f"trainer {i} dead-feature counters"
        assert a.optimizer.param_groups[0]["lr"] == pytest.approx(s.optimizer.param_groups[0]["lr"])
        assert a.scheduler.last_epoch == s.scheduler.last_epoch
        la, ls = a.loss(batch, STEPS, logging=True).losses, s.loss(batch, STEPS, logging=True).losses
        assert la.keys() == ls.keys()
        for k in la:
            assert ls[k] == pytest.approx(la[k], rel=1e-4, abs=1e-6), f"trainer {i} logged {k}"


@pytest.mark.parametrize("arch", ["relu", "topk", "batchtopk", "panneal", "jumprelu", "matryoshka"])
def test_stacked_equals_one_by_one_every_mode(arch):
    sparsity = {"relu": ("l1_penalty", [0.02, 0.08]), "panneal": ("l1", [0.02, 0.08]),
                "topk": ("k", [4, 9]), "batchtopk": ("k", [4, 9]), "matryoshka": ("k", [4, 9]),
                "jumprelu": ("target_l0", [4.0, 12.0])}[arch]
    cfgs = [_cfg(arch, mode, seed=i, **{sparsity[0]: sparsity[1][i % 2]}) for i, mode in enumerate(MODES)]
    stacks, alone = plan_stacks(_build(cfgs))
    assert stacks == [list(range(len(MODES)))] and alone == []
    batches = _batches()
    _compare(_train_alone(cfgs, batches), _train_stacked(cfgs, batches), batches[-1])


@pytest.mark.parametrize("arch", ["relu", "topk"])
def test_tied_dictionaries_stack_on_their_own(arch):
    cfgs = [_cfg(arch, "tied", seed=s) for s in range(2)] + [_cfg(arch, None, seed=5)]
    stacks, alone = plan_stacks(_build(cfgs))
    assert sorted(map(sorted, stacks)) == [[0, 1], [2]]
    batches = _batches()
    _compare(_train_alone(cfgs[:2], batches), _train_stacked(cfgs[:2], batches), batches[-1])


def test_topk_dead_features_and_k_annealing_match():
    # a tiny dead threshold makes the auxiliary-k loss active; k annealing exercises the masked selection
    cfgs = [_cfg("topk", None, seed=0, dead_feature_threshold=B), _cfg("topk", "project", seed=1, k=3,
                                                                        k_anneal_steps=12),
            _cfg("batchtopk", None, seed=2)]
    cfgs[2]["dead_feature_threshold"] = B
    batches = _batches(scale=0.5)
    for group in (cfgs[:2], cfgs[2:]):
        alone, stacked = _train_alone(group, batches), _train_stacked(group, batches)
        assert any(bool((t.tokens_since_fired >= B).any()) for t in alone), "no dead feature: aux loss untested"
        _compare(alone, stacked, batches[-1])
    assert stacked[0].current_k == alone[0].current_k


def test_jumprelu_per_dictionary_settings_and_thresholds_match():
    # target_l0, sparsity_penalty, bandwidth and apply_b_dec_to_input differ within one stack; the thresholds (a
    # parameter of JumpReLU's own, stacked by the rule) must move and match; tied dictionaries form their own stack
    cfgs = [_cfg("jumprelu", None, 0, target_l0=3.0, sparsity_penalty=2.0),
            _cfg("jumprelu", "project", 1, target_l0=10.0, bandwidth=0.5),
            _cfg("jumprelu", None, 2, sparsity_penalty=0.5, bandwidth=0.1),
            _cfg("jumprelu", "tied", 3), _cfg("jumprelu", "tied", 4, target_l0=5.0)]
    batches = _batches()

    def build(group):
        trs = _build(group)
        trs[-1].ae.apply_b_dec_to_input = True  # not a trainer argument (dictionary_learning has none)
        return trs

    assert sorted(map(sorted, plan_stacks(build(cfgs))[0])) == [[0, 1, 2], [3, 4]]
    for group in (cfgs[:3], cfgs[3:]):
        alone, stacked = build(group), build(group)
        for step, x in enumerate(batches):
            for tr in alone:
                tr.update(step, x)
        eng = StackedTrainer(stacked)
        for step, x in enumerate(batches):
            eng.update(step, x)
        eng.sync_to_trainers(len(batches))
        for tr in alone:
            assert (tr.ae.threshold - 0.001).abs().max() > 1e-4, "thresholds did not move: their training is untested"
        _compare(alone, stacked, batches[-1])


def test_matryoshka_mixed_groups_and_dead_features_match():
    # different k, group fractions (different group ends) and group weights in one stack; a tiny dead threshold
    # turns the auxiliary-k loss on
    cfgs = [_cfg("matryoshka", None, 0),
            _cfg("matryoshka", "project", 1, k=3, group_fractions=(0.25, 0.75), group_weights=(0.7, 0.3)),
            _cfg("matryoshka", "rescale", 2, k=8, group_fractions=(1 / 6, 1 / 3, 1 / 2), k_anneal_steps=12)]
    cfgs[0]["dead_feature_threshold"] = B
    batches = _batches(scale=0.5)
    assert plan_stacks(_build(cfgs)) == ([[0, 1, 2]], [])
    alone, stacked = _train_alone(cfgs, batches), _train_stacked(cfgs, batches)
    assert any(bool((t.tokens_since_fired >= B).any()) for t in alone), "no dead feature: aux loss untested"
    _compare(alone, stacked, batches[-1])
    assert [t.current_k for t in stacked] == [t.current_k for t in alone]


def test_mismatched_trainers_are_refused_or_split():
    trs = _build([_cfg("relu", None, 0), _cfg("topk", None, 1)])
    with pytest.raises(ValueError, match="different architecture"):
        StackedTrainer(trs)
    other = _build([dict(_cfg("relu", None, 2), dict_size=F * 2)])
    with pytest.raises(ValueError, match="different dict_size"):
        StackedTrainer([trs[0], other[0]])
    stacks, alone = plan_stacks(trs + other)
    assert sorted(map(sorted, stacks)) == [[0], [1], [2]] and alone == []


def test_subclass_and_resampling_train_alone():
    class MyTrainer(T.StandardTrainer):
        pass

    a = MyTrainer(**{k: v for k, v in _cfg("relu", None, 0).items() if k != "trainer"})
    b = _build([dict(_cfg("relu", None, 1), resample_steps=10, decay_start=None)])[0]
    c = _build([_cfg("relu", None, 2)])[0]
    assert plan_stacks([a, b, c]) == ([[2]], [0, 1])


def test_nan_in_one_dictionary_names_it_and_leaves_others_untouched():
    cfgs = [_cfg("relu", None, seed=s) for s in range(3)]
    batches = _batches(12)
    trs = _build(cfgs)
    eng = StackedTrainer(trs, indices=[4, 5, 6], nan_check_every=10)
    with torch.no_grad():
        eng.b_enc[1, 0] = float("nan")  # poisons dictionary 1's loss from step 0 ...
    before = eng.W_dec[1].clone()
    with pytest.raises(NonFiniteError, match=r"trainer 5 \(StandardTrainer.*step 0"):
        for step, x in enumerate(batches):
            eng.update(step, x)
    eng.sync_to_trainers(10)
    assert torch.equal(trs[1].ae.W_dec, before), "the failing dictionary must keep its weights from before the step"
    # ... while the others trained normally (the first 9 steps match a clean run; the 10th step was taken too)
    for j in (0, 2):
        assert torch.isfinite(trs[j].ae.W_dec).all()
    clean = _build(cfgs)
    eng2 = StackedTrainer(clean, nan_check_every=0)
    for step, x in enumerate(batches[:10]):
        eng2.update(step, x)
    eng2.sync_to_trainers(10)
    for j in (0, 2):
        assert torch.equal(trs[j].ae.W_dec, clean[j].ae.W_dec)


def test_empty_and_wrong_batches_change_nothing():
    trs = _build([_cfg("topk", None, 0)])
    eng = StackedTrainer(trs)
    state = [p.clone() for p in eng.params]
    for bad in (torch.zeros(0, D), torch.zeros(4, D + 1), torch.zeros(4, D, dtype=torch.long)):
        with pytest.raises((ValueError, TypeError)):
            eng.update(0, bad)
    assert all(torch.equal(a, b) for a, b in zip(state, eng.params))


@pytest.mark.parametrize("arch", ["relu", "topk", "panneal", "jumprelu", "matryoshka"])
def test_trainSAE_stacked_equals_unstacked_with_resume(tmp_path, arch):
    cfgs = [_cfg(arch, None, 0), _cfg(arch, "project", 1)]
    batches = _batches()
    kw = dict(steps=STEPS, log_steps=10, device="cpu", normalize_activations=True, norm_factor_batches=2)
    plain = trainSAE(iter(batches), cfgs, save_dir=tmp_path / "plain", stack=False, **kw)
    # the stacked run is cut after the checkpoint at step 14 and resumed
    with pytest.raises(RuntimeError, match="cut"):
        def cut():
            for i, b in enumerate(batches):
                if i == 20:
                    raise RuntimeError("cut")
                yield b
        trainSAE(cut(), cfgs, save_dir=tmp_path / "stacked", save_steps=[14], **kw)
    resumed = trainSAE(iter(batches), cfgs, save_dir=tmp_path / "stacked", save_steps=[14], resume=True, **kw)
    for a, s in zip(plain, resumed):
        for (name, pa), ps in zip(a.ae.state_dict().items(), s.ae.state_dict().values()):
            _close(ps, pa, name)
        assert [e["step"] for e in a.log if e["step"] >= 20] == [e["step"] for e in s.log if e["step"] >= 20]
        for ea, es in zip([e for e in a.log if e["step"] >= 20], [e for e in s.log if e["step"] >= 20]):
            assert es["loss"] == pytest.approx(ea["loss"], rel=1e-4)


def test_resume_is_bit_identical_on_cpu(tmp_path):
    cfgs = [_cfg("topk", None, 0), _cfg("topk", "project", 1, k=4)]
    batches = _batches()
    kw = dict(steps=STEPS, device="cpu")
    full = trainSAE(iter(batches), cfgs, save_dir=tmp_path / "full", save_steps=[14], **kw)

    def cut():
        for i, b in enumerate(batches):
            if i == 17:
                raise RuntimeError("cut")
            yield b
    with pytest.raises(RuntimeError):
        trainSAE(cut(), cfgs, save_dir=tmp_path / "part", save_steps=[14], **kw)
    resumed = trainSAE(iter(batches), cfgs, save_dir=tmp_path / "part", save_steps=[14], resume=True, **kw)
    for a, b in zip(full, resumed):
        for (name, pa), pb in zip(a.ae.state_dict().items(), b.ae.state_dict().values()):
            assert torch.equal(pa, pb), name


@pytest.mark.slow
@pytest.mark.parametrize("arch,sparsity", [("topk", "k"), ("jumprelu", "target_l0"), ("matryoshka", "k")])
def test_compiled_stack_matches_eager(arch, sparsity):
    cfgs = [_cfg(arch, None, 0), _cfg(arch, "project", 1, **{sparsity: 4})]
    batches = _batches(8)
    eager = _train_stacked(cfgs, batches)
    trs = _build(cfgs)
    eng = StackedTrainer(trs, compile=True)
    for step, x in enumerate(batches):
        eng.update(step, x)
    eng.sync_to_trainers(len(batches))
    for a, b in zip(eager, trs):
        for (name, pa), pb in zip(a.ae.state_dict().items(), b.ae.state_dict().values()):
            _close(pb, pa, name)


def test_spread_over_processes_keeps_stacks_whole_and_balances():
    from dictionary_learning_aligned.stacked import spread_over_processes
    from dictionary_learning_aligned.train import _stack_owners

    keys = ["relu"] * 6 + ["topk"] * 6 + ["batchtopk"] * 6 + ["panneal"] * 6
    owners = spread_over_processes(keys, [4096] * 24, 2)
    for k in set(keys):  # one process per stack
        assert len({o for o, kk in zip(owners, keys) if kk == k}) == 1
    assert owners.count(0) == owners.count(1) == 12
    big = spread_over_processes(["a", "b", "c"], [65536, 4096, 4096], 2)  # the largest alone, the others together
    assert big[0] != big[1] == big[2]
    assert spread_over_processes(["a", "b"], [1, 1], 1) == [0, 0]
    with pytest.raises(ValueError, match="world >= 1"):
        spread_over_processes(["a"], [1, 2], 2)
    # train --placement spread: stacks are architecture x dict_size; aligned and standard TopK share one
    cfgs = [{"trainer": "AlignedTopKTrainer", "dict_size": 64}, {"trainer": "TopKTrainer", "dict_size": 64},
            {"trainer": "StandardTrainer", "dict_size": 64}, {"trainer": "AlignedStandardTrainer", "dict_size": 64}]
    owners = _stack_owners(cfgs, 2)
    assert owners[0] == owners[1] != owners[2] == owners[3]
    assert sorted(_stack_owners(cfgs[:1] + cfgs[2:3], 4)) == [0, 1]  # fewer stacks than processes: one by one
