"""The shared pipeline steps (dictionary_learning_aligned/pipeline.py) on a tiny random model and the bundled
corpus: model loading, buffers, the harvest-once cache with its metadata check, held-out data and evaluation."""

import pytest
import torch

from dictionary_learning_aligned import CheckpointError, pipeline
from dictionary_learning_aligned.cache import BUILDING_MARKER

from .conftest import perfect_dictionary


@pytest.fixture
def tiny_harvest(tiny_lm):
    """A :class:`pipeline.Harvest` over the bundled corpus with the tiny model's layer 1 (d_model 64)."""
    _, lm = tiny_lm
    model = pipeline.LoadedModel(name="tiny", layer=1, lm=lm, submodule=lm.model.layers[1], d_model=64)
    return pipeline.Harvest(model, batch_size=32, ctx_len=16, refresh_batch_size=4, seed=0)


def test_load_model_wraps_the_loaded_model_and_finds_its_layer(tiny_lm, smollm2_tokenizer, monkeypatch):
    from dictionary_learning_aligned import models

    hf, _ = tiny_lm
    asked = []
    monkeypatch.setattr(models, "load_language_model",
                        lambda name, device, dtype: asked.append((name, device, dtype)) or (hf, smollm2_tokenizer))
    m = pipeline.load_model("tiny", 2, "cpu", torch.float32)
    assert asked == [("tiny", "cpu", torch.float32)]
    assert (m.name, m.layer, m.d_model) == ("tiny", 2, 64)
    with m.lm.trace(torch.tensor([[1, 2, 3]])):  # the envoy of block 2 of this model
        h = m.submodule.output.save()
    h = h[0] if isinstance(h, tuple) else h
    assert h.shape == (1, 3, 64)
    with pytest.raises(models.LayerIndexError, match="layer 3 out of range"):
        pipeline.load_model("tiny", 3)


def test_buffer_and_heldout_data_follow_the_harvest_settings(tiny_harvest):
    buf = pipeline.activation_buffer(tiny_harvest, "train", n_ctxs=8)
    assert next(buf).shape == (32, 64) and buf.remove_bos and buf.max_norm_multiple == 10.0
    keep_all = pipeline.activation_buffer(pipeline.Harvest(tiny_harvest.model, max_norm_multiple=0), "test", 4)
    assert keep_all.max_norm_multiple is None
    held = pipeline.heldout_data(tiny_harvest, eval_batches=3, ce_batches=2, ce_batch_size=2)
    assert len(held.acts) == 3 and all(a.shape == (32, 64) for a in held.acts)
    assert [t.shape for t in held.ce_tokens] == [(2, 16), (2, 16)]
    assert all(set(r) == {"loss_original", "loss_zero"} for r in held.ce_reference)
    assert pipeline.heldout_data(tiny_harvest, 1, 0, 2).ce_tokens == []
    # the same settings give the same held-out data (every dictionary of a run sees the same text)
    again = pipeline.heldout_data(tiny_harvest, eval_batches=3, ce_batches=2, ce_batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(held.acts, again.acts))


def test_evaluate_dictionaries_loads_each_folder_and_splices_it(tiny_harvest, tmp_path):
    folders = []
    for i in range(2):
        perfect_dictionary(64).save(tmp_path / f"trainer_{i}")
        folders.append(tmp_path / f"trainer_{i}")
    held = pipeline.heldout_data(tiny_harvest, eval_batches=2, ce_batches=1, ce_batch_size=2)
    dicts, metrics = pipeline.evaluate_dictionaries(folders, held, tiny_harvest.model, per_feature=True)
    assert len(dicts) == 2 and all(d is not None for d in dicts)
    for m in metrics:
        assert m["n_tokens"] == 64 and m["frac_variance_explained"] == pytest.approx(1.0, abs=1e-5)
        assert m["frac_recovered"] == pytest.approx(1.0, abs=1e-3) and len(m["fired"]) == 128
        assert m["loss_original"] == held.ce_reference[0]["loss_original"]
    dicts, metrics = pipeline.evaluate_dictionaries(folders[:1], held, tiny_harvest.model, keep=False)
    assert dicts == [None] and "fired" not in metrics[0]
    with pytest.raises(CheckpointError, match="no checkpoint"):
        pipeline.evaluate_dictionaries([tmp_path / "missing"], held, tiny_harvest.model)


