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
