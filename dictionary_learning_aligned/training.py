"""``trainSAE``: the one training loop. Several trainers consume the same activation batches."""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import numbers
import os
import random
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from .console import bar_note, progress

from . import distributed as _dist
from .alignment import alignment_scores, summarize_scores
from .dtypes import require_float_batch
from .io import atomic_path, check_output_dir, prepare_output_dir, write_json
from .trainers.base import NonFiniteError, SAETrainer

LIBRARY_VERSION = "0.1.0"


@torch.no_grad()
def get_norm_factor(batches: list[torch.Tensor]) -> float:
    """Scalar ``s = sqrt(E ||x||^2)``, so that ``x / s`` has unit mean squared norm (dictionary_learning's
    convention, so its hyperparameters carry over), from a list of ``[batch, activation_dim]`` tensors.

    Raises:
        ValueError: no batches, or activations that are all zero or not finite.
    """
    if not batches:
        raise ValueError("no activation batches to estimate the norm factor from")
    sq = torch.cat([b.float().pow(2).sum(-1) for b in batches])
    ms = float(sq.mean())
    if not math.isfinite(ms) or ms <= 0:
        raise ValueError(f"cannot normalize activations: mean squared norm is {ms}")
    return math.sqrt(ms)


def _build_trainer(cfg: dict, device) -> SAETrainer:
    cfg = dict(cfg)
    if "trainer" not in cfg:
        raise ValueError(f"trainer config needs a 'trainer' key (the trainer class); got keys {sorted(cfg)}")
    cls = cfg.pop("trainer")
    if isinstance(cls, str):  # a registered trainer's class name, or "package.module:Class"
        from .registry import resolve_trainer

        cls = resolve_trainer(cls)
    cfg.setdefault("device", device)
    try:
        return cls(**cfg)
    except TypeError as e:  # unexpected or missing keyword arguments
        raise ValueError(f"bad arguments for {getattr(cls, '__name__', cls)}: {e}") from None


def _json_safe(cfg: dict) -> dict:
    return json.loads(json.dumps(cfg, default=str))


