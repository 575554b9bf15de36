"""Text sources for harvesting language-model activations.

``iter_texts`` yields documents (``str``) from one of:

* ``None`` -- the small bundled corpus in ``DEFAULT_CORPUS_DIR`` (Wikipedia + public-domain Gutenberg books,
  see ``corpus/README.md``), with a deterministic train/test split and a seeded, source-interleaved order;
* a local file: ``.txt`` / ``.txt.gz`` (documents are blocks of text separated by one or more blank lines) or
  ``.jsonl`` / ``.jsonl.gz`` (one JSON object per line with a string ``"text"`` field);
* a local directory: every such file inside it (recursively), in sorted path order;
* anything else: a Hugging Face dataset name, streamed with ``datasets.load_dataset(name, split=split,
  streaming=True)`` (needs network access or a populated HF cache).
"""
from __future__ import annotations

import gzip
import json
import os
import random
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

DEFAULT_CORPUS_DIR = Path(__file__).resolve().parent / "corpus"
TEST_MODULUS = 20  # bundled corpus: a document is held out (split="test") iff crc32(text) % TEST_MODULUS == 0
SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
SPLITS = ("train", "test", "all")

Source = str | os.PathLike | None


def is_test_document(text: str) -> bool:
    """Whether a bundled-corpus document belongs to the held-out ``"test"`` split (about 1 in 20 documents).

    The rule depends only on the text (``zlib.crc32(text.encode("utf-8")) % 20 == 0``), so it is independent of
    file order and of ``seed``, and the train and test splits are always disjoint.
    """
    return zlib.crc32(text.encode("utf-8")) % TEST_MODULUS == 0


def iter_texts(source: Source = None, split: str | None = None, seed: int = 0, min_chars: int = 1) -> Iterator[str]:
    """Yield text documents from ``source`` (see the module docstring for the accepted kinds of source).

    Args:
        source: ``None`` (bundled corpus), a path to a ``.txt``/``.txt.gz``/``.jsonl``/``.jsonl.gz`` file or a
            directory of such files, or a Hugging Face dataset name.
        split: bundled corpus: ``"train"`` (the default; ~95% of documents), ``"test"`` (the disjoint ~5% held
            out by :func:`is_test_document`) or ``"all"``. Local files and directories: every document by
            default (None or ``"all"``); ``"train"``/``"test"`` apply the same held-out rule, so one local corpus
            can serve for training and evaluation. Hugging Face datasets: the split name passed to
            ``load_dataset`` (default ``"train"``).
        seed: bundled corpus only: documents of each source (Wikipedia, Gutenberg) are shuffled with this seed
            and the sources are interleaved in proportion to their size in characters, so any prefix of the
            stream is a mix of both. Local files are read in file order; HF datasets in stream order.
        min_chars: documents whose stripped text is shorter than this many characters are skipped.

    Yields:
        Documents as ``str``: text from jsonl rows verbatim; ``.txt`` blocks with surrounding whitespace stripped.

    Raises:
        FileNotFoundError: ``source`` looks like a local path (has one of the suffixes above) but does not exist.
        ValueError: unknown ``split`` for the bundled corpus; unsupported file suffix; a file is not UTF-8; a
            jsonl line is not valid JSON or lacks a string ``"text"`` field (the message names the file and the
            1-based line number); a Hugging Face dataset cannot be loaded (e.g. offline); or the source yields no
            document at all (``"... contains no text"``, raised when the iterator would otherwise be exhausted).
    """
    n = 0
    for text in _raw_texts(source, split, seed):
        if len(text.strip()) >= min_chars:
            n += 1
            yield text
    if n == 0:
        raise ValueError(_no_text_message(source, split, seed, min_chars))


def _no_text_message(source: Source, split: str | None, seed: int, min_chars: int) -> str:
    """Why a source yielded nothing: empty, or (local text) every document fell on the other side of the split."""
    base = f"text source {_describe(source, split)} contains no text (min_chars={min_chars})"
    local = source is not None and Path(source).expanduser().exists()
    if split not in ("train", "test") or not local:
        return base
    total = sum(1 for t in _raw_texts(source, "all", seed) if len(t.strip()) >= min_chars)
    if total == 0:
        return base
    other = "test" if split == "train" else "train"
    return (f"{base}: its {total} document(s) all fall in the {other!r} split (a document is held out for 'test' "
            f"iff crc32(text) % {TEST_MODULUS} == 0, so a corpus of one or a few documents can leave a split empty); "
            f"add documents, or pass separate files for training and evaluation")


