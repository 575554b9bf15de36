import json
import os
import threading
import time

import numpy as np
import pytest
import torch

from dictionary_learning_aligned import StandardTrainer, trainSAE
from dictionary_learning_aligned.cache import ActivationCache, build_cache

META = {"model": "tiny", "layer": 3, "io": "out", "corpus": "synthetic", "ctx_len": 16}


def batches(n=10, size=100, dim=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(size, dim, generator=g) for _ in range(n)]


def rows_sorted(t):
    return t[torch.argsort(t[:, 0])]


def test_roundtrip_every_row_once_across_shards(tmp_path):
    src = batches()
    path = build_cache(src, tmp_path / "c", n_tokens=950, meta=META, shard_tokens=300, dtype="float32")
    info = json.loads((path / "meta.json").read_text())
    assert info["tokens"] == 950 and [s["tokens"] for s in info["shards"]] == [300, 300, 300, 50]
    cache = ActivationCache(path, batch_size=128, expect={"model": "tiny", "layer": 3})
    served = torch.cat(list(cache))
    assert served.shape == (950, 8) and len(cache) == 8
    assert torch.equal(rows_sorted(served), rows_sorted(torch.cat(src)[:950]))
    assert not torch.equal(served, torch.cat(src)[:950])  # shuffled
    assert torch.equal(torch.cat(list(ActivationCache(path, 128, seed=0))), served)  # seeded: same batches
    assert not torch.equal(torch.cat(list(ActivationCache(path, 128, seed=1))), served)
    two = list(ActivationCache(path, batch_size=128, epochs=2))
    assert len(two) == 16 and not torch.equal(torch.cat(two[:8]), torch.cat(two[8:]))
    ordered = torch.cat(list(ActivationCache(path, batch_size=128, shuffle=False)))
    assert torch.equal(ordered, torch.cat(src)[:950])
    preloaded = list(ActivationCache(path, batch_size=128, epochs=2, preload=True))
    assert all(torch.equal(a, b) for a, b in zip(preloaded, two, strict=True))  # same batches, same order


def test_float16_storage_and_fewer_tokens_than_asked(tmp_path):
    src = batches(n=3)
    path = build_cache(src, tmp_path / "c", n_tokens=10_000, meta=META, dtype="float16")
    cache = ActivationCache(path, batch_size=1000, shuffle=False)
    assert cache.n_tokens == 300
    assert torch.allclose(next(iter(cache)), torch.cat(src), atol=1e-2)


def test_cache_errors(tmp_path):
    path = build_cache(batches(n=2), tmp_path / "c", n_tokens=200, meta=META)
    with pytest.raises(ValueError, match="layer=3, not 4"):
        ActivationCache(path, expect={"layer": 4})
    with pytest.raises(FileExistsError):
        build_cache(batches(n=2), path, n_tokens=200, meta=META)
    (tmp_path / "half").mkdir()
    with pytest.raises(FileNotFoundError, match="interrupted"):
        ActivationCache(tmp_path / "half")
    with pytest.raises(ValueError, match="NaN"):
        build_cache([torch.full((4, 8), float("nan"))], tmp_path / "n", n_tokens=4, meta=META)
    with pytest.raises(ValueError, match="all be"):
        build_cache([torch.randn(4, 8), torch.randn(4, 9)], tmp_path / "w", n_tokens=8, meta=META)
    with pytest.raises(ValueError, match="no activations"):
        build_cache([], tmp_path / "e", n_tokens=8, meta=META)
    assert not (tmp_path / "e").exists()


def test_train_several_dictionaries_from_a_cache(tmp_path):
    path = build_cache(batches(n=8, dim=16), tmp_path / "c", n_tokens=800, meta=META, shard_tokens=256)
    cache = ActivationCache(path, batch_size=100, epochs=2, seed=0)
    cfg = dict(trainer=StandardTrainer, steps=16, activation_dim=16, dict_size=32, layer=3, lm_name="tiny",
               warmup_steps=1, sparsity_warmup_steps=2)
    trainers = trainSAE(cache, [{**cfg, "seed": 0}, {**cfg, "seed": 1}], steps=16, device="cpu")
    assert all(t.steps_done == 16 for t in trainers)


