import math

import pytest
import torch

from dictionary_learning_aligned import alignment as al
from dictionary_learning_aligned import AutoEncoder


def test_project_encoder_sets_scores_to_one_and_keeps_orthogonal_part():
    torch.manual_seed(0)
    V, W_dec = torch.randn(50, 8), torch.randn(8, 50)  # decoder deliberately not unit norm
    E = al.project_encoder(V, W_dec)
    assert torch.allclose((E * W_dec.T).sum(-1), torch.ones(50), atol=1e-5)
    d = W_dec.T / W_dec.T.norm(dim=-1, keepdim=True)
    perp = lambda M: M - (M * d).sum(-1, keepdim=True) * d
    assert torch.allclose(perp(E), perp(V), atol=1e-5)


def test_rescale_encoder_and_guard():
    torch.manual_seed(0)
    V, W_dec = torch.randn(20, 8), torch.randn(8, 20)
    E = al.rescale_encoder(V, W_dec)
    assert torch.allclose((E * W_dec.T).sum(-1), torch.ones(20), atol=1e-4)
    V[0] = 0.0  # <v, d> = 0: guarded, finite, not aligned
    E = al.rescale_encoder(V, W_dec)
    assert torch.isfinite(E).all()


def test_gradients_flow_through_V_and_W_dec():
    V = torch.randn(10, 4, requires_grad=True)
    W = torch.randn(4, 10, requires_grad=True)
    for fn in (al.project_encoder, al.rescale_encoder):
        V.grad = W.grad = None
        (fn(V, W) ** 2).sum().backward()
        assert V.grad.abs().sum() > 0 and W.grad.abs().sum() > 0


def test_scores_work_on_any_dictionary_and_tuples():
    ae = AutoEncoder(16, 40)
    s = al.alignment_scores(ae)
    assert s.shape == (40,)
    assert torch.allclose(s, torch.full((40,), 0.1), atol=1e-5)  # standard init: e_i = 0.1 d_i
    assert torch.allclose(al.alignment_scores((ae.W_enc, ae.W_dec)), s)
    with pytest.raises(ValueError, match="W_enc must be"):
        al.alignment_scores((torch.zeros(3, 4), torch.zeros(3, 4)))


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="unknown alignment mode"):
        AutoEncoder(4, 8, alignment="aligned")


def test_bimodality_coefficient_separates_uni_and_bimodal():
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(5000, generator=g)
    bimodal = torch.cat([torch.randn(2500, generator=g) * 0.05, 1 + torch.randn(2500, generator=g) * 0.05])
    assert al.bimodality_coefficient(normal) < 0.4
    assert al.bimodality_coefficient(bimodal) > 0.8
    assert al.bimodality_coefficient(torch.ones(100)) is None
    uniform = torch.rand(200000, generator=g)
    assert abs(al.bimodality_coefficient(uniform) - 5 / 9) < 0.01


def test_summary_fields_and_counts():
    s = torch.tensor([1.0, 1.05, 0.95, 0.2, 0.1, -2.0, 3.0])
    summ = al.summarize_scores(s)
    assert summ["n"] == 7
    assert math.isclose(summ["frac_within_0.1_of_1"], 3 / 7, rel_tol=1e-6)
    assert math.isclose(summ["frac_below_0.5"], 3 / 7, rel_tol=1e-6)
    assert summ["underflow"] == 1 and summ["overflow"] == 1
    assert sum(summ["hist_counts"]) == 5
    assert len(summ["hist_edges"]) == len(summ["hist_counts"]) + 1
    with pytest.raises(ValueError, match="non-finite"):
        al.summarize_scores(torch.tensor([1.0, float("nan")]))
    with pytest.raises(ValueError, match="empty"):
        al.summarize_scores(torch.tensor([]))
