"""The training bar says when it stands still because the activation buffer is refilling: on a terminal the bar's
postfix reads "refilling activations" during each refill and is restored after it; a log file gets no extra
line."""

import io
import sys

import pytest

from dictionary_learning_aligned import console
from dictionary_learning_aligned.buffer import ActivationBuffer
from dictionary_learning_aligned.trainers.standard import StandardTrainer
from dictionary_learning_aligned.training import REFILL_NOTE, trainSAE

from .conftest import TEXTS


pytestmark = pytest.mark.usefixtures("no_thread_left_tokenizing")  # conftest: no producer thread outlives a test


class Terminal(io.StringIO):
    def isatty(self):
        return True


def train_watching_refills(tiny_lm, stderr, monkeypatch):
    """Train 30 steps on a small buffer (it refills several times); returns (the buffer, what stderr held at the
    start of each fill)."""
    _, lm = tiny_lm
    buf = ActivationBuffer(iter(TEXTS * 10), lm, lm.model.layers[1], n_ctxs=4, ctx_len=16, refresh_batch_size=2,
                           out_batch_size=8, remove_bos=True, seed=0)
    seen, refresh = [], buf.refresh

    def watched():
        seen.append(stderr.getvalue())
        refresh()

    buf.refresh = watched
    monkeypatch.setattr(sys, "stderr", stderr)
    cfg = dict(trainer=StandardTrainer, activation_dim=64, dict_size=32, layer=1, lm_name="tiny", lr=1e-3,
               l1_penalty=0.01, warmup_steps=1, sparsity_warmup_steps=2, seed=0, steps=30)
    trainSAE(buf, [cfg], steps=30, device="cpu", normalize_activations=True, norm_factor_batches=1)
    return buf, seen


def last_redraw(text: str) -> str:
    return [part for part in text.split("\r") if part.strip()][-1]


def test_the_bar_says_refilling_during_each_refill_on_a_terminal(tiny_lm, monkeypatch):
    buf, seen = train_watching_refills(tiny_lm, Terminal(), monkeypatch)
    assert len(seen) > 3  # the first fill (for the norm factor, before the bar exists) and refills while training
    for text in seen[1:]:
        assert REFILL_NOTE in last_redraw(text) and "training" in last_redraw(text)
    assert REFILL_NOTE not in last_redraw(sys.stderr.getvalue())  # restored after each refill
    assert buf.refill_context is None  # the buffer is left as it was


def test_a_log_file_gets_no_line_per_refill(tiny_lm, monkeypatch):
    _, seen = train_watching_refills(tiny_lm, io.StringIO(), monkeypatch)
    assert len(seen) > 3 and REFILL_NOTE not in sys.stderr.getvalue()


def test_bar_note_restores_the_postfix_also_on_error():
    stream = Terminal()
    bar = console.progress(total=3, desc="training", file=stream)
    bar.set_postfix_str("loss=1", refresh=False)
    with pytest.raises(KeyError):
        with console.bar_note(bar, "busy"):
            assert "busy" in last_redraw(stream.getvalue())
            raise KeyError
    assert bar.postfix == "loss=1"
    bar.close()
