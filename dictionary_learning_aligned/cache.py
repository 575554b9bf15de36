"""On-disk activation cache: harvest once, train many dictionaries (and several epochs) from memory-mapped shards.

Layout of a cache folder::

    meta.json            what the activations are (model, layer, io, corpus, ...), dtype, activation_dim,
                         token count, shard list; written last, so a folder without it is an unfinished cache
    .building            present while the cache is being written (removed with meta.json's arrival): marks an
                         unfinished folder as one that build_cache made (see :func:`is_unfinished_cache`)
    shard_00000.npy      [tokens, activation_dim] arrays (numpy .npy, memory-mapped when read),
    shard_00001.npy      one file per ``shard_tokens`` activations
"""

from __future__ import annotations

import collections
import copy
import json
import numbers
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterable, Iterator, Optional

import numpy as np
import torch

from .dtypes import require_float_batch
from .io import write_json

CACHE_FORMAT = 1
#: file that marks a folder as a cache that :func:`build_cache` is writing (or was, when it was killed)
BUILDING_MARKER = ".building"
_SHARD = re.compile(r"shard_\d{5}\.npy")
#: the temporary name meta.json is written under before it is renamed (:func:`.io.atomic_path`)
_META_TMP = re.compile(r"\.meta\.json\.[^/]+\.tmp")
#: the value of a ``meta`` field in a cache written before the field was recorded (read when an ``expect`` names
#: it): ``reproduce`` harvested every cache in float32 before ``harvest_precision`` (:func:`.pipeline.cache_meta`)
#: was recorded
META_DEFAULTS = {"harvest_precision": "float32"}


def _is_cache_file(p: Path) -> bool:
    """Whether ``p`` is a plain file of a name :func:`build_cache` writes into its folder: ``meta.json`` (or its
    temporary name), :data:`BUILDING_MARKER`, a shard."""
    named = p.name in ("meta.json", BUILDING_MARKER) or _SHARD.fullmatch(p.name) or _META_TMP.fullmatch(p.name)
    return bool(named) and p.is_file() and not p.is_symlink()


def is_unfinished_cache(path) -> bool:
    """Whether ``path`` is an interrupted :func:`build_cache` folder, safe to delete: no ``meta.json``, the
    :data:`BUILDING_MARKER` file, and nothing else than shard files (and ``meta.json``'s temporary name, left by a
    build killed while writing it)."""
    path = Path(path)
    if path.is_symlink() or not path.is_dir() or not (path / BUILDING_MARKER).is_file():
        return False
    return all(p.name != "meta.json" and _is_cache_file(p) for p in path.iterdir())