def test_an_interrupted_build_is_marked_and_only_such_a_folder_is_cleared(tmp_path):
    from dictionary_learning_aligned.cache import BUILDING_MARKER, clear_unfinished, is_unfinished_cache

    def killed(n):  # the harvest dies (e.g. the process is killed) after n batches
        for b in batches(n=n):
            yield b
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_cache(killed(3), tmp_path / "k", n_tokens=1000, meta=META, shard_tokens=100)
    assert not (tmp_path / "k").exists()  # build_cache removes the folder it made when it fails
    # a folder left by a killed process: marker and shards only -> cleared and rebuilt
    half = tmp_path / "half"
    half.mkdir()
    (half / BUILDING_MARKER).write_text("")
    (half / "shard_00000.npy").write_bytes(b"x")
    assert is_unfinished_cache(half) and clear_unfinished(half) is False and not half.exists()
    # anything else is never deleted: a folder of the user's, or a marked folder holding other files
    for files in ({"notes.txt": "mine"}, {BUILDING_MARKER: "", "shard_00000.npy": "x", "notes.txt": "mine"}):
        other = tmp_path / "other"
        other.mkdir()
        for name, text in files.items():
            (other / name).write_text(text)
        assert not is_unfinished_cache(other)
        with pytest.raises(FileExistsError, match="not an activation cache"):
            clear_unfinished(other)
        assert {p.name for p in other.iterdir()} == set(files)
        for p in other.iterdir():
            p.unlink()
        other.rmdir()
    done = build_cache(batches(n=2), tmp_path / "done", n_tokens=200, meta=META)
    assert not (done / BUILDING_MARKER).exists() and clear_unfinished(done) is True


def test_build_cache_checks_its_arguments_before_harvesting(tmp_path):
    def never():
        raise AssertionError("harvested before the arguments were checked")
        yield

    with pytest.raises(ValueError, match="JSON-ready"):
        build_cache(never(), tmp_path / "m", n_tokens=10, meta={"x": object()})
    with pytest.raises(ValueError, match="JSON-ready: a dict"):  # the reader needs a dict (expect, config)
        build_cache(never(), tmp_path / "m", n_tokens=10, meta=["model", "layer"])
    with pytest.raises(ValueError, match="integers >= 1"):
        build_cache(never(), tmp_path / "f", n_tokens=5.5, meta=META)
    assert not (tmp_path / "m").exists() and not (tmp_path / "f").exists()


def test_damaged_cache_is_named(tmp_path):
    path = build_cache(batches(n=2), tmp_path / "c", n_tokens=200, meta=META, shard_tokens=100)
    shard = path / "shard_00001.npy"
    good = shard.read_bytes()
    shard.write_bytes(good[:200])  # truncated
    with pytest.raises(ValueError, match="shard_00001.npy is damaged|shard_00001.npy holds an array"):
        ActivationCache(path)
    np.save(shard, np.zeros((100, 5), np.float16))  # another width
    with pytest.raises(ValueError, match=r"shard_00001.npy holds an array of shape \(100, 5\)"):
        ActivationCache(path)
    shard.write_bytes(good)
    ActivationCache(path)  # intact again
    (path / "meta.json").write_text("{not json")
    with pytest.raises(ValueError, match="meta.json is damaged"):
        ActivationCache(path)


# --- the GPU data path: same batches without host waits, one preload, a background writer ---------------------


def documented_order(path, batch_size, epochs=1, shuffle=True, seed=0, drop_last=False):
    """The batches of the cache at ``path`` as ActivationCache's docstring describes them, computed directly from
    the shard files (the algorithm every earlier version served): per epoch a permutation of all rows, cut into
    batches; each batch's rows read in ascending order, then put in the order of a further permutation of the
    batch (with ``shuffle``), all drawn from one ``default_rng(seed)``."""
    info = json.loads((path / "meta.json").read_text())
    data = np.concatenate([np.load(path / s["file"])[: s["tokens"]] for s in info["shards"]])
    n, g, out = len(data), np.random.default_rng(seed), []
    for _ in range(epochs):
        order = g.permutation(n) if shuffle else np.arange(n)
        for s in range(0, n, batch_size):
            if drop_last and s + batch_size > n:
                break
            batch = torch.from_numpy(data[np.sort(order[s:s + batch_size])]).float()
            if shuffle:
                batch = batch[torch.from_numpy(g.permutation(len(batch)))]
            out.append(batch)
    return out


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_batches_are_bit_identical_to_the_documented_order(tmp_path, dtype, monkeypatch):
    path = build_cache(batches(n=10, size=97), tmp_path / "c", n_tokens=950, meta=META, shard_tokens=300,
                       dtype=dtype)
    monkeypatch.setattr(ActivationCache, "PRELOAD_CHUNK_BYTES", 7 * 8 * 4, raising=False)  # chunks cross shards
    for preload in (False, True):
        for shuffle in (True, False):
            for drop_last in (False, True):
                for bs in (128, 950, 1):
                    if bs == 1 and (preload or not shuffle):
                        continue  # one-row batches: checked once, they are slow
                    want = documented_order(path, bs, 3, shuffle, 5, drop_last)
                    got = list(ActivationCache(path, bs, epochs=3, shuffle=shuffle, seed=5, preload=preload,
                                               drop_last=drop_last))
                    assert len(got) == len(want), (preload, shuffle, drop_last, bs)
                    assert all(torch.equal(a, b) for a, b in zip(got, want)), (preload, shuffle, drop_last, bs)


