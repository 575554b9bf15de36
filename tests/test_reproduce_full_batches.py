"""``reproduce`` over several epochs of a cache whose token count is not a multiple of the batch size: every batch
it trains on is full, the steps it plans are the batches served, its records say what it trained on, and its log
times each phase. The language model is the random 3-layer LLaMA of ``tiny_lm`` (fast on a CPU)."""
import dataclasses
import json

import pytest
import torch

from dictionary_learning_aligned import pipeline
from dictionary_learning_aligned.reproduce import run as reproduce
from dictionary_learning_aligned.cache import build_cache
from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment, resolve
from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import run_experiment, train_steps

BATCH = 256
TOKENS, EPOCHS = 1800, 3  # 600 distinct tokens = 2 full batches + 88 per pass


@pytest.fixture
def served(monkeypatch, tiny_lm):
    """The row counts of the batches ``reproduce`` hands to training (in order), with its model swapped for
    ``tiny_lm`` (read at block 1, d_model 64) and a one-size ``tinyfull`` grid of TopK dictionaries."""
    _, lm = tiny_lm

    def load(name, layer, device="cpu", dtype=torch.float32):
        return pipeline.LoadedModel(name=name, layer=layer, lm=lm, submodule=lm.model.layers[1], d_model=64)

    monkeypatch.setattr(pipeline, "load_model", load)
    monkeypatch.setitem(EXPERIMENTS, "tinyfull", Experiment(
        "tinyfull", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=1,
        tokens={"smoke": TOKENS, "small": TOKENS, "paper": TOKENS}))
    rows, real = [], reproduce._train_data

    def spy(ctx):
        for batch in real(ctx):
            rows.append(batch.shape[0])
            yield batch

    monkeypatch.setattr(reproduce, "_train_data", spy)
    return rows


def test_steps_are_the_full_batches_the_data_serves():
    assert train_steps(100_000_000, 2048) == (48_829, 100_000_000)  # a buffer: full batches, the last one too
    # the GPU run that had a 64-row batch at the end of each of its 4 passes: 4 x 12,207 full batches
    assert train_steps(100_000_000, 2048, 4, cached=True) == (48_828, 25_000_000)
    assert train_steps(TOKENS, BATCH, EPOCHS, cached=True) == (6, 600)
    assert train_steps(1024, 256, 1, cached=True) == (4, 1024)
    with pytest.raises(ValueError, match="harvest 100 distinct tokens, fewer than one batch of 256"):
        train_steps(300, 256, 3, cached=True)
    with pytest.raises(ValueError, match="fewer than one batch"):
        run_experiment("main", "smoke", "/nonexistent-store", device="cpu", cache="/nonexistent-cache", tokens=300,
                       epochs=3, batch_size=256)


def test_epochs_over_a_cache_train_on_full_batches_and_records_count_them(tmp_path, served, capsys):
    ids = run_experiment("tinyfull", "smoke", str(tmp_path / "store"), device="cpu", batch_size=BATCH,
                         eval_batches=1, ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"),
                         epochs=EPOCHS)
    assert len(ids) == 2  # standard and aligned, trained together on the same batches
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    assert json.loads(meta.read_text())["tokens"] == 600
    assert served == [BATCH] * 6  # three passes of two full batches; no 88-row batch
    for r in iter_records(tmp_path / "store"):
        assert (r["steps"], r["train_tokens"], r["unique_tokens"], r["epochs"]) == (6, 6 * BATCH, 600, 3)
        assert r["trainer"]["steps"] == 6  # the schedule is planned for the batches served
    out = capsys.readouterr().out
    for phase in ("loaded smollm2", "drew the held-out data", "harvested 600 activations into",
                  "part 0: training 2 dictionaries of 256 features for 6 steps", "part 0: opened the cache",
                  "part 0: trained 6 steps in", "part 0: evaluated and recorded 2 dictionaries in"):
        assert phase in out, phase
    assert " s] loaded " in out and "tokens/s)" in out  # elapsed seconds and the harvest's rate


