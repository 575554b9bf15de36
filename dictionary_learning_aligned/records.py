"""The results store: one JSON record per trained dictionary, the contract between the reproduction (which writes
records) and the figures (which only read them).

A store is a folder ``DIR`` with ``DIR/records/<id>.json`` (or ``<id>.json.gz``: committed stores are gzipped to
keep the repository small; both are read). Each record (schema version 1) holds:

=====================  ============================================================================================
key                    meaning
=====================  ============================================================================================
``schema``             1
``id``                 unique name: ``{experiment}__{arch}__{tag}__d{dict_size}__{sparsity}[__step{steps}]__s{seed}``
                       (:func:`group_id`; the alignment tag is the mode, ``standard`` or ``penalty{lambda}``)
``experiment``         experiment name (e.g. ``"main"``); ``scale``: ``"smoke" | "small" | "paper"``
``model``              language model actually used; ``paper_model``: the paper's model it substitutes (or None)
``offline_note``       a sentence when an offline substitute (model or text) was used, else ""
``layer``              layer read; ``corpus``: text source; ``train_tokens``: tokens trained on
``harvest_precision``  ``"float32"`` or ``"tf32"``: the matmul precision of the forward passes that harvested the
                       training activations, as used (``reproduce --harvest-precision``); absent in records written
                       before it (they were float32)
``arch``               ``"relu" | "topk" | "batchtopk" | "panneal"``; ``alignment``: None or a mode name
``alignment_penalty``  the ``"penalty"`` mode's coefficient lambda (None or absent for every other mode)
``dict_size``          features; ``sparsity``: ``{"name": "l1_penalty" | "k" | "initial_sparsity_penalty", "value": x}``
``seed``               seed; ``group``: id without the seed (records of one group differ only by seed)
``trainer``            the trainer's ``config`` dict
``metrics``            :func:`~dictionary_learning_aligned.evaluation.evaluate` output without ``alignment``
``alignment_scores``   :func:`~dictionary_learning_aligned.alignment.summarize_scores` of the dictionary
``per_feature``        ``{"alignment_score": [F floats], "max_cos_other_seeds": [F floats] or None,
                       "fired": [F bools] (fired in the evaluation tokens)}``
``stability``          ``{"mcs", "frac_above_0.7", "frac_above_0.9", "hungarian_mean_cos", "n_runs"}`` of the
                       group (same for every seed of the group), or None with a single seed
``training_log``       the trainer's log entries (step, losses, L0, FVE, dead fraction, alignment summary)
``paths``              ``{"dictionary": folder of ae.safetensors, relative to DIR}``
``steps``              steps trained (for a checkpoint record: up to that checkpoint); ``recipe``, ``batch_size``
``checkpoint_of``      only in records evaluated at step points of one run (experiment ``budget``): the run's final
                       dictionary folder, relative to DIR, the same for every step point of that run (whose
                       ``paths.dictionary`` is the checkpoint's folder, ``.../checkpoints/step_{steps - 1}``)
``trained_for``        only when one training served several experiments (``reproduce --also``): their names, in
                       order (the same dictionary is then recorded under each one's id)
``command``, ``versions``, ``created``  provenance
=====================  ============================================================================================

Records name no file of the machine that wrote them: in ``corpus``, ``offline_note`` and ``command`` every
absolute path is stored (and, for stores written before this rule, read) machine-neutral by
:func:`neutral_paths`: a path inside the store relative to it, any other path by its last component.
"""

from __future__ import annotations

import json
import re
import zlib
from pathlib import Path
from typing import Iterator, Optional

from .io import read_json, write_json

SCHEMA_VERSION = 1
REQUIRED = ("schema", "id", "experiment", "scale", "model", "arch", "alignment", "dict_size", "sparsity", "seed",
            "group", "metrics", "alignment_scores", "per_feature", "stability")


def record_id(experiment: str, arch: str, alignment: Optional[str], dict_size: int, sparsity: dict, seed: int, *,
              alignment_penalty: Optional[float] = None, steps: Optional[int] = None) -> str:
    """The record id ``{group id}__s{seed}`` (:func:`group_id`), e.g. ``main__topk__project__d4096__k64__s0``."""
    gid = group_id(experiment, arch, alignment, dict_size, sparsity, alignment_penalty=alignment_penalty, steps=steps)
    return f"{gid}__s{seed}"


