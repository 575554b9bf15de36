"""Small file helpers: atomic writes and output folders that are never overwritten silently."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
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


def json_bytes(path, obj) -> bytes:
    """``obj`` as this library writes JSON to ``path``: indented, gzipped (level 9, no name or time in the header)
    when the name ends in ``.gz``, as :func:`read_json` reads it.

    Raises:
        ValueError: if ``obj`` holds NaN or infinity (invalid JSON).
    """
    data = json.dumps(obj, indent=2, allow_nan=False).encode()
    return gzip.compress(data, compresslevel=9, mtime=0) if Path(path).suffix == ".gz" else data


def write_json(path, obj) -> Path:
    """Write ``obj`` to ``path`` atomically, as :func:`json_bytes` gives it.

    Raises:
        ValueError: if ``obj`` holds NaN or infinity.
    """
    path = Path(path)
    data = json_bytes(path, obj)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return path


def claim_new_path(path) -> Path:
    """Create an empty file at ``path``, or, if a file or folder holds that name, at the first free name of
    ``<stem>_2<suffixes>``, ``<stem>_3<suffixes>``, ... (the number goes before the name's first dot after its
    leading dots: ``run_5.json`` -> ``run_5_2.json``, ``x.json.gz`` -> ``x_2.json.gz``, ``.state.json`` ->
    ``.state_2.json``, ``run`` -> ``run_2``); returns the path created.

    Each name is created exclusively (``O_CREAT | O_EXCL``), so threads and processes claiming the same name at
    once each get a different file and no existing file is ever replaced.

    Raises:
        OSError: the folder is missing or not writable (``FileNotFoundError``, ``PermissionError``).
    """
    path = Path(path)
    hidden = len(path.name) - len(path.name.lstrip("."))  # a hidden name's leading dots belong to its stem
    stem, dot, suffixes = path.name[hidden:].partition(".")
    stem = path.name[:hidden] + stem
    candidate, n = path, 1
    while True:
        try:
            os.close(os.open(candidate, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return candidate
        except FileExistsError:
            n += 1
            candidate = path.with_name(f"{stem}_{n}{dot}{suffixes}")


def write_json_new(path, obj) -> Path:
    """Write ``obj`` as :func:`write_json` does, to a name no file held before: ``path`` if free, else the next
    free name of :func:`claim_new_path` (``run_5_2.json``, ...). Concurrent writers each keep their file; none
    is replaced. The file is empty only between the claim and the (atomic) write; if the write fails, the
    claimed file is removed. Returns the path written.

    Raises:
        ValueError: if ``obj`` holds NaN or infinity (nothing is created then).
        OSError: the folder is missing or not writable.
    """
    data = json_bytes(path, obj)
    new = claim_new_path(path)
    try:
        with atomic_path(new) as tmp:
            tmp.write_bytes(data)
    except BaseException:
        new.unlink(missing_ok=True)
        raise
    return new


#: the file this library writes into every output folder it creates; only a folder holding it may be replaced
MARKER_FILE = ".dictionary_learning_aligned"
#: names of the files this library writes into its output folders (``fnmatch`` patterns); replacing a folder
#: deletes only these (and then the folders left empty), never another file a user put there
OUTPUT_PATTERNS = ("*.json", "*.json.gz", "*.safetensors", "*.pt", "*.md", "*.pdf", "*.png", "*.jsonl", "*.log",
                   ".*.tmp", ".write_test", MARKER_FILE)


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
    then only if this library created it (it holds :data:`MARKER_FILE`, written by :func:`prepare_output_dir`) and
    it is not the current folder, one of its parents, the home folder or ``/``. A folder that merely looks like
    a run (a ``config.json``, a model folder, a dictionary_learning run) is never replaced.

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
        _check_replaceable(p, ap, overwrite)
    existing = next((q for q in (ap, *ap.parents) if q.exists()), Path("/"))
    if not os.access(existing, os.W_OK):
        raise PermissionError(f"cannot write output folder {p}: {existing} is not writable")
    return ap


def _check_replaceable(p: Path, ap: Path, overwrite: bool) -> None:
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
    if not (ap / MARKER_FILE).is_file():
        raise ValueError(f"refusing to overwrite {ap}: this library did not create it (no {MARKER_FILE} marker "
                         f"file inside); choose another folder, or empty it yourself")


def _delete_library_outputs(folder: Path) -> list[Path]:
    """Delete the files of ``folder`` (recursively) whose names match :data:`OUTPUT_PATTERNS`, then the folders
    left empty; returns the files kept (written by someone else). Symbolic links are removed, never followed."""
    import fnmatch

    kept = []
    for root, dirs, files in os.walk(folder, topdown=False):
        root = Path(root)
        for name in files:
            f = root / name
            if any(fnmatch.fnmatch(name, pat) for pat in OUTPUT_PATTERNS) or f.is_symlink():
                f.unlink()
            else:
                kept.append(f)
        for name in dirs:
            d = root / name
            if d.is_symlink():
                d.unlink()
            elif not any(d.iterdir()):
                d.rmdir()
    return kept


def mark_output_dir(folder) -> Path:
    """Write :data:`MARKER_FILE` into ``folder`` (which must exist): it was created by this library, so a later
    ``overwrite`` may replace the files this library writes there."""
    marker = Path(folder) / MARKER_FILE
    marker.write_text(json.dumps({"library": "dictionary_learning_aligned",
                                  "note": "written by dictionary_learning_aligned: --overwrite may replace the "
                                          "files this library wrote in this folder"}) + "\n")
    return marker


def prepare_output_dir(path, overwrite: bool = False) -> Path:
    """Create an output folder for a new run, after :func:`check_output_dir`, and mark it as this library's
    (:data:`MARKER_FILE`). With ``overwrite``, an earlier run's folder (one holding the marker) is emptied of the
    files this library writes (:data:`OUTPUT_PATTERNS`) first; any other file in it is kept and named in a
    warning. Call it only once the run's inputs have been validated.

    Raises:
        everything :func:`check_output_dir` raises, and PermissionError for a folder that cannot be created or
        written (e.g. a read-only file system).
    """
    ap = check_output_dir(path, overwrite)
    try:
        if ap.is_dir() and any(ap.iterdir()):
            kept = _delete_library_outputs(ap)
            if kept:
                import warnings

                warnings.warn(f"{ap}: kept {len(kept)} file(s) this library did not write: "
                              f"{', '.join(str(k.relative_to(ap)) for k in kept[:5])}")
        ap.mkdir(parents=True, exist_ok=True)
        probe = ap / ".write_test"
        probe.write_text("")
        probe.unlink()
        mark_output_dir(ap)
    except OSError as e:
        raise PermissionError(f"cannot create or write output folder {path}: {e.strerror or e}") from e
    return ap
