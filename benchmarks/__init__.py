"""Benchmarks: throughput (``python -m benchmarks.speed``) and the SAEBench harness (``python -m benchmarks run``,
package :mod:`benchmarks.saebench`)."""


def prepare_out(ap, out) -> None:
    """Make the folder of a benchmark's ``--out`` file before any work, refusing (``ap.error``: exit 2) an ``out``
    that is a folder or whose folder cannot be made (e.g. it lies under a file); an existing file is replaced."""
    from pathlib import Path

    out = Path(out)
    if out.is_dir():
        ap.error(f"--out {out} is a folder; name a file")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        ap.error(f"--out {out}: cannot make its folder ({e})")