def trainSAE(
    data: Iterable[torch.Tensor],
    trainer_configs: list[dict],
    steps: int,
    save_dir: Optional[str] = None,
    save_steps: Optional[list[int]] = None,
    log_steps: Optional[int] = None,
    normalize_activations: bool = False,
    device: str = "cuda" if torch.cuda.is_available() else "cpu",
    autocast_dtype: torch.dtype = torch.float32,
    use_wandb: bool = False,
    wandb_entity: str = "",
    wandb_project: str = "",
    run_cfg: Optional[dict] = None,
    overwrite: bool = False,
    verbose: bool = False,
    norm_factor_batches: int = 10,
    resume: bool = False,
    skip_nonfinite_batches: bool = False,
    data_parallel: bool = False,
    stack: bool = True,
    nan_check_every: int = 100,
    compile_stacks: bool | str = False,
) -> list[SAETrainer]:
    """Train one or more dictionaries on the same activation batches (dictionary_learning's ``trainSAE``).

    Args:
        data: iterable of ``[batch, activation_dim]`` activation tensors (e.g. an ``ActivationBuffer``). Each batch
            is checked for NaN/inf before it is trained on (one host synchronisation per step on a GPU), unless
            ``data`` has an attribute ``finite_checked`` that is true: a source that sets it promises that every
            batch it yields is finite (e.g. a preloaded ``ActivationCache`` whose activations were checked when
            it was loaded), and its batches are then not checked again (the first batches, read before any
            output is written, still are).
        trainer_configs: one dict per trainer: ``{"trainer": TrainerClass or its name, **constructor args}``.
        steps: number of steps (one batch each); training stops early, with a warning, if ``data`` runs out.
        save_dir: output folder; each trainer gets ``save_dir/trainer_{i}/`` with ``config.json`` and
            ``ae.safetensors`` (weights that read raw activations). None: nothing is written.
        save_steps: step indices (``0 .. steps - 1``; ValueError otherwise) after which to write a checkpoint
            ``trainer_{i}/checkpoints/step_{step}/`` (the dictionary after ``step + 1`` steps) holding a
            usable dictionary (``ae.safetensors``, raw-activation weights) and the full training state
            (``trainer_state.pt``: weights, optimizer, scheduler, counters, p-anneal state, RNG states), each
            checkpoint written to a temporary folder and renamed when complete.
        log_steps: every this many steps, record losses, L0, dead fraction and the alignment-score summary
            (printed with ``verbose``, logged to wandb with ``use_wandb``, and kept in ``trainer.log``).
        normalize_activations: divide activations by a scalar norm factor (estimated from the first
            ``norm_factor_batches`` batches, which are then also trained on); the factor is recorded in
            ``config.json`` and folded into the saved weights (``Dictionary.scale_biases``), so a loaded
            dictionary reads raw activations.
        device: device of the trainers (unless a config sets its own).
        autocast_dtype: ``torch.autocast`` dtype for the forward/backward pass (float32: no autocast).
        use_wandb, wandb_entity, wandb_project: optional Weights & Biases logging (off by default).
        run_cfg: extra JSON-ready information stored in each ``config.json`` (e.g. the buffer config).
        overwrite: allow replacing a non-empty ``save_dir`` that holds an earlier run.
        verbose: print log lines.
        norm_factor_batches: batches used to estimate the norm factor.
        resume: continue the run in ``save_dir`` from the latest checkpoint that every trainer completed (the
            trainer configs must be the ones of that run). ``data`` must yield the same batches as in the first
            run (a seeded ``ActivationBuffer`` over the same text does): the batches already trained on are
            read again and skipped. Without any checkpoint, training starts from step 0 in the same folder.
        skip_nonfinite_batches: skip activation batches holding NaN/inf (counted in ``trainer.skipped_batches``
            and in the logs) instead of stopping with an error.
        stack: train trainers of the same architecture and shape as one batched model (:mod:`.stacked`; the
            default). Each dictionary still gets the initialisation of its own trainer and seed and is saved to its
            own folder; results equal one-by-one training up to float rounding. ``False`` trains each trainer on its
            own (for debugging); trainers that cannot be stacked (custom subclasses, resampling, data-parallel)
            always train on their own.
        nan_check_every: with ``stack``, read the stacks' non-finite flags every this many steps (one host
            synchronisation; also checked at every log, checkpoint and at the end). A dictionary whose loss or
            gradient became non-finite is frozen at that step and named in the error.
        compile_stacks: ``torch.compile`` each stack's loss and its whole optimizer step (on an H200 the
            72-dictionary ``main`` grid's step went from 62 to 30.4 ms; compilation takes a minute per stack first);
            a mode string of :data:`.stacked.COMPILE_MODES` (e.g. ``"reduce-overhead"``: CUDA graphs too) instead
            of ``True`` picks the ``torch.compile`` mode (:class:`.stacked.StackedTrainer`).
        data_parallel: train every trainer data-parallel over the initialised ``torch.distributed`` process group
            (see :mod:`.distributed`; run under ``torchrun``). Every rank must pass the same ``data`` (the same
            global batches, whose size must be a multiple of the world size) and configs; each rank trains on its
            slice of each batch with gradients averaged over ranks, which gives the single-process result on the
            global batch up to float rounding. Only rank 0 logs and writes ``save_dir``. ``resume`` is not
            supported in this mode.

    Returns:
        the trainers, each with ``.ae`` (in-memory weights still expect normalized input, see
        ``trainer.norm_factor``), ``.log`` (list of logged dicts), ``.steps_done`` and ``.tokens_seen`` (activations
        trained on; a short last batch counts its true size).

    Raises:
        ValueError: ``steps < 1``, no trainer configs, a bad trainer config, empty or non-finite activations, a
            ``save_dir`` that ``overwrite`` may not replace, or ``resume`` with a missing run or different
            trainer configs.
        NonFiniteError (a FloatingPointError): a non-finite loss or gradient, naming the trainer and step; that
            trainer's weights and the checkpoints on disk are the last good ones (stacked: raised at the next check,
            the other dictionaries of the stack having trained on).
        FloatingPointError: a trainer's weights became non-finite (checked before every save; nothing is saved).
        FileExistsError: ``save_dir`` exists and is not empty, without ``overwrite`` or ``resume``.
    """
    _check_arguments(steps, trainer_configs, log_steps, resume, save_dir, data_parallel, save_steps)
    steps, save_steps = int(steps), sorted(set(save_steps or []))
    writer = _dist.rank() == 0 if data_parallel else True
    if save_dir is not None and not resume:
        check_output_dir(save_dir, overwrite)  # fail fast, before any work; nothing is changed yet
    if not writer:  # data-parallel ranks other than 0 train only (they checked save_dir above, so all fail alike)
        save_dir, save_steps, log_steps, use_wandb, verbose = None, [], None, False, False
    trainers = _prepare_trainers(trainer_configs, device, data_parallel)
    finite_checked = bool(getattr(data, "finite_checked", False))  # read before data becomes an iterator
    source = data
    data, start, norm_factor, prefetched = _start_data(data, trainers, save_dir, resume, normalize_activations,
                                                       norm_factor_batches, skip_nonfinite_batches)
    out, dirs = _open_output(trainers, save_dir, resume, overwrite, start, norm_factor, run_cfg)
    wandb_run = _start_wandb(trainers, wandb_entity, wandb_project) if use_wandb else None
    stepper = _Stepper(trainers, stack and not data_parallel, nan_check_every, dirs, compile_stacks)
    loop = _Loop(trainers, stepper, steps, save_steps, log_steps, normalize_activations, norm_factor, device,
                 autocast_dtype, skip_nonfinite_batches, data_parallel, verbose, wandb_run, out, dirs, run_cfg,
                 check_finite=not finite_checked)
    step = loop.run(itertools.chain(prefetched, data), start, source)
    for tr in trainers:
        tr.steps_done = step
    if out is not None:
        for tr, d in zip(trainers, dirs):
            _save(tr, d, norm_factor, run_cfg, step)
    if wandb_run is not None:
        wandb_run.finish()
    return trainers


