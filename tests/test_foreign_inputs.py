"""A breaker's pass over foreign files and bad inputs: checkpoints damaged or written by other tools, registry and
trainer extensions with mistakes, the train command's flags, the SAEBench harness and table on foreign folders.
Each test fails without the fix it names (docs/bad_inputs.md lists the refusals)."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file

from dictionary_learning_aligned import CheckpointError, Dictionary
from dictionary_learning_aligned.dictionary import AutoEncoder, AutoEncoderTopK
from dictionary_learning_aligned.interop import export_dictionary_learning, export_saelens

D, F, K = 8, 24, 3


def _dl_folder(tmp_path, name, state, **trainer):
    """A dictionary_learning-layout folder: ``ae.pt`` (plain state dict) and ``config.json``."""
    folder = tmp_path / name
    folder.mkdir()
    torch.save(state, folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {"dict_class": "AutoEncoder", "activation_dim": D,
                                                                "dict_size": F, **trainer}}))
    return folder


def _dl_state(ae):
    return {"encoder.weight": ae.W_enc.detach().clone(), "encoder.bias": ae.b_enc.detach().clone(),
            "decoder.weight": ae.W_dec.detach().clone(), "bias": ae.b_dec.detach().clone()}


# ------------------------------------------------------------------------------------------------- checkpoints
def test_weights_stored_in_several_float_dtypes_load_into_one(tmp_path):
    """float16/bfloat16 tensors beside float32 ones (a half-converted file) loaded as they were: the dictionary's
    first product failed ("self and mat2 must have the same dtype")."""
    torch.manual_seed(0)
    ae = AutoEncoder(D, F)
    state = _dl_state(ae)
    dl = _dl_folder(tmp_path, "dl", {**state, "bias": state["bias"].half()})
    sl = export_saelens(ae, tmp_path / "sl")
    w = load_file(sl / "sae_weights.safetensors")
    save_file({**w, "b_enc": w["b_enc"].half(), "W_dec": w["W_dec"].bfloat16()}, sl / "sae_weights.safetensors")
    x = torch.randn(5, D)
    for folder in (dl, sl):
        with pytest.warns(UserWarning, match="several float dtypes"):
            back = Dictionary.from_pretrained(folder)
        assert {p.dtype for p in back.state_dict().values()} == {torch.float32}
        assert (back.encode(x) - ae.encode(x)).abs().max() < 1e-2


def test_tensors_of_the_wrong_kind_or_fields_missing_are_checkpoint_errors(tmp_path):
    """Each was a raw RuntimeError/KeyError/ValueError/AttributeError without the file, or loaded wrongly (a float k
    tensor became the dictionary's k, a SAELens k of 4.6 became 4)."""
    torch.manual_seed(0)
    state = _dl_state(AutoEncoder(D, F))
    topk = AutoEncoderTopK(D, F, k=K)
    tstate = {"encoder.weight": topk.W_enc.detach(), "encoder.bias": topk.b_enc.detach(),
              "decoder.weight": topk.W_dec.detach(), "b_dec": topk.b_dec.detach(), "k": torch.tensor(K),
              "threshold": torch.tensor(-1.0)}
    cases = [
        (_dl_folder(tmp_path, "int8", {**state, "encoder.weight": state["encoder.weight"].to(torch.int8)}),
         "tensor W_enc has dtype torch.int8, expected a floating-point tensor"),
        (_dl_folder(tmp_path, "kfloat", {**tstate, "k": torch.tensor(3.7)}, dict_class="AutoEncoderTopK"),
         "tensor k must hold one integer"),
        (_dl_folder(tmp_path, "kvector", {**tstate, "k": torch.tensor([3, 3])}, dict_class="AutoEncoderTopK"),
         "tensor k must hold one integer"),
        (_dl_folder(tmp_path, "align", state, alignment="bogus"), "unknown alignment mode 'bogus'"),
    ]
    sl = export_saelens(AutoEncoderTopK(D, F, k=K), tmp_path / "sl")
    cfg = json.loads((sl / "cfg.json").read_text())
    for name, change, msg in (("nok", {"k": None}, "cfg.json: k must be an integer, got None"),
                              ("kfrac", {"k": 4.6}, "cfg.json: k must be an integer, got 4.6"),
                              ("prov", {"metadata": {"dictionary_learning_aligned": {"alignment": "bogus"}}},
                               "unknown alignment mode 'bogus'")):
        folder = tmp_path / f"sl_{name}"
        folder.mkdir()
        (folder / "sae_weights.safetensors").write_bytes((sl / "sae_weights.safetensors").read_bytes())
        (folder / "cfg.json").write_text(json.dumps({**cfg, **change}))
        cases.append((folder, msg))
    for folder, msg in cases:
        with pytest.raises(CheckpointError, match=msg) as e:
            Dictionary.from_pretrained(folder)
        assert folder.name in str(e.value)


def test_foreign_folders_and_links_are_named(tmp_path):
    """A sparsify folder was called "not a SAELens config"; a link loop or a broken link "does not exist"."""
    sp = tmp_path / "sparsify"
    sp.mkdir()
    save_file({"encoder.weight": torch.zeros(F, D), "encoder.bias": torch.zeros(F), "W_dec": torch.zeros(F, D),
               "b_dec": torch.zeros(D)}, sp / "sae.safetensors")
    (sp / "cfg.json").write_text(json.dumps({"activation": "topk", "k": K, "num_latents": F, "d_in": D}))
    with pytest.raises(CheckpointError, match="is a sparsify .EleutherAI. folder"):
        Dictionary.from_pretrained(sp)
    os.symlink(tmp_path / "loop", tmp_path / "loop")
    os.symlink(tmp_path / "nowhere", tmp_path / "broken")
    for link in ("loop", "broken"):
        with pytest.raises(CheckpointError, match="a symbolic link to nothing"):
            Dictionary.from_pretrained(tmp_path / link)


# ---------------------------------------------------------------------------------------------------- train CLI
@pytest.fixture
def small_cache(tmp_path):
    from dictionary_learning_aligned.cache import build_cache

    g = torch.Generator().manual_seed(0)
    return build_cache([torch.randn(256, 32, generator=g) for _ in range(4)], tmp_path / "cache", 1024,
                       {"model": "m", "layer": 3})


@pytest.mark.parametrize("args,msg", [
    (["--steps", "0"], "--steps must be >= 1"),  # trained on every batch of the cache instead
    (["--ctx-len", "0"], "--ctx-len must be >= 2"),  # a ZeroDivisionError traceback when harvesting
    (["--save-steps", "1", "--placement", "spread"], "--save-steps works with --placement ddp only"),  # ignored
    (["--save-steps", "2"], r"save_steps must be step indices in 0..1"),  # never reached: no checkpoint
    (["--save-steps", "-1"], r"save_steps must be step indices in 0..1"),
])
def test_train_cli_settings_that_were_silently_ignored_or_crashed(small_cache, tmp_path, capsys, monkeypatch, args,
                                                                  msg):
    from dictionary_learning_aligned import train

    monkeypatch.setattr(train, "harvest_cache", lambda *a, **k: pytest.fail("harvested despite a bad argument"))
    cache = tmp_path / "nocache" if "--ctx-len" in args else small_cache
    argv = ["--cache", str(cache), "--out", str(tmp_path / "out"), "--batch-size", "256", "--alignment", "none",
            "--dict-size", "64", *(["--steps", "2"] if "--steps" not in args else []), *args]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and msg.replace("\\", "") in err.replace("\\", "") and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_save_steps_that_are_never_reached_are_refused_by_trainSAE(tmp_path, lowrank_data):
    from dictionary_learning_aligned import trainSAE

    cfg = dict(trainer="AlignedTopKTrainer", activation_dim=32, dict_size=64, k=4, steps=4, warmup_steps=1,
               layer=0, lm_name="m", threshold_start_step=1)
    for bad in ([4], [-1], [1.5]):
        with pytest.raises(ValueError, match="save_steps must be step indices in 0..3"):
            trainSAE(lowrank_data(), [cfg], steps=4, save_dir=tmp_path / "r", save_steps=bad, device="cpu")
        assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ registry, plug-ins
def test_register_refuses_what_would_fail_later():
    """Each was accepted, failing only at the first use (a TypeError deep in the train command after the cache
    was opened, or an --arch comma list that cannot name it)."""
    from dictionary_learning_aligned.registry import Architecture, register
    from dictionary_learning_aligned.trainers import TopKTrainer

    class MyTopK(TopKTrainer):
        pass

    base = dict(label="X", trainer=MyTopK, aligned_trainer=None, sparsity_param="k", sparsity_values=(4,),
                default_sparsity=4)
    for change, err, msg in (({"trainer": int}, TypeError, "trainer must be a subclass of SAETrainer"),
                             ({"aligned_trainer": "MyTopK"}, TypeError, "aligned_trainer must be a subclass"),
                             ({"schedule": 5}, TypeError, "schedule must be a function of steps"),
                             ({"name": "a,b"}, ValueError, "without commas or spaces"),
                             ({"name": ""}, ValueError, "without commas or spaces")):
        with pytest.raises(err, match=msg):
            register(Architecture(**{"name": "breaker_arch", **base, **change}))


def test_a_dictionary_class_of_a_taken_name_is_refused_at_registration(tmp_path):
    """A user's class named AutoEncoder replaced the built-in one: every ReLU checkpoint then loaded as it (or
    failed to)."""
    from dictionary_learning_aligned.checkpoints import dictionary_classes, register_dictionary

    with pytest.raises(ValueError, match="'AutoEncoder' is already registered"):
        @register_dictionary
        class AutoEncoder(Dictionary):  # noqa: F811 (the user's class)
            pass
    assert dictionary_classes()["AutoEncoder"].__module__ == "dictionary_learning_aligned.dictionary"
    register_dictionary(dictionary_classes()["AutoEncoder"])  # the same class again (a module re-imported)


class _OneRowCodes(AutoEncoder):
    def encode(self, x, **kw):
        return super().encode(x, **kw)[:1]  # [1, dict_size]: broadcast against the batch by the loss


class _OneColumnReconstruction(AutoEncoder):
    def decode(self, f):
        return super().decode(f)[:, :1]  # [batch, 1]


@pytest.mark.parametrize("dict_class", [_OneRowCodes, _OneColumnReconstruction])
def test_a_dictionary_of_wrong_output_shapes_is_refused_at_the_first_step(tmp_path, lowrank_data, dict_class):
    """Both trained silently on a broadcast loss."""
    from dictionary_learning_aligned import trainSAE
    from dictionary_learning_aligned.trainers import StandardTrainer

    class Trainer(StandardTrainer):
        pass

    Trainer.dict_class = dict_class
    cfg = dict(trainer=Trainer, activation_dim=32, dict_size=48, steps=3, warmup_steps=1, sparsity_warmup_steps=1,
               layer=0, lm_name="m")
    with pytest.raises(ValueError, match=f"{dict_class.__name__} gave codes of shape .* must keep the batch"):
        trainSAE(lowrank_data(), [cfg], steps=3, device="cpu")


# --------------------------------------------------------------------------------- SAEBench harness and table
def _dl_run(tmp_path, name, **trainer):
    folder = tmp_path / name
    folder.mkdir()
    torch.save(_dl_state(AutoEncoder(D, F)), folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "trainer_class": "StandardTrainer", "dict_class": "AutoEncoder", "activation_dim": D, "dict_size": F,
        "lm_name": "EleutherAI/pythia-70m-deduped", **trainer}}))
    return folder