def _is_complete_cache(path: Path) -> bool:
    """Whether ``path`` is a folder (not a link) holding a complete cache of this library and nothing else: a
    ``meta.json`` of its format and only the files :func:`build_cache` writes (the only folder that
    ``build_cache(overwrite=True)`` deletes)."""
    if path.is_symlink() or not path.is_dir():
        return False
    try:
        info = json.loads((path / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return (isinstance(info, dict) and info.get("format") == CACHE_FORMAT and "shards" in info
            and all(_is_cache_file(p) for p in path.iterdir()))


def clear_unfinished(path) -> bool:
    """Make ``path`` ready for :func:`build_cache` when it holds no complete cache: delete it if it is an
    interrupted build (:func:`is_unfinished_cache`) and refuse anything else, which this library never deletes.

    Returns:
        True when ``path`` already holds a complete cache (nothing to build), else False.

    Raises:
        FileExistsError: ``path`` exists and is neither a complete cache nor an interrupted build of one.
    """
    path = Path(path)
    if (path / "meta.json").is_file():
        return True
    refuse_foreign(path)
    if is_unfinished_cache(path):
        shutil.rmtree(path)
    return False


def refuse_foreign(path) -> None:
    """Refuse a ``path`` that exists but is neither a complete cache (``meta.json``) nor an interrupted build of
    one: something this library did not make there and never deletes. Nothing is read beyond the folder listing.

    Raises:
        FileExistsError: naming ``path``.
    """
    path = Path(path)
    if (path / "meta.json").is_file() or is_unfinished_cache(path):
        return
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists but is not an activation cache (no meta.json) nor an interrupted "
                              f"build of one; move it away or choose another cache folder")


_DTYPES = {"float32": (np.float32, torch.float32), "float16": (np.float16, torch.float16)}


def build_cache(batches: Iterable[torch.Tensor], path, n_tokens: int, meta: dict, shard_tokens: int = 1 << 20,
                dtype: str = "float16", overwrite: bool = False) -> Path:
    """Write ``n_tokens`` activations from ``batches`` into a cache folder.

    Each batch is converted to ``dtype`` and checked on its own device (a GPU harvest copies half the bytes to the
    host with float16), then written to the shard files by one background thread while the next batch is
    harvested; the shard files are fsynced before ``meta.json`` is written (a folder with ``meta.json`` holds a
    complete cache on disk). ``meta.json`` also records, outside ``meta``, ``build_seconds``:
    ``{"waiting_for_batches": s, "writing": s, "fsync": s}`` (see :func:`build_seconds`).

    Args:
        batches: iterator of ``[batch, activation_dim]`` tensors (e.g. an ``ActivationBuffer``), on any device;
            no batch is drawn once ``n_tokens`` are stored.
        path: the cache folder (must not exist, or be an earlier cache with ``overwrite``: a folder holding a
            complete cache and no other file).
        n_tokens: activations to store (fewer if the batches run out; the count is recorded).
        meta: what the activations are, checked on reuse (e.g. ``{"model": ..., "layer": 12, "io": "out",
            "corpus": ..., "ctx_len": 128, "remove_bos": True}``); a JSON-ready dict.
        shard_tokens: activations per shard file.
        dtype: ``"float16"`` (half the disk; values of magnitude above 65504 are refused) or ``"float32"``.
        overwrite: replace an existing complete cache (never a folder holding anything else: a user's folder that
            has a file named meta.json, or a cache folder where a file was added, is refused).

    Returns:
        the folder.

    Raises:
        ValueError: bad sizes/dtype, inconsistent batch widths, non-finite activations, activations beyond
            ``dtype``'s range (they would be stored as inf: use ``dtype="float32"``), no activations.
        TypeError: a batch that is not a floating-point tensor (token ids, masks, numpy arrays).
        FileExistsError: the folder exists (and is not a cache to overwrite: without ``overwrite``, or holding
            anything else than a complete cache).
        OSError: a shard could not be written (raised from the writer thread).
        On any error the folder is removed.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
               for n in (n_tokens, shard_tokens)):
        raise ValueError(f"n_tokens and shard_tokens must be integers >= 1, got {n_tokens!r}, {shard_tokens!r}")
    try:  # checked before the (long) harvest, not when meta.json is written at its end
        if not isinstance(meta, dict):
            raise TypeError(f"a dict of fields is expected, got {type(meta).__name__}")
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ValueError(f"cache meta must be JSON-ready: {e}") from None
    path = Path(path)
    if path.exists() or path.is_symlink():
        if not overwrite:
            raise FileExistsError(f"{path} exists; choose a new folder (overwrite=True replaces an earlier cache)")
        if not _is_complete_cache(path):
            raise FileExistsError(f"{path} exists but is not an activation cache holding nothing else (a meta.json "
                                  f"of this library, shard files), so overwrite=True does not delete it; move it "
                                  f"away or choose another cache folder")
        shutil.rmtree(path)
    path.mkdir(parents=True)
    (path / BUILDING_MARKER).write_text("build_cache is writing this folder; without meta.json it is unfinished\n")
    try:
        _fill(batches, path, int(n_tokens), meta, int(shard_tokens), dtype)
    except BaseException:  # nothing half-written is left behind (the folder is ours: we just made it)
        shutil.rmtree(path, ignore_errors=True)
        raise
    (path / BUILDING_MARKER).unlink()
    return path


def build_seconds(path) -> Optional[dict]:
    """Where the build of the cache at ``path`` spent its time, from its ``meta.json``: ``{"waiting_for_batches":
    s, "writing": s, "fsync": s}`` in seconds (the harvest and the copy of each batch to the host; the writer
    thread's busy time, which overlaps the harvest; the final flush of the shards to disk), or None for a cache
    built before these were recorded, or an unreadable ``meta.json``."""
    try:
        seconds = json.loads((Path(path) / "meta.json").read_text()).get("build_seconds")
    except (OSError, ValueError, AttributeError):
        return None
    keys = ("waiting_for_batches", "writing", "fsync")
    if not isinstance(seconds, dict) or not all(isinstance(seconds.get(k), (int, float)) for k in keys):
        return None
    return {k: float(seconds[k]) for k in keys}


def _fill(batches, path: Path, n_tokens: int, meta: dict, shard_tokens: int, dtype: str) -> None:
    """Write the shards and then ``meta.json`` (see :func:`build_cache`): each batch is converted to the storage
    dtype and checked on its own device (:func:`_stored_rows`), then written by one background thread
    (:class:`_ShardWriter`) while the next batch is harvested; every shard file is fsynced before ``meta.json``
    is written. ``meta.json`` records ``build_seconds``: ``waiting_for_batches`` (this thread: the harvest, the
    conversion and the copy to the host), ``writing`` (the writer thread's busy time, overlapping the harvest) and
    ``fsync`` (the final flush to disk), in seconds."""
    np_dtype, torch_dtype = _DTYPES[dtype]
    shards, written, dim, room, waiting = [], 0, None, 0, 0.0  # room: rows the open shard still takes
    batches = iter(batches)
    with _ShardWriter(np_dtype) as writer:
        while written < n_tokens:  # no batch is drawn once the cache is full
            t = time.perf_counter()
            b = next(batches, None)
            if b is None:
                break
            rows = _stored_rows(b, n_tokens - written, dim, torch_dtype, dtype)
            dim = rows.shape[1]
            waiting += time.perf_counter() - t
            while len(rows):
                if room == 0:
                    name = f"shard_{len(shards):05d}.npy"
                    room = min(shard_tokens, n_tokens - written)
                    writer.open(path / name, room, dim)
                    shards.append({"file": name, "tokens": room})
                take = min(len(rows), room)
                writer.write(rows[:take])
                written, room, rows = written + take, room - take, rows[take:]
        if written == 0:
            raise ValueError("no activations to cache")
        shards[-1]["tokens"] -= room  # the batches ran out inside a shard: record the filled part only
        fsync_s = writer.finish()
    write_json(path / "meta.json", {"format": CACHE_FORMAT, "dtype": dtype, "activation_dim": dim,
                                    "tokens": written, "shards": shards, "meta": meta,
                                    "build_seconds": {"waiting_for_batches": round(waiting, 3),
                                                      "writing": round(writer.writing_s, 3),
                                                      "fsync": round(fsync_s, 3)}})


def _stored_rows(b: torch.Tensor, limit: int, dim: Optional[int], torch_dtype: torch.dtype,
                 dtype: str) -> np.ndarray:
    """The first ``limit`` rows of the batch ``b`` (``[batch, dim]``, any floating dtype, any device) as the cache
    stores them: converted on ``b``'s device (to float32, then to the storage dtype: the rounding of numpy's
    ``astype``), checked finite there, then copied to the host. Returns a ``[rows, dim]`` numpy array of the
    storage dtype that shares no memory with ``b`` (it is written later, on another thread).

    Raises:
        TypeError: ``b`` is not a floating-point tensor (as ``trainSAE`` refuses it).
        ValueError: ``b`` is not ``[batch, dim]`` (``dim`` None: any width >= 1); ``b`` holds NaN or inf; a finite
            value beyond the storage dtype's range (float16: magnitude above 65504) that would be stored as inf.
    """
    require_float_batch(b, " (token ids or masks instead of activations?)")
    dim = (b.shape[-1] if b.ndim else None) if dim is None else dim
    if b.ndim != 2 or b.shape[1] != dim:
        raise ValueError(f"activation batches must all be [batch, {dim}], got {tuple(b.shape)}")
    if dim == 0:
        raise ValueError("activation batches must have at least one column, got [batch, 0]")
    src = b.detach()[:limit]
    stored = src.float().to(torch_dtype)
    finite = torch.isfinite(stored).all()  # on the batch's device; read after the copy below (one wait)
    host = stored.cpu()
    if not bool(finite):
        if not bool(torch.isfinite(src).all()):
            raise ValueError("activations contain NaN or infinite values")
        advice = "; build the cache with dtype='float32'" if dtype != "float32" else ""
        raise ValueError(f"activations of magnitude up to {float(src.abs().max()):.6g} exceed {dtype}'s range "
                         f"(largest {torch.finfo(torch_dtype).max:.6g}) and would be stored as inf{advice}")
    if host.data_ptr() == src.data_ptr():  # no conversion nor copy happened: do not keep the caller's memory
        host = host.clone()
    return host.numpy()


class _ShardWriter:
    """Writes ``.npy`` shard files on one background thread, so that the harvest overlaps the disk.

    One caller thread calls :meth:`open` (a new shard of ``[rows, dim]``) and :meth:`write` (its next rows, in
    order); at most ``max_pending`` calls wait for the writer (the caller blocks beyond that, so host memory stays
    bounded). An error of the writer is raised in the caller, at its next call or at :meth:`finish`. Leaving the
    ``with`` block stops the thread (dropping queued writes after an error) and closes the open file, so the
    caller may then remove the folder.

    Attributes:
        writing_s: seconds the writer thread spent opening and writing files (overlapping the harvest).
    """

    def __init__(self, np_dtype, max_pending: int = 4):
        self.dtype, self.max_pending = np.dtype(np_dtype), max_pending
        self.files: list[Path] = []
        self.writing_s = 0.0
        self._file, self._end = None, 0
        self._pending: collections.deque = collections.deque()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cache-writer")

    def __enter__(self) -> "_ShardWriter":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._close()

    def open(self, file: Path, rows: int, dim: int) -> None:
        """Start the shard ``file`` of ``[rows, dim]`` (the previous one is complete)."""
        self._submit(self._open, Path(file), rows, dim)

    def write(self, rows: np.ndarray) -> None:
        """Append ``rows`` (``[n, dim]``, the storage dtype; not modified afterwards) to the open shard."""
        self._submit(self._write, rows)

    def finish(self) -> float:
        """Wait for every write, close the last shard (a shard the batches did not fill is padded with zeros to
        its header's size, as the reader expects), and fsync every shard file and the folder; returns the fsync
        seconds.

        Raises:
            OSError (or whatever a write raised): from the writer thread.
        """
        self._submit(self._close)
        while self._pending:
            self._pending.popleft().result()
        t = time.perf_counter()
        for f in self.files:
            with open(f, "rb+") as fh:
                os.fsync(fh.fileno())
        if self.files and hasattr(os, "O_DIRECTORY"):  # the shards' folder entries too (POSIX)
            fd = os.open(self.files[0].parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        return time.perf_counter() - t

    def _submit(self, fn, *args) -> None:
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()  # raises the writer's error here
        self._pending.append(self._pool.submit(self._timed, fn, *args))

    def _timed(self, fn, *args) -> None:  # on the writer thread
        t = time.perf_counter()
        try:
            fn(*args)
        finally:
            self.writing_s += time.perf_counter() - t

    def _open(self, file: Path, rows: int, dim: int) -> None:
        self._close()
        header = np.lib.format.header_data_from_array_1_0(np.empty((0, dim), self.dtype))
        self._file = open(file, "wb")
        self.files.append(file)
        np.lib.format.write_array_header_1_0(self._file, {**header, "shape": (rows, dim)})
        self._end = self._file.tell() + rows * dim * self.dtype.itemsize

    def _write(self, rows: np.ndarray) -> None:
        self._file.write(np.ascontiguousarray(rows, dtype=self.dtype).data)

    def _close(self) -> None:
        if self._file is not None:
            f, self._file = self._file, None
            try:
                if f.tell() < self._end:
                    f.truncate(self._end)  # zeros after the rows written
            finally:
                f.close()


def _check_info(info) -> None:
    """Refuse a parsed ``meta.json`` without the fields :class:`ActivationCache` reads: ``activation_dim``,
    ``tokens``, ``meta`` (a dict) and a non-empty ``shards`` list of ``{"file": str, "tokens": int}``.

    Raises:
        ValueError: naming what is missing (the caller says which file).
    """
    if not isinstance(info, dict) or not all(k in info for k in ("activation_dim", "tokens", "shards", "meta")):
        raise ValueError("activation_dim, tokens, shards or meta missing")
    shards = info["shards"]
    if not isinstance(info["meta"], dict) or not isinstance(shards, list) or not shards or not all(
            isinstance(s, dict) and isinstance(s.get("file"), str) and isinstance(s.get("tokens"), int)
            for s in shards):
        raise ValueError("meta is not a dict, or shards is not a non-empty list of {file, tokens}")


#: the largest share of a GPU's free memory that an automatic preload gives a cache (the rest is the training's)
PRELOAD_SHARE = 0.4


def fits_on_device(path, device) -> bool:
    """Whether the cache at ``path`` should be held on ``device`` when the user left it to us (``--preload
    auto``, ``reproduce`` without ``--no-preload``): on a CUDA device whose free memory is at least
    ``1 / PRELOAD_SHARE`` (2.5) times the cache's shard files; never on a CPU (the memory-mapped shards are already
    in host memory).

    Args:
        path: a cache folder (its ``shard_*.npy`` files are sized; bytes on disk = bytes on the device).
        device: a torch device string.

    Raises:
        RuntimeError: from ``torch.cuda.mem_get_info`` when the CUDA device cannot be queried.
    """
    if torch.device(device).type != "cuda":
        return False
    size = sum(f.stat().st_size for f in Path(path).iterdir() if _SHARD.fullmatch(f.name))
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    return size <= PRELOAD_SHARE * free


class ActivationCache:
    """Shuffled batches from a cache folder written by :func:`build_cache`.

    Args:
        path: the cache folder.
        batch_size: activations per batch.
        epochs: passes over the cache (a new shuffle each epoch).
        shuffle: shuffle across all shards (seeded); False: cache order.
        seed: shuffle seed (the same seed gives the same batches, which resuming relies on).
        device: where batches go; dtype: their dtype (default float32).
        expect: fields that ``meta`` must match (e.g. ``{"model": ..., "layer": 12}``); a mismatch is an error. A
            field of :data:`META_DEFAULTS` that ``meta`` lacks (a cache written before it) reads as its default.
        preload: read every shard into one ``[n_tokens, activation_dim]`` tensor on ``device`` at the start (cache
            dtype, allocated once and filled shard by shard in chunks of about 64 MB: e.g. 32 GB for 25M float16
            activations of width 640), check once there that it is finite, and gather each batch there, instead
            of from the memory-mapped files on the CPU. Same batches, in the same order, as without it; the row
            order of each epoch goes to the device once per epoch, so serving a batch waits for nothing on the
            host. :meth:`with_order` reuses the loaded tensor for another order.
        drop_last: leave out the smaller last batch of each epoch (every batch then has ``batch_size`` rows, as
            data-parallel training needs; ``train`` and ``reproduce`` always pass it). Each epoch leaves out other
            tokens (its own shuffle); the stream is the same on every iteration, which resuming relies on.

    Iterating yields ``[batch_size, activation_dim]`` tensors (the last one of each epoch may be smaller unless
    ``drop_last``). The order: per epoch, a permutation of all rows (``numpy.random.default_rng(seed)``, one
    generator for all epochs; cache order without ``shuffle``) cut into consecutive batches; each batch's rows
    are read in ascending order and then put in the order of a further permutation of the batch drawn from the
    same generator (with ``shuffle`` only).

    Attributes:
        n_tokens: activations in the cache; activation_dim: their width; meta: what they are (``meta.json``).
        finite_checked: True when every batch this iterable yields is known to be finite (preloaded: the whole
            cache was checked once on the device, and ``dtype`` holds every value of the cache's dtype), so a
            consumer may skip its own per-batch check; False otherwise.

    Raises:
        FileNotFoundError: no cache at ``path``, or an unfinished one (no ``meta.json``), or a missing shard.
        ValueError: ``expect`` does not match, an unknown format, bad sizes, or a damaged ``meta.json`` or shard
            (truncated, garbage, or of another width); with ``preload``, a cache holding NaN or inf.
    """

    #: bytes of one chunk copied from the shards to the preloaded tensor
    PRELOAD_CHUNK_BYTES = 64 << 20

    def __init__(self, path, batch_size: int = 8192, epochs: int = 1, shuffle: bool = True, seed: int = 0,
                 device: str = "cpu", dtype: torch.dtype = torch.float32, expect: Optional[dict] = None,
                 preload: bool = False, drop_last: bool = False):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"no complete activation cache at {self.path} (meta.json missing: the cache "
                                    f"was never built or its build was interrupted)")
        try:
            info = json.loads(meta_path.read_text())
            _check_info(info)
        except (ValueError, UnicodeDecodeError) as e:
            raise ValueError(f"{meta_path} is damaged or not written by this library ({e}); if the folder is a cache "
                             f"built here, delete it and build it again, else move it away or choose another "
                             f"cache folder") from None
        if info.get("format") != CACHE_FORMAT:
            raise ValueError(f"{self.path}: unknown cache format {info.get('format')!r}")
        for k, v in (expect or {}).items():
            have = info["meta"].get(k, META_DEFAULTS.get(k))
            if have != v:
                raise ValueError(f"{self.path} holds activations with {k}={have!r}, not {v!r}; "
                                 f"rebuild the cache or point to the right one")
        self.info, self.meta = info, info["meta"]
        self.batch_size, self.epochs, self.shuffle, self.seed = batch_size, epochs, shuffle, seed
        self.device, self.dtype, self.drop_last = device, dtype, drop_last
        self._check_order()
        self.arrays = [self._open_shard(s) for s in info["shards"]]
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.n_tokens = int(self.offsets[-1])
        self.activation_dim = info["activation_dim"]
        self.preload = preload
        self._data = self._load(torch.device(device)) if preload else None
        self.finite_checked = preload and torch.finfo(dtype).max >= torch.finfo(self._data.dtype).max

    def _check_order(self) -> None:
        """Refuse bad ``batch_size``/``epochs``, or ``drop_last`` with fewer activations than one batch."""
        if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 1
                   for n in (self.batch_size, self.epochs)):
            raise ValueError(f"batch_size and epochs must be >= 1 (integers), got {self.batch_size!r}, "
                             f"{self.epochs!r}")
        if self.drop_last and self.batch_size > int(self.info["tokens"]):
            raise ValueError(f"{self.path} holds {self.info['tokens']} activations, fewer than one batch of "
                             f"{self.batch_size} (drop_last=True would yield nothing)")

    def _open_shard(self, s: dict) -> np.ndarray:
        """The shard ``s`` (an entry of ``meta.json``'s list), memory-mapped: ``[s["tokens"], activation_dim]``."""
        f = self.path / s["file"]
        if not f.is_file():
            raise FileNotFoundError(f"{self.path}: shard {s['file']} is missing")
        try:
            arr = np.load(f, mmap_mode="r")
        except (ValueError, OSError, EOFError) as e:
            raise ValueError(f"{f} is damaged ({e}); delete the cache folder and build it again") from None
        if arr.ndim != 2 or arr.shape[1] != self.info["activation_dim"] or len(arr) < s["tokens"]:
            raise ValueError(f"{f} holds an array of shape {tuple(arr.shape)}, not [{s['tokens']}, "
                             f"{self.info['activation_dim']}] as meta.json says; delete the cache folder and build "
                             f"it again")
        return arr[: s["tokens"]]

    def _load(self, device: torch.device) -> torch.Tensor:
        """Every shard in one ``[n_tokens, activation_dim]`` tensor on ``device`` (the cache's dtype), allocated
        once and filled through one host staging buffer of :attr:`PRELOAD_CHUNK_BYTES` (pinned for a GPU), then
        checked finite on the device (one wait, at the end).

        Raises:
            ValueError: the cache holds NaN or inf (naming the folder).
        """
        np_dtype = self.arrays[0].dtype
        chunk = max(1, self.PRELOAD_CHUNK_BYTES // (self.activation_dim * np_dtype.itemsize))
        stage = torch.empty((min(chunk, self.n_tokens), self.activation_dim),
                            dtype=torch.from_numpy(np.empty(0, np_dtype)).dtype, pin_memory=device.type == "cuda")
        data = torch.empty((self.n_tokens, self.activation_dim), dtype=stage.dtype, device=device)
        finite = torch.ones((), dtype=torch.bool, device=device)
        for arr, offset in zip(self.arrays, self.offsets):
            for r in range(0, len(arr), chunk):
                rows = arr[r:r + chunk]
                np.copyto(stage.numpy()[:len(rows)], rows)
                part = data[offset + r: offset + r + len(rows)]
                part.copy_(stage[:len(rows)])  # blocking: the staging buffer is free again afterwards
                finite &= torch.isfinite(part).all()
        if not bool(finite):
            raise ValueError(f"{self.path} holds NaN or infinite activations (a damaged cache); delete the folder "
                             f"and build it again")
        return data

    def with_order(self, *, batch_size: Optional[int] = None, epochs: Optional[int] = None,
                   seed: Optional[int] = None, shuffle: Optional[bool] = None,
                   drop_last: Optional[bool] = None) -> "ActivationCache":
        """The same cache served in another order, without reading it again: a new ActivationCache that shares
        this one's memory-mapped shards and, preloaded, its device tensor (same device, dtype and checks); the
        settings not given are kept. It yields the batches a fresh ``ActivationCache(path, ...)`` with these
        settings would.

        Raises:
            ValueError: bad ``batch_size``/``epochs``, or ``drop_last`` with fewer activations than one batch.
        """
        other = copy.copy(self)
        for name, value in (("batch_size", batch_size), ("epochs", epochs), ("seed", seed), ("shuffle", shuffle),
                            ("drop_last", drop_last)):
            if value is not None:
                setattr(other, name, value)
        other._check_order()
        return other

    @property
    def config(self) -> dict:
        """JSON-ready description (recorded by ``trainSAE`` runs)."""
        return {"cache": str(self.path), "tokens": self.n_tokens, "epochs": self.epochs, "seed": self.seed,
                "batch_size": self.batch_size, **{f"meta_{k}": v for k, v in self.meta.items()}}

    def __len__(self) -> int:
        """Batches served: ``epochs * (n_tokens // batch_size)`` with ``drop_last``, else ``epochs *
        ceil(n_tokens / batch_size)``."""
        per_epoch = self.n_tokens // self.batch_size if self.drop_last else -(-self.n_tokens // self.batch_size)
        return self.epochs * per_epoch

    def __iter__(self) -> Iterator[torch.Tensor]:
        g = np.random.default_rng(self.seed)
        for _ in range(self.epochs):
            if self._data is not None:  # the epoch's rows, in batch order, go to the device once
                index = torch.from_numpy(self._epoch_index(g)).to(self._data.device)
                for s in range(0, len(index), self.batch_size):
                    yield self._data.index_select(0, index[s:s + self.batch_size]).to(self.dtype)
                continue
            for rows, unsort in self._epoch_batches(g):
                batch = self._gather(rows)
                if unsort is not None:
                    batch = batch[unsort]
                yield torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, self.dtype)

    def _epoch_batches(self, g: np.random.Generator) -> Iterator[tuple[np.ndarray, Optional[np.ndarray]]]:
        """One epoch's batches as ``(rows, unsort)``: the batch's row indices in ascending order (``[batch]``
        int64, sequential reads within each shard) and, with ``shuffle``, the permutation that puts the rows read
        in the batch's random order (``batch = cache[rows][unsort]``), else None. Draws from ``g``: the epoch's
        permutation, then one permutation per batch served."""
        order = g.permutation(self.n_tokens) if self.shuffle else np.arange(self.n_tokens)
        for s in range(0, self.n_tokens, self.batch_size):
            if self.drop_last and s + self.batch_size > self.n_tokens:
                break
            rows = np.sort(order[s:s + self.batch_size])
            yield rows, (g.permutation(len(rows)) if self.shuffle else None)

    def _epoch_index(self, g: np.random.Generator) -> np.ndarray:
        """One epoch's rows in the order they are served (``[batches served * batch_size]`` int64, the last batch
        possibly shorter): ``rows[unsort]`` of each batch of :meth:`_epoch_batches`, concatenated."""
        return np.concatenate([rows if unsort is None else rows[unsort] for rows, unsort in self._epoch_batches(g)])

    def _gather(self, rows: np.ndarray) -> np.ndarray:
        """``[len(rows), activation_dim]`` rows of the memory-mapped shards, for ascending indices ``rows``."""
        shard = np.searchsorted(self.offsets, rows, side="right") - 1
        return np.concatenate([self.arrays[k][rows[shard == k] - self.offsets[k]] for k in np.unique(shard)])
