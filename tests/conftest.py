import pytest
import torch


@pytest.fixture
def no_thread_left_tokenizing():
    """Stop every activation buffer's text-producing thread after the test: one left running until the test
    process exits could abort it (exit code 134, seen once under pytest; the buffer's exit hook now stops such
    threads, see tests/test_buffer_exit.py), and each test should start with none. Used by the buffer tests'
    ``pytestmark``."""
    yield
    from dictionary_learning_aligned.buffer import _stop_prefetchers

    _stop_prefetchers()


@pytest.fixture
def lowrank_data():
    """Synthetic activations with structure: sparse combinations of 64 ground-truth directions in 32 dims."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(64, 32, generator=g)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)

    def batches(batch=256, seed=1):
        gen = torch.Generator().manual_seed(seed)
        while True:
            codes = torch.rand(batch, 64, generator=gen) * (torch.rand(batch, 64, generator=gen) < 0.08)
            yield codes @ dirs * 3 + 0.5

    return batches


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The real SmolLM2 tokenizer, read from the packaged GGUF file (no network)."""
    from transformers import AutoTokenizer

    from dictionary_learning_aligned.models import find_smollm2_gguf

    path = find_smollm2_gguf()
    return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)


@pytest.fixture(scope="session")
def tiny_lm(smollm2_tokenizer):
    """A randomly initialised 3-layer LLaMA (d_model 64) with the SmolLM2 tokenizer, wrapped by nnsight."""
    import copy

    from nnsight import LanguageModel
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=len(smollm2_tokenizer))
    hf = LlamaForCausalLM(cfg).eval()
    return hf, LanguageModel(hf, tokenizer=copy.deepcopy(smollm2_tokenizer))


TEXTS = [
    "The quick brown fox jumps over the lazy dog. " * 6,
    "Sparse autoencoders decompose activations into features. " * 5,
    "It was the best of times, it was the worst of times. " * 7,
    "Paris is the capital of France and its largest city. " * 6,
]


def perfect_dictionary(d: int):
    """x = ReLU(x) - ReLU(-x): an exact dictionary (an ``AutoEncoder``) with 2d unit-norm features."""
    from dictionary_learning_aligned import AutoEncoder

    ae = AutoEncoder(d, 2 * d)
    eye = torch.eye(d)
    with torch.no_grad():
        ae.W_enc.copy_(torch.cat([eye, -eye]))
        ae.W_dec.copy_(torch.cat([eye, -eye], dim=1))
    return ae


def evaluate_perfect_dictionary(lm, n_batches: int, d: int = 64):
    """Harvest ``lm``'s layer 1 over ``TEXTS * 2`` (8 contexts of 16 tokens, BOS removed, batches of 32 tokens),
    evaluate :func:`perfect_dictionary` on ``n_batches`` batches with the CE loss of one batch of 2 contexts, and
    check the splice: the CE loss with the dictionary spliced in equals the original, zero ablation differs, the
    recovered fraction is 1.

    Returns:
        ``(metrics of evaluate, activation batches, CE token batches)`` for further checks.
    """
    from dictionary_learning_aligned.buffer import ActivationBuffer
    from dictionary_learning_aligned.evaluation import collect_eval_data, evaluate

    buf = ActivationBuffer(iter(TEXTS * 2), lm, lm.model.layers[1], n_ctxs=8, ctx_len=16, refresh_batch_size=4,
                           out_batch_size=32, remove_bos=True)
    acts, tokens = collect_eval_data(buf, n_batches=n_batches, ce_batches=1, ce_batch_size=2)
    out = evaluate(perfect_dictionary(d), acts, n_batches=n_batches, model=lm, submodule=lm.model.layers[1],
                   ce_tokens=tokens)
    assert out["loss_reconstructed"] == pytest.approx(out["loss_original"], abs=1e-4)
    assert out["loss_zero"] != pytest.approx(out["loss_original"], abs=1e-3)
    assert out["frac_recovered"] == pytest.approx(1.0, abs=1e-3)
    return out, acts, tokens


@pytest.fixture(scope="session")
def smollm2_activations():
    """About 2,000 real activations of SmolLM2-135M-Instruct layer 12 (BOS removed) on the bundled corpus, as
    [256, 576] batches (the model is loaded once per test session)."""
    import copy

    from nnsight import LanguageModel

    from dictionary_learning_aligned.buffer import ActivationBuffer
    from dictionary_learning_aligned.data import iter_texts
    from dictionary_learning_aligned.models import load_language_model

    hf, tok = load_language_model()
    lm = LanguageModel(hf, tokenizer=copy.deepcopy(tok))
    buf = ActivationBuffer(iter_texts(split="train"), lm, lm.model.layers[12], n_ctxs=32, ctx_len=64,
                           refresh_batch_size=16, out_batch_size=256, remove_bos=True)
    batches = [next(buf) for _ in range(7)]
    return batches


@pytest.fixture(scope="session")
def smollm2_model():
    """SmolLM2-135M-Instruct ``(hf_model, tokenizer)`` in float32 on CPU. ``load_language_model`` caches per process,
    so this is the same object ``smollm2_activations`` and the SAEBench harness use (loaded once)."""
    from dictionary_learning_aligned.models import load_language_model

    return load_language_model()


@pytest.fixture(scope="session")
def smollm2_hooked(smollm2_model):
    """``(HookedTransformer, info)`` built from ``smollm2_model`` by the SAEBench bridge (logits checked)."""
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    tl, check = hooked_transformer_from_hf(*smollm2_model)
    return tl, {"model_name": "smollm2-135m-instruct", "source": "converted", "logit_check": check}


#: packages that only the optional SAEBench install brings (bash scripts/install.sh --saebench); a test that
#: needs one of them is reported as skipped, with this reason, when it is missing
SAEBENCH_ONLY = ("sae_bench", "sae_lens", "transformer_lens", "sae_probes", "openai", "sklearn", "jaxtyping", "wandb")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Report a test that failed only because an optional SAEBench package is not installed as skipped."""
    outcome = yield
    report = outcome.get_result()
    if call.excinfo is None or not call.excinfo.errisinstance(ModuleNotFoundError):
        return
    missing = (call.excinfo.value.name or "").split(".")[0]
    if missing in SAEBENCH_ONLY:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0,
                           f"Skipped: needs {missing}, from the optional SAEBench install "
                           f"(bash scripts/install.sh --saebench)")


#: test files about the SAEBench harness as a whole (some tests start a fresh process, where the hook above
#: cannot see the missing package): skipped as a whole without SAEBench
SAEBENCH_TEST_FILES = ("test_saebench.py",)


def pytest_collection_modifyitems(config, items):
    """Without the optional SAEBench install, mark the SAEBench harness' test files as skipped (with the
    install command as the reason). Tests marked ``real_model`` (minutes each) are also ``slow``, so
    ``pytest -m "not slow"`` leaves them out."""
    import importlib.util

    for item in items:
        if item.get_closest_marker("real_model"):
            item.add_marker(pytest.mark.slow)

    if importlib.util.find_spec("sae_bench") is not None:
        return
    skip = pytest.mark.skip(reason="needs the optional SAEBench install (bash scripts/install.sh --saebench)")
    for item in items:
        if item.path.name in SAEBENCH_TEST_FILES:
            item.add_marker(skip)
