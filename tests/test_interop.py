"""Export to and import from dictionary_learning 0.1.0, SAEBench's own dictionary_learning loaders and SAELens,
checked against the real packages for every architecture and alignment mode: encode/decode differences <= 1e-5.

dictionary-learning 0.1.0 comes from scripts/install.sh (--no-deps); sae-lens and sae-bench from
requirements-saebench.txt (install.sh --saebench; CI installs --all). A missing one is an explicit skip naming
what to install, never a silent pass."""
import json

import pytest
import torch

from dictionary_learning_aligned import CheckpointError, Dictionary, trainSAE
from dictionary_learning_aligned.alignment import ALIGNMENT_MODES
from dictionary_learning_aligned.dictionary import AutoEncoder, AutoEncoderTopK, BatchTopKSAE
from dictionary_learning_aligned.interop import export, export_dictionary_learning, export_saelens, main
from dictionary_learning_aligned.trainers.jumprelu import JumpReluAutoEncoder
from dictionary_learning_aligned.trainers.matryoshka import MatryoshkaBatchTopKSAE

TOL = 1e-5
INSTALL = {"dictionary_learning": "pip install --no-deps dictionary-learning==0.1.0 (scripts/install.sh does)",
           "sae_lens": "pip install -r requirements-saebench.txt (scripts/install.sh --saebench)",
           "sae_bench": "pip install -r requirements-saebench.txt (scripts/install.sh --saebench)"}


def _need(module: str):
    return pytest.importorskip(module, reason=f"{module} is not installed: {INSTALL[module.split('.')[0]]}")
D, F, K = 16, 48, 4
CLASSES = {"relu": AutoEncoder, "topk": AutoEncoderTopK, "batchtopk": BatchTopKSAE, "jumprelu": JumpReluAutoEncoder,
           "jumprelu_bdec": JumpReluAutoEncoder, "matryoshka": MatryoshkaBatchTopKSAE}
VARIANTS = [(arch, mode) for arch in CLASSES for mode in ALIGNMENT_MODES]


def make(arch: str, mode, seed: int = 0):
    """A dictionary with non-trivial weights (random encoder, biases, learned threshold)."""
    torch.manual_seed(seed)
    cls = CLASSES[arch]
    if arch.startswith("jumprelu"):
        ae = cls(D, F, alignment=mode, apply_b_dec_to_input=arch == "jumprelu_bdec", initial_threshold=0.1)
    elif arch == "matryoshka":
        ae = cls(D, F, k=K, group_sizes=[8, 16, 24], alignment=mode)
    else:
        ae = cls(D, F, alignment=mode) if arch == "relu" else cls(D, F, k=K, alignment=mode)
    with torch.no_grad():
        for name, p in ae.named_parameters():
            if name in ("V", "W_enc"):  # rows keep their scale: noise of 30% of each row's norm
                p.add_(0.3 * p.norm(dim=-1, keepdim=True) * torch.randn_like(p) / D ** 0.5)
            elif name in ("b_enc", "b_dec"):
                p.copy_(0.2 * torch.randn_like(p))
        if arch in ("batchtopk", "matryoshka"):
            ae.threshold.fill_(0.15)
        if arch.startswith("jumprelu"):
            ae.threshold.uniform_(0.0, 0.3)
    return ae.eval()


def assert_same(ours, encode, decode, x):
    f = ours.encode(x)
    assert (encode(x) - f).abs().max() <= TOL
    assert (decode(f) - ours.decode(f)).abs().max() <= TOL