def load_texts(source: Source = None, max_chars: int | None = None, max_docs: int | None = None,
               **kwargs) -> list[str]:
    """Materialise documents from :func:`iter_texts` into a list.

    Args:
        source: as for :func:`iter_texts`; further keyword arguments (``split``, ``seed``, ``min_chars``) are
            passed on.
        max_chars: stop once this many characters were collected; the last document is truncated so the total
            is exactly ``max_chars`` (or less if the source is smaller). ``None`` = no limit.
        max_docs: stop after this many documents. ``None`` = no limit.

    Returns:
        List of documents (non-empty).

    Raises:
        ValueError: the source contains no text, ``max_chars``/``max_docs`` is < 1, or anything
            :func:`iter_texts` raises.
    """
    for name, limit in (("max_chars", max_chars), ("max_docs", max_docs)):
        if limit is not None and limit < 1:
            raise ValueError(f"{name} must be >= 1 or None, got {limit}")
    texts, total = [], 0
    for text in iter_texts(source, **kwargs):
        if max_chars is not None and total + len(text) >= max_chars:
            texts.append(text[: max_chars - total])
            break
        texts.append(text)
        total += len(text)
        if max_docs is not None and len(texts) >= max_docs:
            break
    return texts


# --------------------------------------------------------------------------------------------------- internals

def _describe(source: Source, split: str | None) -> str:
    return f"bundled corpus {DEFAULT_CORPUS_DIR} (split={split!r})" if source is None else repr(str(source))


def _raw_texts(source: Source, split: str | None, seed: int) -> Iterator[str]:
    if source is None:
        return _bundled_texts(split or "train", seed)
    path = Path(source).expanduser()
    if path.is_dir() or path.is_file():
        if split not in (None, *SPLITS):
            raise ValueError(f"split must be None or one of {SPLITS} for local text, got {split!r}")
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
            if not files:
                raise ValueError(f"directory {path} has no {'/'.join(SUFFIXES)} files")
            texts = (text for f in files for text in _file_texts(f))
        else:
            texts = _file_texts(path)
        if split in ("train", "test"):
            return (t for t in texts if is_test_document(t) == (split == "test"))
        return texts
    if str(source).endswith(SUFFIXES) or (os.sep in str(source) and not _looks_like_hub_id(str(source))):
        raise FileNotFoundError(f"text source {str(source)!r} does not exist")
    return _hf_texts(str(source), split or "train")


def _looks_like_hub_id(name: str) -> bool:
    """``"org/name"`` (one slash, no leading dot/slash) can be a hub id; other paths with separators cannot."""
    return name.count("/") == 1 and not name.startswith((".", "/", "~"))


def _open_text(path: Path) -> IO[str]:
    opener = gzip.open if path.name.endswith(".gz") else open
    return opener(path, "rt", encoding="utf-8")  # strict decoding: bad bytes raise UnicodeDecodeError


def _file_texts(path: Path) -> Iterator[str]:
    if not path.name.endswith(SUFFIXES):
        raise ValueError(f"unsupported file type {path} (expected one of {', '.join(SUFFIXES)})")
    parse = _jsonl_texts if path.name.endswith((".jsonl", ".jsonl.gz")) else _txt_blocks
    try:
        with _open_text(path) as fh:
            yield from parse(fh, path)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text ({e})") from e
    except (OSError, EOFError, zlib.error) as e:  # e.g. truncated or corrupt gzip
        raise ValueError(f"cannot read {path}: {e}") from e


def _txt_blocks(fh: Iterable[str], path: Path) -> Iterator[str]:
    block: list[str] = []
    for line in fh:
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block).strip()
            block = []
    if block:
        yield "".join(block).strip()


def _jsonl_texts(fh: Iterable[str], path: Path) -> Iterator[str]:
    for lineno, line in enumerate(fh, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise ValueError(f"{path}, line {lineno}: row has no string 'text' field")
        yield row["text"]


def _bundled_texts(split: str, seed: int) -> Iterator[str]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} for the bundled corpus, got {split!r}")
    files = sorted(DEFAULT_CORPUS_DIR.glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"bundled corpus missing: no *.jsonl.gz in {DEFAULT_CORPUS_DIR} "
                                "(rebuild it with scripts/build_corpus.py)")
    keyed = []  # (position in [0, 1) within its own source, tie-break, text)
    for k, f in enumerate(files):
        texts = [t for t in _file_texts(f) if split == "all" or is_test_document(t) == (split == "test")]
        random.Random(f"{seed}:{f.name}").shuffle(texts)
        total, done = max(1, sum(len(t) for t in texts)), 0
        for t in texts:  # key = relative character offset of the document's midpoint -> proportional merge
            keyed.append(((done + len(t) / 2) / total, k, t))
            done += len(t)
    keyed.sort(key=lambda x: x[:2])
    return (t for _, _, t in keyed)


def _hf_texts(name: str, split: str) -> Iterator[str]:
    hint = "pass a local .txt/.jsonl(.gz) file or directory instead, or source=None for the bundled corpus"
    try:
        import datasets

        rows = iter(datasets.load_dataset(name, split=split, streaming=True))
        first = next(rows, None)
    except Exception as e:  # ImportError, ConnectionError, DatasetNotFoundError, ... all mean "unusable here"
        raise ValueError(f"cannot load Hugging Face dataset {name!r} (split={split!r}): "
                         f"{type(e).__name__}: {e}. {hint}") from e
    if first is None:
        return
    if "text" not in first:
        raise ValueError(f"Hugging Face dataset {name!r} has no 'text' column (columns: {sorted(first)})")
    yield first["text"]
    for row in rows:
        yield row["text"]
