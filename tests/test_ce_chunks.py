"""The CE losses of the evaluation are computed a few positions at a time (:func:`.evaluation.next_token_ce`) and
equal the formula over all logits at once up to float rounding."""

import pytest
import torch
import torch.nn.functional as F

from dictionary_learning_aligned import evaluation
from dictionary_learning_aligned.dictionary import AutoEncoder
from dictionary_learning_aligned.evaluation import ce_losses, next_token_ce


def all_at_once(logits, tokens):
    """The formula ``ce_losses`` used before: every position's log-softmax at once, in float32."""
    return float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), tokens[:, 1:].reshape(-1)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("chunk_rows", [1, 6, None, 1000])
def test_next_token_ce_equals_the_formula_over_all_positions(dtype, chunk_rows):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 21, 1003, generator=g) * 4).to(dtype)  # 20 predicted positions: chunks with a rest
    tokens = torch.randint(1003, (3, 21), generator=g)
    assert next_token_ce(logits, tokens, chunk_rows) == pytest.approx(all_at_once(logits, tokens), rel=1e-6)


def test_ce_losses_equal_the_old_formula_on_a_tiny_model(tiny_lm):
    _, lm = tiny_lm
    layer = lm.model.layers[1]
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(lm.config.vocab_size, (4, 24), generator=g)
    torch.manual_seed(0)
    ae = AutoEncoder(lm.config.hidden_size, 128)
    got = ce_losses(lm, layer, ae, tokens)
    with torch.no_grad(), lm.trace(tokens):
        logits = lm.output.logits.save()
    assert got["loss_original"] == pytest.approx(all_at_once(logits, tokens), rel=1e-6)
    for key, fn in (("loss_zero", torch.zeros_like), ("loss_reconstructed", lambda h: ae(h))):
        with torch.no_grad(), lm.trace(tokens):
            h = layer.output[0] if isinstance(layer.output, tuple) else layer.output
            new = torch.cat([h[:, :1], fn(h[:, 1:])], dim=1)
            layer.output = (new,) + tuple(layer.output[1:]) if isinstance(layer.output, tuple) else new
            logits = lm.output.logits.save()
        assert got[key] == pytest.approx(all_at_once(logits, tokens), rel=1e-6), key


def test_ce_losses_take_the_log_softmax_of_a_few_positions_at_a_time(tiny_lm, monkeypatch):
    """Before, each pass copied all its logits and took their log-softmax at once (with Gemma-3's vocabulary,
    1 GiB each for 8 contexts of 128 tokens)."""
    _, lm = tiny_lm
    rows = []
    real = F.cross_entropy

    def recorded(input, target, *args, **kwargs):
        rows.append(input.shape[0])
        return real(input, target, *args, **kwargs)

    monkeypatch.setattr(evaluation.F, "cross_entropy", recorded)
    monkeypatch.setattr(evaluation, "CE_CHUNK_ELEMENTS", 10 * lm.config.vocab_size)  # 10 positions at a time
    ce_losses(lm, lm.model.layers[1], None, torch.randint(100, (4, 40)))
    assert rows and max(rows) <= 10 and sum(rows) == 2 * 4 * 39  # clean and zero-ablated passes


@pytest.mark.parametrize("shape", [(2, 1, 7), (0, 5, 7)])
def test_next_token_ce_without_a_predicted_position_is_a_value_error(shape):
    # one token per context (or no context) predicts nothing: say so, not torch.stack's 'non-empty TensorList'
    with pytest.raises(ValueError, match="no predicted position"):
        next_token_ce(torch.randn(*shape), torch.zeros(shape[:2], dtype=torch.long))


@pytest.mark.parametrize("chunk_rows", [0, -3])
def test_next_token_ce_refuses_a_chunk_size_below_one(chunk_rows):
    with pytest.raises(ValueError, match="chunk_rows"):
        next_token_ce(torch.randn(2, 5, 7), torch.zeros(2, 5, dtype=torch.long), chunk_rows)
