"""SAEBench sparse probing, SCR and TPP give the same LLM-probe and SAE numbers whichever dictionary computes the
shared artifacts.

SAEBench seeds torch once per dictionary and every probe then draws from the global RNG (negatives, batch order,
early stopping). The LLM probes of the second dataset, trained once by the dictionary that creates the artifacts,
drew after that dictionary's SAE probes on the first dataset: two GPU sessions whose first dictionary differed
gave AG News LLM top-1 0.5375 and 0.5188 on the same activations. SCR/TPP's LLM probes of the second class pair
drew after the first pair's ablations (draws per ``n_values`` entry up to the dictionary size), and TPP's
ablations of the dictionary that trained the LLM probes drew other negatives than the rest's. The harness now
reseeds before each probe and before each dictionary's ablations (``runner._seeded_probes``).
"""

import pytest
import torch

from dictionary_learning_aligned.dictionary import AutoEncoder

DATASETS = ["dla-local/bias_in_bios_class_set1", "dla-local/ag_news"]


def _dictionary(folder, seed: int, enc_scale: float, dict_size: int = 128):
    torch.manual_seed(seed)
    ae = AutoEncoder(64, dict_size)
    with torch.no_grad():
        ae.W_enc.mul_(enc_scale)  # another scale: the SAE probes stop early after other epoch counts
    ae.save(folder, config={"trainer": {"trainer_class": "StandardTrainer", "dict_class": "AutoEncoder", "layer": 1,
                                        "lm_name": "tiny-llama", "activation_dim": 64, "dict_size": dict_size,
                                        "alignment": None}, "library": "dictionary_learning_aligned"})
    return folder


def _probe_numbers(tmp_path, model, folders, out: str) -> dict:
    """Per dictionary name: SAEBench's per-class probe accuracies of a sparse-probing run over ``folders`` (in
    that order; the first computes the LLM activations and probes, the second reuses them)."""
    import json

    from benchmarks.saebench import runner
    from benchmarks.saebench.cli import find_dictionaries

    spec = runner.RunSpec(dictionaries=find_dictionaries(folders), evals=["sparse_probing"], out=tmp_path / out,
                          model=model, datasets={"sparse_probing": DATASETS},
                          budgets=runner.Budgets(context=32, llm_batch_size=8, probe_train=40, probe_test=20,
                                                 probe_k_values=(1, 2)))
    summary = runner.run(spec, log=lambda *a: None)
    results = {}
    for row in summary["results"]:
        res = json.loads((tmp_path / out / row["dictionary"] / "sparse_probing.json").read_text())
        assert res["harness"]["probe_rng"] == runner.PROBE_RNG["sparse_probing"]
        results[row["dictionary"]] = res["eval_result_unstructured"]
    return results


def test_llm_probes_do_not_depend_on_which_dictionary_computed_them(tmp_path, tiny_lm, smollm2_tokenizer):
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    tl, check = hooked_transformer_from_hf(tiny_lm[0], smollm2_tokenizer)
    model = (tl, {"model_name": "tiny-llama", "source": "converted", "logit_check": check})
    a = _dictionary(tmp_path / "a" / "trainer_0", seed=1, enc_scale=1.0)
    b = _dictionary(tmp_path / "b" / "trainer_0", seed=2, enc_scale=5.0)
    torch.manual_seed(0)
    ab = _probe_numbers(tmp_path, model, [a, b], "ab")
    torch.rand(1000)  # another process RNG state before the eval, too
    ba = _probe_numbers(tmp_path, model, [b, a], "ba")
    names = sorted(ab)
    assert names == sorted(ba) and len(names) == 2
    llm = {n: {d: {k: v for k, v in per.items() if k.startswith("llm_")} for d, per in ab[n].items()} for n in names}
    assert llm[names[0]] == llm[names[1]]  # within a run, every dictionary reports the one LLM probe
    for n in names:  # across runs: the same LLM probes, and each dictionary's SAE probes, to the last digit
        assert ab[n] == ba[n], n


#: SCR/TPP budgets within the bundled bias-in-bios sample (SCR: 15 train texts per profession x gender quadrant)
SCR_TPP_BUDGETS = {"scr": dict(scr_train=60, scr_test=12), "tpp": dict(scr_train=140, scr_test=32)}


