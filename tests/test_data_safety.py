"""The data-safety defects of issue 18, one test each (every one fails without its fix): nothing a user made is
deleted, no run is silently retrained on other data, no silent wrong number."""
import json

import pytest
import torch

from dictionary_learning_aligned import (AutoEncoderTopK, BatchTopKSAE, CheckpointError, Dictionary, StandardTrainer,
                                         TopKTrainer, trainSAE)
from dictionary_learning_aligned.io import MARKER_FILE, prepare_output_dir

CFG = dict(activation_dim=32, dict_size=64, layer=0, lm_name="m", warmup_steps=1, seed=0, device="cpu")


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", ["model folder", "project folder", "dictionary_learning run"])
def test_overwrite_refuses_folders_this_library_did_not_create(tmp_path, lowrank_data, kind):
    folder = tmp_path / "theirs"
    (folder / "trainer_0").mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / {"model folder": "model.safetensors", "project folder": "README.md",
               "dictionary_learning run": "trainer_0/ae.pt"}[kind]).write_text("precious")
    before = snapshot(folder)
    with pytest.raises(ValueError, match="this library did not create it"):
        trainSAE(lowrank_data(), [dict(trainer=StandardTrainer, steps=2, sparsity_warmup_steps=1, **CFG)], steps=2, save_dir=folder,
                 overwrite=True, device="cpu")
    assert snapshot(folder) == before


def test_overwrite_deletes_only_files_the_library_wrote(tmp_path, lowrank_data):
    out = tmp_path / "run"
    trainSAE(lowrank_data(), [dict(trainer=StandardTrainer, steps=2, sparsity_warmup_steps=1, **CFG)], steps=2, save_dir=out, device="cpu")
    assert (out / MARKER_FILE).is_file()
    (out / "my_notes.txt").write_text("keep me")
    (out / "trainer_0" / "analysis.ipynb").write_text("keep me too")
    with pytest.warns(UserWarning, match="kept 2 file"):
        trainSAE(lowrank_data(), [dict(trainer=StandardTrainer, steps=2, sparsity_warmup_steps=1, **CFG)], steps=2, save_dir=out,
                 overwrite=True, device="cpu")
    assert (out / "my_notes.txt").read_text() == "keep me"
    assert (out / "trainer_0" / "analysis.ipynb").read_text() == "keep me too"
    Dictionary.from_pretrained(out / "trainer_0")


def test_steps_beyond_a_trainers_schedule_are_refused_before_anything_is_written(tmp_path, lowrank_data):
    with pytest.raises(ValueError, match="steps=8 is more than trainer 0's own steps=4.*negative"):
        trainSAE(lowrank_data(), [dict(trainer=StandardTrainer, steps=4, sparsity_warmup_steps=1, **CFG)], steps=8,
                 save_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


def test_empty_batch_is_its_own_error_and_changes_no_state(tmp_path):
    tr = TopKTrainer(steps=10, k=4, **CFG)
    before = {k: v.clone() for k, v in tr.ae.state_dict().items()}
    with pytest.raises(ValueError, match="empty batch"):
        tr.update(0, torch.empty(0, 32))
    after = tr.ae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # b_dec was NaN before the fix
    tr.update(0, torch.randn(16, 32))  # and it still trains
    with pytest.raises(ValueError, match="empty"):
        trainSAE([torch.randn(8, 32), torch.empty(0, 32)], [dict(trainer=StandardTrainer, steps=2, sparsity_warmup_steps=1, **CFG)], steps=2,
                 device="cpu")
    with pytest.raises(ValueError, match="first activation batch is empty"):
        trainSAE([torch.empty(0, 32)], [dict(trainer=StandardTrainer, steps=2, sparsity_warmup_steps=1, **CFG)], steps=2,
                 save_dir=tmp_path / "out", device="cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("tensor", ["W_dec", "b_enc"])
def test_checkpoint_with_nan_weights_is_refused_naming_the_tensor(tmp_path, tensor):
    ae = AutoEncoderTopK(8, 16, k=2)
    with torch.no_grad():
        getattr(ae, tensor).view(-1)[3] = float("nan")
    ae.save(tmp_path / "a")
    with pytest.raises(CheckpointError, match=f"\\['{tensor}'\\] hold NaN"):
        Dictionary.from_pretrained(tmp_path / "a")


def test_batchtopk_rows_do_not_interact_through_a_nan_row():
    torch.manual_seed(0)
    ae = BatchTopKSAE(8, 32, k=2)
    x = torch.randn(6, 8)
    bad = x.clone()
    bad[2] = float("nan")
    with pytest.raises(ValueError, match="rows \\[2\\].*NaN"):  # no learned threshold: the batch top-k
        ae.encode(bad)
    ae.threshold.fill_(0.05)  # a learned threshold: each row on its own, the NaN row stays NaN
    f, g = ae.encode(x), ae.encode(bad)
    keep = [0, 1, 3, 4, 5]
    assert torch.equal(f[keep], g[keep])


def test_truncated_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, lowrank_data):
    cfg = [dict(trainer=StandardTrainer, steps=6, sparsity_warmup_steps=1, **CFG)]
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="stop"):
        def data():
            for i, b in enumerate(lowrank_data()):
                if i == 5:
                    raise RuntimeError("stop")
                yield b
        trainSAE(data(), cfg, steps=6, save_dir=out, save_steps=[1, 3], device="cpu")
    state = out / "trainer_0" / "checkpoints" / "step_3" / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])  # truncated
    with pytest.warns(UserWarning, match="checkpoint step 3 cannot be read"):
        (tr,) = trainSAE(lowrank_data(), cfg, steps=6, save_dir=out, resume=True, device="cpu")
    assert tr.steps_done == 6


