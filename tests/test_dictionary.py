import json

import pytest
import torch

from dictionary_learning_aligned import AutoEncoder, CheckpointError, Dictionary, alignment_scores

MODES = [None, "project", "rescale", "penalty", "projection", "tied"]


@pytest.mark.parametrize("mode", MODES)
def test_shapes_and_forward(mode):
    ae = AutoEncoder(12, 30, alignment=mode)
    x = torch.randn(5, 7, 12)
    x_hat, f = ae(x, output_features=True)
    assert x_hat.shape == (5, 7, 12) and f.shape == (5, 7, 30)
    assert (f >= 0).all()
    assert ae.W_enc.shape == (30, 12) and ae.W_dec.shape == (12, 30)
    assert ae.b_enc.shape == (30,) and ae.b_dec.shape == (12,)
    assert torch.allclose(ae.W_dec.norm(dim=0), torch.ones(30), atol=1e-5)
    assert torch.equal(ae(x), x_hat)


def test_stored_parameters_per_mode():
    assert set(dict(AutoEncoder(4, 8).named_parameters())) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    assert set(dict(AutoEncoder(4, 8, alignment="project").named_parameters())) == {"V", "W_dec", "b_enc", "b_dec"}
    assert set(dict(AutoEncoder(4, 8, alignment="tied").named_parameters())) == {"W_dec", "b_enc", "b_dec"}


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "8"])
def test_bad_sizes(bad):
    with pytest.raises(ValueError, match="dict_size must be a positive integer"):
        AutoEncoder(4, bad)


def test_bad_inputs_to_encode():
    ae = AutoEncoder(8, 16)
    with pytest.raises(ValueError, match="last dimension 9 .* activation_dim 8"):
        ae(torch.randn(3, 9))
    with pytest.raises(TypeError, match="floating-point"):
        ae(torch.ones(3, 8, dtype=torch.long))


@pytest.mark.parametrize("mode", MODES)
def test_save_load_roundtrip(tmp_path, mode):
    torch.manual_seed(0)
    ae = AutoEncoder(8, 16, alignment=mode)
    with torch.no_grad():
        for p in ae.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ae.save(tmp_path / "run", config={"hello": 1})
    assert json.loads((tmp_path / "run" / "config.json").read_text()) == {"hello": 1}
    loaded = Dictionary.from_pretrained(tmp_path / "run")
    assert type(loaded) is AutoEncoder and loaded.alignment == mode
    x = torch.randn(10, 8)
    assert torch.equal(loaded(x), ae(x))
    assert torch.equal(alignment_scores(loaded), alignment_scores(ae))
    assert AutoEncoder.from_pretrained(tmp_path / "run" / "ae.safetensors", dtype=torch.float64).W_dec.dtype == torch.float64


def test_scale_biases_folds_normalization():
    torch.manual_seed(0)
    ae = AutoEncoder(8, 16)
    with torch.no_grad():
        ae.b_enc.normal_()
        ae.b_dec.normal_()
    x = torch.randn(4, 8) * 50
    expected = ae(x / 50.0) * 50.0
    a0 = alignment_scores(ae)
    ae.scale_biases(50.0)
    assert torch.allclose(ae(x), expected, atol=1e-4)
    assert torch.equal(alignment_scores(ae), a0)
    with pytest.raises(ValueError):
        ae.scale_biases(0.0)


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        Dictionary.from_pretrained(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="holds no ae.safetensors"):
        Dictionary.from_pretrained(tmp_path)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        Dictionary.from_pretrained(junk)
    ae = AutoEncoder(8, 16)
    good = ae.save(tmp_path / "good")
    truncated = tmp_path / "trunc.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(CheckpointError):
        Dictionary.from_pretrained(truncated)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a dictionary_learning_aligned checkpoint"):
        Dictionary.from_pretrained(foreign)


def test_wrong_class_and_shape_mismatch(tmp_path):
    path = AutoEncoder(8, 16).save(tmp_path / "a")

    class Other(Dictionary):
        def encode(self, x): return x
        def decode(self, f): return f

    with pytest.raises(CheckpointError, match="not a Other"):
        Other.from_pretrained(path)
    # tamper with the recorded config so the tensors no longer fit
    from safetensors import safe_open
    from safetensors.torch import save_file
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta["dictionary_config"] = json.dumps({"activation_dim": 9, "dict_size": 16, "alignment": None})
    save_file(state, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="shape .* activation_dim=9"):
        Dictionary.from_pretrained(path)


def test_unknown_class_says_how_a_class_of_ones_own_is_registered(tmp_path):
    """A checkpoint of a class no imported module registered: the error says that importing its module registers it
    and how, from the command line (--plugins) and in Python (it listed the known classes only)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = AutoEncoder(8, 16).save(tmp_path / "a")
    with safe_open(str(path), framework="pt") as f:
        meta, state = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    save_file(state, str(path), metadata={**meta, "dict_class": "MyOwnAutoEncoder"})
    with pytest.raises(CheckpointError, match="unknown dictionary class 'MyOwnAutoEncoder'") as e:
        Dictionary.from_pretrained(path)
    text = str(e.value)
    assert "@register_dictionary" in text and "--plugins MODULE" in text and "import MODULE" in text, text


def test_legacy_pt_safe_loading(tmp_path):
    # a dictionary_learning-style ae.pt (nn.Linear names) with its config.json
    ae = AutoEncoder(8, 16)
    sd = {"encoder.weight": ae.W_enc.detach().clone(), "encoder.bias": ae.b_enc.detach().clone(),
          "decoder.weight": ae.W_dec.detach().clone(), "bias": ae.b_dec.detach().clone()}
    d = tmp_path / "dl"
    d.mkdir()
    torch.save(sd, d / "ae.pt")
    (d / "config.json").write_text(json.dumps({"trainer": {"activation_dim": 8, "dict_size": 16,
                                                           "dict_class": "AutoEncoder"}}))
    x = torch.randn(3, 8)
    assert torch.allclose(Dictionary.from_pretrained(d)(x), ae(x))
    # a file carrying pickled code is refused
    global MARKER
    MARKER = tmp_path / "pwned"
    evil = tmp_path / "evil"
    evil.mkdir()
    torch.save({"W": torch.zeros(1), "obj": Exploit()}, evil / "ae.pt")
    (evil / "config.json").write_text((d / "config.json").read_text())
    with pytest.raises(CheckpointError, match="refusing to load"):
        Dictionary.from_pretrained(evil)
    assert not (tmp_path / "pwned").exists()


MARKER = None


class Exploit:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {MARKER}",))
