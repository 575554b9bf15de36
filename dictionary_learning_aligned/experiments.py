"""The paper's experiments, as data. One :class:`Experiment` per experiment of arXiv 2605.18629; each resolves to
a concrete grid at a scale:

* ``smoke``: CPU in minutes, offline model, tiny dictionaries (checks the pipeline, not the science);
* ``small``: one GPU, the offline default SmolLM2-135M-Instruct (layer 12) on local text, 100M tokens per
  dictionary at batch 2048 (48,829 steps) under the SAEBench baseline recipe (:data:`RECIPES` ``"saebench"``);
  the ``gemma`` experiment uses the offline Gemma-3-270M (layer 8) instead, a second model family (smoke too);
* ``paper``: the paper's models (Pythia-160M layer 8, Gemma-2-2B layer 12) on the Pile, 500M tokens (needs the
  hub); token budget, recipe and widths as the SAEBench baseline suite (dictionary_learning_demo).

Each scale trains under a :class:`Recipe` (:data:`SCALE_RECIPE`): batch size, learning rate and the schedule's
warmups, named in every record.

The paper's text gives neither its sparsity grid nor its token budget; the values here cover its range of L0
(about 10 to 200) and are our choice. Architectures, their sparsity parameter and default sweep values come from
the registry (:mod:`.registry`). The ``extensions`` experiment trains the registered architectures that the paper
does not evaluate (JumpReLU, Matryoshka BatchTopK); it is not in the paper and feeds none of its figures.

Two more experiments go beyond the paper's figures (issue 16): ``ablations``, the referee's question "is it the
constraint or the parameterization?" (standard, ``project``, ``rescale``, ``projection``, ``penalty`` at three
coefficients and ``tied``, one sparsity per architecture), and ``budget``, standard and aligned pairs trained once
for the full budget and evaluated from checkpoints of that run at several step counts (:attr:`Experiment.eval_steps`).

An entry of :attr:`Experiment.alignments` is a mode of :data:`~.alignment.ALIGNMENT_MODES` (None: standard) or,
for the soft constraint, ``"penalty:<lambda>"``, the mode with its coefficient (the trainers'
``alignment_penalty``); :func:`parse_alignment` reads both and refuses anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Optional

from . import registry
from .alignment import check_mode

OFFLINE_MODEL = "smollm2-135m-instruct"
OFFLINE_LAYER = 12
SCALES = ("smoke", "small", "paper")


@dataclass(frozen=True)
class Recipe:
    """How a dictionary is trained, apart from its architecture and sparsity: batch size, learning rate and the
    schedule's fixed step counts.

    A field left None keeps the architecture's own setting: its default learning rate, or its schedule scaled to
    the run (``Architecture.schedule``: e.g. lr warmup 5% of the steps). Fixed step counts are capped at a quarter
    of the run, so a short run (``--tokens``) keeps a valid schedule; the settings used are in each trainer's
    ``config.json`` and record.

    Attributes:
        name: the recipe's name in records (``"saebench"``, ``"scaled"``).
        batch_size: activations per step.
        lr: Adam learning rate for every architecture (None: each trainer's default).
        steps_fixed: schedule settings in steps, by trainer argument (``warmup_steps``, ``sparsity_warmup_steps``,
            ``threshold_start_step``, ``anneal_start``), applied where the architecture's schedule has them.
        decay_start_fraction: the lr decay starts at this fraction of the run (None: the architecture's).
        source: where the recipe comes from.
    """

    name: str
    batch_size: int
    lr: Optional[float] = None
    steps_fixed: tuple = ()
    decay_start_fraction: Optional[float] = None
    source: str = ""

    def schedule(self, arch: "registry.Architecture", steps: int) -> dict:
        """The trainer arguments of ``arch`` that this recipe sets for a run of ``steps`` steps: the
        architecture's scaled schedule with the recipe's fixed step counts, decay start and learning rate.

        Raises:
            ValueError: ``steps < 1``.
        """
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        cfg = dict(arch.schedule(steps))
        for key, value in self.steps_fixed:
            if key in cfg:
                cfg[key] = max(1, min(value, steps // 4))
        if self.decay_start_fraction is not None and cfg.get("decay_start") is not None:
            cfg["decay_start"] = max(2, int(self.decay_start_fraction * steps))
        if self.lr is not None:
            cfg["lr"] = self.lr
        return cfg


#: ``scaled``: every schedule setting a fraction of the run (the architecture's own schedule and learning rate);
#: ``saebench``: the SAEBench baseline suite's recipe as dictionary_learning_demo (demo_config.py) applies it to
#: every architecture: batch 2048, lr 3e-4, lr warmup 1000 steps, sparsity warmup 5000 steps, decay from 80% of
#: the run; TopK-family thresholds tracked from step 1000 (the trainers' default) and p annealed from step 10000.
RECIPES = {r.name: r for r in [
    Recipe("scaled", batch_size=1024, source="this library: every schedule setting a fraction of the run"),
    Recipe("saebench", batch_size=2048, lr=3e-4,
           steps_fixed=(("warmup_steps", 1000), ("sparsity_warmup_steps", 5000), ("threshold_start_step", 1000),
                        ("anneal_start", 10_000)),
           decay_start_fraction=0.8, source="SAEBench baselines (dictionary_learning_demo demo_config.py)"),
]}
#: the recipe each scale trains under
SCALE_RECIPE = {"smoke": "scaled", "small": "saebench", "paper": "saebench"}
#: Gemma-3-270M's layer at the paper's relative depth for Gemma-2-2B: layer 12 of 26 blocks is at 12/26 = 0.46
#: of the depth; 0.46 * 18 blocks = 8.3, so layer 8 (8/18 = 0.44; layer 9 would be 0.50)
GEMMA3_LAYER = 8
GEMMA3_LAYER_NOTE = ("layer 8 of Gemma-3-270M's 18 blocks: the paper's relative depth (Gemma-2-2B layer 12 of 26 = "
                     "0.46 of the depth; 0.46 x 18 = 8.3, rounded to 8)")


def parse_alignment(entry) -> tuple[Optional[str], Optional[float]]:
    """Read one entry of an experiment's ``alignments`` as ``(mode, alignment_penalty)``.

    Args:
        entry: None or ``"standard"`` (a standard SAE), a mode name of :data:`~.alignment.ALIGNMENT_MODES`
            (``"project"``, ``"rescale"``, ``"projection"``, ``"tied"``), or ``"penalty:<lambda>"``: the soft
            constraint ``lambda * sum_i (a_i - 1)^2`` with its coefficient (a finite number > 0, e.g.
            ``"penalty:0.1"``).

    Returns:
        ``(None, None)`` for standard, ``(mode, None)`` for a mode without coefficient, ``("penalty", lambda)``.

    Raises:
        ValueError: not a string or None, an unknown mode, ``"penalty"`` without its coefficient, a coefficient on
            another mode, or a coefficient that is not a finite number > 0 (the message names the entry).
    """
    if entry is not None and not isinstance(entry, str):
        raise ValueError(f"alignment entry {entry!r} must be None or a string such as 'project' or 'penalty:0.1'")
    mode_txt, sep, coef_txt = (entry or "").partition(":")
    try:
        mode = check_mode(mode_txt.strip() or None)
    except ValueError as e:
        raise ValueError(f"alignment entry {entry!r}: {e}") from None
    if mode != "penalty":
        if sep:
            raise ValueError(f"alignment entry {entry!r}: only 'penalty' takes a coefficient ('penalty:<lambda>')")
        return mode, None
    if not sep:
        raise ValueError(f"alignment entry {entry!r}: the penalty needs its coefficient, e.g. 'penalty:0.1'")
    try:
        coef = float(coef_txt)
    except ValueError:
        coef = math.nan
    if not (math.isfinite(coef) and coef > 0):
        raise ValueError(f"alignment entry {entry!r}: the penalty coefficient must be a finite number > 0, "
                         f"got {coef_txt.strip()!r}")
    return mode, coef


@dataclass(frozen=True)
class Experiment:
    """One experiment of the paper.

    Attributes:
        name: identifier used in record ids and on the command line.
        figures: the paper figures it feeds.
        paper_model, paper_layer, paper_corpus: the paper's setting.
        archs: architectures trained.
        alignments: alignment modes compared (None = standard).
        dict_sizes: dictionary widths.
        sparsity: per architecture, the sparsity values swept (the architecture's ``sparsity_param`` in the
            registry names the parameter; default: every architecture's registered ``sparsity_values``).
        seeds: seeds per configuration.
        tokens: training tokens per scale.
        in_paper: False for an experiment that arXiv 2605.18629 does not run (an extension).
        note: what an experiment that feeds no paper figure is for (shown by ``reproduce -h``).
        eval_steps: per scale, the step counts at which checkpoints of each run are evaluated and recorded besides
            its end (empty: only the trained dictionary); every dictionary is trained once for the full budget.

    Raises:
        ValueError: an entry of ``alignments`` that :func:`parse_alignment` refuses, two entries that are the same
            mode and coefficient, or an ``eval_steps`` value that is not an int >= 1.
    """

    name: str
    figures: tuple
    paper_model: str = "EleutherAI/pythia-160m-deduped"
    paper_layer: int = 8
    paper_corpus: str = "monology/pile-uncopyrighted"
    archs: tuple = field(default_factory=lambda: tuple(registry.names(in_paper_only=True)))
    alignments: tuple = (None, "project")
    dict_sizes: tuple = (4096,)
    sparsity: dict = field(default_factory=lambda: {a.name: a.sparsity_values for a in registry.architectures()})
    seeds: int = 3
    tokens: dict = field(default_factory=lambda: {"smoke": 24_576, "small": 100_000_000, "paper": 500_000_000})
    offline_model: str = OFFLINE_MODEL
    offline_layer: int = OFFLINE_LAYER
    layer_note: str = ""
    """why ``offline_layer`` was chosen, when it is not the default"""
    in_paper: bool = True
    note: str = ""
    eval_steps: dict = field(default_factory=dict)

    def __post_init__(self):
        parsed = [parse_alignment(a) for a in self.alignments]
        if len(set(parsed)) < len(parsed):
            raise ValueError(f"experiment {self.name!r}: an alignment entry is repeated in {self.alignments}")
        for scale, steps in self.eval_steps.items():
            if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in steps):
                raise ValueError(f"experiment {self.name!r}: eval_steps[{scale!r}] must be ints >= 1, got {steps}")

    def alignment_modes(self) -> list[tuple[Optional[str], Optional[float]]]:
        """The ``(mode, alignment_penalty)`` of every entry of ``alignments`` (:func:`parse_alignment`)."""
        return [parse_alignment(a) for a in self.alignments]


#: the referee's ablations (issue 16 item 2): the constraint (project, rescale, projection step, soft penalty at
#: three coefficients) against the parameterization (tied), for ReLU and TopK at one sparsity each
ABLATION_ALIGNMENTS = (None, "project", "rescale", "projection", "penalty:0.1", "penalty:1", "penalty:10", "tied")
#: the checkpoints of the ``budget`` experiment, per scale (each run's last step is recorded too)
BUDGET_EVAL_STEPS = {"smoke": (4, 12), "small": (2_500, 10_000, 25_000),
                     "paper": (2_500, 10_000, 25_000, 50_000, 100_000)}

EXPERIMENTS = {e.name: e for e in [
    Experiment("main", figures=(2, 3, 4, 5, 6, 7, 8, 10, 11, 13)),
    Experiment("gemma", figures=(10,), paper_model="google/gemma-2-2b", paper_layer=12,
               sparsity={"relu": (0.04,), "topk": (64,), "batchtopk": (64,), "panneal": (0.04,)},
               offline_model="gemma-3-270m", offline_layer=GEMMA3_LAYER, layer_note=GEMMA3_LAYER_NOTE),
    Experiment("tying", figures=(14,), archs=("relu", "topk"), alignments=(None, "project", "tied")),
    Experiment("sizes", figures=(15, 16, 17, 18), dict_sizes=(16384, 65536)),
    Experiment("long", figures=(19, 20), archs=("topk",), sparsity={"topk": (64,)}, seeds=1,
               tokens={"smoke": 49_152, "small": 200_000_000, "paper": 2_000_000_000}),
    # not in the paper: the registered extensions, on the main experiment's setting
    Experiment("extensions", figures=(), archs=tuple(n for n in registry.names() if n not in registry.names(in_paper_only=True)),
               in_paper=False),
    # not in the paper: the referee's ablations and the verdicts against the training budget (issue 16)
    Experiment("ablations", figures=(), archs=("relu", "topk"), alignments=ABLATION_ALIGNMENTS,
               dict_sizes=(16384,), sparsity={"relu": (0.04,), "topk": (64,)}, in_paper=False,
               note="the referee's ablations: is it the constraint or the parameterization? (python -m figures "
                    "ablations)"),
    Experiment("budget", figures=(), archs=("relu", "topk"), sparsity={"relu": (0.04,), "topk": (64,)},
               in_paper=False, eval_steps=BUDGET_EVAL_STEPS,
               note="verdicts against training length: each run trained once for the full budget and evaluated "
                    "from its checkpoints at " + "; ".join(f"{k} " + ", ".join(f"{s:,}" for s in BUDGET_EVAL_STEPS[k])
                                                           for k in SCALES)
                    + " steps and at its end (python -m figures budget)"),
]}


@dataclass(frozen=True)
class Run:
    """One dictionary to train: the resolved settings of one grid point."""

    experiment: str
    arch: str
    alignment: Optional[str]
    dict_size: int
    sparsity_name: str
    sparsity_value: float
    seed: int
    alignment_penalty: Optional[float] = None
    """the ``"penalty"`` mode's coefficient (None for every other mode)"""


@dataclass(frozen=True)
class Plan:
    """An experiment resolved at a scale: where the activations come from and every run."""

    experiment: Experiment
    scale: str
    model: str
    layer: int
    corpus: Optional[str]
    tokens: int
    offline_note: str
    runs: tuple
    recipe: Recipe = RECIPES["scaled"]
    eval_steps: tuple = ()
    """step counts at which every run's checkpoints are evaluated besides its end (:attr:`Experiment.eval_steps`)"""

    def eval_points(self, steps: int) -> tuple:
        """The step counts recorded for runs of ``steps`` steps: the plan's ``eval_steps`` below ``steps``, then
        ``steps`` itself (one point, the end of the run, for an experiment without ``eval_steps``)."""
        return tuple(sorted({s for s in self.eval_steps if s < steps} | {steps}))


def resolve(name: str, scale: str, corpus: Optional[str] = None) -> Plan:
    """The grid of ``name`` at ``scale``.

    Args:
        name: a key of :data:`EXPERIMENTS`.
        scale: ``"smoke"``, ``"small"`` or ``"paper"``.
        corpus: text source for smoke/small (default: the bundled corpus); ignored at paper scale.

    Raises:
        ValueError: unknown experiment or scale.
    """
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; choose one of {sorted(EXPERIMENTS)}")
    if scale not in SCALES:
        raise ValueError(f"unknown scale {scale!r}; choose one of {SCALES}")
    exp = EXPERIMENTS[name]
    if scale == "smoke":
        exp = replace(exp, dict_sizes=tuple(256 for _ in exp.dict_sizes[:1]), seeds=min(exp.seeds, 2),
                      sparsity={a: _smoke_values(a, v) for a, v in exp.sparsity.items()})
    if scale == "paper":
        model, layer, corpus_used, note = exp.paper_model, exp.paper_layer, exp.paper_corpus, ""
    else:
        model, layer, corpus_used = exp.offline_model, exp.offline_layer, corpus
        note = (f"offline substitute: {_OFFLINE_TITLES.get(model, model)} layer {layer} on "
                f"{corpus or 'the bundled Wikipedia + Gutenberg corpus'} instead of {exp.paper_model} layer "
                f"{exp.paper_layer} on {exp.paper_corpus}" + (f"; {exp.layer_note}" if exp.layer_note else ""))
    runs = tuple(Run(exp.name, arch, mode, d, registry.get(arch).sparsity_param, v, seed, coef)
                 for d in exp.dict_sizes for arch in exp.archs for v in exp.sparsity[arch]
                 for mode, coef in exp.alignment_modes() for seed in range(exp.seeds))
    return Plan(exp, scale, model, layer, corpus_used, exp.tokens[scale], note, runs, RECIPES[SCALE_RECIPE[scale]],
                tuple(exp.eval_steps.get(scale, ())))


_OFFLINE_TITLES = {OFFLINE_MODEL: "SmolLM2-135M-Instruct", "gemma-3-270m": "Gemma-3-270M"}


def _smoke_values(arch: str, values: tuple) -> tuple:
    """At most two sparsity values (the extremes), with k suited to 256-feature smoke dictionaries."""
    if all(isinstance(v, int) for v in values):  # feature counts (k, target_l0): sized for 256 features
        return (8, 32) if len(values) > 1 else (min(int(values[0]), 32),)
    return tuple(dict.fromkeys((values[0], values[-1])))