def group_id(experiment: str, arch: str, alignment: Optional[str], dict_size: int, sparsity: dict, *,
             alignment_penalty: Optional[float] = None, steps: Optional[int] = None) -> str:
    """The id shared by the seeds of one configuration:
    ``{experiment}__{arch}__{alignment tag}__d{dict_size}__{sparsity name}{value}[__step{steps}]``.

    Args:
        alignment: the mode (None: standard); with ``alignment_penalty`` (the ``"penalty"`` mode's coefficient)
            its tag carries the coefficient (:func:`alignment_tag`, ``penalty0.1``).
        sparsity: ``{"name": ..., "value": ...}``.
        steps: for a record evaluated at a checkpoint (``checkpoint_of`` set), the steps trained so far
            (``__step2500``); None for a record of a trained dictionary without step points.
    """
    return (f"{experiment}__{arch}__{alignment_tag(alignment, alignment_penalty)}__d{dict_size}__"
            f"{sparsity['name']}{sparsity['value']:g}" + (f"__step{steps}" if steps is not None else ""))


def alignment_tag(mode: Optional[str], penalty: Optional[float] = None) -> str:
    """The alignment part of record and group ids (and a short label in tables): ``"standard"``, the mode, or
    ``"penalty<lambda>"`` (e.g. ``"penalty0.1"``) for the soft constraint with its coefficient."""
    if mode == "penalty" and penalty is not None:
        return f"penalty{penalty:g}"
    return mode or "standard"


#: record fields that may name files of the machine that wrote them (made neutral by :func:`neutral_paths`)
PATH_FIELDS = ("corpus", "offline_note", "command")
# an absolute path of at least two components, not preceded by a character that would make it part of a word
_ABSOLUTE_PATH = re.compile(r"(?<![\w.~-])/(?:[\w.+@=-]+/)+[\w.+@=-]*")


def neutral_paths(text: str, store, *, machine_roots=()) -> str:
    """``text`` with every absolute path of two or more components made machine-neutral: a path inside
    ``store`` becomes ``<store folder name>/<path relative to the store>``, any other path its last component
    (``/tmp/gpu/files/corpus.jsonl.gz`` -> ``corpus.jsonl.gz``). Text without such paths is returned unchanged.

    Args:
        text: a record field (a corpus name, a note, a command line).
        store: the results store folder (need not exist).
        machine_roots: absolute folders where the store lay on the machine that wrote ``text`` (e.g.
            ``/tmp/store``, taken as written, not resolved here); paths inside them are mapped like paths inside
            ``store``, to ``<store folder name>/...``. The most specific root wins.
    """
    root = Path(store).resolve()
    roots = sorted({root, Path(store).absolute(), *map(Path, machine_roots)}, key=lambda r: -len(r.parts))

    def neutral(match: re.Match) -> str:
        path = Path(match.group(0))
        for r in roots:
            if path.is_relative_to(r):
                return str(Path(root.name) / path.relative_to(r))
        return path.name or match.group(0)

    return _ABSOLUTE_PATH.sub(neutral, text)


def neutral_json(value, store, fields=None, *, machine_roots=()):
    """A copy of the JSON value ``value`` whose strings (dict keys included, at any depth) went through
    :func:`neutral_paths`; numbers, booleans and None are kept. ``value`` itself is not changed.

    Args:
        value: a parsed JSON value (dict, list, str, number, bool or None).
        store: the folder that paths are made relative to (see :func:`neutral_paths`).
        fields: with a dict ``value``, only its top-level keys in ``fields`` are made neutral (the others are
            kept as they are, e.g. text quoted by an eval); None: the whole value.
        machine_roots: see :func:`neutral_paths`.
    """
    def walk(v):
        if isinstance(v, str):
            return neutral_paths(v, store, machine_roots=machine_roots)
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    if fields is not None and isinstance(value, dict):
        return {k: walk(v) if k in fields else v for k, v in value.items()}
    return walk(value)


def _neutral_record(store, record: dict) -> dict:
    """A copy of ``record`` whose :data:`PATH_FIELDS` went through :func:`neutral_paths` (:func:`neutral_json`)."""
    return neutral_json(record, store, PATH_FIELDS)


def write_record(store, record: dict) -> Path:
    """Validate and write ``record`` to ``store/records/<id>.json`` atomically, with machine-neutral paths in
    :data:`PATH_FIELDS` (:func:`neutral_paths`; the caller's dict is not changed).

    Raises:
        ValueError: a required key is missing or the schema version is not :data:`SCHEMA_VERSION`.
    """
    missing = [k for k in REQUIRED if k not in record]
    if missing:
        raise ValueError(f"record {record.get('id')!r} lacks {missing}")
    if record["schema"] != SCHEMA_VERSION:
        raise ValueError(f"record schema {record['schema']} is not {SCHEMA_VERSION}")
    folder = Path(store) / "records"
    folder.mkdir(parents=True, exist_ok=True)
    return write_json(folder / f"{record['id']}.json", _neutral_record(store, record))


