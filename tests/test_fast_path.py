"""The fast training step computes what the plain one computes: same losses, gradients and weights."""

import pytest
import torch

from dictionary_learning_aligned.alignment import ProjectEncoder, project_encoder, project_encoder_reference
from dictionary_learning_aligned.trainers import TRAINER_CLASSES
from dictionary_learning_aligned.trainers.base import NonFiniteError

TOPK = {"k": 4, "dead_feature_threshold": 128, "threshold_start_step": 2}
CASES = [("AlignedStandardTrainer", {"sparsity_warmup_steps": 2}), ("StandardTrainer", {"sparsity_warmup_steps": 2}),
         ("AlignedTopKTrainer", TOPK), ("TopKTrainer", TOPK), ("AlignedBatchTopKTrainer", TOPK),
         ("BatchTopKTrainer", TOPK), ("AlignedPAnnealTrainer", {"anneal_start": 1, "sparsity_warmup_steps": 2})]


def test_fused_projection_matches_autograd_of_the_formula():
    g = torch.Generator().manual_seed(0)
    V = torch.randn(40, 6, dtype=torch.float64, generator=g, requires_grad=True)
    W = (torch.randn(6, 40, dtype=torch.float64, generator=g) * 1.3).requires_grad_()
    assert torch.autograd.gradcheck(ProjectEncoder.apply, (V, W))
    G = torch.randn(40, 6, dtype=torch.float64, generator=g)
    fused = torch.autograd.grad((project_encoder(V, W) * G).sum(), (V, W))
    plain = torch.autograd.grad((project_encoder_reference(V, W) * G).sum(), (V, W))
    for a, b in zip(fused, plain):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(project_encoder(V, W), project_encoder_reference(V, W), rtol=1e-12, atol=1e-12)


def make(name, extra, **fast):
    if "TopK" not in name:
        fast.pop("sparse_decode", None)
    return TRAINER_CLASSES[name](steps=40, activation_dim=32, dict_size=48, layer=0, lm_name="t", warmup_steps=1,
                                 seed=0, device="cpu", **extra, **fast)


@pytest.mark.parametrize("name,extra", CASES, ids=[c[0] for c in CASES])
def test_fast_path_same_losses_gradients_and_weights(name, extra, lowrank_data):
    torch._dynamo.reset()
    plain = make(name, extra)
    fast = make(name, extra, sparse_decode=True, compile="aot_eager")  # aot_eager: dynamo tracing, quick on CPU
    data = lowrank_data(batch=64, seed=3)
    x = next(data)
    for tr in (plain, fast):  # gradients of the first step
        tr.optimizer.zero_grad()
        loss, *_ = tr._compute(x, 0)
        loss.backward()
        tr.first_grads = {n: p.grad.clone() for n, p in tr.ae.named_parameters()}
        tr.first_loss = float(loss.detach())
    assert fast.first_loss == pytest.approx(plain.first_loss, rel=1e-6)
    for n, g in plain.first_grads.items():
        torch.testing.assert_close(fast.first_grads[n], g, rtol=1e-5, atol=1e-6, msg=n)
    for step in range(12):
        x = next(data)
        plain.update(step, x)
        fast.update(step, x)
    lp, lf = plain.loss(x, 12, logging=True), fast.loss(x, 12, logging=True)
    for k, v in lp.losses.items():
        assert lf.losses[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    torch.testing.assert_close(lf.f, lp.f, rtol=1e-4, atol=1e-5)
    for (n, p), q in zip(plain.ae.named_parameters(), fast.ae.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-4, atol=1e-5, msg=n)
    assert torch.equal(plain.tokens_since_fired, fast.tokens_since_fired)
    if "TopK" in name:
        assert float(fast.ae.threshold) == pytest.approx(float(plain.ae.threshold), rel=1e-5)
        assert fast.dead_features == plain.dead_features


def test_sparse_decoder_of_every_code_shape():
    from dictionary_learning_aligned import AutoEncoderTopK

    ae = AutoEncoderTopK(8, 20, k=3)
    with torch.no_grad():
        ae.b_dec.normal_()
    x = torch.randn(5, 8)
    f, vals, idx, _ = ae.encode(x, return_topk=True)
    torch.testing.assert_close(ae.decode_sparse(idx, vals), ae.decode(f))
    rows, cols = f.nonzero(as_tuple=True)  # 1-D indices with offsets; token 2 left empty
    keep = rows != 2
    rows, cols = rows[keep], cols[keep]
    f[2] = 0
    offsets = torch.searchsorted(rows, torch.arange(5))
    torch.testing.assert_close(ae.decode_sparse(cols, f[rows, cols], offsets), ae.decode(f))


def test_finiteness_check_still_names_the_culprit_before_the_step():
    tr = make("AlignedStandardTrainer", {"sparsity_warmup_steps": 2})
    tr.update(0, torch.randn(32, 32))
    before = {n: p.detach().clone() for n, p in tr.ae.named_parameters()}
    with torch.no_grad():
        tr.ae.b_enc[0] = float("nan")
    before["b_enc"][0] = float("nan")
    with pytest.raises(NonFiniteError, match="non-finite loss"):
        tr.update(1, torch.randn(32, 32))
    for n, p in tr.ae.named_parameters():
        assert torch.equal(p.isnan(), before[n].isnan()) and torch.equal(p.nan_to_num(), before[n].nan_to_num())


def test_compile_argument_is_checked():
    with pytest.raises(ValueError, match="compile"):
        make("StandardTrainer", {"sparsity_warmup_steps": 2}, compile=3)
