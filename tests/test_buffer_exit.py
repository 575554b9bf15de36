"""The buffer's text-producing thread at interpreter exit and on close: it starts no further item (tokenizer call,
torch op) once told to stop, the exit hook waits for it, a buffer can be closed, and a reader of a stopped
producer gets an error instead of waiting forever. A daemon thread still inside a fast tokenizer's call when the
interpreter finalizes aborts the process (exit code 134, "terminate called without an active exception")."""

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dictionary_learning_aligned.buffer import ActivationBuffer, _stop_prefetchers, prefetch

from .conftest import TEXTS

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("no_thread_left_tokenizing")  # conftest: no producer thread outlives a test


def producers():
    return [t for t in threading.enumerate() if t.name == "dla-prefetch" and t.is_alive()]


def test_a_stopped_producer_starts_no_further_item():
    """It used to finish its chunk (up to 64 items, each possibly a tokenizer call) before looking at the stop."""
    produced = []

    def slow_items():
        for i in itertools.count():
            produced.append(i)
            time.sleep(0.01)
            yield i

    gen = prefetch(slow_items(), ahead=1, chunk=64)
    assert next(gen) == 0  # the first chunk is out; the producer is inside the second
    time.sleep(0.1)
    gen.close()
    n = len(produced)
    _stop_prefetchers()
    assert not producers()
    assert len(produced) <= n + 1, (n, len(produced))  # at most the item it was inside


def test_a_reader_of_a_producer_stopped_at_exit_gets_an_error_not_a_hang():
    gen = prefetch(itertools.count(), ahead=1, chunk=1)
    assert next(gen) == 0
    _stop_prefetchers()  # what the exit hook does while, e.g., a later exit hook still reads
    outcome = []

    def read_on():
        try:
            for _ in range(10):
                next(gen)
        except RuntimeError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=read_on, daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive() and outcome and "stopped" in outcome[0]


def test_close_from_another_thread_while_a_reader_waits():
    """close() called while the reader waits inside next() (the generator is running there) raised
    ValueError('generator already executing'), and the reader was told of an interpreter exit."""
    def slow():
        yield 0
        time.sleep(5)
        yield 1

    gen = prefetch(slow(), ahead=1, chunk=1)
    assert next(gen) == 0
    outcome = []

    def read_on():
        try:
            next(gen)
        except RuntimeError as e:
            outcome.append(str(e))

    reader = threading.Thread(target=read_on, daemon=True)
    reader.start()
    time.sleep(0.3)  # the reader waits for the next item
    gen.close(timeout=0)
    reader.join(10)
    assert not reader.is_alive() and outcome and "closed" in outcome[0]


def test_closing_a_buffer_stops_and_joins_its_thread(tiny_lm):
    _, lm = tiny_lm
    with ActivationBuffer(iter(TEXTS * 1000), lm, lm.model.layers[1], n_ctxs=4, ctx_len=16,
                          refresh_batch_size=2, out_batch_size=8) as buf:
        assert buf.token_batch(1).shape == (1, 16)
        assert producers()
    assert not producers()
    assert buf.token_batch(1) is None  # closed: no further contexts
    assert buf.close()  # closing again is harmless


EXIT_PROGRAM = """
import atexit, threading, time, types

def report():  # registered before the buffer's exit hook, so it runs after it
    alive = [t for t in threading.enumerate() if t.name == "dla-prefetch" and t.is_alive()]
    print("producers alive at exit:", len(alive), flush=True)

atexit.register(report)
from dictionary_learning_aligned.buffer import ActivationBuffer

class SlowTokenizer:
    bos_token_id, eos_token_id, calls = 1, None, 0

    def __call__(self, docs, add_special_tokens=True):
        self.calls += 1
        if self.calls == 1:  # the first documents are quick: 256 contexts of 16 tokens at once
            return {"input_ids": [[5] * 15 for _ in docs]}
        time.sleep(0.3)  # the rest of the text is slow: one context per call
        return {"input_ids": [[5] * 15] + [[] for _ in docs[1:]]}

model = types.SimpleNamespace(tokenizer=SlowTokenizer(), config=types.SimpleNamespace(hidden_size=4))
buf = ActivationBuffer(iter(lambda: "text", None), model, None, n_ctxs=4, ctx_len=16, refresh_batch_size=64)
print(tuple(buf.token_batch(1).shape), flush=True)
time.sleep(0.5)  # the producer is now inside the slow calls, tokenizing ahead; exit without closing the buffer
"""


def test_the_process_exits_cleanly_with_the_buffer_tokenizing_ahead():
    """The exit hook stops the producer before its next tokenizer call and waits for the call it is inside;
    before, it finished its chunk first (here 64 slow calls), outlived the hook's 10 s wait and was still running
    when the interpreter finalized (with a real fast tokenizer, that aborts the process)."""
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-c", EXIT_PROGRAM], cwd=ROOT, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and "terminate called" not in r.stderr, r.stderr[-2000:]
    assert "(1, 16)" in r.stdout and "producers alive at exit: 0" in r.stdout, (r.stdout, r.stderr[-2000:])
    assert time.monotonic() - t0 < 60
