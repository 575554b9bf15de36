"""benchmarks.massive_tokens's error split: pooled FVE with and without the massive tokens, their error share."""

import pytest
import torch

from benchmarks import massive_tokens


def test_error_split_separates_the_massive_tokens():
    torch.manual_seed(0)
    x = torch.randn(1000, 8)
    x[:2] *= 100  # two massive tokens
    x_hat = x.clone()
    x_hat[:2] *= 0.5  # badly reconstructed
    x_hat[2:] += 0.1 * torch.randn(998, 8)
    norms = x.norm(dim=-1)
    s = massive_tokens.error_split(x, x_hat, norms, threshold=10 * float(norms.median()))
    sse = (x - x_hat).pow(2).sum(-1)
    kept = x[2:]
    assert s["frac_massive"] == pytest.approx(0.002)
    assert s["sse_share_massive"] == pytest.approx(float(sse[:2].sum() / sse.sum()))
    assert s["fve_kept"] == pytest.approx(float(1 - sse[2:].sum() / (kept - kept.mean(0)).pow(2).sum()))
    assert s["fve_all"] == pytest.approx(float(1 - sse.sum() / (x - x.mean(0)).pow(2).sum()))
    assert s["fve_kept"] > 0.98 and s["fve_all"] < 0.8  # the two tokens drag the pooled value down
    assert s["mse_massive"] == pytest.approx(float(sse[:2].mean())) and s["mse_kept"] == pytest.approx(float(sse[2:].mean()))


def test_bad_multiple_is_refused():
    with pytest.raises(ValueError, match="--multiple must be > 1"):
        massive_tokens.main(["--results", "nowhere", "--records", "*", "--multiple", "1"])
