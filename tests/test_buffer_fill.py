"""How much an ActivationBuffer harvests: a run that draws fewer rows than the buffer holds (``max_rows``) gets
one fill of just its rows; a longer run is served exactly as without ``max_rows`` (its recorded numbers stay
valid)."""

import math

import pytest
import torch

from dictionary_learning_aligned import pipeline
from dictionary_learning_aligned.buffer import ActivationBuffer

from .conftest import TEXTS

CTX_LEN = 16  # 15 rows per context (BOS removed)


pytestmark = pytest.mark.usefixtures("no_thread_left_tokenizing")  # conftest: no producer thread outlives a test


def counting_buffer(tiny_lm, max_rows=None, n_ctxs=64, seed=0):
    """A buffer over the test texts whose ``calls`` lists the contexts of each forward pass."""
    _, lm = tiny_lm
    buf = ActivationBuffer(iter(TEXTS * 10), lm, lm.model.layers[1], n_ctxs=n_ctxs, ctx_len=CTX_LEN,
                           refresh_batch_size=2, out_batch_size=10, remove_bos=True, seed=seed, max_rows=max_rows)
    buf.calls = []
    harvest = buf.harvest

    def counted(tokens):
        buf.calls.append(tokens.shape[0])
        return harvest(tokens)

    buf.harvest = counted
    return buf


def test_a_run_that_fits_harvests_its_own_rows_once(tiny_lm):
    buf = counting_buffer(tiny_lm, max_rows=40)  # 4 batches of 10; the buffer holds 64 x 16 = 1024
    batches = [next(buf) for _ in range(4)]
    assert sum(buf.calls) == math.ceil(40 / (CTX_LEN - 1))  # 3 contexts, not the 69 of a whole fill
    rest = list(buf)  # drawing on never refills: the few rows beyond max_rows, then the end
    assert sum(buf.calls) == 3 and buf.fills == 1
    served = torch.cat(batches + rest)
    assert len(served) == 3 * (CTX_LEN - 1) and len(set(map(tuple, served.tolist()))) == len(served)
    assert buf.config["max_rows"] == 40


def test_a_run_longer_than_the_buffer_is_served_as_without_max_rows(tiny_lm):
    reference = counting_buffer(tiny_lm, n_ctxs=8)  # holds 8 x 16 = 128 rows
    expected = list(reference)  # every batch, until the text runs out
    for max_rows in (8 * CTX_LEN + 1, 10**9):
        buf = counting_buffer(tiny_lm, max_rows=max_rows, n_ctxs=8)
        got = list(buf)
        assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
        assert buf.calls == reference.calls and not buf.fill_once and buf.fills > 2


def test_max_rows_must_be_a_positive_integer(tiny_lm):
    _, lm = tiny_lm
    for bad in (0, -5, 2.5):
        with pytest.raises(ValueError, match="max_rows"):
            ActivationBuffer(iter(TEXTS), lm, lm.model.layers[1], max_rows=bad)


def test_a_small_cache_harvests_no_more_than_it_stores(tiny_lm, tmp_path, monkeypatch):
    _, lm = tiny_lm
    model = pipeline.LoadedModel(name="tiny", layer=1, lm=lm, submodule=lm.model.layers[1], d_model=64)
    harvest = pipeline.Harvest(model, batch_size=32, ctx_len=CTX_LEN, refresh_batch_size=4, seed=0)
    made = []
    real = pipeline.activation_buffer
    monkeypatch.setattr(pipeline, "activation_buffer", lambda *a, **k: made.append(real(*a, **k)) or made[-1])
    pipeline.harvest_into(tmp_path / "c", harvest, 100)  # buffer_ctxs gives 64 contexts: 1024 rows
    assert made[0].tokens_harvested <= 100 + 4 * (CTX_LEN - 1)  # at most one forward pass beyond the need


@pytest.mark.slow
def test_a_short_demo_harvests_only_the_activations_it_trains_on(tmp_path, monkeypatch):
    from dictionary_learning_aligned.demo import DemoConfig, run_demo

    made = {}
    real = pipeline.activation_buffer

    def recorded(harvest, split, *args, **kwargs):
        made.setdefault(split, []).append(real(harvest, split, *args, **kwargs))
        return made[split][-1]

    monkeypatch.setattr(pipeline, "activation_buffer", recorded)
    # 6 steps of 128 = 768 activations; the buffer holds 100 contexts of 64 (6,400)
    results = run_demo(DemoConfig(out=str(tmp_path / "o"), tokens=768, batch_size=128, dict_size=256, ctx_len=64,
                                  buffer_ctxs=100, refresh_batch_size=4, eval_batches=2, ce_batches=1,
                                  ce_batch_size=2, device="cpu"))
    assert results["steps_done"] == 6
    train = made["train"][0]
    assert train.tokens_harvested == 13 * 63  # ceil(768 / 63) contexts, BOS removed (not the 100 it holds)
    assert train.max_rows == 768 and train.fills == 1
