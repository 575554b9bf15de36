"""The stacked auxiliary-k loss's dead-set path (TopKStackRule._aux_recon_dead) against its top-k path and against
each dictionary's own trainer (CPU, float32).

A stack of 4 dictionaries of 64 features (activation_dim 16, so k_aux = 8) with dead-feature counters set by hand:
some dictionaries with dead features, one without. While no dictionary can have more than k_aux dead features the
engine reads the aux code at the dead features only; the loss and every gradient must equal the top-k path and the
unstacked trainer's, and with more than k_aux dead features the engine must take the top-k path. The host plan
(when the aux loss runs, which path, which candidate columns) is checked step by step against the true counters.
"""

import pytest
import torch

from dictionary_learning_aligned import trainers as T
from dictionary_learning_aligned.stacked import TABLE_CHUNK, StackedTrainer

D, F, B, N = 16, 64, 32, 4
K_AUX = D // 2
THR = 10_000_000  # the default dead threshold
STEP = 7
TRAINERS = {"topk": (T.TopKTrainer, T.AlignedTopKTrainer),
            "batchtopk": (T.BatchTopKTrainer, T.AlignedBatchTopKTrainer),
            "matryoshka": (T.MatryoshkaBatchTopKTrainer, T.AlignedMatryoshkaBatchTopKTrainer)}


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) + 0.3


def _trainers(arch, counters):
    """N trainers (standard and aligned alternating, auxk_alpha 1 so that the aux term weighs in the gradients)
    whose dead-feature counters are ``counters [N, F]``."""
    std, aligned = TRAINERS[arch]
    out = []
    for j in range(N):
        kw = dict(steps=50, activation_dim=D, dict_size=F, k=4, layer=0, lm_name="test", device="cpu", seed=j,
                  auxk_alpha=1.0, warmup_steps=2, threshold_start_step=3)
        tr = aligned(alignment="project", **kw) if j % 2 else std(**kw)
        tr.tokens_since_fired.copy_(counters[j])
        out.append(tr)
    return out


