"""Small file helpers: atomic writes and output folders that are never overwritten silently."""

from __future__ import annotations

import contextlib
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


def prepare_output_dir(path, overwrite: bool = False) -> Path:
    """Create an output folder for a new run.

    Args:
        path: the folder.
        overwrite: if the folder exists and is not empty, delete it first. Without it, an existing non-empty
            folder is an error, so earlier results are never replaced or mixed with a new run's.

    Raises:
        FileExistsError: the folder exists, is not empty, and ``overwrite`` is False.
        NotADirectoryError: ``path`` is an existing file.
        PermissionError: the folder cannot be created or written.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {path} exists and is a file")
    if path.is_dir() and any(path.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"output folder {path} already exists and is not empty; choose another folder or pass "
                f"overwrite=True (--overwrite) to replace it"
            )
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if not os.access(path, os.W_OK):
        raise PermissionError(f"output folder {path} is not writable")
    return path
