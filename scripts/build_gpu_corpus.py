"""Build the larger training text for GPU runs: every document of the general-English sources of ../shared/data,
shuffled (seed 2026) into one jsonl.gz. Not committed (tens of MB): rebuild it.

--sources wiki_gutenberg (default; wikipedia_en + gutenberg_books, 63M characters, ~15M SmolLM2 tokens) or
--sources all_english (also newsgroups20, nltk_english, reddit_top_posts, web_snippets: 123M characters, ~30M
tokens; several of those have research-only or unstated licenses, see ../shared/data/*/README.md, which is why
they are only used for runs, never shipped).

Usage: python scripts/build_gpu_corpus.py [--shared DATA] [--sources NAME] [--out FILE]
(DATA: the folder of text sets, one subfolder per source, as described in the README's Data section; default
../shared/data beside the checkout; FILE default: gpu_corpus/<sources>_mixed.jsonl.gz in the current folder)
"""
import argparse
import gzip
import io
import json
import random
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
ap.add_argument("--sources", choices=["wiki_gutenberg", "all_english"], default="wiki_gutenberg")
ap.add_argument("--out", type=Path, default=None)
args = ap.parse_args()
names = ["wikipedia_en", "gutenberg_books"]
if args.sources == "all_english":
    names += ["newsgroups20", "nltk_english", "reddit_top_posts", "web_snippets"]
args.out = args.out or Path("gpu_corpus") / f"{args.sources}_mixed.jsonl.gz"
docs = []
for name in names:
    for f in sorted((args.shared / name).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [{"source": name, "text": json.loads(line)["text"]} for line in fh]
random.Random(2026).shuffle(docs)
args.out.parent.mkdir(parents=True, exist_ok=True)
# no time stamp and no file name in the gzip header: the same sources give the same bytes on every rebuild
with open(args.out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz, \
        io.TextIOWrapper(gz, encoding="utf-8") as fh:
    for d in docs:
        fh.write(json.dumps(d) + "\n")
print(f"wrote {args.out}: {len(docs)} documents, {sum(len(d['text']) for d in docs)} characters")
