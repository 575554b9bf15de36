#!/usr/bin/env python
"""Build the small bundled default corpus in ``dictionary_learning_aligned/corpus/``.

Deterministic: the same ``--shared`` input, ``--seed`` and ``--total-chars`` always give byte-identical
output files. Sources (both redistributable):

* ``wikipedia_en``     English Wikipedia articles (CC BY-SA 3.0) -> ``corpus/wikipedia_en.jsonl.gz``
* ``gutenberg_books``  public-domain Project Gutenberg book chunks -> ``corpus/gutenberg_books.jsonl.gz``

Usage (from the repository root)::

    python scripts/build_corpus.py --shared ../shared/data
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT_DIR = REPO / "dictionary_learning_aligned" / "corpus"
SOURCES = {  # source folder -> (share of characters, attribution fields kept)
    "wikipedia_en": (0.55, ("title", "wiki_id")),
    "gutenberg_books": (0.45, ("title", "author_folder", "chunk_index")),
}
MAX_DOC_CHARS = 12_000  # skip the few very long chunks (e.g. unbroken verse) so no document dominates
MAX_CHUNKS_PER_BOOK = 2  # spread the Gutenberg share over many books


def read_rows(folder: Path) -> list[dict]:
    """All rows of ``folder/*.jsonl.gz`` in sorted file order."""
    files = sorted(folder.glob("*.jsonl.gz"))
    if not files:
        raise FileNotFoundError(f"no *.jsonl.gz files in {folder}")
    rows = []
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            rows.extend(json.loads(line) for line in fh if line.strip())
    return rows


def select(rows: list[dict], target_chars: int, rng: random.Random, per_title_cap: int | None) -> list[dict]:
    """Shuffle ``rows`` with ``rng`` and take documents until ``target_chars`` characters are reached."""
    order = list(range(len(rows)))
    rng.shuffle(order)
    chosen, n_chars, per_title = [], 0, Counter()
    for i in order:
        row = rows[i]
        text = row["text"]
        if not text.strip() or len(text) > MAX_DOC_CHARS:
            continue
        if per_title_cap is not None and per_title[row["title"]] >= per_title_cap:
            continue
        per_title[row["title"]] += 1
        chosen.append(row)
        n_chars += len(text)
        if n_chars >= target_chars:
            break
    return chosen


def write_jsonl_gz(path: Path, rows: list[dict]) -> None:
    """Write rows as gzip JSON Lines with a fixed header (mtime 0, no file name) for byte-identical rebuilds."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as gz:
        for row in rows:
            gz.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))


def source_facts(readme: Path) -> str:
    """The 'Source' and 'License' paragraphs of a shared-data README, quoted verbatim."""
    keep, out = False, []
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("**"):
            keep = line.startswith(("**Source", "**License"))
            if keep and out:
                out.append(">")  # paragraph break inside the quote
        if keep and line.strip():
            out.append("> " + line)
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data", help="shared data folder")
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    ap.add_argument("--seed", type=int, default=1729)
    ap.add_argument("--total-chars", type=int, default=7_000_000, help="approximate total text characters")
    ap.add_argument("--max-bytes", type=int, default=3_000_000, help="fail if the corpus folder gets larger")
    args = ap.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    stats = []
    for name, (share, fields) in SOURCES.items():
        rng = random.Random(f"{args.seed}:{name}")
        cap = MAX_CHUNKS_PER_BOOK if name == "gutenberg_books" else None
        rows = select(read_rows(args.shared / name), int(share * args.total_chars), rng, cap)
        rows = [{"source": name, "text": r["text"], **{k: r[k] for k in fields}} for r in rows]
        path = args.out / f"{name}.jsonl.gz"
        write_jsonl_gz(path, rows)
        stats.append((name, len(rows), sum(len(r["text"]) for r in rows), path.stat().st_size,
                      len({r["title"] for r in rows})))
        print(f"{path}: {stats[-1][1]} rows, {stats[-1][2]:,} chars, {stats[-1][3]:,} bytes")

    total_chars = sum(s[2] for s in stats)
    table = "\n".join(f"| {n}.jsonl.gz | {r:,} | {t:,} | {c:,} ({c / total_chars:.1%}) | {b:,} |"
                      for n, r, c, b, t in stats)
    table += (f"\n| **total** | {sum(s[1] for s in stats):,} | | {total_chars:,} | {sum(s[3] for s in stats):,} |")
    readme = README_TEMPLATE.format(
        seed=args.seed, total=args.total_chars, table=table, max_doc=MAX_DOC_CHARS, cap=MAX_CHUNKS_PER_BOOK,
        wiki_facts=source_facts(args.shared / "wikipedia_en" / "README.md"),
        gut_facts=source_facts(args.shared / "gutenberg_books" / "README.md"),
    )
    (args.out / "README.md").write_text(readme, encoding="utf-8")
    size = sum(p.stat().st_size for p in args.out.iterdir() if p.is_file())
    print(f"corpus folder: {size:,} bytes")
    if size > args.max_bytes:
        raise SystemExit(f"corpus is {size:,} bytes > --max-bytes {args.max_bytes:,}; lower --total-chars")


README_TEMPLATE = """\
# Bundled default corpus (small mixed English text)

The default text source of `dictionary_learning_aligned.data.iter_texts()` (`source=None`): a small, real,
mixed English corpus for harvesting language-model activations offline. About 55% of the characters are
English Wikipedia articles and 45% are chunks of public-domain books from Project Gutenberg.
It is small (about 7 M characters, about 1.66 M SmolLM2 tokens), meant for tests, demos and short training runs,
not as a replacement for a web-scale corpus such as the Pile.

Generated by `scripts/build_corpus.py` (seed {seed}, `--total-chars {total}`) from the offline copies in
`shared/data/wikipedia_en` and `shared/data/gutenberg_books`; rebuild with
`python scripts/build_corpus.py --shared ../shared/data`. The output is byte-for-byte deterministic.

## Files

gzip JSON Lines, UTF-8, one document per line.

| file | rows | distinct titles | text chars | gzip bytes |
|---|---|---|---|---|
{table}

Fields:
- `wikipedia_en.jsonl.gz`: `source` (= "wikipedia_en"), `text`, `title`, `wiki_id` (Wikipedia page id).
- `gutenberg_books.jsonl.gz`: `source` (= "gutenberg_books"), `text`, `title`, `author_folder`,
  `chunk_index` (0-based chunk index within the book in the upstream data set).

## Sources, licenses and attribution

### Wikipedia (CC BY-SA 3.0)
Text from English Wikipedia, "Wikipedia, The Free Encyclopedia", by Wikipedia contributors, licensed under
the Creative Commons Attribution-ShareAlike 3.0 Unported License (CC BY-SA 3.0,
https://creativecommons.org/licenses/by-sa/3.0/) and the GFDL. Each row keeps the article `title` and
`wiki_id` for attribution; the article is at `https://en.wikipedia.org/?curid=<wiki_id>` (its history lists the
authors). The text was reformatted (plain-text extraction, truncation); this file is redistributed under the
same license (CC BY-SA 3.0). Facts from the upstream data set's README:

{wiki_facts}

### Project Gutenberg books (public domain)
Works in the public domain in the USA; the Project Gutenberg header/footer (license boilerplate and trademark)
was removed upstream, and chunks mentioning "Project Gutenberg"/"etext" were dropped, so this is plain
public-domain text, not a Project Gutenberg e-book. Each row keeps `title` and `author_folder` (the upstream
repository's folder name; sometimes an illustrator or translator rather than the author).
Facts from the upstream data set's README:

{gut_facts}

## Processing (scripts/build_corpus.py)
1. Read every row of the upstream shards in sorted file order.
2. Per source, shuffle the rows with `random.Random("<seed>:<source>")` and take documents in that order until
   the source's share of `--total-chars` is reached (55% Wikipedia, 45% Gutenberg); documents longer than
   {max_doc:,} characters are skipped, and at most {cap} chunks are taken from any one book.
3. Text is kept verbatim (no normalisation); rows are written with only the fields listed above.

Train/test split (done at read time by `dictionary_learning_aligned.data`, not stored): a document is in the
held-out `test` split iff `zlib.crc32(text.encode("utf-8")) % 20 == 0` (about 5%), otherwise in `train`.
"""

if __name__ == "__main__":
    main()