@pytest.fixture
def x():
    return torch.randn(64, D, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("arch,mode", VARIANTS)
def test_dictionary_learning_round_trip(tmp_path, x, arch, mode):
    dl = _need("dictionary_learning")
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE as DLBatchTopK
    from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKSAE as DLMatryoshka
    from dictionary_learning.trainers.top_k import AutoEncoderTopK as DLTopK

    ae = make(arch, mode)
    out = export_dictionary_learning(ae, tmp_path / "dl", {"trainer": {"layer": 3, "lm_name": "org/model"}})
    state = torch.load(out / "ae.pt", weights_only=True)  # a plain state dict
    if arch == "matryoshka":  # dictionary_learning 0.1.0's from_pretrained of this class reads its own config
        theirs = DLMatryoshka(D, F, K, [8, 16, 24])
        theirs.load_state_dict(state)
    else:
        theirs = {"relu": dl.AutoEncoder, "topk": DLTopK, "batchtopk": DLBatchTopK, "jumprelu": dl.JumpReluAutoEncoder,
                  "jumprelu_bdec": dl.JumpReluAutoEncoder}[arch].from_pretrained(str(out / "ae.pt"), device="cpu")
    assert_same(ae, theirs.encode, theirs.decode, x)
    back = Dictionary.from_pretrained(out)  # and back: same class, same alignment mode, same outputs
    assert type(back) is type(ae) and back.alignment == mode
    assert_same(ae, back.encode, back.decode, x)


SAEBENCH_LOADERS = {"relu": ("relu_sae", "load_dictionary_learning_relu_sae"),
                    "topk": ("topk_sae", "load_dictionary_learning_topk_sae"),
                    "batchtopk": ("batch_topk_sae", "load_dictionary_learning_batch_topk_sae"),
                    "jumprelu": ("jumprelu_sae", "load_dictionary_learning_jump_relu_sae"),
                    "jumprelu_bdec": ("jumprelu_sae", "load_dictionary_learning_jump_relu_sae"),
                    "matryoshka": ("batch_topk_sae", "load_dictionary_learning_matryoshka_batch_topk_sae")}


@pytest.mark.parametrize("arch,mode", [(a, m) for a in CLASSES for m in (None, "project", "rescale")])
def test_saebench_own_loaders_read_a_local_export(tmp_path, x, monkeypatch, arch, mode):
    import importlib

    module, fn = SAEBENCH_LOADERS[arch]
    _need("sae_bench")
    mod = importlib.import_module(f"sae_bench.custom_saes.{module}")
    # SAEBench's loaders download from the hub; serve the files from the local export folder instead
    monkeypatch.setattr(mod, "hf_hub_download", lambda repo_id, filename, **kw: str(tmp_path / repo_id / filename))
    ae = make(arch, mode)
    trainer = {"AutoEncoder": "AlignedStandardTrainer", "AutoEncoderTopK": "AlignedTopKTrainer",
               "BatchTopKSAE": "AlignedBatchTopKTrainer", "JumpReluAutoEncoder": "AlignedJumpReluTrainer",
               "MatryoshkaBatchTopKSAE": "AlignedMatryoshkaBatchTopKTrainer"}[type(ae).__name__]
    export_dictionary_learning(ae, tmp_path / "repo" / "trainer_0",
                               {"trainer": {"layer": 3, "lm_name": "org/pythia-70m", "trainer_class": trainer}})
    sae = getattr(mod, fn)("repo", "trainer_0/ae.pt", "pythia-70m", torch.device("cpu"), torch.float32)
    assert_same(ae, sae.encode, sae.decode, x)


@pytest.mark.parametrize("arch,mode", VARIANTS)
def test_saelens_round_trip(tmp_path, x, arch, mode):
    SAE = _need("sae_lens").SAE

    ae = make(arch, mode)
    out = export_saelens(ae, tmp_path / "sl", {"trainer": {"layer": 3, "lm_name": "m"}, "buffer": {"ctx_len": 128}})
    sae = SAE.load_from_disk(str(out))
    assert sae.cfg.metadata.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.apply_b_dec_to_input == getattr(ae, "apply_b_dec_to_input", True)
    assert_same(ae, sae.encode, sae.decode, x)
    back = Dictionary.from_pretrained(out)
    assert type(back) is type(ae) and back.alignment == mode
    assert_same(ae, back.encode, back.decode, x)


def _saelens_folder(tmp_path, arch, apply_b_dec=True, **extra):
    _need("sae_lens")
    from sae_lens import SAE, JumpReLUSAEConfig, StandardSAEConfig, TopKSAEConfig

    kw = dict(d_in=D, d_sae=F, apply_b_dec_to_input=apply_b_dec)
    cfg = {"standard": StandardSAEConfig, "topk": TopKSAEConfig, "jumprelu": JumpReLUSAEConfig}[arch](
        **kw, **({"k": K} if arch == "topk" else {}), **extra)
    torch.manual_seed(0)
    sae = SAE.get_sae_class_for_architecture(arch)(cfg)
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(0.3 * torch.randn_like(p))
        sae.W_dec.div_(sae.W_dec.norm(dim=-1, keepdim=True))
    sae.save_model(str(tmp_path / arch))
    return sae, tmp_path / arch


@pytest.mark.parametrize("arch,apply_b_dec", [("standard", True), ("standard", False), ("topk", True),
                                              ("topk", False)])
def test_saelens_folders_written_by_saelens_load(tmp_path, x, arch, apply_b_dec):
    sae, folder = _saelens_folder(tmp_path, arch, apply_b_dec)
    ours = Dictionary.from_pretrained(folder)
    f = sae.encode(x)
    assert (ours.encode(x) - f).abs().max() <= TOL and (ours.decode(f) - sae.decode(f)).abs().max() <= TOL


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_saelens_jumprelu_folders_load_as_our_jumprelu(tmp_path, x, apply_b_dec):
    sae, folder = _saelens_folder(tmp_path, "jumprelu", apply_b_dec)
    ours = Dictionary.from_pretrained(folder)
    assert type(ours) is JumpReluAutoEncoder
    f = sae.encode(x)
    assert (ours.encode(x) - f).abs().max() <= TOL and (ours.decode(f) - sae.decode(f)).abs().max() <= TOL


def test_saelens_formats_we_cannot_represent_are_named(tmp_path):
    _, folder = _saelens_folder(tmp_path, "jumprelu")
    cfg = json.loads((folder / "cfg.json").read_text())
    for key, value, msg in (("architecture", "gated", "architecture 'gated' cannot be represented"),
                            ("normalize_activations", "expected_average_only_in", "normalize_activations"),
                            ("reshape_activations", "hook_z", "reshape_activations")):
        (folder / "cfg.json").write_text(json.dumps({**cfg, key: value}))
        with pytest.raises(CheckpointError, match=msg):
            Dictionary.from_pretrained(folder)


@pytest.mark.parametrize("cls_name", ["AutoEncoderTopK", "BatchTopKSAE"])
def test_dictionary_learning_topk_checkpoints_load_with_their_k(tmp_path, x, cls_name):
    _need("dictionary_learning")
    from dictionary_learning.trainers.batch_top_k import BatchTopKSAE as DLBatchTopK
    from dictionary_learning.trainers.top_k import AutoEncoderTopK as DLTopK

    torch.manual_seed(0)
    theirs = {"AutoEncoderTopK": DLTopK, "BatchTopKSAE": DLBatchTopK}[cls_name](D, F, K)
    with torch.no_grad():
        theirs.b_dec.copy_(torch.randn(D) * 0.2)
        theirs.encoder.bias.copy_(torch.randn(F) * 0.2)
        theirs.threshold.fill_(0.1)
    folder = tmp_path / "run" / "trainer_0"
    folder.mkdir(parents=True)
    torch.save(theirs.state_dict(), folder / "ae.pt")
    trainer = "TopKTrainer" if cls_name == "AutoEncoderTopK" else "BatchTopKTrainer"
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "trainer_class": trainer, "dict_class": cls_name, "activation_dim": D, "dict_size": F, "k": K,
        "layer": 3, "lm_name": "m"}}))
    ours = Dictionary.from_pretrained(folder)
    assert type(ours).__name__ == cls_name and int(ours.k) == K
    assert_same(ours, theirs.encode, theirs.decode, x)


