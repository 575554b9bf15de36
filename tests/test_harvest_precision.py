"""``reproduce --harvest-precision float32|tf32``: TF32 is set for the forward passes that harvest the training
activations and for nothing else (held-out data, CE losses, evaluation stay float32), the setting in force is
restored afterwards (also on error), a CPU harvests float32 and says so, the cache and every record name the
precision used, a cache of another precision is never reused (an old cache without the field reads as float32),
and a bad value is refused before anything is created. The language model is the random 3-layer LLaMA of
``tiny_lm``; a CUDA GPU with TF32 is pretended where the plumbing is checked (``dtypes.tf32_applies``)."""
import json

import pytest
import torch

from dictionary_learning_aligned import dtypes, pipeline
from dictionary_learning_aligned.cache import ActivationCache, build_cache
from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment, resolve
from dictionary_learning_aligned.records import iter_records
from dictionary_learning_aligned.reproduce import command, main, run_experiment
from dictionary_learning_aligned.reproduce import run as reproduce_run

TOKENS = 512


@pytest.fixture
def forwards(monkeypatch, tiny_lm):
    """The tiny model in place of ``reproduce``'s (block 1, d_model 64), a one-size ``tinyprec`` grid of TopK
    dictionaries, and the list of ``(inside the training harvest?, float32 matmul precision)`` seen by every forward
    pass of the model (the harvest: :func:`pipeline.harvest_into`, or the training buffer without a cache)."""
    hf, lm = tiny_lm
    monkeypatch.setattr(pipeline, "load_model", lambda name, layer, device="cpu", dtype=torch.float32:
                        pipeline.LoadedModel(name=name, layer=layer, lm=lm, submodule=lm.model.layers[1], d_model=64))
    monkeypatch.setitem(EXPERIMENTS, "tinyprec", Experiment(
        "tinyprec", figures=(), archs=("topk",), sparsity={"topk": (8,)}, seeds=1,
        tokens={"smoke": TOKENS, "small": TOKENS, "paper": TOKENS}))
    seen, inside = [], [False]
    real_into, real_train = pipeline.harvest_into, reproduce_run._train_data

    def harvest_into(*args, **kwargs):
        inside[0] = True
        try:
            return real_into(*args, **kwargs)
        finally:
            inside[0] = False

    monkeypatch.setattr(pipeline, "harvest_into", harvest_into)
    monkeypatch.setattr(reproduce_run, "_train_data", lambda ctx: _flagged(real_train(ctx), inside, ctx.cache is None))
    handle = hf.model.layers[0].register_forward_hook(
        lambda *_: seen.append((inside[0], torch.get_float32_matmul_precision())))
    yield seen
    handle.remove()


def _flagged(batches, inside: list, harvests: bool):
    """``batches``, with ``inside[0]`` True while each one is drawn when drawing ``harvests`` (a training buffer
    runs the model as it is iterated; a cache does not)."""
    it = iter(batches)
    while True:
        inside[0] = harvests
        try:
            batch = next(it)
        except StopIteration:
            return
        finally:
            inside[0] = False
        yield batch


def _run(tmp_path, store, precision, cache=True):
    return run_experiment("tinyprec", "smoke", str(tmp_path / store), device="cpu", batch_size=256, eval_batches=1,
                          ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache") if cache else None,
                          harvest_precision=precision)


@pytest.mark.parametrize("cache", [True, False], ids=["cache", "buffer"])
def test_tf32_is_set_for_the_training_harvest_only_and_recorded(tmp_path, forwards, monkeypatch, cache):
    monkeypatch.setattr(dtypes, "tf32_applies", lambda device: True)  # a GPU with TF32, pretended
    before = torch.get_float32_matmul_precision()
    assert len(_run(tmp_path, "store", "tf32", cache)) == 2
    assert torch.get_float32_matmul_precision() == before  # restored
    harvest = {p for inside, p in forwards if inside}
    others = {p for inside, p in forwards if not inside}
    assert harvest == {"high"}  # every forward pass of the training harvest ran with TF32
    assert others == {"highest"}  # held-out data, CE losses and evaluation: float32
    recs = list(iter_records(tmp_path / "store"))
    assert len(recs) == 2 and all(r["harvest_precision"] == "tf32" for r in recs)
    if cache:
        (meta,) = (tmp_path / "cache").glob("*/meta.json")
        assert meta.parent.name.endswith("_tf32")
        assert json.loads(meta.read_text())["meta"]["harvest_precision"] == "tf32"


def test_float32_is_the_default_and_a_tf32_cache_is_not_reused_for_it(tmp_path, forwards, monkeypatch):
    monkeypatch.setattr(dtypes, "tf32_applies", lambda device: True)
    _run(tmp_path, "a", "tf32")
    forwards.clear()
    run_experiment("tinyprec", "smoke", str(tmp_path / "b"), device="cpu", batch_size=256, eval_batches=1,
                   ce_batches=1, ce_batch_size=2, cache=str(tmp_path / "cache"))  # no precision given: float32
    assert {p for inside, p in forwards if inside} == {"highest"}  # harvested again, in float32
    metas = {m.parent.name: json.loads(m.read_text())["meta"]["harvest_precision"]
             for m in (tmp_path / "cache").glob("*/meta.json")}
    assert sorted(metas.values()) == ["float32", "tf32"] and len(metas) == 2
    assert all(r["harvest_precision"] == "float32" for r in iter_records(tmp_path / "b"))
    forwards.clear()
    _run(tmp_path, "c", "tf32")  # the tf32 cache is there: reused, nothing harvested
    assert not any(inside for inside, _ in forwards)