def _check_arguments(steps, trainer_configs, log_steps, resume, save_dir, data_parallel, save_steps=None) -> None:
    """The checks of :func:`trainSAE`'s arguments that need no data (raises ValueError; a save step outside
    ``0 .. steps - 1`` would never be reached, so the checkpoint asked for would silently not be written)."""
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    bad = [s for s in save_steps or []
           if not isinstance(s, numbers.Integral) or isinstance(s, bool) or not 0 <= s < steps]
    if bad:
        raise ValueError(f"save_steps must be step indices in 0..{steps - 1} (the checkpoint after step s + 1), "
                         f"got {bad}")
    if not trainer_configs:
        raise ValueError("trainer_configs is empty: nothing to train")
    if log_steps is not None and log_steps < 1:
        raise ValueError(f"log_steps must be >= 1, got {log_steps}")
    _check_steps_within_schedules(steps, trainer_configs)
    if resume and save_dir is None:
        raise ValueError("resume=True needs the save_dir of the run to continue")
    if data_parallel:
        if not _dist.is_initialized():
            raise ValueError("data_parallel=True needs an initialised torch.distributed process group (run the "
                             "training under torchrun, e.g. python -m dictionary_learning_aligned.train)")
        if resume:
            raise ValueError("resume is not supported with data_parallel=True")


def _check_steps_within_schedules(steps: int, trainer_configs) -> None:
    """Refuse ``steps`` beyond a trainer's own ``steps``: its lr schedule decays to 0 at its ``steps`` and would
    turn negative after it (the loss then climbs, silently).

    Raises:
        ValueError: naming the trainer and both step counts.
    """
    for i, cfg in enumerate(trainer_configs):
        own = cfg.get("steps") if isinstance(cfg, dict) else None
        if isinstance(own, numbers.Integral) and not isinstance(own, bool) and steps > own:
            raise ValueError(f"steps={steps} is more than trainer {i}'s own steps={own}: its learning-rate schedule "
                             f"ends at step {own} (it would turn negative after it); pass steps <= {own} or give "
                             f"the trainer steps={steps}")


def _prepare_trainers(trainer_configs, device, data_parallel) -> list:
    """Build the trainers (and switch on data parallelism); each gets empty ``log``, ``skipped_batches`` and
    ``tokens_seen``."""
    trainers = [_build_trainer(c, device) for c in trainer_configs]
    if data_parallel:
        for tr in trainers:
            if not hasattr(tr, "enable_data_parallel"):
                raise ValueError(f"{type(tr).__name__} does not support data-parallel training")
            tr.enable_data_parallel()  # a collective: every rank builds the same trainers in the same order
    for tr in trainers:
        tr.log, tr.skipped_batches, tr.tokens_seen = [], 0, 0
    return trainers