def test_dictionary_learning_class_we_do_not_have_is_a_clear_error(tmp_path):
    _need("dictionary_learning")
    from dictionary_learning.dictionary import GatedAutoEncoder

    folder = tmp_path / "gated"
    folder.mkdir()
    torch.save(GatedAutoEncoder(D, F).state_dict(), folder / "ae.pt")
    (folder / "config.json").write_text(json.dumps({"trainer": {
        "trainer_class": "GatedSAETrainer", "dict_class": "GatedAutoEncoder", "activation_dim": D, "dict_size": F}}))
    with pytest.raises(CheckpointError, match="unknown dictionary class 'GatedAutoEncoder'"):
        Dictionary.from_pretrained(folder)


def test_batchtopk_without_threshold_is_not_exported(tmp_path):
    ae = make("batchtopk", None)
    ae.threshold.fill_(-1.0)
    for fmt in ("dictionary_learning", "saelens"):
        ae.save(tmp_path / "src")
        with pytest.raises(ValueError, match="no learned inference threshold"):
            export(tmp_path / "src", tmp_path / fmt, fmt)
        assert not (tmp_path / fmt).exists()


def test_cli_export_of_a_trained_run_and_its_refusals(tmp_path, x, capsys, lowrank_data):
    cfg = dict(trainer="AlignedTopKTrainer", steps=4, activation_dim=32, dict_size=64, k=4, layer=2,
               lm_name="org/m", warmup_steps=1, seed=0, threshold_start_step=1)
    trainSAE(lowrank_data(), [cfg], steps=4, save_dir=tmp_path / "run", device="cpu")
    src = tmp_path / "run" / "trainer_0"
    assert main(["export", "--format", "dictionary_learning", str(src), str(tmp_path / "dl")]) == 0
    tcfg = json.loads((tmp_path / "dl" / "config.json").read_text())["trainer"]
    assert tcfg["trainer_class"] == "TopKTrainer" and tcfg["alignment"] == "project" and tcfg["layer"] == 2
    assert tcfg["dictionary_learning_aligned"]["trainer_class"] == "AlignedTopKTrainer"
    assert main(["export", "--format", "saelens", str(src), str(tmp_path / "sl")]) == 0
    capsys.readouterr()
    # an existing export is replaced only with --overwrite; a folder this library did not write never
    assert main(["export", "--format", "saelens", str(src), str(tmp_path / "sl")]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["export", "--format", "saelens", str(src), str(tmp_path / "sl"), "--overwrite"]) == 0
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text("{}")
    assert main(["export", "--format", "saelens", str(src), str(mine), "--overwrite"]) == 2
    assert "did not create it" in capsys.readouterr().err and (mine / "config.json").read_text() == "{}"
    assert main(["export", "--format", "saelens", str(tmp_path / "nothing"), str(tmp_path / "o")]) == 2
    assert "no checkpoint" in capsys.readouterr().err and not (tmp_path / "o").exists()
    a = Dictionary.from_pretrained(src)
    for fmt in ("dl", "sl"):
        b = Dictionary.from_pretrained(tmp_path / fmt)
        xx = torch.randn(8, 32)
        assert (a.encode(xx) - b.encode(xx)).abs().max() <= TOL


def test_module_entry_point(tmp_path):
    import subprocess
    import sys

    ae = make("relu", "project")
    ae.save(tmp_path / "src")
    r = subprocess.run([sys.executable, "-m", "dictionary_learning_aligned.interop", "export", "--format",
                        "dictionary_learning", str(tmp_path / "src"), str(tmp_path / "out")],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "ae.pt").is_file() and (tmp_path / "out" / ".dictionary_learning_aligned").is_file()
