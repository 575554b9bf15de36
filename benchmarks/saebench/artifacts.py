"""SAEBench's artifacts kept across runs and processes (``python -m benchmarks run --artifacts DIR``).

SAEBench's SCR, TPP and sparse-probing evals store the language model's activations on their datasets (SCR/TPP also
their LLM probes, sparse probing its LLM probe accuracies; autointerp stores its tokenized text) under an
``artifacts_path`` and load them for the next dictionary instead of recomputing them; core stores none. Without
``--artifacts`` that folder is the run's temporary folder. With it, an eval's artifacts live in ``DIR/<key>/``:

* ``<key>``: the first 16 hex digits of the SHA-256 of :func:`key_inputs` (eval, model and hook, dtype, device
  type, seed, datasets with the SHA-256 of their local files, the budgets that shape the artifacts, the package
  versions and a digest of the harness's sources), which are written to ``DIR/<key>/key.json``: other settings give
  another folder, never a silent reuse;
* ``saebench/``: SAEBench's own files (``<eval>/<model>/<hook>/<dataset>_activations.pt``, ``..._probes.pkl``);
* ``<eval>.lock``: an exclusive ``fcntl.flock`` held while a process runs the eval on a dictionary before the
  artifacts are complete; ``<eval>.done``: written (atomically) after the eval succeeded under the lock.

A process that finds ``.done`` runs without the lock. One that finds none takes the lock, looks again (another
process may have finished meanwhile), removes whatever an interrupted process left in ``saebench/`` and computes.
The kernel releases the lock of a killed process, which leaves no ``.done``: the next process recomputes.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import shutil
import time
from pathlib import Path

from dictionary_learning_aligned.io import write_json

from . import data as D

#: the evals that store artifacts (core stores none)
ARTIFACT_EVALS = ("scr", "tpp", "sparse_probing", "autointerp")
_SCR_BUDGETS = ("context", "llm_batch_size", "scr_train", "scr_test", "scr_epochs")
#: the budgets (fields of :class:`~.runner.Budgets`) that shape each eval's artifacts
KEY_BUDGETS = {"scr": _SCR_BUDGETS, "tpp": _SCR_BUDGETS,
               "sparse_probing": ("context", "llm_batch_size", "probe_train", "probe_test", "probe_k_values"),
               "autointerp": ("context", "llm_batch_size", "autointerp_tokens")}
#: bump when the layout of ``DIR/<key>/`` changes
FORMAT = 1
_HARNESS_DIR = Path(__file__).resolve().parent


def sha256_file(path) -> str:
    """Hex SHA-256 of the bytes of ``path`` (read in 1 MiB blocks). Remembered per file, size and modification
    time: the key of every (dictionary, eval) of a run hashes the same dataset files."""
    st = os.stat(path)
    return _sha256_of(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _sha256_of(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def harness_digest() -> str:
    """Hex SHA-256 over the harness's Python sources (``benchmarks/saebench/*.py``, by name): any change of how
    the model, the data or the eval configs are built gives new keys. Computed once per process (the sources a
    process runs do not change under it)."""
    h = hashlib.sha256()
    for p in sorted(_HARNESS_DIR.glob("*.py")):
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    return h.hexdigest()


def local_files(names, data_dir=None) -> dict:
    """``{"<folder>/<file>": sha256}`` of the files the local datasets among ``names`` (``dla-local/...``) read
    under ``data_dir`` (default: the bundled samples); hub names contribute nothing (their name is in the key). A
    missing file is ``None`` (the eval then fails naming it)."""
    root = Path(data_dir) if data_dir is not None else D.SAMPLE_DATA_DIR
    out = {}
    for n in names:
        spec = D.LABELLED.get(n) or (D.SCR_SETS[n]["spec"] if n in D.SCR_SETS else None)
        if spec is None:
            continue
        for f in spec["files"] + (spec["test_files"] or []):
            rel = f"{spec['folder']}/{f}"
            out[rel] = sha256_file(root / rel) if (root / rel).is_file() else None
    return out


def key_inputs(spec, ev: str, sae, names: list, model_info: dict, versions: dict, text_file=None) -> dict:
    """What eval ``ev``'s artifacts depend on, as a JSON-ready dict (not the dictionary itself: its artifacts are
    shared by every dictionary of the same model and hook).

    Args:
        spec: the run's :class:`~.runner.RunSpec` (budgets, dtype, device, seed, data_dir, scr_pairs).
        ev: one of :data:`ARTIFACT_EVALS`.
        sae: SAEBench SAE of a dictionary (its ``cfg``: model name, hook).
        names: the eval's dataset names (autointerp: its text dataset).
        model_info: how the model was obtained (``source``, ``official_name``; the rest is left out).
        versions: package versions (:func:`~.runner._versions`).
        text_file: the local general-text file autointerp reads (hashed), or None.
    """
    b = spec.budgets
    out = {"format": FORMAT, "eval": ev, "model": sae.cfg.model_name, "hook": sae.cfg.hook_name,
           "d_model": sae.cfg.d_in, "model_source": {k: model_info.get(k) for k in ("source", "official_name")},
           "dtype": str(spec.dtype), "device_type": str(spec.device).split(":")[0], "seed": spec.seed,
           "datasets": list(names), "files": local_files(names, spec.data_dir),
           "budgets": {k: getattr(b, k) for k in KEY_BUDGETS[ev]},
           "versions": dict(versions), "harness_sha256": harness_digest()}
    if ev == "scr":
        out["scr_pairs"] = {**D.scr_pairs(names), **spec.scr_pairs}
    if text_file is not None:
        out["text_sha256"] = sha256_file(text_file)
    return json.loads(json.dumps(out, sort_keys=True))  # tuples as lists: what key.json reads back


def key_of(inputs: dict) -> str:
    """The folder name of ``inputs``: first 16 hex digits of the SHA-256 of their sorted-key JSON."""
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _check_key(folder: Path, inputs: dict, write: bool) -> None:
    """Compare ``folder/key.json`` with ``inputs`` (writing it when absent and ``write``).

    Raises:
        ValueError: key.json holds other inputs (a hash collision, or a folder edited by hand).
    """
    path = folder / "key.json"
    if path.is_file():
        if json.loads(path.read_text()) != inputs:
            raise ValueError(f"--artifacts: {path} holds other settings than this run's; remove {folder}")
    elif write:
        write_json(path, inputs)


def check_root(root) -> Path:
    """Refuse an ``--artifacts`` folder that could not hold artifacts, before anything runs (else the first eval
    that stores artifacts would fail after the model was loaded and earlier evals ran). Nothing is created.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``root`` is a file (or lies under one), or the folder that would hold it is not writable.
    """
    root = Path(root)
    existing = next(p for p in (root, *root.absolute().parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        what = "is" if existing == root else f"lies under {existing}, which is"
        raise ValueError(f"--artifacts {root} {what} not a folder; give a folder (it is created if missing)")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--artifacts {root}: {existing} is not writable")
    return root


@contextlib.contextmanager
def _flock(path: Path):
    """Hold an exclusive ``fcntl.flock`` on ``path`` (created if absent) within the block; blocks until free."""
    with open(path, "a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def claim(root, ev: str, inputs: dict):
    """The artifacts folder of eval ``ev`` with settings ``inputs`` under ``root``, safe to share between
    processes (see the module's docstring).

    Yields:
        ``(folder, reused)``: the path to give SAEBench as ``artifacts_path`` (``root/<key>/saebench``) and whether
        complete artifacts were there (False: this process computes them, holding the lock, and ``<eval>.done`` is
        written when the block ends without an exception).

    Raises:
        ValueError: see :func:`_check_key`.
    """
    folder = Path(root) / key_of(inputs)
    folder.mkdir(parents=True, exist_ok=True)
    done, saebench = folder / f"{ev}.done", folder / "saebench"
    if not done.is_file():
        with _flock(folder / f"{ev}.lock"):
            if not done.is_file():
                _check_key(folder, inputs, write=True)
                shutil.rmtree(saebench, ignore_errors=True)  # what an interrupted process left
                t0 = time.time()
                yield saebench, False
                write_json(done, {"seconds": round(time.time() - t0, 1), "pid": os.getpid(),
                                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")})
                return
    _check_key(folder, inputs, write=False)
    yield saebench, True


__all__ = ["ARTIFACT_EVALS", "KEY_BUDGETS", "check_root", "claim", "key_inputs", "key_of", "local_files",
           "harness_digest"]
