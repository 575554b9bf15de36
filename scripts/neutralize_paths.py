"""Rewrite the JSON files of a results store in place with machine-neutral paths.

    python scripts/neutralize_paths.py STORE [--machine-root PATH ...] [--dry-run]

Stores written before the harness and the records wrote neutral paths hold absolute paths of the machine that ran
them (``"path": "/tmp/store/dictionaries/.../trainer_3"``, ``"data_dir": "/tmp/sbdata"``). This tool rewrites, with
:func:`dictionary_learning_aligned.records.neutral_json`,

* the records ``STORE/records/*.json[.gz]`` (their fields ``corpus``, ``offline_note``, ``command``),
* the SAEBench results ``STORE/saebench/<record id>/<eval>.json[.gz]`` (the fields the harness adds:
  ``dictionary``, ``data``, ``model``, ``harness``; SAEBench's own fields and the judge's URL are kept),
* the harness's run summaries ``STORE/saebench/run_<time>.json`` / ``results.json``.

A path inside the store, or inside one of the ``--machine-root`` folders (where the store lay on the machine that
wrote the files, e.g. ``/tmp/store``), becomes ``<STORE's folder name>/<relative path>``; any other absolute path
its last component. Gzipped files stay gzipped; files that would not change are not touched. It prints each
changed file with the paths it rewrote, then a count.

A file is rewritten only after every file was read and checked: a refusal changes nothing. Left alone (and named):
JSON this tool does not know (a record needs ``schema`` and ``id``), symbolic links and files reached through a
linked folder (their targets may belong to someone else). A rewritten file keeps its permissions.

Exit status: 0 done (or nothing to do), 2 refused, nothing changed (STORE is not a results store: no ``records/``
folder; a machine root that is not absolute, is ``/`` or matches no path to rewrite (a warning with --dry-run); a
file that is not JSON, or whose values cannot be written back as JSON, e.g. NaN; a file to rewrite that is
read-only).
"""

from __future__ import annotations

import argparse
import os
import stat
import sys
import zlib
from pathlib import Path

from dictionary_learning_aligned.io import atomic_path, json_bytes, read_json
from dictionary_learning_aligned.records import PATH_FIELDS, neutral_json


def fields_of(path: Path, value) -> tuple | None:
    """The top-level fields of the JSON ``value`` (read from ``path`` in a store) that may name files, or None for
    a file this tool does not know (left alone)."""
    from benchmarks.saebench.runner import RESULT_PATH_FIELDS, SUMMARY_PATH_FIELDS

    if not isinstance(value, dict):
        return None
    if path.parent.name == "records":
        return PATH_FIELDS if "schema" in value and "id" in value else None
    if "eval_type_id" in value:
        return RESULT_PATH_FIELDS
    if "results" in value and "evals" in value:
        return SUMMARY_PATH_FIELDS
    return None


def store_files(store: Path) -> list[Path]:
    """The JSON and JSON.gz files of ``store/records`` and (at any depth) of ``store/saebench``, sorted."""
    out = [p for pat in ("*.json", "*.json.gz") for p in (store / "records").glob(pat)]
    out += [p for pat in ("*.json", "*.json.gz") for p in (store / "saebench").rglob(pat)]
    return sorted(p for p in out if p.is_file())


def changed_paths(old, new) -> list[str]:
    """``"old -> new"`` for each string of ``old`` that differs in ``new`` (same shape), in order, once each."""
    seen: dict[str, None] = {}

    def walk(a, b):
        if isinstance(a, dict):
            for (ka, va), (kb, vb) in zip(a.items(), b.items()):
                walk(ka, kb)
                walk(va, vb)
        elif isinstance(a, list):
            for x, y in zip(a, b):
                walk(x, y)
        elif isinstance(a, str) and a != b:
            seen.setdefault(f"{a} -> {b}")

    walk(old, new)
    return list(seen)


def check_roots(machine_roots) -> None:
    """Refuse machine roots that are not absolute, or are ``/`` (every absolute path would count as in the store).

    Raises:
        ValueError: naming the first bad root.
    """
    for r in machine_roots:
        if not Path(r).is_absolute():
            raise ValueError(f"--machine-root must be an absolute path, got {r!r}")
        if len(Path(r).parts) < 2:
            raise ValueError(f"--machine-root {r!r} is the file-system root: every absolute path would be taken "
                             f"for a path inside the store; give the folder the store lay in, e.g. /tmp/store")