def _start_data(data, trainers, save_dir, resume, normalize_activations, norm_factor_batches, skip_nonfinite):
    """``(data iterator, first step, norm factor, prefetched batches)``: restores a resumed run's state and skips
    the batches it used, or reads the batches the norm factor is estimated from (checked before any output)."""
    data = iter(data)
    start, norm_factor, prefetched = 0, 1.0, []
    if resume:
        start, norm_factor, consumed = _resume(trainers, Path(save_dir), normalize_activations)
        for skipped in range(consumed):  # read again the batches already used (trained on or skipped)
            if next(data, None) is None:
                raise ValueError(f"resume: the data ran out after {skipped} batches; the run had used {consumed}")
    elif normalize_activations:
        prefetched = [b for b in (next(data, None) for _ in range(norm_factor_batches)) if b is not None]
        if not prefetched:
            raise ValueError("the activation data is empty (is the text shorter than one context?)")
        norm_factor = get_norm_factor(prefetched)
    elif save_dir is not None:
        prefetched = [b for b in [next(data, None)] if b is not None]
    dims = {tr.ae.activation_dim for tr in trainers if hasattr(tr, "ae")}
    for b in prefetched:  # bad data fails here, before an earlier run is replaced
        _check_batch(b, dims, skip_nonfinite)
    for tr in trainers:
        tr.norm_factor = norm_factor
    return data, start, norm_factor, prefetched


def _open_output(trainers, save_dir, resume, overwrite, start, norm_factor, run_cfg):
    """``(output folder or None, trainer folders)``; a fresh run writes each trainer's ``config.json``."""
    if save_dir is None:
        return None, []
    out = Path(save_dir) if resume else prepare_output_dir(save_dir, overwrite)
    dirs = [out / f"trainer_{i}" for i in range(len(trainers))]
    for tr, d in zip(trainers, dirs):
        d.mkdir(exist_ok=True)
        if start == 0:
            write_json(d / "config.json", _run_config(tr, norm_factor, run_cfg, steps_done=0))
    return out, dirs


def _start_wandb(trainers, entity, project):
    import wandb

    return wandb.init(entity=entity or None, project=project or None,
                      config={f"trainer_{i}": _json_safe(t.config) for i, t in enumerate(trainers)})


class _Stepper:
    """Takes the steps of a sweep: stacks of same-shape trainers through :class:`~.stacked.StackedTrainer`, the
    others one at a time; :meth:`sync` makes every trainer object current (before logs, checkpoints, the end)."""

    def __init__(self, trainers, stack: bool, nan_check_every: int, dirs, compile_stacks: bool | str = False):
        from .stacked import StackedTrainer, plan_stacks

        self.trainers, self.dirs = trainers, dirs
        groups, self.alone = plan_stacks(trainers) if stack else ([], list(range(len(trainers))))
        self.stacks = [StackedTrainer([trainers[i] for i in g], indices=g, nan_check_every=nan_check_every,
                                      compile=compile_stacks) for g in groups]

    def update(self, step: int, x: torch.Tensor) -> None:
        for st in self.stacks:
            try:
                st.update(step, x)
            except NonFiniteError as e:
                self._stopped(st, e)
        for i in self.alone:
            tr = self.trainers[i]
            try:
                tr.update(step, x)
            except NonFiniteError as e:
                raise NonFiniteError(f"trainer {i} ({type(tr).__name__}, alignment={tr.config.get('alignment')}) "
                                     f"stopped: {e}. The weights are those before this step" + self._intact(i)) from None

    def sync(self, steps_done: int) -> None:
        for st in self.stacks:
            try:
                st.check_finite()
            except NonFiniteError as e:
                self._stopped(st, e)
            st.sync_to_trainers(steps_done)

    def _stopped(self, st, e) -> None:
        st.sync_to_trainers(st.adam_step)
        raise NonFiniteError(f"{e}" + self._intact(None)) from None

    def _intact(self, i) -> str:
        if not self.dirs:
            return ""
        where = self.dirs[i] / "checkpoints" if i is not None else "each trainer's checkpoints/ folder"
        return f"; the last checkpoint in {where} is intact"