def test_evaluate_dictionaries_shows_a_bar_over_the_dictionaries_when_asked(tiny_harvest, tmp_path, monkeypatch):
    """reproduce evaluates every dictionary of a part (32 at smoke, minutes on a CPU) after its training bar closed:
    with ``bar=True`` a progress bar counts them, so the wait is not silent; without it nothing is written."""
    import io
    import sys

    folders = []
    for i in range(2):
        perfect_dictionary(64).save(tmp_path / f"trainer_{i}")
        folders.append(tmp_path / f"trainer_{i}")
    held = pipeline.heldout_data(tiny_harvest, eval_batches=1, ce_batches=1, ce_batch_size=2)
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    pipeline.evaluate_dictionaries(folders, held, tiny_harvest.model, keep=False)
    assert err.getvalue() == ""
    pipeline.evaluate_dictionaries(folders, held, tiny_harvest.model, keep=False, bar=True)
    lines = err.getvalue().splitlines()
    assert lines and all(line.startswith("evaluating") for line in lines) and "2/2" in lines[-1]


def test_harvest_once_builds_once_and_the_metadata_is_checked_on_reading(tiny_harvest, tmp_path):
    path = tmp_path / "cache"
    assert pipeline.harvest_once(path, lambda p: pipeline.harvest_into(p, tiny_harvest, 200)) == path
    pipeline.harvest_once(path, lambda p: pytest.fail("harvested again"))
    meta = pipeline.cache_meta("tiny", 1, None, ctx_len=16)
    cache = pipeline.open_cache(path, 50, expect=meta, drop_last=True)
    assert cache.meta == meta and cache.n_tokens == 200 and len(cache) == 4
    assert all(b.shape == (50, 64) for b in cache)
    with pytest.raises(ValueError, match="layer=1, not 2"):
        pipeline.open_cache(path, 50, expect={**meta, "layer": 2})
    with pytest.raises(FileNotFoundError):
        pipeline.open_cache(tmp_path / "none", 50)


def test_harvest_once_restarts_an_interrupted_build_and_refuses_a_users_folder(tiny_harvest, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / BUILDING_MARKER).write_text("")
    (broken / "shard_00000.npy").write_bytes(b"partial")
    pipeline.harvest_once(broken, lambda p: pipeline.harvest_into(p, tiny_harvest, 40))
    assert (broken / "meta.json").is_file() and not (broken / BUILDING_MARKER).exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="not an activation cache"):
        pipeline.harvest_once(mine, lambda p: pytest.fail("built into a folder of the user's"))
    assert (mine / "notes.txt").read_text() == "keep"

    def fail(path):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):  # the build's own error, unchanged, in one process
        pipeline.harvest_once(tmp_path / "new", fail)


def test_cache_location_and_meta():
    path, meta = pipeline.cache_location("root", "org/model", 3, "/data/text.jsonl", 1000)
    assert path.as_posix() == "root/org_model_L3_text.jsonl_1000"
    assert meta == {"model": "org/model", "layer": 3, "io": "out", "corpus": "/data/text.jsonl", "split": "train",
                    "ctx_len": 128, "remove_bos": True, "max_norm_multiple": 10.0, "harvest_precision": "float32"}
    assert pipeline.cache_location("r", "m", 12, None, 5)[0].name == "m_L12_bundled_5"
    path, meta = pipeline.cache_location("r", "m", 12, None, 5, precision="tf32")  # its own folder
    assert path.name == "m_L12_bundled_5_tf32" and meta["harvest_precision"] == "tf32"
    assert pipeline.cache_meta("m", 12, None)["corpus"] == "bundled"


def test_buffer_ctxs_bounds():
    assert pipeline.buffer_ctxs(10) == 64 and pipeline.buffer_ctxs(10**9) == 8000
    assert pipeline.buffer_ctxs(128 * 4 * 100) == 100 and pipeline.buffer_ctxs(64 * 4 * 100, ctx_len=64) == 100


def test_check_corpus_fails_before_anything_is_loaded(tmp_path):
    pipeline.check_corpus(None)
    with pytest.raises(FileNotFoundError):
        pipeline.check_corpus(str(tmp_path / "missing.jsonl"))