def test_tf32_on_a_cpu_harvests_float32_and_says_so(tmp_path, forwards, capsys):
    _run(tmp_path, "store", "tf32")
    assert "--harvest-precision tf32 has no effect on cpu" in capsys.readouterr().out
    assert {p for _, p in forwards} == {"highest"}
    (meta,) = (tmp_path / "cache").glob("*/meta.json")
    assert not meta.parent.name.endswith("_tf32")
    assert json.loads(meta.read_text())["meta"]["harvest_precision"] == "float32"
    assert all(r["harvest_precision"] == "float32" for r in iter_records(tmp_path / "store"))


def test_a_cache_of_another_precision_is_refused_before_the_model_loads(tmp_path, monkeypatch):
    from dictionary_learning_aligned import models

    monkeypatch.setattr(models, "load_language_model", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.setattr(dtypes, "tf32_applies", lambda device: True)
    plan = resolve("main", "smoke")
    path, meta = pipeline.cache_location(tmp_path / "cache", plan.model, plan.layer, plan.corpus, plan.tokens,
                                         precision="tf32")
    build_cache(iter([torch.randn(plan.tokens, 8)]), path, plan.tokens, {**meta, "harvest_precision": "float32"})
    with pytest.raises(ValueError, match="harvest_precision='float32', not 'tf32'"):
        run_experiment("main", "smoke", str(tmp_path / "store"), device="cpu", cache=str(tmp_path / "cache"),
                       harvest_precision="tf32")
    assert not (tmp_path / "store").exists()


def test_an_old_cache_without_the_field_reads_as_float32(tmp_path):
    meta = pipeline.cache_meta("m", 1, None)
    old = {k: v for k, v in meta.items() if k != "harvest_precision"}
    build_cache(iter([torch.randn(64, 8)]), tmp_path / "old", 64, old)
    assert ActivationCache(tmp_path / "old", 16, expect=meta).n_tokens == 64
    with pytest.raises(ValueError, match="harvest_precision='float32', not 'tf32'"):
        ActivationCache(tmp_path / "old", 16, expect={**meta, "harvest_precision": "tf32"})
    assert "harvest_precision" not in ActivationCache(tmp_path / "old", 16).meta  # read as float32, not rewritten


def test_the_forward_pass_restores_the_precision_on_error(tiny_lm):
    hf, lm = tiny_lm
    before = torch.get_float32_matmul_precision()

    def boom(*_):
        raise RuntimeError(f"inside at {torch.get_float32_matmul_precision()}")

    buf = pipeline.activation_buffer(pipeline.Harvest(pipeline.LoadedModel("tiny", 1, lm, lm.model.layers[1], 64),
                                                      batch_size=32, ctx_len=16, refresh_batch_size=4), "train", 8)
    buf.matmul_precision = "medium" if before != "medium" else "high"
    handle = hf.model.layers[0].register_forward_hook(boom)
    try:
        with pytest.raises(RuntimeError, match=f"inside at {buf.matmul_precision}"):
            next(buf)
    finally:
        handle.remove()
    assert torch.get_float32_matmul_precision() == before


def test_bad_precisions_are_refused():
    with pytest.raises(ValueError, match="harvest precision must be one of float32, tf32, got 'bf16'"):
        dtypes.effective_harvest_precision("bf16", "cpu")
    with pytest.raises(ValueError, match="harvest precision must be one of"):
        pipeline.Harvest(model=None, precision="tf16")
    with pytest.raises(ValueError, match="matmul_precision must be"):
        from dictionary_learning_aligned.buffer import ActivationBuffer
        ActivationBuffer(iter([]), None, None, d_submodule=4, matmul_precision="tf32")
    assert dtypes.effective_harvest_precision("tf32", "cpu") == "float32"
    assert dtypes.effective_harvest_precision("float32", "cpu") == "float32"


def test_the_flag_reaches_run_experiment_and_a_bad_value_is_refused_first(tmp_path, monkeypatch, capsys):
    got = {}
    monkeypatch.setattr(command, "run_experiment", lambda *a, **k: got.update(k) or [])
    assert main(["main", "--results", str(tmp_path / "a"), "--harvest-precision", "tf32"]) == 0
    assert got["harvest_precision"] == "tf32"
    assert main(["main", "--results", str(tmp_path / "a")]) == 0 and got["harvest_precision"] == "float32"
    with pytest.raises(SystemExit) as e:
        main(["main", "--results", str(tmp_path / "b"), "--harvest-precision", "bf16"])
    assert e.value.code == 2
    assert "--harvest-precision: invalid choice: 'bf16' (choose from 'float32', 'tf32')" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_a_model_of_another_dtype_is_cached_as_its_dtype(tiny_lm, smollm2_tokenizer, tmp_path):
    import copy

    hf, _ = tiny_lm
    model = pipeline.wrap_model("tiny", 1, copy.deepcopy(hf).to(torch.bfloat16), smollm2_tokenizer)
    harvest = pipeline.Harvest(model, batch_size=32, ctx_len=16, refresh_batch_size=4, precision="tf32")
    assert pipeline.precision_used(harvest) == "bfloat16"  # as train harvests on a GPU; TF32 is moot
    assert pipeline.activation_buffer(harvest, "train", 8).matmul_precision is None  # the setting is left alone
    pipeline.harvest_into(tmp_path / "c", harvest, 40)
    assert json.loads((tmp_path / "c" / "meta.json").read_text())["meta"]["harvest_precision"] == "bfloat16"