def test_evaluate_reads_batch_seq_d_activations():
    from dictionary_learning_aligned import AutoEncoder
    from dictionary_learning_aligned.evaluation import evaluate

    ae = AutoEncoder(16, 32)
    x = torch.randn(4, 8, 16)
    assert evaluate(ae, x) == evaluate(ae, x.reshape(32, 16))
    assert evaluate(ae, [x])["n_tokens"] == 32
    with pytest.raises(ValueError, match="expects activations"):
        evaluate(ae, [torch.randn(4, 8, 15)])


def test_single_document_corpus_says_the_split_took_it(tmp_path):
    from dictionary_learning_aligned.data import iter_texts

    corpus = tmp_path / "one.jsonl"
    corpus.write_text(json.dumps({"text": "a single document of text"}) + "\n")
    with pytest.raises(ValueError, match="1 document\\(s\\) all fall in the 'train' split"):
        list(iter_texts(corpus, split="test"))


def _demo_run(tmp_path, finished: bool, corpus_text="first text\n\nsecond text\n"):
    from dictionary_learning_aligned.demo import DemoConfig, FINGERPRINT_FILE, run_fingerprint

    corpus = tmp_path / "c.txt"
    corpus.write_text(corpus_text)
    cfg = DemoConfig(out=str(tmp_path / "demo"), corpus=str(corpus), tokens=4096, batch_size=1024)
    out = prepare_output_dir(cfg.out)
    (out / "dictionaries" / "trainer_0").mkdir(parents=True)
    (out / FINGERPRINT_FILE).write_text(json.dumps(run_fingerprint(cfg)))
    if finished:
        (out / "results.json").write_text("{}")
    return cfg, corpus


@pytest.mark.parametrize("case,msg", [("finished", "is finished"), ("other corpus", "training text differs"),
                                      ("other settings", "settings differ.*dict_size"),
                                      ("no fingerprint", "missing or unreadable")])
def test_demo_resume_refuses_a_run_it_would_corrupt(tmp_path, case, msg, monkeypatch):
    import dataclasses

    from dictionary_learning_aligned import models
    from dictionary_learning_aligned.demo import FINGERPRINT_FILE, run_demo

    monkeypatch.setattr(models, "load_language_model", lambda *a, **k: pytest.fail("model loaded"))
    cfg, corpus = _demo_run(tmp_path, finished=case == "finished")
    if case == "other corpus":
        corpus.write_text("another text\n\nentirely\n")
    if case == "no fingerprint":
        (tmp_path / "demo" / FINGERPRINT_FILE).unlink()
    before = snapshot(tmp_path / "demo")
    cfg = dataclasses.replace(cfg, resume=True, dict_size=cfg.dict_size * (2 if case == "other settings" else 1))
    with pytest.raises(ValueError, match=msg):
        run_demo(cfg)
    assert snapshot(tmp_path / "demo") == before
