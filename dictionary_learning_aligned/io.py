"""Small file helpers: atomic writes and output folders that are never overwritten silently."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success rename it to ``path`` (atomic on POSIX).

    The caller writes the whole file to the yielded path. If the block raises, the temporary file is removed
    and ``path`` is left as it was, so a crash never leaves a half-written file under the final name.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path, obj) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically. NaN/inf are refused (invalid JSON).

    Raises:
        ValueError: if ``obj`` holds NaN or infinity.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, allow_nan=False))
    return path


#: files or folders whose presence marks a folder as the output of an earlier run of this library
RUN_MARKERS = ("results.json", "config.json", "ae.safetensors", "dictionaries", "trainer_0")


def read_json(path):
    """The JSON value in ``path``, read through gzip when the name ends in ``.gz`` (``x.json.gz``).

    Raises:
        OSError: unreadable file, or not gzip data under a ``.gz`` name (``gzip.BadGzipFile``).
        EOFError, zlib.error: truncated or corrupt gzip data.
        UnicodeDecodeError, json.JSONDecodeError: not UTF-8 JSON.
    """
    path = Path(path)
    return json.loads(gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_text())


def check_output_dir(path, overwrite: bool = False) -> Path:
    """Check, without changing anything, that ``path`` can receive a new run's outputs.

    Rules: a missing or empty folder is fine. A non-empty folder is refused unless ``overwrite`` is set, and even
    then only if it looks like an earlier run (it holds one of :data:`RUN_MARKERS`) and is not the current
    folder, one of its parents, the home folder or ``/`` -- so ``--overwrite`` can never wipe unrelated files.

    Returns:
        the absolute path.

    Raises:
        ValueError: empty path, or a folder that overwrite would not be allowed to replace.
        FileExistsError: a non-empty folder without ``overwrite``.
        NotADirectoryError: ``path`` (or a parent) is a file.
        PermissionError: the nearest existing parent is not writable.
    """
    if str(path).strip() == "":
        raise ValueError("output folder path is empty")
    p = Path(path).expanduser()
    ap = p.resolve()
    if (p.exists() or p.is_symlink()) and not p.is_dir():
        raise NotADirectoryError(f"output path {p} exists and is not a folder")
    for parent in ap.parents:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"output path {p}: {parent} is a file")
    if ap.is_dir() and any(ap.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {p} already exists and is not empty; choose another folder or pass "
                f"overwrite=True (--overwrite) to replace an earlier run")
        protected = {Path.cwd().resolve(), *Path.cwd().resolve().parents, Path.home().resolve(), Path("/")}
        if ap in protected:
            raise ValueError(f"refusing to overwrite {ap}: it is the current folder, one of its parents, the home "
                             f"folder or /")
        if p.is_symlink():
            raise ValueError(f"refusing to overwrite {p}: it is a symbolic link to {ap}")
        if not any((ap / m).exists() for m in RUN_MARKERS):
            raise ValueError(f"refusing to overwrite {ap}: it does not look like an output folder of this library "
                             f"(none of {', '.join(RUN_MARKERS)} inside)")
    existing = next((q for q in (ap, *ap.parents) if q.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"cannot write output folder {p}: {existing} is not writable")
    return ap


def prepare_output_dir(path, overwrite: bool = False) -> Path:
    """Create an output folder for a new run, after :func:`check_output_dir`; with ``overwrite`` an earlier
    run's folder is deleted first. Call it only once the run's inputs have been validated.

    Raises:
        everything :func:`check_output_dir` raises, and PermissionError for a folder that cannot be created or
        written (e.g. a read-only file system).
    """
    ap = check_output_dir(path, overwrite)
    try:
        if ap.is_dir() and any(ap.iterdir()):
            shutil.rmtree(ap)
        ap.mkdir(parents=True, exist_ok=True)
        probe = ap / ".write_test"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise PermissionError(f"cannot create or write output folder {path}: {e.strerror or e}") from e
    return ap
