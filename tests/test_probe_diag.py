"""SAEBench sparse probing on SmolLM2: the first token of each text must be the BOS that SAEBench masks, and the
harness flags full-SAE probes that scored exactly chance, with the scale of the pooled latents they saw.

Without a BOS, the first word of every probing text was SmolLM2's attention sink (a massive activation our
dictionaries never saw in training, unmasked by SAEBench): the mean-pooled ReLU latents became huge and the
full-SAE probe sat at exactly 0.5 in 55 of 108 (dictionary, dataset) runs of results/reproduce_faithful.
"""

import copy

import pytest
import torch

TEXTS = ["The cat sat on the mat.", "Stocks fell sharply on Monday after the report.", "def f(x): return x"]


def test_transformer_lens_tokenizer_prepends_the_bos_that_saebench_masks(tiny_lm, smollm2_tokenizer):
    from benchmarks.saebench import import_saebench
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    import_saebench()
    from sae_bench.sae_bench_utils.activation_collection import get_bos_pad_eos_mask
    from sae_bench.sae_bench_utils.dataset_utils import tokenize_data_dictionary

    hf, _ = tiny_lm
    tl, _ = hooked_transformer_from_hf(hf, smollm2_tokenizer)
    bos = smollm2_tokenizer.bos_token_id
    assert smollm2_tokenizer(TEXTS[0])["input_ids"][0] != bos  # SmolLM2's own tokenizer adds no BOS ...
    ids = tokenize_data_dictionary({"c": TEXTS}, tl.tokenizer, 16, "cpu")["c"]["input_ids"]  # ... as SAEBench does
    assert (ids[:, 0] == bos).all()
    keep = get_bos_pad_eos_mask(ids, tl.tokenizer)
    assert not keep[:, 0].any() and keep[:, 1].all()  # SAEBench zeroes position 0 before pooling
    assert tl.tokenizer.padding_side == "right" and tl.tokenizer is not smollm2_tokenizer
    assert (tl.to_tokens("Hello there")[0, :2] != bos).tolist() == [False, True]  # one BOS, not two
    assert smollm2_tokenizer(TEXTS[0])["input_ids"][0] != bos  # the caller's tokenizer is untouched


class _NoBosTokenizer:
    """A tokenizer stub with a BOS token that it never prepends, whatever ``add_bos_token`` says."""

    bos_token, bos_token_id, pad_token, eos_token = "<s>", 1, "</s>", "</s>"
    padding_side = "left"

    def __call__(self, text):
        return {"input_ids": [5, 6]}


def test_a_tokenizer_that_cannot_prepend_bos_is_refused():
    from benchmarks.saebench.bridge import ModelBridgeError, tokenizer_for_transformer_lens

    with pytest.raises(ModelBridgeError, match="does not prepend its BOS token"):
        tokenizer_for_transformer_lens(_NoBosTokenizer())


def test_gemma_style_tokenizer_that_already_prepends_bos_is_only_copied(smollm2_tokenizer):
    from benchmarks.saebench.bridge import tokenizer_for_transformer_lens

    tok = copy.deepcopy(smollm2_tokenizer)
    tok.add_bos_token = True
    out = tokenizer_for_transformer_lens(tok)
    assert out("x")["input_ids"][:2] == tok("x")["input_ids"][:2] and out("x")["input_ids"][1] != tok.bos_token_id


def _result(accs: dict) -> dict:
    return {"eval_result_unstructured": {f"{d}_results": {"sae_test_accuracy": c, "llm_test_accuracy": c}
                                         for d, c in accs.items()}}


def test_probe_check_flags_exactly_chance_and_pairs_pooled_stats_with_datasets():
    from benchmarks.saebench.runner import probe_check

    res = _result({"dla-local/ag_news": {"0": 0.5, "1": 0.9125, "2": 0.5},
                   "dla-local/code_language": {"C": 0.5001, "Java": 0.5}})
    pooled = [{"max": float(i)} for i in range(4)]
    out = probe_check(res, pooled)
    assert out["sae_probe_at_chance"] == ["dla-local/ag_news/0", "dla-local/ag_news/2", "dla-local/code_language/Java"]
    assert out["sae_probe_at_chance_count"] == 3 and out["sae_probe_classes"] == 5
    assert out["pooled_latents"]["dla-local/code_language"] == {"train": {"max": 2.0}, "test": {"max": 3.0}}
    assert probe_check(res, pooled[:3])["pooled_latents"] == {}  # calls and datasets do not pair up: not guessed


def test_pooled_latent_stats_report_scale_and_non_finite_values():
    from benchmarks.saebench.runner import pooled_latent_stats

    acts = {"a": torch.tensor([[0.0, 3.0], [4.0, 0.0]]), "b": torch.tensor([[float("nan"), 1.0]])}
    s = pooled_latent_stats(acts)
    assert s["texts"] == 3 and s["max"] == 4.0 and s["mean"] == pytest.approx(8 / 5)
    assert s["frac_nonfinite"] == pytest.approx(1 / 6) and s["frac_nonzero"] == pytest.approx(4 / 6)
    assert s["row_norm_median"] == pytest.approx(3.0)  # norms 3, 4, 1 (NaN counted as 0)


def test_sparse_probing_pooled_latents_are_recorded_and_the_function_restored():
    from benchmarks.saebench import import_saebench
    from benchmarks.saebench.runner import _pooled_latent_stats

    import_saebench()
    import sae_bench.sae_bench_utils.activation_collection as ac

    class Relu:  # what SAEBench calls: encode and dtype
        dtype = torch.float32

        def encode(self, x):
            return torch.relu(x) * 100.0

    real = ac.get_sae_meaned_activations
    acts = {"0": torch.ones(2, 3, 4), "1": -torch.ones(2, 3, 4)}
    acts["0"][:, 2] = 0.0  # a masked (zeroed) token is left out of the mean
    with _pooled_latent_stats() as stats:
        pooled = ac.get_sae_meaned_activations(acts, Relu(), 8)
    assert ac.get_sae_meaned_activations is real
    assert torch.equal(pooled["0"], torch.full((2, 4), 100.0)) and len(stats) == 1
    assert stats[0]["max"] == 100.0 and stats[0]["frac_nonzero"] == 0.5


def test_summary_table_marks_dictionaries_with_probes_at_chance():
    from benchmarks.saebench.runner import format_table

    rows = [{"dictionary": "relu", "eval": "sparse_probing", "probe top-1": 0.6, "probe all": 0.5, "at chance": 4},
            {"dictionary": "topk", "eval": "sparse_probing", "probe top-1": 0.7, "probe all": 0.9, "at chance": 0}]
    table = format_table({"results": rows})
    assert "at chance" in table.splitlines()[0]
    assert "note: 'at chance'" in table and "in 1 dictionaries" in table
    assert "note" not in format_table({"results": rows[1:]})
