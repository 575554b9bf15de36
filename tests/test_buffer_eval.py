import pytest
import torch

from dictionary_learning_aligned import AutoEncoder
from dictionary_learning_aligned.buffer import ActivationBuffer, pack_token_contexts, prefetch
from dictionary_learning_aligned.evaluation import evaluate

from .conftest import TEXTS, evaluate_perfect_dictionary


def hidden_states(hf, tokens):
    with torch.no_grad():
        return hf(tokens, output_hidden_states=True).hidden_states


def test_pack_token_contexts(smollm2_tokenizer):
    ctxs = list(pack_token_contexts(TEXTS, smollm2_tokenizer, ctx_len=16))
    assert len(ctxs) > 5 and all(c.shape == (16,) and c[0] == smollm2_tokenizer.bos_token_id for c in ctxs)
    stream = torch.cat([c[1:] for c in ctxs]).tolist()
    first = smollm2_tokenizer(TEXTS[0])["input_ids"]
    assert stream[: len(first)] == first  # nothing lost or reordered
    with pytest.raises(ValueError, match="ctx_len"):
        next(pack_token_contexts(TEXTS, smollm2_tokenizer, ctx_len=1))
    # documents tokenized in batches give exactly the contexts of one document per call
    for n in (1, 2, 64):
        again = list(pack_token_contexts(TEXTS, smollm2_tokenizer, ctx_len=16, tokenize_batch=n))
        assert len(again) == len(ctxs) and all(torch.equal(a, b) for a, b in zip(again, ctxs))
    with pytest.raises(ValueError, match="tokenize_batch"):
        next(pack_token_contexts(TEXTS, smollm2_tokenizer, ctx_len=16, tokenize_batch=0))


@pytest.mark.parametrize("io,offset", [("out", 1), ("in", 0)])
def test_buffer_matches_hf_hidden_states_and_serves_every_row_once(tiny_lm, io, offset):
    hf, lm = tiny_lm
    layer = 1
    buf = ActivationBuffer(iter(TEXTS), lm, lm.model.layers[layer], io=io, n_ctxs=4, ctx_len=16,
                           refresh_batch_size=2, out_batch_size=10, remove_bos=True)
    served = torch.cat(list(buf))
    assert served.shape[1] == 64
    tokens = torch.stack(list(pack_token_contexts(TEXTS, lm.tokenizer, 16)))
    ref = hidden_states(hf, tokens)[layer + offset][:, 1:].reshape(-1, 64)  # BOS removed
    assert served.shape == ref.shape
    # same multiset of rows: sort both by their first coordinate
    key = lambda t: t[torch.argsort(t[:, 0])]
    assert torch.allclose(key(served), key(ref), atol=1e-5)
    assert not torch.allclose(served, ref)  # shuffled
    assert buf.tokens_harvested == ref.shape[0]


def test_forward_stops_after_the_layer(tiny_lm):
    hf, lm = tiny_lm
    calls = []
    handle = hf.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        buf = ActivationBuffer(iter(TEXTS), lm, lm.model.layers[0], n_ctxs=2, ctx_len=16, refresh_batch_size=2,
                               out_batch_size=8)
        next(buf)
    finally:
        handle.remove()
    assert calls == []


def test_buffer_bad_arguments(tiny_lm):
    _, lm = tiny_lm
    with pytest.raises(ValueError, match="io must be"):
        ActivationBuffer(iter(TEXTS), lm, lm.model.layers[0], io="middle")
    with pytest.raises(ValueError, match="out_batch_size"):
        ActivationBuffer(iter(TEXTS), lm, lm.model.layers[0], out_batch_size=0)


def test_evaluate_perfect_and_zero_dictionaries(tiny_lm):
    hf, lm = tiny_lm
    perfect, acts, tokens = evaluate_perfect_dictionary(lm, n_batches=3)  # asserts the CE loss of the splice
    assert perfect["n_tokens"] == 96
    assert perfect["frac_variance_explained"] == pytest.approx(1.0, abs=1e-5)
    assert perfect["cossim"] == pytest.approx(1.0, abs=1e-5)
    assert 0 < perfect["l0"] <= 64 and perfect["frac_alive"] > 0.5
    # a dictionary that outputs b_dec = 0 for everything behaves like zero ablation
    dead = AutoEncoder(64, 16)
    with torch.no_grad():
        dead.b_enc.fill_(-1e6)
    zero = evaluate(dead, acts, n_batches=3, model=lm, submodule=lm.model.layers[1], ce_tokens=tokens)
    assert zero["l0"] == 0 and zero["frac_alive"] == 0
    assert zero["frac_recovered"] == pytest.approx(0.0, abs=1e-3)
    assert zero["alignment"]["n"] == 16


