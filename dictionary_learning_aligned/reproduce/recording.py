"""What a record of a reproduction (:mod:`.run`) holds: one record per trained and evaluated dictionary
(:func:`record_part`, :func:`_record`) with its settings, metrics, alignment scores, per-feature data, its group's
cross-seed stability and where its dictionary lies (:func:`dictionary_dir`); and the record and group ids of a
grid point (:func:`_rid`, :func:`_gid`). The store itself (ids, schema, reading and writing) is :mod:`.records`.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Optional

from ..experiments import Run
from ..records import SCHEMA_VERSION, group_id, has_record, record_id, write_record

from .context import Context


def record_part(ctx: Context, members: list[tuple], run_dir: Path, trainers: list, train_s: float,
                dictionaries: dict, metrics: dict, point: Optional[int] = None) -> list[str]:
    """Write one record of experiment ``ctx.name`` per member ``(i, run, trained_for)`` of a trained and evaluated
    part (``i``: its trainer's index in the part, the key of ``dictionaries`` and ``metrics``; ``trained_for``: the
    experiments that record this dictionary, kept in the record as ``trained_for`` when there are several), with
    its group's cross-seed stability; returns the record ids written. With ``point`` (a step point of
    ``ctx.points``) the records are those of the dictionaries after ``point`` steps (ids with ``__step{point}``,
    ``steps``, ``checkpoint_of``: :func:`_record`). A record already in the store is kept, never overwritten (a
    run interrupted between its step points, or between two experiments' records, trains again for the missing
    ones); its dictionary still counts in its group's stability."""
    from ..stability import stability

    groups: dict[str, list[tuple]] = {}
    for m in members:
        groups.setdefault(_gid(m[1], point), []).append(m)
    written = []
    for gid, group in groups.items():
        stab = stability([dictionaries[i] for i, _, _ in group]) if len(group) > 1 else None
        for j, (i, r, trained_for) in enumerate(group):
            if has_record(ctx.store, _rid(r, point)):
                continue
            rec = _record(ctx, r, gid, trainers[i], dictionaries[i], dict(metrics[i]), stab, j,
                          run_dir / f"trainer_{i}", point)
            rec.update(train_seconds_all_dictionaries_of_this_size=round(train_s, 1),  # of its part with --chunk
                       trained_together=len(trainers))
            if len(trained_for) > 1:
                rec["trained_for"] = trained_for
            write_record(ctx.store, rec)
            written.append(rec["id"])
    return written


def _record(ctx: Context, r: Run, gid: str, trainer, ae, m: dict, stab: Optional[dict], j: int,
            trainer_dir: Path, point: Optional[int] = None) -> dict:
    """The record of one run (:mod:`.records`): settings, metrics, alignment scores, per-feature data, the
    stability of its group (``stab``, it being member ``j``), training log and the dictionary's path. At a step
    point ``point`` (:func:`record_part`): the dictionary after ``point`` steps, its tokens, the log up to it and
    ``checkpoint_of`` (the run's final dictionary folder)."""
    from ..alignment import alignment_scores

    summary, fired = m.pop("alignment"), m.pop("fired")
    plan = ctx.plan
    if point is None or point == ctx.steps:  # the end of the run: what it trained on
        steps, tokens = trainer.steps_done, trainer.tokens_seen
    else:  # a checkpoint: every batch before it was full (train_steps)
        steps, tokens = point, min(trainer.tokens_seen, point * ctx.batch_size)
    per_pass = max(1, ctx.steps // ctx.epochs)  # batches of one pass over the cache (train_steps)
    rec = {
        "schema": SCHEMA_VERSION, "id": _rid(r, point), "experiment": ctx.name, "scale": ctx.scale,
        "model": plan.model, "paper_model": plan.experiment.paper_model, "offline_note": plan.offline_note,
        "layer": plan.layer, "corpus": plan.corpus or "bundled", "harvest_precision": ctx.harvest_precision,
        "train_tokens": tokens,
        "plan_tokens": plan.tokens, "unique_tokens": min(ctx.unique_tokens, tokens),
        "epochs": min(ctx.epochs, -(-steps // per_pass)), "recipe": plan.recipe.name, "steps": steps,
        "batch_size": ctx.batch_size,
        "trained_on": {"device": ctx.device, "process": ctx.rank, "processes": ctx.world_size}, "arch": r.arch,
        "alignment": r.alignment, "alignment_penalty": r.alignment_penalty, "dict_size": r.dict_size,
        "sparsity": _sparsity(r), "seed": r.seed, "group": gid, "trainer": trainer.config, "metrics": m,
        "alignment_scores": summary,
        "per_feature": {
            "alignment_score": [round(v, 5) for v in alignment_scores(ae).cpu().tolist()],
            "max_cos_other_seeds": [round(v, 4) for v in stab["per_feature_max_cos"][j]] if stab else None,
            "fired": fired},
        "stability": None if stab is None else {k: stab[k] for k in (
            "n_runs", "mcs", "frac_above_0.7", "frac_above_0.9", "hungarian_mean_cos")},
        "training_log": [e for e in trainer.log if e.get("step", 0) <= steps],
        "paths": {"dictionary": str(dictionary_dir(trainer_dir, point, ctx.steps).relative_to(ctx.store))},
        "command": ctx.command,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    if point is not None:
        rec["checkpoint_of"] = str(trainer_dir.relative_to(ctx.store))
    return rec


def dictionary_dir(trainer_dir: Path, point: Optional[int], steps: int) -> Path:
    """The folder of a run's dictionary after ``point`` steps: ``trainer_dir`` itself for the end of the run
    (``point`` None or ``steps``), else its checkpoint ``trainer_dir/checkpoints/step_{point - 1}`` (trainSAE names
    a checkpoint by the index of the last step it holds).

    Raises:
        ValueError: ``point`` outside ``1..steps``.
    """
    from ..training import CHECKPOINT_PREFIX

    if point is None or point == steps:
        return Path(trainer_dir)
    if not 1 <= point < steps:
        raise ValueError(f"step point {point} is outside the run's 1..{steps} steps")
    return Path(trainer_dir) / "checkpoints" / f"{CHECKPOINT_PREFIX}{point - 1}"


def _rid(r: Run, steps: Optional[int] = None) -> str:
    """The record id of run ``r`` (at step point ``steps``, for an experiment with ``eval_steps``)."""
    return record_id(r.experiment, r.arch, r.alignment, r.dict_size, _sparsity(r), r.seed,
                     alignment_penalty=r.alignment_penalty, steps=steps)


def _gid(r: Run, steps: Optional[int] = None) -> str:
    """The group id of run ``r`` (at step point ``steps``, for an experiment with ``eval_steps``)."""
    return group_id(r.experiment, r.arch, r.alignment, r.dict_size, _sparsity(r),
                    alignment_penalty=r.alignment_penalty, steps=steps)


def _sparsity(r: Run) -> dict:
    """The ``{"name", "value"}`` sparsity of run ``r``, as records hold it."""
    return {"name": r.sparsity_name, "value": r.sparsity_value}
