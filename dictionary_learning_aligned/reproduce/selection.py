"""Which runs a reproduction trains (:mod:`.run`): the experiments that share one harvest
(:func:`shared_plans`), the steps a token budget gives (:func:`train_steps`) and the sizes refused before anything
loads, the grid points still missing from the results store (:func:`select_runs`, :func:`select_shared_runs`), one
trainer config per dictionary however many experiments ask for it (:func:`training_key`, :func:`runs_to_train`,
:func:`trainer_config`), and how the runs are cut into processes (:func:`spread_runs`) and parts (:func:`_chunks`)
in whole seed groups (:func:`seed_group`).

Nothing here loads a model or trains; every function reads the plans (:mod:`.experiments`) and, for what is
recorded already, the store (:func:`.records.has_record`).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Optional

from .. import registry
from ..experiments import RECIPES, Plan, Run, parse_alignment, resolve
from ..records import has_record
from .recording import _rid


#: the settings of a plan that the experiments of one reproduction must share: the data they train on, and the
#: recipe (the schedule is in :func:`training_key` too, but a different batch size would be a different harvest)
SHARED_SETTINGS = ("model", "layer", "corpus", "tokens", "recipe")


def shared_plans(names: list[str], scale: str, corpus: Optional[str] = None,
                 recipe: Optional[str] = None) -> list[Plan]:
    """The plans of the experiments ``names`` (the first one leads: its name is on the dictionaries' folders) at
    ``scale``, with ``recipe`` (a key of :data:`.experiments.RECIPES`) instead of the scale's.

    Raises:
        ValueError: an unknown experiment, scale or recipe; a name given twice; two plans that differ in one of
            :data:`SHARED_SETTINGS` (the message names it and both values).
    """
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose one of {sorted(RECIPES)}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"experiment {repeated[0]!r} is named twice (--also names experiments besides the first)")
    plans = [resolve(n, scale, corpus) for n in names]
    if recipe is not None:
        plans = [dataclasses.replace(p, recipe=RECIPES[recipe]) for p in plans]
    first = plans[0]
    for p in plans[1:]:
        for setting in SHARED_SETTINGS:
            a, b = getattr(first, setting), getattr(p, setting)
            if a != b:
                shown = (lambda v: v.name) if setting == "recipe" else repr
                raise ValueError(f"{p.experiment.name} cannot share training with {first.experiment.name} at "
                                 f"{scale} scale: its {setting} is {shown(b)}, not {shown(a)}")
    return plans


def train_steps(total_tokens: int, batch_size: int, epochs: int = 1, cached: bool = False) -> tuple[int, int]:
    """The optimizer steps of a run of ``total_tokens`` training tokens at ``batch_size`` activations per step,
    and the distinct tokens it harvests; every step trains on a full batch (as dictionary_learning's and SAEBench's
    trainers do; a short batch would also be a new shape for ``torch.compile``).

    Without a cache (one pass over a buffer that refills from the text): ``ceil(total_tokens / batch_size)``
    steps over ``total_tokens`` distinct tokens; the buffer serves full batches, so the last step trains on up to
    ``batch_size - 1`` tokens more than asked.

    With a cache (``cached``): ``unique = ceil(total_tokens / epochs)`` tokens are harvested and each of the
    ``epochs`` passes trains on the ``unique // batch_size`` full batches of a fresh shuffle, leaving out that
    pass' other ``unique % batch_size`` tokens (``drop_last``: each pass is exactly one epoch, no batch mixes two
    passes or holds a token twice, and a cache harvested before serves the same tokens):
    ``epochs * (unique // batch_size)`` steps, up to ``epochs * (batch_size - 1)`` tokens fewer than asked.

    Returns:
        ``(steps, unique_tokens)``.

    Raises:
        ValueError: with a cache, fewer distinct tokens than one batch.
    """
    if not cached:
        return -(-total_tokens // batch_size), total_tokens
    unique = -(-total_tokens // epochs)
    if unique < batch_size:
        raise ValueError(f"{total_tokens:,} training tokens (--tokens, or the scale's budget) over --epochs {epochs} "
                         f"harvest {unique:,} distinct tokens, fewer "
                         f"than one batch of {batch_size}; pass more --tokens, fewer --epochs or a smaller "
                         f"--batch-size")
    return epochs * (unique // batch_size), unique


def _check_steps(steps: int, total_tokens: int, batch_size: int) -> None:
    """Refuse a run of one step (:func:`train_steps`): no architecture's learning-rate warmup fits in it.

    Raises:
        ValueError: ``steps < 2``; the message names the smallest ``--tokens`` that gives 2 steps.
    """
    if steps < 2:
        raise ValueError(f"{total_tokens:,} training tokens (--tokens, or the scale's budget) give 1 training step "
                         f"at batch size {batch_size}; a run needs at "
                         f"least 2 (its learning-rate warmup takes a step): pass --tokens of at least "
                         f"{2 * batch_size:,} or a smaller --batch-size")


def _check_sizes(plan: Plan, tokens, epochs, cache, seeds, chunk, batch_size, eval_batches, ce_batches,
                 ce_batch_size, time_limit=None) -> None:
    """Refuse bad token, epoch, seed, chunk, batch and evaluation sizes and a bad time limit before anything is
    loaded.

    Raises:
        ValueError: naming the setting and its allowed range.
    """
    if tokens is not None and tokens < 1:
        raise ValueError(f"--tokens must be >= 1, got {tokens}")
    if epochs < 1 or (epochs > 1 and cache is None):
        raise ValueError(f"--epochs must be >= 1 and --epochs > 1 needs --cache (got epochs={epochs}, "
                         f"cache={cache!r})")
    if seeds is not None and not 1 <= seeds <= plan.experiment.seeds:
        raise ValueError(f"seeds must be in 1..{plan.experiment.seeds} for {plan.experiment.name}, got {seeds}")
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    for flag_, v, low in (("batch_size", batch_size, 1), ("eval_batches", eval_batches, 1),
                          ("ce_batches", ce_batches, 0), ("ce_batch_size", ce_batch_size, 1)):
        if v is not None and v < low:
            raise ValueError(f"--{flag_.replace('_', '-')} must be >= {low}, got {v}")
    if time_limit is not None and not time_limit > 0:
        raise ValueError(f"--time-limit must be a number of seconds > 0, got {time_limit}")


def select_shared_runs(plans: list[Plan], store: Path, archs: Optional[list], dict_sizes: Optional[list],
                       seeds: Optional[int], sparsity: Optional[list], steps: int,
                       alignments: Optional[list] = None) -> list[list[Run]]:
    """Per plan, its runs still to record (:func:`select_runs`). With one plan the filters must lie in its grid;
    with several they pick from the union of the grids: each plan takes the values of its own grid, and a plan
    none of whose grid is picked records nothing.

    Raises:
        ValueError: a requested architecture, size, sparsity value or alignment entry in none of the grids; a
            malformed alignment entry (:func:`.experiments.parse_alignment`); filters each in some grid that
            together pick no run of any grid (``main --also tying --archs batchtopk --alignments tied``: tying has
            no BatchTopK, main no tied runs).
    """
    if len(plans) == 1:
        return [select_runs(plans[0], store, archs, dict_sizes, seeds, sparsity, steps=steps, alignments=alignments)]
    names = " + ".join(p.experiment.name for p in plans)
    check_grid_filters(names, [r for p in plans for r in p.runs], archs, dict_sizes, sparsity, alignments)
    if not any(_picked(r, archs, dict_sizes, sparsity, alignments) for p in plans for r in p.runs):
        given = [f"--{flag} {','.join(map(str, v))}" for flag, v in (("archs", archs), ("dict-sizes", dict_sizes),
                 ("sparsity", sparsity), ("alignments", alignments)) if v]
        raise ValueError(f"{' '.join(given)} pick no run of the {names} grids: each value is in one of them, but "
                         f"no grid has them together")
    return [[r for r in select_runs(p, store, seeds=seeds, steps=steps)
             if _picked(r, archs, dict_sizes, sparsity, alignments)] for p in plans]


def select_runs(plan: Plan, store: Path, archs: Optional[list] = None, dict_sizes: Optional[list] = None,
                seeds: Optional[int] = None, sparsity: Optional[list] = None,
                steps: Optional[int] = None, alignments: Optional[list] = None) -> list[Run]:
    """The runs of ``plan`` still to train: not yet recorded in ``store`` and inside the requested part of the
    grid (``archs``, ``dict_sizes``, the first ``seeds`` seeds, ``sparsity`` values, ``alignments`` entries spelled
    as in :attr:`.experiments.Experiment.alignments`, e.g. ``["tied"]`` or ``["standard", "penalty:0.1"]``; None:
    all). A seed group (arch, sparsity, alignment, dict_size) is picked whole or not at all by every filter but
    ``seeds``. For a plan with ``eval_steps``, a run is recorded when every step point of a run of ``steps`` steps
    is (default: the plan's token budget at the recipe's batch size without a cache, :func:`train_steps`).

    Raises:
        ValueError: a requested architecture, size, sparsity value or alignment entry that is not in the
            experiment's grid; a malformed alignment entry (:func:`.experiments.parse_alignment`); a damaged record
            of the plan at any step point, or one of another scale, model or layer under its id
            (:func:`.records.has_record`).
    """
    check_grid_filters(plan.experiment.name, plan.runs, archs, dict_sizes, sparsity, alignments)
    steps = steps or train_steps(plan.tokens, plan.recipe.batch_size)[0]
    points = plan.eval_points(steps) if plan.eval_steps else (None,)
    # every step point's record is read (a list, not a short-circuit): a damaged one is refused here, not
    # overwritten after the run trained again for a missing one
    same = {"scale": plan.scale, "model": plan.model, "layer": plan.layer}  # what the ids do not name
    return [r for r in plan.runs if not all([has_record(store, _rid(r, p), same) for p in points])
            and _picked(r, archs, dict_sizes, sparsity, alignments) and (seeds is None or r.seed < seeds)]


def _picked(r: Run, archs: Optional[list], dict_sizes: Optional[list], sparsity: Optional[list],
            alignments: Optional[list] = None) -> bool:
    """Whether run ``r`` is in the part of the grid the filters pick (None or empty: no filter; ``alignments``
    spelled as in :attr:`.experiments.Experiment.alignments`)."""
    return ((not archs or r.arch in archs) and (not dict_sizes or r.dict_size in dict_sizes)
            and (not sparsity or _among(r.sparsity_value, sparsity))
            and (not alignments or any(_same_alignment(_alignment(r), parse_alignment(a)) for a in alignments)))


def check_grid_filters(name: str, runs, archs: Optional[list], dict_sizes: Optional[list],
                       sparsity: Optional[list], alignments: Optional[list] = None) -> None:
    """Refuse filters that pick nothing of the grid ``runs`` (of experiment ``name``; None: no filter).
    ``alignments``: entries spelled as in :attr:`.experiments.Experiment.alignments` (``"standard"``,
    ``"tied"``, ``"penalty:0.1"``; ``"penalty:0.10"`` is the same entry).

    Raises:
        ValueError: an architecture or dictionary size not in the grid, a sparsity value not among the chosen
            architectures' values, or an alignment entry in none of the grid's entries (the message names the
            grid's values, alignment entries in their spelled form); a malformed alignment entry
            (:func:`.experiments.parse_alignment`'s message).
    """
    for name_, chosen, allowed in (("arch", archs, {r.arch for r in runs}),
                                   ("dict_size", dict_sizes, {r.dict_size for r in runs})):
        if chosen and not set(chosen) <= allowed:
            raise ValueError(f"{name_} {sorted(set(chosen) - allowed)} not in the {name} grid {sorted(allowed)}")
    values = sorted({float(r.sparsity_value) for r in runs if not archs or r.arch in archs})
    if sparsity and not all(_among(v, values) for v in sparsity):
        raise ValueError(f"sparsity {sorted(sparsity)} not all in the {name} grid's values {values} "
                         f"(of the chosen architectures)")
    grid = {_alignment(r) for r in runs}
    missing = [a for a in alignments or () if not any(_same_alignment(parse_alignment(a), g) for g in grid)]
    if missing:
        raise ValueError(f"alignment {missing} not in the {name} grid's entries {sorted(map(_spelled, grid))}")


def _alignment(r: Run) -> tuple:
    """Run ``r``'s alignment entry as :func:`.experiments.parse_alignment` reads it: ``(mode, penalty)``."""
    return r.alignment, r.alignment_penalty


def _same_alignment(a: tuple, b: tuple) -> bool:
    """Whether two ``(mode, penalty)`` entries are the same (the penalties up to float rounding)."""
    if a[0] != b[0] or (a[1] is None) != (b[1] is None):
        return False
    return a[1] is None or math.isclose(a[1], b[1], rel_tol=1e-9)


def _spelled(entry: tuple) -> str:
    """A ``(mode, penalty)`` entry spelled as in an experiment's ``alignments``: ``"standard"``, ``"tied"``,
    ``"penalty:0.1"``."""
    mode, penalty = entry
    return "standard" if mode is None else mode if penalty is None else f"{mode}:{penalty:g}"


def _among(value: float, values) -> bool:
    """Whether a sparsity value is one of ``values`` (up to float rounding: ``0.04`` from the command line)."""
    return any(math.isclose(value, v, rel_tol=1e-9) for v in values)


def runs_to_train(plans: list[Plan], todos: list[list[Run]], steps: int) -> list[Run]:
    """The dictionaries to train for the runs ``todos`` of ``plans``: one run per :func:`training_key` (the first
    plan's when it has one), ordered by dictionary size and architecture, then as the plans list them."""
    chosen: dict[tuple, Run] = {}
    for p, todo in zip(plans, todos):
        for r in todo:
            chosen.setdefault(training_key(r, p, steps), r)
    archs = list(dict.fromkeys(r.arch for r in chosen.values()))
    return sorted(chosen.values(), key=lambda r: (r.dict_size, archs.index(r.arch)))


def training_key(run: Run, plan: Plan, steps: int) -> tuple:
    """What run ``run`` of ``plan`` trains, whatever experiment asks for it: its trainer config for ``steps``
    steps (:func:`trainer_config`, the activation width left out) as a sorted tuple. Two runs with the same key,
    of plans reading the same data (:func:`shared_plans`), train the same dictionary."""
    return tuple(sorted(trainer_config(run, 0, steps, plan).items()))


def trainer_config(run: Run, activation_dim: int, steps: int, plan: Plan) -> dict:
    """The ``trainSAE`` config of one run: the architecture's trainer from the registry (its aligned version when
    ``alignment`` is set), the run's sparsity value, and the plan's recipe for ``steps`` steps
    (:meth:`.experiments.Recipe.schedule`: learning rate, warmups, decay start); the ``"penalty"`` mode's
    coefficient as ``alignment_penalty``.

    Raises:
        ValueError: an architecture that is not registered.
    """
    arch = registry.get(run.arch)
    cfg = dict(trainer=arch.trainer_for(run.alignment).__name__, steps=steps, activation_dim=activation_dim,
               dict_size=run.dict_size, layer=plan.layer, lm_name=plan.model, seed=run.seed,
               submodule_name=f"layers.{plan.layer}", **plan.recipe.schedule(arch, steps))
    if run.alignment:
        cfg["alignment"] = run.alignment
    if run.alignment_penalty is not None:
        cfg["alignment_penalty"] = run.alignment_penalty
    value = run.sparsity_value
    cfg[run.sparsity_name] = int(value) if arch.fixed_l0 else value
    return cfg


def spread_runs(runs: list[Run], rank: int, world: int) -> list[Run]:
    """The share of ``runs`` that process ``rank`` of ``world`` trains: whole stacks (the runs of one dictionary
    size and architecture, trained as one batched model) go to one process, the largest first onto the least
    loaded process (load: dictionaries x dict_size); with fewer stacks than processes, whole seed groups
    (:func:`seed_group`) instead. Every process computes the same assignment from the same ``runs``.

    Raises:
        ValueError: ``world < 1`` or ``rank`` outside ``0..world-1``.
    """
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank must be in 0..world-1 and world >= 1, got rank {rank}, world {world}")
    if world == 1:
        return list(runs)
    from ..stacked import spread_over_processes

    stacks = [(r.dict_size, r.arch) for r in runs]
    keys = stacks if len(set(stacks)) >= world else [seed_group(r) for r in runs]
    owners = spread_over_processes(keys, [r.dict_size for r in runs], world)
    return [r for r, o in zip(runs, owners) if o == rank]


def _chunks(runs: list, n: Optional[int]) -> list[list]:
    """``runs`` cut into parts of at most ``n`` dictionaries (None: one part), never splitting the seeds of one
    group (:func:`seed_group`; a group larger than ``n`` is a part of its own), in order."""
    groups: dict[tuple, list] = {}
    for r in runs:
        groups.setdefault(seed_group(r), []).append(r)
    parts: list[list] = []
    for members in groups.values():
        if parts and (n is None or len(parts[-1]) + len(members) <= n):
            parts[-1].extend(members)
        else:
            parts.append(list(members))
    return parts


def seed_group(r: Run) -> tuple:
    """The seed group of run ``r`` whatever experiment asks for it: its settings but the experiment and the seed.
    The runs :func:`runs_to_train` picks for one group may belong to different experiments (with ``--also``, a
    seed already recorded by the first one is the second one's run), and a group's seeds must still train in one
    part and one process, so that each experiment's records get the stability of all of them (:func:`_chunks`,
    :func:`spread_runs`)."""
    return dataclasses.astuple(dataclasses.replace(r, experiment="", seed=0))