class _Loop:
    """The step loop of :func:`trainSAE` (one object so that its settings are named once)."""

    def __init__(self, trainers, stepper, steps, save_steps, log_steps, normalize, norm_factor, device, amp_dtype,
                 skip_nonfinite, data_parallel, verbose, wandb_run, out, dirs, run_cfg, check_finite=True):
        self.trainers, self.stepper, self.steps, self.save_steps, self.log_steps = (trainers, stepper, steps,
                                                                                    save_steps, log_steps)
        self.normalize, self.norm_factor, self.device = normalize, norm_factor, device
        self.amp = (torch.autocast(device_type=torch.device(device).type, dtype=amp_dtype)
                    if amp_dtype not in (None, torch.float32) else contextlib.nullcontext())
        self.skip_nonfinite, self.data_parallel, self.verbose, self.wandb_run = (skip_nonfinite, data_parallel,
                                                                                verbose, wandb_run)
        self.out, self.dirs, self.run_cfg = out, dirs, run_cfg
        #: check each batch for NaN/inf (one host synchronisation per step); False for a ``finite_checked`` source
        self.check_finite = check_finite

    def run(self, batches, start: int, source=None) -> int:
        """Train from step ``start`` until ``steps`` or the data runs out; returns the number of steps done. A
        refill of ``source`` (the data the batches come from) shows on the bar (:func:`_refills_noted`)."""
        step, t0 = start, time.time()
        bar = progress(total=self.steps, initial=start, desc="training", unit="step",
                       disable=not self.verbose and self.steps < 2)
        with _refills_noted(source, bar):
            step = self._steps(batches, step, t0, bar)
        bar.close()
        self.stepper.sync(step)
        if step < self.steps:
            print(f"warning: activation data ran out after {step} of {self.steps} steps")
        return step

    def _steps(self, batches, step: int, t0: float, bar) -> int:
        """The steps of :meth:`run` from ``step`` on, one per batch, each counted on ``bar``; returns the next
        step."""
        for act in batches:
            if step >= self.steps:
                break
            act = self._prepare(act, step)
            if act is None:
                continue
            if self.log_steps is not None and step % self.log_steps == 0:
                self.stepper.sync(step)
                _log(self.trainers, act, step, self.amp, self.verbose, self.wandb_run, time.time() - t0)
            with self.amp:
                self.stepper.update(step, _dist.shard(act) if self.data_parallel else act)
            for tr in self.trainers:
                tr.tokens_seen += act.shape[0]
            if step in self.save_steps and self.out is not None:
                self.stepper.sync(step + 1)
                for tr, d in zip(self.trainers, self.dirs):
                    _save_checkpoint(tr, d, step, self.norm_factor, self.run_cfg)
            step += 1
            bar.update(1)
        return step

    def _prepare(self, act, step):
        """The batch on the device and normalized, or None for a skipped non-finite batch. Without
        ``check_finite`` nothing here reads the device (no host synchronisation)."""
        act = act.to(self.device)
        if act.ndim == 2 and act.shape[0] == 0:
            raise ValueError(f"activation batch at step {step} is empty (shape {tuple(act.shape)}); nothing was "
                             f"trained on it and every trainer is unchanged")
        if self.check_finite and not torch.isfinite(act).all():
            if not self.skip_nonfinite:
                raise ValueError(f"activation batch at step {step} contains NaN or infinite values (pass "
                                 f"skip_nonfinite_batches=True to skip such batches)")
            for tr in self.trainers:
                tr.skipped_batches += 1
            print(f"warning: skipped a non-finite activation batch at step {step}")
            return None
        return act / self.norm_factor if self.normalize else act


#: the training bar's postfix while the activation buffer refills (the bar stands still meanwhile: minutes on a CPU)
REFILL_NOTE = "refilling activations"


@contextlib.contextmanager
def _refills_noted(source, bar):
    """While the block runs, each refill of ``source`` (data with a ``refill_context`` attribute, such as an
    :class:`.buffer.ActivationBuffer`) shows :data:`REFILL_NOTE` on ``bar`` (:func:`.console.bar_note`: on a
    terminal only, nothing read from the device); the source's own ``refill_context`` is restored after."""
    if not hasattr(source, "refill_context"):
        yield
        return
    before = source.refill_context
    source.refill_context = lambda: bar_note(bar, REFILL_NOTE)
    try:
        yield
    finally:
        source.refill_context = before