def test_evaluate_rejects_wrong_width(tiny_lm):
    with pytest.raises(ValueError, match="activation_dim"):
        evaluate(AutoEncoder(32, 8), [torch.randn(4, 64)])
    with pytest.raises(ValueError, match="no activations"):
        evaluate(AutoEncoder(32, 8), [])


def test_buffer_drops_high_norm_outliers(tiny_lm):
    hf, lm = tiny_lm
    buf = ActivationBuffer(iter(TEXTS), lm, lm.model.layers[1], n_ctxs=4, ctx_len=16, refresh_batch_size=4,
                           out_batch_size=1000, remove_bos=False, max_norm_multiple=1.05)
    served = torch.cat(list(buf))
    assert buf.tokens_dropped > 0 and served.shape[0] == buf.tokens_harvested - buf.tokens_dropped
    with pytest.raises(ValueError, match="max_norm_multiple"):
        ActivationBuffer(iter(TEXTS), lm, lm.model.layers[1], max_norm_multiple=1.0)
    with pytest.raises(ValueError, match="ctx_len"):
        ActivationBuffer(iter(TEXTS), lm, lm.model.layers[1], ctx_len=1)
    with pytest.raises(ValueError, match="batch_size"):
        buf.token_batch(0)


def test_prefetch_keeps_order_raises_in_place_and_stops():
    assert list(prefetch(iter(range(1000)), ahead=2, chunk=7)) == list(range(1000))
    assert list(prefetch([], ahead=1, chunk=1)) == []

    def failing():
        yield from range(5)
        raise RuntimeError("bad document 5")

    got = []
    with pytest.raises(RuntimeError, match="bad document 5"):
        for x in prefetch(failing(), ahead=1, chunk=2):
            got.append(x)
    assert got == [0, 1, 2, 3, 4]

    produced = []

    def endless():
        i = 0
        while True:
            produced.append(i)
            yield i
            i += 1

    gen = prefetch(endless(), ahead=2, chunk=4)
    assert [next(gen) for _ in range(3)] == [0, 1, 2]
    gen.close()  # the producer thread stops instead of running on
    import time
    time.sleep(0.3)
    n = len(produced)
    time.sleep(0.3)
    assert len(produced) == n and n <= 4 * (2 + 2) + 1
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="positive integers"):
            prefetch([1], ahead=bad)  # raised at the call, not at the first next()


def test_buffer_contexts_equal_the_packed_stream(tiny_lm):
    _, lm = tiny_lm
    buf = ActivationBuffer(iter(TEXTS * 3), lm, lm.model.layers[0], n_ctxs=4, ctx_len=8, refresh_batch_size=2,
                           out_batch_size=4)
    want = torch.stack(list(pack_token_contexts(iter(TEXTS * 3), lm.tokenizer, 8)))
    got = []
    while (t := buf.token_batch(3)) is not None:
        got.append(t)
    assert torch.equal(torch.cat(got), want)


def test_process_exits_cleanly_while_prefetching():
    """A producer thread still tokenizing at interpreter exit used to abort the process (exit code 134)."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
from transformers import AutoTokenizer
from dictionary_learning_aligned.buffer import pack_token_contexts, prefetch
from dictionary_learning_aligned.data import iter_texts
from dictionary_learning_aligned.models import find_smollm2_gguf
p = find_smollm2_gguf()
tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
gens = [prefetch(pack_token_contexts(iter_texts(split="train"), tok, 128, tokenize_batch=256), ahead=32)
        for _ in range(3)]
print([len(next(g)) for g in gens])
"""
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300,
                       env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "[128, 128, 128]" in r.stdout


def test_prefetch_closed_early_is_still_stopped_at_exit():
    """A generator closed (or dropped) while its thread is still inside the item iterator (e.g. tokenizing) must
    stay known to the exit hook, which waits for it: it used to be forgotten at close() and could abort at exit."""
    import threading
    import time

    from dictionary_learning_aligned import buffer as B

    def slow():
        yield 0
        time.sleep(0.5)  # the producer is busy here when the consumer closes
        yield 1

    gen = prefetch(slow(), ahead=1, chunk=1)
    assert next(gen) == 0
    time.sleep(0.05)
    gen.close()
    threads = [t for t in threading.enumerate() if t.name == "dla-prefetch" and t.is_alive()]
    assert threads and all(t in B._PRODUCERS for t in threads)
    B._stop_prefetchers()
    assert not any(t.is_alive() for t in threads) and not any(t in B._PRODUCERS for t in threads)
