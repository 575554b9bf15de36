"""Foreign and damaged inputs to the load guards and to ``reproduce``'s full-batch planning: a user's files are
never touched, a damaged or unusable cache folder of this package only costs a rebuild, and every refusal names
the problem (before the model loads where it can). The tokenizers are the tiny word-level ones of
tests/test_tokenizer_check.py; ``reproduce`` runs on the random 3-layer LLaMA of ``tiny_lm``."""
import json
import tempfile

import pytest
import torch
import transformers

from dictionary_learning_aligned import models, pipeline
from dictionary_learning_aligned.experiments import EXPERIMENTS, Experiment
from dictionary_learning_aligned.reproduce import run_experiment, train_steps
from .test_model_check import ProbeTokenizer, UniformLM
from .test_tokenizer_check import fake_gguf, fake_model, gemma_env, gguf_conversions, save, source_of, tiny_tokenizer

__all__ = ["gemma_env", "gguf_conversions"]  # fixtures used here


def saved_folder(cache):
    return cache / f"{models.GEMMA3_FILE.removesuffix('.gguf')}.tokenizer"


# ------------------------------------------------------------------------------------- the saved folder

def test_damaged_saved_folder_is_rebuilt_not_blamed_on_the_gguf(gemma_env, gguf_conversions, tmp_path):
    """A saved folder with a current source.json whose tokenizer.json is damaged is rebuilt from the GGUF file
    (it was reported as a corrupt GGUF file, with the advice to delete that file)."""
    gguf = fake_gguf(tmp_path)
    folder = save(tiny_tokenizer(), saved_folder(gemma_env), source_of(gguf))
    (folder / "tokenizer.json").write_text('{"trunc')
    gguf_conversions["tokenizer"] = tiny_tokenizer()
    models.check_tokenizer(models._gguf_tokenizer(gguf, models.GEMMA3_NAME), models.GEMMA3_NAME)
    assert gguf_conversions["calls"] == 1
    models.check_tokenizer(transformers.AutoTokenizer.from_pretrained(folder), models.GEMMA3_NAME)  # rewritten


@pytest.mark.parametrize("blocker", ["file", "unwritable"])
def test_unusable_cache_folder_only_costs_the_saved_copy(monkeypatch, gemma_env, gguf_conversions, tmp_path,
                                                         blocker):
    """A cache folder that is a file, or one where no temporary folder can be made (read-only), still gives the
    converted tokenizer (it was reported as a corrupt GGUF file)."""
    gguf = fake_gguf(tmp_path)
    if blocker == "file":
        gemma_env.write_text("a user's file")
    else:
        def refuse(*a, **k):
            raise PermissionError(13, "Permission denied", str(gemma_env))
        monkeypatch.setattr(tempfile, "mkdtemp", refuse)  # as for a read-only folder (root may write anywhere)
    gguf_conversions["tokenizer"] = tiny_tokenizer()
    models.check_tokenizer(models._gguf_tokenizer(gguf, models.GEMMA3_NAME), models.GEMMA3_NAME)
    if blocker == "file":
        assert gemma_env.read_text() == "a user's file"


def test_user_folder_where_the_saved_folder_goes_is_left_alone(gemma_env, gguf_conversions, tmp_path):
    """A folder without source.json at the saved folder's place is neither used, rewritten nor deleted, whether
    the conversion passes or fails."""
    gguf = fake_gguf(tmp_path)
    folder = save(tiny_tokenizer(shift=1), saved_folder(gemma_env))
    (folder / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    gguf_conversions["tokenizer"] = tiny_tokenizer()
    models.check_tokenizer(models._gguf_tokenizer(gguf, models.GEMMA3_NAME), models.GEMMA3_NAME)
    gguf_conversions["tokenizer"] = tiny_tokenizer(shift=2)
    with pytest.raises(models.TokenizerCheckError):
        models._gguf_tokenizer(gguf, models.GEMMA3_NAME)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# ---------------------------------------------------------------------------------- $DLA_GEMMA3_TOKENIZER

def test_another_models_tokenizer_in_the_variable_is_named_as_such(monkeypatch, gemma_env, gguf_conversions,
                                                                  tmp_path, smollm2_tokenizer):
    """SmolLM2's tokenizer saved to a folder and named by the variable: the message says it is SmolLM2's (it said
    the tokenizer was broken by the transformers version, advised an upgrade, and showed SmolLM2's pieces of
    Gemma-3's ids as the correct ones); the folder is left as it was."""
    folder = tmp_path / "smollm2"
    smollm2_tokenizer.save_pretrained(folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    fake_model(monkeypatch)
    monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(folder))
    with pytest.raises(models.TokenizerCheckError) as info:
        models._load_gguf(fake_gguf(tmp_path), torch.float32)
    message = str(info.value)
    assert f"${models.GEMMA3_TOKENIZER_ENV_VAR}={folder}" in message
    assert "smollm2-135m-instruct's tokenizer" in message and "49,152" in message and "262,144" in message
    assert "upgrade transformers" not in message and "a correct tokenizer gives" not in message
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before and not gemma_env.exists()


# ------------------------------------------------------------------------------------------ the model check

def test_model_check_names_a_tokenizer_without_bos_or_eos():
    """It failed with torch's 'Could not infer dtype of NoneType'."""
    tok = ProbeTokenizer()
    tok.bos_token_id = tok.eos_token_id = None
    with pytest.raises(ValueError, match="gemma-3-270m tokenizer has neither a BOS nor an EOS token"):
        models.check_model_loss(UniformLM(262_144), tok, models.GEMMA3_NAME)


# ------------------------------------------------------------------------------------------------ reproduce

@pytest.mark.parametrize("tokens,cached", [(100, False), (256, False), (300, True), (511, True)])
def test_a_one_step_run_is_refused_before_loading(tmp_path, monkeypatch, tokens, cached):
    """One step cannot hold the learning-rate warmup of any architecture: it was refused by the trainer after the
    model had loaded and the held-out data (and the cache) had been drawn."""
    monkeypatch.setattr(pipeline, "load_model", lambda *a, **k: pytest.fail("loaded the model"))
    monkeypatch.setitem(EXPERIMENTS, "tinyone", Experiment("tinyone", figures=(), archs=("topk",),
                                                           sparsity={"topk": (8,)}, seeds=1))
    assert train_steps(tokens, 256, 1, cached)[0] == 1
    with pytest.raises(ValueError, match="give 1 training step at batch size 256; a run needs at least 2") as e:
        run_experiment("tinyone", "smoke", str(tmp_path / "store"), device="cpu", batch_size=256, tokens=tokens,
                       cache=str(tmp_path / "cache") if cached else None)
    assert not (tmp_path / "store").exists() and not (tmp_path / "cache").exists()
    assert "--tokens of at least 512" in str(e.value) and "(--tokens, or the scale's budget)" in str(e.value)
    assert train_steps(512, 256, 1, cached)[0] == 2
