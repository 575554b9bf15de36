"""Whether a cache is held on the GPU when the user leaves it to us (``train --preload auto``, ``reproduce``
without ``--no-preload``): only when the GPU's free memory is at least 2.5x the cache (a 29 GB cache must not be
preloaded onto a 40 GB card and run out of memory)."""

from types import SimpleNamespace

import torch

from dictionary_learning_aligned import cache as cache_mod
from dictionary_learning_aligned.cache import build_cache, fits_on_device
from dictionary_learning_aligned.reproduce import run as run_mod

META = {"model": "m", "layer": 0, "io": "out", "corpus": "c"}


def _cache(tmp_path):
    src = (torch.randn(100, 8) for _ in range(4))
    path = build_cache(src, tmp_path / "c", n_tokens=400, meta=META, shard_tokens=150, dtype="float32")
    size = sum(f.stat().st_size for f in path.glob("shard_*.npy"))
    return path, size


def _free(monkeypatch, free_bytes):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (free_bytes, 10 * free_bytes))


def test_a_cache_is_preloaded_only_onto_a_gpu_with_room_for_it_and_the_training(tmp_path, monkeypatch):
    path, size = _cache(tmp_path)
    _free(monkeypatch, 3 * size)
    assert fits_on_device(path, "cuda")
    _free(monkeypatch, 2 * size)  # the cache would take half of the free memory: more than the 40% it may have
    assert not fits_on_device(path, "cuda:0")
    assert not fits_on_device(path, "cpu")  # the memory-mapped shards are in host memory already


def test_reproduce_decides_the_preload_when_the_cache_opens_and_says_when_it_reads_from_disk(tmp_path, monkeypatch):
    path, size = _cache(tmp_path)
    said = []
    monkeypatch.setattr(run_mod, "_say", lambda ctx, text: said.append(text))
    ctx = SimpleNamespace(device="cuda")
    _free(monkeypatch, 2 * size)
    assert run_mod._decide_preload(ctx, path) is False
    assert said and "read from disk" in said[0] and "40%" in said[0]
    said.clear()
    _free(monkeypatch, 3 * size)
    assert run_mod._decide_preload(ctx, path) is True and not said
    assert cache_mod.PRELOAD_SHARE == 0.4


def test_reproduce_leaves_the_preload_undecided_until_the_cache_opens(tmp_path, monkeypatch):
    """``run_experiment(preload=None)`` used to hold every cache on a GPU; now ``_train_data`` asks
    ``fits_on_device`` as it opens the cache, and passes the answer to ``open_cache``."""
    from dictionary_learning_aligned import pipeline

    path, size = _cache(tmp_path)
    _free(monkeypatch, 2 * size)
    monkeypatch.setattr(run_mod, "_say", lambda ctx, text: None)
    monkeypatch.setattr(run_mod, "_cache_location", lambda ctx: (path, META))
    opened = {}
    monkeypatch.setattr(pipeline, "open_cache", lambda p, bs, dev, **kw: opened.update(kw) or SimpleNamespace(path=p))
    ctx = SimpleNamespace(cache=str(tmp_path), opened_cache=None, preload=None, device="cuda", batch_size=64,
                          epochs=1)
    run_mod._train_data(ctx)
    assert opened["preload"] is False and ctx.preload is False