def _check_batch(b, dims: set, allow_nonfinite: bool) -> None:
    require_float_batch(b)
    if b.ndim != 2 or (dims and b.shape[1] not in dims):
        raise ValueError(f"trainers expect activations [batch, {'/'.join(map(str, sorted(dims)))}], got a batch of "
                         f"shape {tuple(b.shape)}")
    if b.shape[0] == 0:
        raise ValueError(f"the first activation batch is empty (shape {tuple(b.shape)})")
    if not allow_nonfinite and not torch.isfinite(b).all():
        raise ValueError("the first activation batch contains NaN or infinite values")


CHECKPOINT_PREFIX = "step_"


def complete_checkpoints(trainer_dir) -> list[int]:
    """Steps of the complete checkpoints in ``trainer_dir/checkpoints`` (sorted). Temporary folders of an
    interrupted write are ignored."""
    folder = Path(trainer_dir) / "checkpoints"
    steps = []
    for p in folder.glob(CHECKPOINT_PREFIX + "*") if folder.is_dir() else []:
        suffix = p.name[len(CHECKPOINT_PREFIX):]
        if suffix.isdigit() and (p / "trainer_state.pt").is_file() and (p / "ae.safetensors").is_file():
            steps.append(int(suffix))
    return sorted(steps)


def _resume(trainers, out: Path, normalize_activations: bool) -> tuple[int, float, int]:
    """Load the latest checkpoint common to all trainers; returns (next step, norm factor, data batches used)."""
    configs = []
    for i, tr in enumerate(trainers):
        cfg_path = out / f"trainer_{i}" / "config.json"
        if not cfg_path.is_file():
            raise ValueError(f"resume: {cfg_path} not found; is {out} the save_dir of a run with "
                             f"{len(trainers)} trainer(s)?")
        try:
            saved = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"resume: {cfg_path} is not valid JSON ({e})") from None
        lib, ver = saved.get("library"), str(saved.get("library_version", ""))
        if lib != "dictionary_learning_aligned" or ver.split(".")[0] != LIBRARY_VERSION.split(".")[0]:
            raise ValueError(f"resume: {cfg_path} was written by {lib or 'another library'} version {ver or '?'}; "
                             f"this is dictionary_learning_aligned {LIBRARY_VERSION} and cannot continue that run")
        mine, theirs = _json_safe(tr.config), saved.get("trainer", {})
        diff = sorted(k for k in set(mine) | set(theirs) if k != "device" and mine.get(k) != theirs.get(k))
        if diff:
            raise ValueError(f"resume: trainer {i}'s config differs from the saved run in {diff} "
                             f"(saved {[theirs.get(k) for k in diff]}, given {[mine.get(k) for k in diff]})")
        configs.append(saved)
    if any(c.get("norm_factor", 1.0) != 1.0 for c in configs) and not normalize_activations:
        raise ValueError("resume: the saved run normalized activations; pass normalize_activations=True")
    norm_factor = float(configs[0].get("norm_factor", 1.0))
    common = set.intersection(*(set(complete_checkpoints(out / f"trainer_{i}")) for i in range(len(trainers))))
    if not common:
        return 0, norm_factor if normalize_activations else 1.0, 0
    last, states = _newest_intact_checkpoint(trainers, out, sorted(common, reverse=True))
    if states is None:
        raise ValueError(f"resume: none of the checkpoints {sorted(common)} in {out} can be read (all truncated or "
                         f"corrupt); nothing was changed")
    for tr, state in zip(trainers, states):
        tr.load_state_dict(state["trainer"])
        tr.skipped_batches = state.get("skipped_batches", 0)
        tr.tokens_seen = state.get("tokens_seen", 0)
    _set_rng_state(states[-1]["rng"])
    return last + 1, norm_factor, last + 1 + trainers[0].skipped_batches


def _newest_intact_checkpoint(trainers, out: Path, candidates: list[int]):
    """``(step, [state per trainer])`` of the newest checkpoint every trainer can read, trying ``candidates``
    newest first and saying (a warning) which ones were skipped; ``(None, None)`` when none can be read. Nothing
    is loaded into the trainers here."""
    import warnings

    for step in candidates:
        states, bad = [], None
        for i, tr in enumerate(trainers):
            path = out / f"trainer_{i}" / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}" / "trainer_state.pt"
            try:
                states.append(torch.load(str(path), map_location=tr.device, weights_only=True))
            except Exception as e:  # truncated or corrupt file: fall back to an older checkpoint
                bad = f"{path} ({type(e).__name__}: {e})"
                break
        if bad is None:
            return step, states
        warnings.warn(f"resume: checkpoint step {step} cannot be read: {bad}; trying the previous checkpoint")
        print(f"warning: resume: checkpoint step {step} is unreadable (truncated?); falling back to an older one")
    return None, None


