"""The committed results name no machine: no JSON file under ``results/`` holds an absolute path of the machine
that wrote it (a value starting with ``/tmp/``, ``/work/``, ``/root/`` or ``/home/``). Logs are exempt (they are
the programs' own output); records, SAEBench results and benchmark JSON are not."""

import gzip
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MACHINE_ROOTS = ("/tmp/", "/work/", "/root/", "/home/")


def _committed_json() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "results"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"not a git checkout, cannot list committed files: {e}")
    return [f for f in out.stdout.split() if f.endswith((".json", ".json.gz"))]


def _strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def machine_paths(value) -> list[str]:
    """Strings of a JSON value that start with an absolute path under a machine root, or hold one after a space
    or ``=`` (a command line)."""
    found = []
    for s in _strings(value):
        for root in MACHINE_ROOTS:
            if s.startswith(root) or f" {root}" in s or f"={root}" in s:
                found.append(s[:120])
                break
    return found


def test_machine_paths_finds_a_command_and_a_value():
    assert machine_paths({"a": ["x --out /tmp/store/r", {"b": "/work/x/y"}], "c": "results/x"}) == [
        "x --out /tmp/store/r", "/work/x/y"]


def test_no_committed_json_names_a_machine_path():
    files = _committed_json()
    assert files, "no committed JSON under results/"
    bad = {}
    for f in files:
        path = ROOT / f
        with (gzip.open(path, "rt") if f.endswith(".gz") else open(path)) as fh:
            hits = machine_paths(json.load(fh))
        if hits:
            bad[f] = hits[:2]
    assert not bad, (f"{len(bad)} committed JSON files hold machine paths (rewrite them with "
                     f"scripts/neutralize_paths.py): {dict(list(bad.items())[:5])}")