def _scr_tpp_numbers(tmp_path, model, folders, ev: str, out: str) -> tuple:
    """SCR or TPP (``ev``) over ``folders`` in that order, with its own artifacts folder. Returns (per dictionary
    name: SAEBench's metrics, per-pair/per-dataset details and per-class results; per ``<...>_probes.pkl`` file
    name: the LLM probes' test accuracies stored with the artifacts)."""
    import json
    import pickle

    from benchmarks.saebench import runner
    from benchmarks.saebench.cli import find_dictionaries

    budgets = runner.Budgets(context=32, llm_batch_size=8, scr_epochs=20, scr_n_values=(2, 5, 20, 100),
                             **SCR_TPP_BUDGETS[ev])
    spec = runner.RunSpec(dictionaries=find_dictionaries(folders), evals=[ev], out=tmp_path / out, model=model,
                          datasets={ev: ["dla-local/bias_in_bios_class_set1"]}, budgets=budgets,
                          artifacts=tmp_path / f"{out}_artifacts")
    summary = runner.run(spec, log=lambda *a: None)
    sae = {}
    for row in summary["results"]:
        res = json.loads((tmp_path / out / row["dictionary"] / f"{ev}.json").read_text())
        assert res["harness"]["probe_rng"] == runner.PROBE_RNG[ev]
        sae[row["dictionary"]] = {k: res[k] for k in ("eval_result_metrics", "eval_result_details",
                                                      "eval_result_unstructured")}
    llm = {}
    for f in (tmp_path / f"{out}_artifacts").rglob("*_probes.pkl"):
        with open(f, "rb") as fh:
            llm[f.name] = pickle.load(fh)["llm_test_accuracies"]
    return sae, llm


@pytest.mark.parametrize("ev", ["scr", "tpp"])
def test_scr_and_tpp_do_not_depend_on_which_dictionary_computed_the_artifacts(tmp_path, tiny_lm, smollm2_tokenizer,
                                                                              ev):
    """Dictionaries of 128 and 64 features, ``n_values`` 2, 5, 20, 100 (100 is dropped for the smaller one), in
    both orders. Without the reseeding, SCR's LLM probes of the second class pair (surgeon/nurse) differed between
    the orders (the first pair's ablations ran 4 or 3 ``n_values`` entries), and TPP's per-class numbers of the
    64-feature dictionary differed (as the first it drew its ablation negatives after training the LLM probes)."""
    from benchmarks.saebench.bridge import hooked_transformer_from_hf

    tl, check = hooked_transformer_from_hf(tiny_lm[0], smollm2_tokenizer)
    model = (tl, {"model_name": "tiny-llama", "source": "converted", "logit_check": check})
    a = _dictionary(tmp_path / "a" / "trainer_0", seed=1, enc_scale=1.0)
    b = _dictionary(tmp_path / "b" / "trainer_0", seed=2, enc_scale=5.0, dict_size=64)
    torch.manual_seed(0)
    sae_ab, llm_ab = _scr_tpp_numbers(tmp_path, model, [a, b], ev, "ab")
    torch.rand(1000)  # another process RNG state before the eval, too
    sae_ba, llm_ba = _scr_tpp_numbers(tmp_path, model, [b, a], ev, "ba")
    assert len(llm_ab) == (2 if ev == "scr" else 1)  # SCR: one probe file per class pair; TPP: per dataset
    assert llm_ab == llm_ba  # the same LLM probes to the last digit
    assert sorted(sae_ab) == sorted(sae_ba) and len(sae_ab) == 2
    for n in sae_ab:
        assert sae_ab[n] == sae_ba[n], n


def test_a_seed_outside_numpys_range_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    """The probes are seeded through NumPy too (``np.random.seed``: 0 to 2**32 - 1; SCR/TPP's data sampling,
    ``np.random.default_rng``, takes no negative seed either): ``--seed -1`` or ``2**32`` is refused at exit 2
    naming ``--seed``, before a model is loaded or an output written (it failed inside the first probe)."""
    import pytest

    from benchmarks.__main__ import main
    from benchmarks.saebench import bridge

    monkeypatch.setattr(bridge, "load_hooked_transformer", lambda *a, **k: pytest.fail("model loaded"))
    d = _dictionary(tmp_path / "d" / "trainer_0", seed=0, enc_scale=1.0)
    for seed in ("-1", str(2**32)):
        argv = ["run", "--dictionaries", str(d), "--out", str(tmp_path / "out"), "--evals", "sparse_probing",
                "--seed", seed]
        assert main(argv) == 2, seed
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "--seed" in err and "\n" not in err, err
    assert not (tmp_path / "out").exists()


def test_the_cuda_rng_states_are_restored_after_an_eval(monkeypatch):
    """``seed_all`` (and SAEBench's own ``torch.manual_seed``) reseed every CUDA device too; with CUDA initialized
    the harness puts the caller's CUDA RNG states back after the eval, as it does the CPU ones. (Recorded through
    torch.cuda's state functions here: the tests run without a GPU.)"""
    from benchmarks.saebench.runner import _restore_global_state, seed_all

    before, restored = [torch.tensor([1], dtype=torch.uint8)], []
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: before)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    with _restore_global_state():
        seed_all(42)
    assert restored == [before]
