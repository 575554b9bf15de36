"""Build the larger training text for GPU runs: every Wikipedia and Gutenberg document of ../shared/data, shuffled
(seed 2026) into one jsonl.gz (about 63M characters, ~15M SmolLM2 tokens). Not committed (25 MB): rebuild it.

Usage: python scripts/build_gpu_corpus.py [--shared ../shared/data] [--out /work/gpu_extra/wiki_gutenberg_mixed.jsonl.gz]
"""
import argparse
import gzip
import json
import random
from pathlib import Path

ap = argparse.ArgumentParser(description=__doc__)
ap.add_argument("--shared", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
ap.add_argument("--out", type=Path, default=Path("/work/gpu_extra/wiki_gutenberg_mixed.jsonl.gz"))
args = ap.parse_args()
docs = []
for name in ("wikipedia_en", "gutenberg_books"):
    for f in sorted((args.shared / name).glob("*.jsonl.gz")):
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            docs += [{"source": name, "text": json.loads(line)["text"]} for line in fh]
random.Random(2026).shuffle(docs)
args.out.parent.mkdir(parents=True, exist_ok=True)
with gzip.open(args.out, "wt", encoding="utf-8") as fh:
    for d in docs:
        fh.write(json.dumps(d) + "\n")
print(f"wrote {args.out}: {len(docs)} documents, {sum(len(d['text']) for d in docs)} characters")
