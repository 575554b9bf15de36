"""The stacked engine's sparse TopK decoder (``StackedTrainer(topk_decode="sparse")``) against its dense path (CPU,
float32).

A stack of 4 TopK dictionaries of 64 features (activation_dim 16, so k_aux = 8), standard and ``project``-aligned
alternating. In sparse mode the codes stay (index, value) pairs (a ``SparseCode``): the reconstruction is decoded
from them by ``embedding_bag`` and the dead-feature counters are updated from them. The loss, its terms, every
parameter gradient and the fired features must equal the dense path's up to float rounding, with one k, with
different k per dictionary, with k annealing, and with the auxiliary-k loss on (both of its paths); a few training
steps must reach the same weights, optimizer moments, counters and thresholds.
"""

import copy

import pytest
import torch

from dictionary_learning_aligned import trainers as T
from dictionary_learning_aligned.stacked import SparseCode, StackedTrainer, StackRule, sparse_decode_dtype

D, F, B, N = 16, 64, 32, 4
K_AUX = D // 2
THR = 10_000_000  # the default dead threshold
STEP = 7


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g) + 0.3


def _trainers(ks=(4, 4, 4, 4), anneal=(None,) * N, dead=(0,) * N, steps=50, **extra):
    """N TopK trainers (standard and ``project``-aligned alternating, auxk_alpha 1 so that the aux term weighs in
    the gradients) with k ``ks[j]``, k annealing over ``anneal[j]`` steps, and ``dead[j]`` features dead (counters
    at the threshold, spread over the dictionary)."""
    out = []
    for j in range(N):
        kw = dict(steps=steps, activation_dim=D, dict_size=F, k=ks[j], layer=0, lm_name="test", device="cpu",
                  seed=j, auxk_alpha=1.0, warmup_steps=2, threshold_start_step=3, k_anneal_steps=anneal[j], **extra)
        tr = T.AlignedTopKTrainer(alignment="project", **kw) if j % 2 else T.TopKTrainer(**kw)
        if dead[j]:
            tr.tokens_since_fired[torch.arange(dead[j]) * (F // dead[j]) + j] = tr.dead_feature_threshold
        out.append(tr)
    return out


def _one_loss(trainers, decode, x, step=STEP, monkeypatch=None):
    """``(loss [N], terms, gradients, fired [N, F], f, engine)`` of one stacked loss at ``step``."""
    eng = StackedTrainer(copy.deepcopy(trainers), topk_decode=decode)
    if monkeypatch is not None and decode == "sparse":  # no dense decoding in sparse mode
        monkeypatch.setattr(eng, "decode", lambda f: pytest.fail("the dense decoder ran in sparse mode"))
    eng.step = step
    eng.rule.before_step(step, x)
    loss, terms, f, aux = eng.losses(x, eng._row(step))
    loss.sum().backward()
    fired = eng.rule.fired(f.detach(), aux)
    return loss.detach(), {k: v.detach() for k, v in terms.items()}, [p.grad.clone() for p in eng.params], fired, f, eng


def _close(a, b, what, rtol=1e-5):
    err = float(((a.double() - b.double()).abs() / b.double().abs().max().clamp_min(1e-8)).max())
    assert err <= rtol, f"{what}: max relative difference {err:.3g}"


CASES = {
    "same k": dict(ks=(4, 4, 4, 4)),
    "different k": dict(ks=(3, 4, 6, 4)),
    "k annealing": dict(ks=(4, 4, 6, 3), anneal=(20, None, 10, None)),
    "aux dead-set path": dict(ks=(4, 4, 6, 3), dead=(3, 0, K_AUX, 1)),
    "aux top-k path": dict(ks=(4, 4, 4, 4), dead=(2, K_AUX + 4, 0, 1)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_sparse_loss_gradients_and_fired_equal_dense(case, monkeypatch):
    trainers = _trainers(**CASES[case])
    x = _batch()
    dense = _one_loss(trainers, "dense", x)
    sparse = _one_loss(trainers, "sparse", x, monkeypatch=monkeypatch)
    eng = sparse[5]
    assert eng.sparse_decode and isinstance(sparse[4], SparseCode) and isinstance(dense[4], torch.Tensor)
    if case.startswith("aux"):
        assert eng.rule.aux_on and eng.rule.aux_fast == (case == "aux dead-set path")
        assert (sparse[1]["auxk_loss"] > 0).sum() == 3
    if len(set(CASES[case]["ks"])) > 1:  # ranks beyond a dictionary's k are kept with value 0
        assert not eng.rule.same_k and (sparse[4].values == 0).any()
    _close(sparse[0], dense[0], "loss")
    assert sparse[1].keys() == dense[1].keys()
    for name in dense[1]:
        _close(sparse[1][name], dense[1][name], name)
    for name, a, b in zip(eng.names, sparse[2], dense[2]):
        _close(a, b, f"gradient of {name}")
    assert torch.equal(sparse[3], dense[3]), "fired features differ"


def test_under_bfloat16_autocast_the_sparse_path_reads_bfloat16_and_equals_dense(monkeypatch):
    # on the CPU the table is read in the autocast dtype (as the dense product reads W_dec); the two paths then
    # differ by bfloat16 rounding only
    tables, eb = [], torch.nn.functional.embedding_bag

    def spy(indices, weight, *a, **k):
        tables.append(weight.dtype)
        return eb(indices, weight, *a, **k)
    monkeypatch.setattr(torch.nn.functional, "embedding_bag", spy)
    trainers = _trainers(**CASES["aux dead-set path"])
    x = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        dense = _one_loss(trainers, "dense", x)
        sparse = _one_loss(trainers, "sparse", x)
    assert tables == [torch.bfloat16]
    _close(sparse[0], dense[0], "loss", rtol=1e-3)
    for name, a, b in zip(sparse[5].names, sparse[2], dense[2]):
        _close(a, b, f"gradient of {name}", rtol=2e-2)
    assert torch.equal(sparse[3], dense[3])


@pytest.mark.parametrize("dtype,device,amp,want", [
    (torch.float32, "cpu", None, torch.float32), (torch.float64, "cuda", None, torch.float64),
    (torch.float32, "cpu", torch.bfloat16, torch.bfloat16), (torch.float32, "cuda", torch.float16, torch.float16),
    (torch.float32, "cuda", torch.bfloat16, torch.float32)])  # no bfloat16 CUDA kernel for the weights' backward
def test_the_table_dtype_follows_autocast_except_bfloat16_on_cuda(dtype, device, amp, want):
    assert sparse_decode_dtype(dtype, device, amp) == want


def test_fired_from_a_sparse_code_equals_the_dense_code():
    # repeated features across tokens, zero values (a rank beyond a dictionary's k, or a ReLU zero) and a feature
    # chosen by one token with value 0 and by another with a value
    eng = StackedTrainer(_trainers())
    g = torch.Generator().manual_seed(3)
    idx = torch.stack([torch.randperm(F - 2, generator=g)[:5] for _ in range(N * B)]).view(N, B, 5)
    vals = torch.rand(N, B, 5, generator=g) * (torch.rand(N, B, 5, generator=g) > 0.4)
    idx[0, 0, 0], vals[0, 0, 0], idx[0, 1, 0], vals[0, 1, 0] = F - 2, 0.0, F - 2, 0.5
    idx[1, :, 0], vals[1, :, 0] = F - 1, 0.0  # the last feature of dictionary 1 is only ever kept at value 0
    dense = torch.zeros(N, B, F).scatter_(-1, idx, vals)
    got = eng.rule.fired(SparseCode(idx, vals), {})
    assert torch.equal(got, StackRule.fired(eng.rule, dense, {}))
    assert got[0, F - 2] and not got[1, F - 1] and not got.all()


@pytest.mark.parametrize("compile", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_training_with_the_sparse_decoder_matches_dense(compile):
    # 12 steps: one dictionary anneals its k (16 down to 4), the k differ, the threshold EMA starts at step 4, and
    # features die along the run (a dead threshold of 3 batches), so the auxiliary-k loss runs from step 3 on
    kw = dict(ks=(4, 4, 6, 3), anneal=(None, 8, None, None), dead=(3, 0, 0, 1), dead_feature_threshold=3 * B,
              steps=40)
    engines = {}
    for decode in ("dense", "sparse"):
        eng = StackedTrainer(_trainers(**kw), topk_decode=decode, compile=compile)
        aux = []
        for step in range(12):
            eng.update(step, _batch(step))
            aux.append(eng.rule.aux_on)
        engines[decode] = eng
        assert any(aux[3:]), "the auxiliary-k loss never ran"
    dense, sparse = engines["dense"], engines["sparse"]
    assert sparse.sparse_decode and not dense.sparse_decode
    for name, a, b in zip(dense.names, sparse.params, dense.params):
        _close(a.detach(), b.detach(), name, rtol=1e-4)
    for name, a, b in zip(dense.names, sparse.exp_avg + sparse.exp_avg_sq, dense.exp_avg + dense.exp_avg_sq):
        _close(a, b, f"Adam moment of {name}", rtol=1e-4)
    assert torch.equal(sparse.tokens_since_fired, dense.tokens_since_fired), "dead-feature counters differ"
    assert (dense.tokens_since_fired >= 3 * B).any(), "no feature was dead at the end"
    _close(sparse.rule.threshold, dense.rule.threshold, "inference threshold", rtol=1e-4)
    sparse.sync_to_trainers(12)
    assert [t.current_k for t in sparse.trainers] == [4, 4, 6, 3]


@pytest.mark.parametrize("bad", ["Sparse", "embedding_bag", "", None, True, 1])
def test_a_bad_topk_decode_is_refused_before_anything_changes(bad):
    trainers = _trainers()
    before = [copy.deepcopy(t.ae.state_dict()) for t in trainers]
    with pytest.raises(ValueError, match="topk_decode must be one of dense, sparse"):
        StackedTrainer(trainers, topk_decode=bad)
    with pytest.raises(ValueError, match="topk_decode must be one of dense, sparse"):
        StackedTrainer([], topk_decode=bad)  # checked first, before the trainers are read
    for t, sd in zip(trainers, before):
        for name, v in t.ae.state_dict().items():
            assert torch.equal(v, sd[name]), name
        assert not t.optimizer.state


@pytest.mark.parametrize("arch", ["batchtopk", "relu"])
def test_other_architectures_decode_densely_in_sparse_mode(arch):
    common = dict(steps=20, activation_dim=D, dict_size=F, layer=0, lm_name="test", device="cpu", warmup_steps=2)
    if arch == "batchtopk":
        trs = [T.BatchTopKTrainer(k=4, seed=0, **common), T.AlignedBatchTopKTrainer(k=4, seed=1, alignment="project",
                                                                                    **common)]
    else:
        trs = [T.StandardTrainer(seed=0, l1_penalty=0.05, sparsity_warmup_steps=None, **common)]
    eng = StackedTrainer(trs, topk_decode="sparse")
    assert not eng.sparse_decode
    _, _, f, _ = eng.losses(_batch(), eng._row(0))
    assert isinstance(f, torch.Tensor) and f.shape == (len(trs), B, F)