def _rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_as_tuple(state["python"]))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


def _save_checkpoint(tr: SAETrainer, trainer_dir: Path, step: int, norm_factor: float, run_cfg) -> None:
    """Write ``checkpoints/step_{step}`` (usable dictionary + full training state) atomically: into a temporary
    folder first, renamed when complete."""
    import shutil

    final = trainer_dir / "checkpoints" / f"{CHECKPOINT_PREFIX}{step}"
    tmp = trainer_dir / "checkpoints" / f".tmp_{CHECKPOINT_PREFIX}{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        _save(tr, tmp, norm_factor, run_cfg, step + 1)
        with atomic_path(tmp / "trainer_state.pt") as t:
            torch.save({"trainer": tr.state_dict(), "rng": _rng_state(), "step": step,
                        "skipped_batches": getattr(tr, "skipped_batches", 0),
                        "tokens_seen": getattr(tr, "tokens_seen", 0)}, str(t))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial checkpoint behind
        raise
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def _run_config(tr: SAETrainer, norm_factor: float, run_cfg: Optional[dict], steps_done: int) -> dict:
    return _json_safe({
        "trainer": tr.config,
        "buffer": (run_cfg or {}).get("buffer", {}),
        "run": {k: v for k, v in (run_cfg or {}).items() if k != "buffer"},
        "norm_factor": norm_factor,
        "norm_factor_folded_into_weights": True,
        "steps_done": steps_done,
        "library": "dictionary_learning_aligned",
        "library_version": LIBRARY_VERSION,
    })


def _save(tr: SAETrainer, folder: Path, norm_factor: float, run_cfg, steps_done: int) -> None:
    """Save ``tr.ae`` so that it reads raw activations (norm factor folded), without touching the live weights."""
    import copy

    bad = [n for n, p in tr.ae.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise FloatingPointError(
            f"{type(tr).__name__} ({tr.config.get('alignment')}) diverged: non-finite values in {bad} after "
            f"{steps_done} steps; not saved to {folder} (earlier checkpoints are untouched). Lower the learning "
            f"rate or the sparsity coefficient.")
    ae = copy.deepcopy(tr.ae).float()
    if norm_factor != 1.0:
        ae.scale_biases(norm_factor)
    ae.save(folder, config=_run_config(tr, norm_factor, run_cfg, steps_done))


@torch.no_grad()
def _log(trainers, act, step, amp, verbose, wandb_run, elapsed):
    for i, tr in enumerate(trainers):
        with amp:
            log = tr.loss(act, step, logging=True)
        x, x_hat, f = log.x.float(), log.x_hat.float(), log.f
        total_var = (x - x.mean(0)).pow(2).sum()
        scores = summarize_scores(alignment_scores(tr.ae))
        entry = {
            "step": step,
            "elapsed_s": round(elapsed, 2),
            **log.losses,
            "l0": float((f != 0).float().sum(-1).mean()),
            "frac_variance_explained": float(1 - (x - x_hat).pow(2).sum() / total_var),
            "dead_fraction_10M": float(tr.dead_mask().float().mean()) if hasattr(tr, "dead_mask") else None,
            "lr": tr.optimizer.param_groups[0]["lr"] if hasattr(tr, "optimizer") else None,
            "alignment_mean": scores["mean"],
            "alignment_frac_within_0.1_of_1": scores["frac_within_0.1_of_1"],
            "alignment_frac_below_0.5": scores["frac_below_0.5"],
            "alignment_bimodality": scores["bimodality_coefficient"],
        }
        if not math.isfinite(entry["loss"]):
            raise ValueError(f"trainer {i} ({type(tr).__name__}): non-finite loss {entry['loss']} at step {step}")
        tr.log.append(entry)
        if verbose:
            print(f"[trainer {i}] step {step}: loss {entry['loss']:.4g} l0 {entry['l0']:.1f} "
                  f"fve {entry['frac_variance_explained']:.3f} align≈1 {entry['alignment_frac_within_0.1_of_1']:.2f}")
        if wandb_run is not None:
            wandb_run.log({f"trainer_{i}/{k}": v for k, v in entry.items() if v is not None}, step=step)