def test_a_cache_with_fewer_tokens_than_planned_is_refused_before_loading(tmp_path, served, monkeypatch):
    plan = resolve("tinyfull", "smoke")
    path, meta = pipeline.cache_location(tmp_path / "cache", plan.model, plan.layer, plan.corpus, 600)
    build_cache(iter([torch.randn(500, 64)]), path, 600, meta)  # the corpus ran out after 500 tokens
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(ValueError, match="holds 500 activations, fewer than the 600 distinct tokens"):
        run_experiment("tinyfull", "smoke", str(tmp_path / "store"), device="cpu", batch_size=BATCH,
                       cache=str(tmp_path / "cache"), epochs=EPOCHS)
    assert served == [] and not (tmp_path / "store").exists()


def test_later_parts_reuse_the_preloaded_cache_and_train_on_the_same_batches(tmp_path, monkeypatch, tiny_lm,
                                                                              capsys):
    """One preload per process: the cache opened (and preloaded) by part 0 serves part 1 again from the start,
    the batches a fresh open would give; the log says it was reused."""
    from dictionary_learning_aligned.cache import ActivationCache

    _, lm = tiny_lm
    monkeypatch.setattr(pipeline, "load_model", lambda name, layer, device="cpu", dtype=None: pipeline.LoadedModel(
        name=name, layer=layer, lm=lm, submodule=lm.model.layers[1], d_model=64))
    monkeypatch.setitem(EXPERIMENTS, "tinyparts", Experiment(
        "tinyparts", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=1,
        tokens={"smoke": TOKENS, "small": TOKENS, "paper": TOKENS}))
    preloads, served, real_init, real_data = [], [], ActivationCache.__init__, reproduce._train_data

    def init(self, *a, **k):
        preloads.append(k.get("preload"))
        real_init(self, *a, **k)

    def spy(ctx):
        data = real_data(ctx)
        served.append([b.clone() for b in data])
        return data

    monkeypatch.setattr(ActivationCache, "__init__", init)
    monkeypatch.setattr(reproduce, "_train_data", spy)
    ids = run_experiment("tinyparts", "smoke", str(tmp_path / "store"), device="cpu", batch_size=BATCH,
                         eval_batches=1, ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"),
                         epochs=EPOCHS, chunk=1, preload=True)
    assert len(ids) == 2 and len(served) == 2  # standard and aligned, one part each
    assert preloads.count(True) == 1  # (the other opens only count the cache's tokens)
    assert len(served[1]) == 6 and all(torch.equal(a, b) for a, b in zip(served[0], served[1], strict=True))
    out = capsys.readouterr().out
    assert "part 0: opened the cache onto cpu in" in out and "(reused" not in out.split("part 1:")[0]
    assert "part 1: opened the cache onto cpu in 0.0 s (reused: opened by an earlier part)" in out
    assert "waiting for batches" in out and "fsync" in out  # the harvest line's split


def test_each_compiled_part_starts_from_fresh_compiled_code(monkeypatch):
    """With compiled stacks, every part drops the compiled code of the parts before it: they share the loss's code
    object and Dynamo keeps at most 8 versions, past which a part would silently train eagerly."""
    import torch
    from dictionary_learning_aligned.reproduce import run as reproduce

    resets = []
    monkeypatch.setattr(torch._dynamo, "reset", lambda: resets.append(1))
    ctx = reproduce.Context(name="main", scale="smoke", plan=None, store=None, device="cpu", batch_size=8, amp=None,
                          steps=2, total_tokens=16, unique_tokens=16, epochs=1, cache=None, preload=False)
    reproduce._forget_compiled_stacks(ctx)
    assert resets == []  # eager stacks: nothing compiled, nothing to drop
    for mode in (True, "reduce-overhead"):
        reproduce._forget_compiled_stacks(dataclasses.replace(ctx, compile_stacks=mode))
    assert len(resets) == 2