def test_a_preloaded_cache_sends_each_epochs_order_to_the_device_once(tmp_path, monkeypatch):
    """Before, every batch copied two index arrays from the host (each such copy from pageable memory makes a GPU
    wait for the step before it); now one array per epoch."""
    path = build_cache(batches(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=300)
    cache = ActivationCache(path, batch_size=100, epochs=3, preload=True)
    real, copies = torch.from_numpy, []
    monkeypatch.setattr(torch, "from_numpy", lambda a: copies.append(a.shape) or real(a))
    assert len(list(cache)) == 30
    assert copies == [(1000,)] * 3


def test_preload_checks_finiteness_once_and_says_so(tmp_path):
    path = build_cache(batches(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=300, dtype="float32")
    assert ActivationCache(path, preload=True).finite_checked
    assert not ActivationCache(path).finite_checked  # read from disk batch by batch: not checked
    # float32 cache served as float16: a finite value may overflow, so nothing is promised
    assert not ActivationCache(path, preload=True, dtype=torch.float16).finite_checked
    shard = np.load(path / "shard_00002.npy", mmap_mode="r+")
    shard[17, 3] = np.inf  # damaged after the build
    shard.flush()
    del shard
    with pytest.raises(ValueError, match=r"c holds NaN or infinite activations \(a damaged cache\)"):
        ActivationCache(path, preload=True)
    ActivationCache(path)  # opening without preload reads no rows


def test_preload_allocates_the_tensor_once(tmp_path, monkeypatch):
    """The cache's rows go straight into one [n_tokens, dim] tensor: no per-shard copies joined by torch.cat
    (which held the cache twice on the device)."""
    path = build_cache(batches(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=300)
    monkeypatch.setattr(torch, "cat", lambda *a, **k: pytest.fail("torch.cat while preloading"))
    cache = ActivationCache(path, preload=True)
    assert cache._data.shape == (1000, 8) and cache._data.dtype == torch.float16


def test_with_order_reuses_the_preloaded_tensor_and_serves_a_fresh_opens_batches(tmp_path):
    path = build_cache(batches(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=300)
    first = ActivationCache(path, batch_size=64, epochs=1, seed=0, preload=True, drop_last=True)
    list(first)  # iterated before: reuse starts from the beginning
    again = first.with_order(batch_size=128, epochs=2, seed=3, drop_last=False)
    assert again._data is first._data and again.finite_checked and first.batch_size == 64
    fresh = ActivationCache(path, batch_size=128, epochs=2, seed=3, preload=True, drop_last=False)
    assert len(again) == len(fresh) == 16
    assert all(torch.equal(a, b) for a, b in zip(again, fresh, strict=True))
    same = first.with_order()  # nothing changed: the first cache's batches
    assert all(torch.equal(a, b) for a, b in zip(same, first, strict=True))
    with pytest.raises(ValueError, match="batch_size and epochs must be >= 1"):
        first.with_order(epochs=0)
    with pytest.raises(ValueError, match="fewer than one batch of 2000"):
        first.with_order(batch_size=2000)


def test_float16_conversion_rounds_as_numpy_does():
    """The build converts on the batch's device with torch; earlier builds used numpy's astype. Round to nearest
    even, subnormals, values rounding up to the largest half (65504) and past it (inf), ties."""
    g = np.random.default_rng(0)
    x = np.concatenate([
        g.standard_normal(100_000).astype(np.float32) * 10.0 ** g.integers(-9, 5, 100_000),
        (np.arange(-2000, 2000) * 2.0 ** -25).astype(np.float32),  # subnormal halves, with ties between them
        np.float32(2.0 ** -24) * np.array([0.5, 0.49, 0.51, 1.5, 2.5], np.float32),  # ties at the smallest
        np.array([1 + 2 ** -11, 1 + 3 * 2 ** -11, 2048 + 1, 2048 + 3], np.float32),  # ties to even in normals
        np.array([65503, 65504, 65519.99, 65520, 70000, 3e38, -65520], np.float32),
        np.array([0.0, -0.0], np.float32)]).astype(np.float32)
    with np.errstate(over="ignore"):
        want = x.astype(np.float16)
    got = torch.from_numpy(x).to(torch.float16).numpy()
    assert np.array_equal(got.view(np.uint16), want.view(np.uint16))


def test_values_beyond_float16_are_refused_not_stored_as_inf(tmp_path):
    big = torch.randn(50, 8)
    big[7, 2] = 70_000.0  # finite in float32, inf in float16
    with pytest.raises(ValueError, match=r"70000 exceed float16's range.*dtype='float32'"):
        build_cache([torch.randn(50, 8), big], tmp_path / "h", n_tokens=100, meta=META)
    assert not (tmp_path / "h").exists()
    path = build_cache([torch.randn(50, 8), big], tmp_path / "f", n_tokens=100, meta=META, dtype="float32")
    assert float(next(iter(ActivationCache(path, 100, shuffle=False))).max()) == 70_000.0


def test_a_write_error_reaches_the_caller_and_leaves_no_folder(tmp_path, monkeypatch):
    from dictionary_learning_aligned import cache as cache_mod

    threads = []

    def disk_full(self, rows):
        threads.append(threading.current_thread())
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_mod._ShardWriter, "_write", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build_cache(batches(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=300)
    assert not (tmp_path / "c").exists()
    assert threads and threads[0] is not threading.main_thread()  # written in the background


def test_the_writer_overlaps_the_harvest_with_few_writes_queued(tmp_path, monkeypatch):
    from dictionary_learning_aligned import cache as cache_mod

    done, real_write = [], cache_mod._ShardWriter._write

    def slow_write(self, rows):
        time.sleep(0.02)
        real_write(self, rows)
        done.append(len(rows))

    def harvest():
        for i, b in enumerate(batches(n=20, size=50)):
            assert i - len(done) <= 5  # at most 4 calls queued, one in the writer
            yield b

    monkeypatch.setattr(cache_mod._ShardWriter, "_write", slow_write)
    path = build_cache(harvest(), tmp_path / "c", n_tokens=1000, meta=META, shard_tokens=1000)
    assert sum(done) == 1000
    assert torch.equal(torch.cat(list(ActivationCache(path, 1000, shuffle=False, dtype=torch.float16))),
                       torch.cat(batches(n=20, size=50)).half())


def test_a_reused_input_tensor_is_copied_before_the_writer_reads_it(tmp_path, monkeypatch):
    """A harvest that refills one tensor in place (float32 on the CPU: no conversion copies it) must not see its
    later values written in place of the earlier ones."""
    from dictionary_learning_aligned import cache as cache_mod

    real_write = cache_mod._ShardWriter._write
    monkeypatch.setattr(cache_mod._ShardWriter, "_write", lambda self, rows: time.sleep(0.02) or real_write(self, rows))
    src = batches(n=6, size=50)

    def refilled():
        buf = torch.empty(50, 8)
        for b in src:
            buf.copy_(b)
            yield buf

    path = build_cache(refilled(), tmp_path / "c", n_tokens=300, meta=META, dtype="float32")
    assert torch.equal(next(iter(ActivationCache(path, 300, shuffle=False))), torch.cat(src))


def test_no_batch_is_drawn_once_the_cache_is_full(tmp_path):
    def harvest():
        yield from batches(n=3)
        pytest.fail("a batch was drawn after the cache was full")

    path = build_cache(harvest(), tmp_path / "c", n_tokens=300, meta=META)
    assert ActivationCache(path).n_tokens == 300


def test_meta_records_the_build_seconds_and_shards_are_on_disk_before_meta(tmp_path, monkeypatch):
    from dictionary_learning_aligned import cache as cache_mod
    from dictionary_learning_aligned.cache import build_seconds

    synced, real_fsync = [], os.fsync

    def fsync(fd):
        synced.append(not (tmp_path / "c" / "meta.json").exists())
        real_fsync(fd)

    monkeypatch.setattr(cache_mod.os, "fsync", fsync)
    path = build_cache(batches(), tmp_path / "c", n_tokens=950, meta=META, shard_tokens=300)
    assert synced == [True] * 5  # four shards and their folder, before meta.json
    info = json.loads((path / "meta.json").read_text())
    assert set(info["build_seconds"]) == {"waiting_for_batches", "writing", "fsync"}
    assert all(isinstance(v, float) and v >= 0 for v in info["build_seconds"].values())
    assert build_seconds(path) == info["build_seconds"] and info["meta"] == META
    del info["build_seconds"]  # a cache built before the timings were recorded
    (path / "meta.json").write_text(json.dumps(info))
    assert build_seconds(path) is None and ActivationCache(path).n_tokens == 950


def test_overwrite_replaces_only_a_folder_holding_a_cache_and_nothing_else(tmp_path):
    """overwrite=True deletes a folder only when it holds a cache of this library and nothing else: a user's folder
    that merely has a file named meta.json, or a cache folder where the user put a file, is refused, untouched."""
    user = tmp_path / "user"
    user.mkdir()
    (user / "meta.json").write_text('{"author": "me"}')
    (user / "thesis.tex").write_text("precious")
    only_meta = tmp_path / "only_meta"
    only_meta.mkdir()
    (only_meta / "meta.json").write_text('{"author": "me"}')
    cache = build_cache(batches(n=2), tmp_path / "c", n_tokens=200, meta=META)
    (cache / "notes.txt").write_text("mine")
    for folder in (user, only_meta, cache):
        before = {p.name: p.read_bytes() for p in folder.iterdir()}
        with pytest.raises(FileExistsError, match="not an activation cache"):
            build_cache(batches(n=2), folder, n_tokens=200, meta=META, overwrite=True)
        assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    (cache / "notes.txt").unlink()
    build_cache(batches(n=3), cache, n_tokens=300, meta=META, overwrite=True)
    assert ActivationCache(cache).n_tokens == 300


def test_batches_without_columns_are_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one column"):
        build_cache([torch.randn(10, 0)], tmp_path / "c", n_tokens=10, meta=META)
    assert not (tmp_path / "c").exists()


def test_order_settings_must_be_integers(tmp_path):
    """A float or bool batch size or epoch count is refused when the cache is opened or re-ordered, not at the
    first batch (after a preload)."""
    path = build_cache(batches(n=2), tmp_path / "c", n_tokens=200, meta=META)
    for bad in ({"batch_size": 2.5}, {"batch_size": True}, {"epochs": "2"}, {"epochs": 1.0}):
        with pytest.raises(ValueError, match=r"must be >= 1 \(integers\)"):
            ActivationCache(path, **bad)
        with pytest.raises(ValueError, match=r"must be >= 1 \(integers\)"):
            ActivationCache(path, batch_size=16).with_order(**bad)
    assert len(ActivationCache(path, batch_size=np.int64(50), epochs=np.int32(2))) == 8


@pytest.mark.parametrize("damage", ["no meta", "no shard tokens", "no shards", "shards not a list"])
def test_a_meta_json_with_missing_fields_is_named_damaged(tmp_path, damage):
    path = build_cache(batches(n=2), tmp_path / "c", n_tokens=200, meta=META, shard_tokens=100)
    info = json.loads((path / "meta.json").read_text())
    if damage == "no meta":
        del info["meta"]
    elif damage == "no shard tokens":
        del info["shards"][1]["tokens"]
    elif damage == "no shards":
        info["shards"], info["tokens"] = [], 0
    else:
        info["shards"] = {"file": "shard_00000.npy", "tokens": 100}
    (path / "meta.json").write_text(json.dumps(info))
    for preload in (False, True):
        with pytest.raises(ValueError, match="meta.json is damaged"):
            ActivationCache(path, expect={"layer": 3}, preload=preload)


def test_a_build_killed_while_writing_meta_json_is_still_an_unfinished_cache(tmp_path):
    """meta.json is written under a temporary name and renamed (io.write_json): a build killed in between leaves
    that temporary file, and the folder is still recognised as an interrupted build, cleared and rebuilt."""
    from dictionary_learning_aligned.cache import BUILDING_MARKER, clear_unfinished, is_unfinished_cache

    half = tmp_path / "half"
    half.mkdir()
    for name in (BUILDING_MARKER, "shard_00000.npy", ".meta.json.k2x9_q1.tmp"):
        (half / name).write_bytes(b"x")
    assert is_unfinished_cache(half) and clear_unfinished(half) is False and not half.exists()


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex64])
def test_batches_that_are_not_floating_point_are_refused(tmp_path, dtype):
    """Token ids or masks given instead of activations are refused (they were cached as floats, as trainSAE
    refuses integer batches); complex batches lost their imaginary part."""
    with pytest.raises(TypeError, match="floating-point"):
        build_cache([torch.ones(10, 8, dtype=dtype)], tmp_path / "c", n_tokens=10, meta=META)
    assert not (tmp_path / "c").exists()
    for ok in (torch.float64, torch.bfloat16):
        build_cache([torch.ones(10, 8, dtype=ok)], tmp_path / str(ok), n_tokens=10, meta=META)