def test_benchmarks_run_names_foreign_configs_and_layers_before_the_model(tmp_path, capsys, monkeypatch):
    """A config.json holding a list, or a trainer that is a list, was an AttributeError traceback; layer 'abc' an
    unexplained int() error; layer 3.7 was read as 3; layer -1 loaded the model first."""
    pytest.importorskip("sae_bench", reason="pip install -r requirements-saebench.txt (scripts/install.sh --saebench)")
    from benchmarks.__main__ import main
    from benchmarks.saebench import bridge

    monkeypatch.setattr(bridge, "load_hooked_transformer", lambda *a, **k: pytest.fail("model loaded"))
    cases = []
    for name, layer in (("abc", "abc"), ("frac", 3.7), ("neg", -1)):
        cases.append((_dl_run(tmp_path, name, layer=layer), "the layer must be a block index"))
    for name, text in (("cfglist", "[1]"), ("trainerlist", '{"trainer": [1]}')):
        folder = _dl_run(tmp_path, name, layer=3)
        (folder / "config.json").write_text(text)
        cases.append((folder, "is not a run config"))
    for folder, msg in cases:
        assert main(["run", "--dictionaries", str(folder), "--out", str(tmp_path / "out"), "--evals", "core"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and msg in err and folder.name in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def test_a_record_id_that_is_a_path_is_refused(tmp_path):
    """benchmarks run --results-store wrote DIR/saebench/<id>/ outside the store for an id like '../../x'."""
    from dictionary_learning_aligned.records import iter_records

    (tmp_path / "records").mkdir()
    rec = {"schema": 1, "id": "../../escape", "experiment": "main", "scale": "smoke", "model": "m", "arch": "relu",
           "alignment": None, "dict_size": F, "sparsity": {"name": "l1_penalty", "value": 0.1}, "seed": 0,
           "group": "g", "metrics": {}, "alignment_scores": {}, "per_feature": {}, "stability": None}
    for rid in ("../../escape", "a/b", ".."):
        (tmp_path / "records" / "r.json").write_text(json.dumps({**rec, "id": rid}))
        with pytest.raises(ValueError, match="is not a plain name"):
            list(iter_records(tmp_path))


def test_figures_table_reads_saebench_output_folders_of_other_saes(tmp_path, capsys):
    """SAEBench's own output (eval_results/<eval>/<release>_<sae id>_eval_results.json) of several SAEs was
    refused as "two SAEBench files give core_fve for record core ... remove the stale one"."""
    from figures.__main__ import main

    saes = [("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_41", 0.7),
            ("gemma-scope-2b-pt-res", "layer_12/width_16k/average_l0_82", 0.8)]
    for release, sae_id, fve in saes:
        for ev, metrics in (("core", {"reconstruction_quality": {"explained_variance": fve}}),
                            ("scr", {"scr_metrics": {"scr_metric_threshold_20": fve / 4}})):
            p = tmp_path / "eval_results" / ev / f"{release}_{sae_id.replace('/', '_')}_eval_results.json"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps({"eval_type_id": ev, "eval_config": {}, "eval_result_metrics": metrics,
                                     "sae_lens_id": sae_id, "sae_lens_release_id": release,
                                     "sae_cfg_dict": {"architecture": "jumprelu", "d_sae": 16384}}))
    assert main(["table", "--saebench", "--results", str(tmp_path / "eval_results")]) == 0
    rows = [r for r in capsys.readouterr().out.splitlines() if r.startswith("| gemma")]
    assert len(rows) == 2 and all("jumprelu" in r and "16384" in r for r in rows)
    assert "average_l0_41 |" in rows[0] and "0.700 |" in rows[0] and "0.175 |" in rows[0]
    assert "average_l0_82 |" in rows[1] and "0.800 |" in rows[1] and "0.200 |" in rows[1]