def check_roots_used(machine_roots, changes: list[str]) -> None:
    """Refuse a machine root that none of the rewritten strings (``changes``: ``"old -> new"``) holds a path in:
    likely mistyped, and the paths it should have kept inside the store would lose all but their last component.

    Raises:
        ValueError: naming the first unused root (only when something would be rewritten).
    """
    olds = [c.split(" -> ", 1)[0] for c in changes]
    for r in machine_roots if olds else ():
        root = str(Path(r))
        if not any(f"{root}/" in o or o.endswith(root) for o in olds):
            raise ValueError(f"--machine-root {r} matched no path to rewrite (mistyped?); fix or drop it "
                             f"(--dry-run lists the rewrites); nothing was changed")


def load(path: Path):
    """The JSON value of ``path`` (:func:`~dictionary_learning_aligned.io.read_json`).

    Raises:
        ValueError: unreadable, not (gzipped) JSON, or corrupt gzip data (naming the file).
    """
    try:
        return read_json(path)
    except (ValueError, OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{path} cannot be read as JSON ({e}); nothing was changed") from None


def linked(path: Path, store: Path) -> bool:
    """Whether ``path`` is a symbolic link or lies, once links are followed, outside ``store``."""
    return path.is_symlink() or not path.resolve().is_relative_to(store.resolve())


def plan(store: Path, machine_roots=(), log=print) -> tuple[list, int]:
    """Read every file of :func:`store_files` and work out its rewrite, writing nothing.

    Returns:
        ``([(path, changes, data), ...], examined)``: for each file that would change, the ``"old -> new"`` paths
        (:func:`changed_paths`) and its new bytes (:func:`~dictionary_learning_aligned.io.json_bytes`); the
        number of files examined.

    Raises:
        ValueError: see :func:`load`; a value that cannot be written back as JSON (NaN, infinity).
    """
    out, files = [], store_files(store)
    for path in files:
        if linked(path, store):
            log(f"skipped {path.relative_to(store)}: a symbolic link or inside a linked folder (left alone)")
            continue
        old = load(path)
        fields = fields_of(path, old)
        if fields is None:
            log(f"skipped {path.relative_to(store)}: not a record, a SAEBench result or a run summary")
            continue
        new = neutral_json(old, store, fields, machine_roots=machine_roots)
        if new == old:
            continue
        try:
            data = json_bytes(path, new)
        except ValueError as e:
            raise ValueError(f"{path} cannot be written back as JSON ({e}); nothing was changed") from None
        out.append((path, changed_paths(old, new), data))
    return out, len(files)


def check_writable(paths) -> None:
    """Refuse to replace files without their owner's write permission, or in a folder this process cannot write.

    Raises:
        ValueError: naming the files.
    """
    bad = [str(p) for p in paths if not p.stat().st_mode & stat.S_IWUSR or not os.access(p.parent, os.W_OK)]
    if bad:
        raise ValueError(f"read-only, not rewritten: {', '.join(bad)}; make them writable (chmod u+w) to rewrite "
                         f"them; nothing was changed")


def neutralize(store: Path, machine_roots=(), dry_run: bool = False, log=print) -> tuple[int, int]:
    """Rewrite every file of :func:`store_files` whose paths are not neutral, keeping its permissions, once all
    were read and checked (:func:`plan`, :func:`check_writable`); returns ``(changed, examined)``.

    Raises:
        NotADirectoryError: ``store`` has no ``records/`` folder (not a results store).
        ValueError: see :func:`check_roots`, :func:`plan` and :func:`check_writable` (nothing is written).
    """
    if not (store / "records").is_dir():
        raise NotADirectoryError(f"{store} is not a results store (it has no records/ folder)")
    check_roots(machine_roots)
    rewrites, examined = plan(store, machine_roots, log)
    try:
        check_roots_used(machine_roots, [c for _, changes, _ in rewrites for c in changes])
    except ValueError as e:
        if not dry_run:
            raise
        log(f"warning: {e}")
    if not dry_run:
        check_writable(p for p, _, _ in rewrites)
    for path, changes, data in rewrites:
        log(f"{path.relative_to(store)}: " + "; ".join(changes))
        if not dry_run:
            mode = stat.S_IMODE(path.stat().st_mode)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
            os.chmod(path, mode)
    return len(rewrites), examined


def main(argv=None) -> int:
    """Entry point; returns the exit status (0 done, 2 bad arguments)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", type=Path, help="the results store (a folder with records/)")
    parser.add_argument("--machine-root", action="append", default=[], metavar="PATH",
                        help="where the store lay on the machine that wrote its files (repeatable), e.g. /tmp/store")
    parser.add_argument("--dry-run", action="store_true", help="print what would change, change nothing")
    args = parser.parse_args(argv)
    try:
        changed, n = neutralize(args.store, args.machine_root, args.dry_run)
    except (NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{changed} of {n} files {'would change' if args.dry_run else 'changed'}"
          f"{' (dry run: nothing written)' if args.dry_run else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
