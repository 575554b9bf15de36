"""scripts/build_gpu_corpus.py writes the same bytes from the same sources (no time stamp in the gzip header), so
a rebuilt corpus can be checked against a recorded checksum."""

import gzip
import json
import subprocess
import sys
import time
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "build_gpu_corpus.py"


def _sources(root: Path) -> Path:
    for name in ("wikipedia_en", "gutenberg_books"):
        (root / name).mkdir(parents=True)
        with gzip.open(root / name / f"{name}-000.jsonl.gz", "wt", encoding="utf-8") as fh:
            for i in range(5):
                fh.write(json.dumps({"text": f"{name} document {i}"}) + "\n")
    return root


def test_two_builds_a_second_apart_are_byte_identical(tmp_path):
    data = _sources(tmp_path / "data")
    outs = []
    for i in range(2):
        out = tmp_path / f"corpus{i}.jsonl.gz"
        subprocess.run([sys.executable, str(SCRIPT), "--shared", str(data), "--out", str(out)], check=True,
                       capture_output=True)
        outs.append(out.read_bytes())
        time.sleep(1.1)  # gzip's header time stamp has one-second resolution
    assert outs[0] == outs[1]
    lines = gzip.decompress(outs[0]).decode().splitlines()
    assert sorted(json.loads(x)["text"] for x in lines) == sorted(
        f"{n} document {i}" for n in ("wikipedia_en", "gutenberg_books") for i in range(5))