def _counters(dead_per_dict, extra=()):
    """``[N, F]`` counters: ``dead_per_dict[j]`` dead features (spread over the dictionary), the others 0; then
    ``extra``: ``(j, feature, value)`` set last."""
    c = torch.zeros(N, F, dtype=torch.long)
    for j, n_dead in enumerate(dead_per_dict):
        c[j, torch.arange(n_dead) * (F // max(n_dead, 1)) + j] = THR + 5
    for j, i, v in extra:
        c[j, i] = v
    return c


def _stacked(eng, x, path=None):
    """``(loss [N], auxk [N], grads)`` of one stacked loss at STEP, planned by the engine; ``path`` 'topk' forces
    the top-k path after planning."""
    eng.step = STEP
    eng.rule.before_step(STEP, x)
    if path == "topk":
        eng.rule.aux_fast = False
    for p in eng.params:
        p.grad = None
    loss, terms, _, _ = eng.losses(x, eng._row(STEP))
    loss.sum().backward()
    return loss.detach(), terms["auxk_loss"].detach(), [p.grad.clone() for p in eng.params]


def _alone(trainers, eng, x):
    """The same from each trainer's own loss (its top-k auxiliary loss), stacked like the engine's."""
    losses, auxk, grads = [], [], []
    for tr in trainers:
        params = eng._trainer_params(tr)
        for p in params:
            p.grad = None
        loss = tr.loss(x, STEP)
        loss.backward()
        losses.append(loss.detach())
        auxk.append(tr.loss(x, STEP, logging=True).losses["auxk_loss"])
        grads.append([p.grad.clone() for p in params])
    return torch.stack(losses), torch.tensor(auxk), [torch.stack(g) for g in zip(*grads)]


def _close(a, b, what, rtol=1e-5):
    err = float(((a.double() - b.double()).abs() / b.double().abs().max().clamp_min(1e-8)).max())
    assert err <= rtol, f"{what}: max relative difference {err:.3g}"


def _check_equal(a, b, names):
    (la, xa, ga), (lb, xb, gb) = a, b
    _close(la, lb, "loss")
    _close(xa, xb, "auxk_loss")
    for name, u, v in zip(names, ga, gb):
        _close(u, v, f"gradient of {name}")


@pytest.mark.parametrize("arch", ["topk", "batchtopk", "matryoshka"])
def test_dead_set_path_equals_topk_path_and_trainers(arch):
    # dictionary 0: 3 dead and one about to die (inside the horizon, not dead yet); 1: none; 2: exactly k_aux; 3: 1
    counters = _counters([3, 0, K_AUX, 1], extra=[(0, 5, THR - 1000)])
    trainers = _trainers(arch, counters)
    eng = StackedTrainer(trainers)
    x = _batch()
    fast = _stacked(eng, x)
    assert eng.rule.aux_on and eng.rule.aux_fast, "the dead-set path was not taken"
    assert fast[1][1] == 0 and (fast[1][[0, 2, 3]] > 0).all(), "aux losses not where the dead features are"
    topk = _stacked(eng, x, path="topk")
    _check_equal(fast, topk, eng.names)
    _check_equal(fast, _alone(trainers, eng, x), eng.names)


@pytest.mark.parametrize("arch", ["topk", "batchtopk"])
def test_more_dead_than_k_aux_takes_the_topk_path(arch):
    counters = _counters([2, K_AUX + 4, 0, 1])
    trainers = _trainers(arch, counters)
    eng = StackedTrainer(trainers)
    x = _batch(1)
    got = _stacked(eng, x)
    assert eng.rule.aux_on and not eng.rule.aux_fast
    _check_equal(got, _alone(trainers, eng, x), eng.names)


def test_features_that_may_die_within_the_horizon_count():
    # k_aux dead, plus one feature that reaches the threshold exactly at the horizon's last step: top-k path
    reach = TABLE_CHUNK * B
    eng = StackedTrainer(_trainers("topk", _counters([K_AUX, 0, 0, 0], extra=[(0, 63, THR - reach)])))
    eng.step = STEP
    eng.rule.before_step(STEP, _batch())
    assert eng.rule.aux_on and not eng.rule.aux_fast
    # one step further from the threshold: outside the horizon, the dead-set path
    eng = StackedTrainer(_trainers("topk", _counters([K_AUX, 0, 0, 0], extra=[(0, 63, THR - reach - 1)])))
    eng.step = STEP
    eng.rule.before_step(STEP, _batch())
    assert eng.rule.aux_on and eng.rule.aux_fast


def test_no_aux_work_while_no_feature_can_be_dead():
    # a counter past the smallest threshold but below its own dictionary's: no feature can die within the horizon
    trainers = _trainers("topk", _counters([0, 0, 0, 0], extra=[(1, 3, THR // 2)]))
    trainers[0].dead_feature_threshold = THR // 4
    eng = StackedTrainer(trainers)
    eng.step = STEP
    eng.rule.before_step(STEP, _batch())
    assert not eng.rule.aux_on


def test_host_plan_follows_the_counters_step_by_step():
    """Counters advanced by hand over more than two horizons (features firing now and then, others crossing the
    threshold at chosen steps, thresholds differing per dictionary): at every step, no aux loss only when nothing
    is dead, and the dead-set path only when no dictionary has more than k_aux dead features, all of them among its
    candidate columns."""
    reach = TABLE_CHUNK * B
    counters = _counters([0, 0, 0, 0])
    # refreshes at steps 0, 1025 and 2050 (each once the host bound has passed the last one's horizon)
    counters[0, :K_AUX] = THR - reach - 100 * B  # dead from step 1124
    counters[2, 10:10 + K_AUX] = THR - 2049 * B  # dead at the last step of the second horizon
    counters[2, 30] = THR - 2050 * B  # dead one step later: k_aux + 1 dead, the refresh must come then
    trainers = _trainers("topk", counters)
    trainers[3].dead_feature_threshold = THR // 2
    eng = StackedTrainer(trainers)
    rule, thr = eng.rule, eng.rule.dead_threshold[:, None]
    seen = set()
    x = _batch()
    for step in range(2 * TABLE_CHUNK + 300):
        eng.step = step
        rule.before_step(step, x) if step else rule._plan_aux(B)  # step 0 would reset b_dec
        dead = eng.tokens_since_fired >= thr
        n_dead = dead.sum(-1)
        if not rule.aux_on:
            assert not dead.any(), f"step {step}: a dead feature without the aux loss"
        elif rule.aux_fast:
            assert n_dead.max() <= K_AUX, f"step {step}: dead-set path with {n_dead.tolist()} dead"
            covered = torch.zeros_like(dead).scatter_(-1, rule.aux_idx, True)
            assert not (dead & ~covered).any(), f"step {step}: a dead feature outside the candidate columns"
        seen.add((rule.aux_on, rule.aux_fast if rule.aux_on else None))
        eng.tokens_since_fired.add_(B)
        if step % 97 == 0:
            eng.tokens_since_fired[:, 40:] = 0  # these features fire now and then
        rule._tokens_bound += B  # what after_step adds
    assert seen == {(False, None), (True, True), (True, False)}, seen


@pytest.mark.parametrize("arch,compile", [("topk", False), ("batchtopk", False),
                                          pytest.param("topk", True, marks=pytest.mark.slow)])
def test_training_with_the_dead_set_path_matches_the_trainers(arch, compile):
    # 8 steps on the dead-set path, then (more features marked dead in both) 4 on the top-k path
    counters = _counters([3, 0, 5, 1])
    alone, stacked = _trainers(arch, counters), _trainers(arch, counters)
    eng = StackedTrainer(stacked, compile=compile)
    paths = []
    for step in range(12):
        if step == 8:
            more = _counters([0, K_AUX + 2, 0, 0])[1] > 0
            for tr in alone:
                tr.tokens_since_fired[more] = THR
            eng.tokens_since_fired[:, more] = THR
            eng.rule._horizon = -1.0  # counters changed behind the host bound: make it read them again
        x = _batch(step)
        for tr in alone:
            tr.update(step, x)
        eng.update(step, x)
        paths.append(eng.rule.aux_fast if eng.rule.aux_on else None)
    assert paths == [True] * 8 + [False] * 4
    eng.sync_to_trainers(12)
    for a, s in zip(alone, stacked):
        for (name, pa), ps in zip(a.ae.state_dict().items(), s.ae.state_dict().values()):
            _close(ps, pa, name, rtol=1e-4)
        assert torch.equal(a.tokens_since_fired, s.tokens_since_fired)