def has_record(store, rid: str, expect: Optional[dict] = None) -> bool:
    """Whether a complete record with this id exists (the reproduction skips finished entries).

    Args:
        expect: fields the record must have, e.g. ``{"scale": "paper", "model": ..., "layer": 8}``: ids do not
            name the scale, model or layer, so a record of another run under the same id would otherwise count
            as this one's. A field the record lacks (or holds as None) is not compared.

    Raises:
        ValueError: a record file with this id that is damaged (not valid JSON, not a record, another schema, or
            missing required keys), or whose field differs from ``expect`` (naming the file, the field and both
            values): it is neither counted as finished nor overwritten, so the user decides (move it away to train
            that dictionary again, or use another results store).
    """
    folder = Path(store) / "records"
    for p in (folder / f"{rid}.json", folder / f"{rid}.json.gz"):
        if p.is_file():
            try:
                rec = _read_checked(p)
            except ValueError as e:
                raise ValueError(f"{e}; move it away to train this dictionary again") from None
            _check_same_run(p, rec, expect or {})
            return True
    return False


def _check_same_run(p: Path, rec: dict, expect: dict) -> None:
    """Refuse the record ``rec`` (read from ``p``) when one of the ``expect`` fields it has differs.

    Raises:
        ValueError: naming the file, the field and both values.
    """
    for key, want in expect.items():
        if rec.get(key) is not None and rec[key] != want:
            raise ValueError(f"{p} is a record of {key} {rec[key]}, not of this run's {key} {want} (record ids do "
                             f"not name the scale, model or layer): it would count as this run's; use another "
                             f"--results store, or move the record away")


def _read_checked(p: Path) -> dict:
    """The record in file ``p``, checked (valid JSON object, this schema version, every required key).

    Raises:
        ValueError: naming the file and what is wrong with it (also an ``id`` that is not a plain name: a path
            such as ``../x`` would put files named after it outside the store).
    """
    try:
        rec = read_json(p)
    except (json.JSONDecodeError, OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        raise ValueError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise ValueError(f"{p} is not a record (a JSON object), it holds a JSON {type(rec).__name__}")
    if "schema" not in rec:
        keys = ", ".join(map(str, list(rec)[:6])) + (", ..." if len(rec) > 6 else "")
        raise ValueError(f"{p} is not a record of this library (no 'schema' key; it holds {keys or 'nothing'}: a "
                         f"file of another tool?); records/ holds only records, move it elsewhere")
    if rec.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"{p} has schema {rec.get('schema')!r}, expected {SCHEMA_VERSION}")
    missing = [k for k in REQUIRED if k not in rec]
    if missing:
        raise ValueError(f"{p} is not a complete record: it lacks {missing}")
    rid = rec["id"]
    if not isinstance(rid, str) or not rid or rid in (".", "..") or "/" in rid or "\\" in rid:
        raise ValueError(f"{p}: record id {rid!r} is not a plain name (ids name files and folders, e.g. the "
                         f"SAEBench results' DIR/saebench/<id>/)")
    return rec


def iter_records(store, **where) -> Iterator[dict]:
    """Records of ``store`` (sorted by id) whose fields equal the given values, e.g.
    ``iter_records(d, arch="topk", dict_size=4096)``.

    Raises:
        FileNotFoundError: ``store/records`` does not exist.
        ValueError: a record file is not valid JSON, not a JSON object, lacks a required key or has another schema
            version (naming the file), or a record is stored twice (``<id>.json`` and ``<id>.json.gz``).
    """
    folder = Path(store) / "records"
    if not folder.is_dir():
        raise FileNotFoundError(f"no results store at {store} (missing {folder})")
    files = {p.name: p for p in folder.glob("*.json")}
    for p in folder.glob("*.json.gz"):
        if p.name[:-3] in files:
            raise ValueError(f"{p} and {files[p.name[:-3]]} hold the same record; delete one of them")
        files[p.name[:-3]] = p
    for _, p in sorted(files.items()):
        rec = _neutral_record(store, _read_checked(p))
        if all(rec.get(k) == v for k, v in where.items()):
            yield rec
