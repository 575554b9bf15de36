"""``trainSAE``: the one training loop. Several trainers consume the same activation batches."""

from __future__ import annotations

import contextlib
import json
import math
import numbers
import time
from pathlib import Path
from typing import Iterable, Optional

import torch
from tqdm.auto import tqdm

from .alignment import alignment_scores, summarize_scores
from .io import check_output_dir, prepare_output_dir, write_json
from .trainers.base import SAETrainer

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
    if isinstance(cls, str):
        from .trainers import TRAINER_CLASSES

        if cls not in TRAINER_CLASSES:
            raise ValueError(f"unknown trainer {cls!r}; known: {sorted(TRAINER_CLASSES)}")
        cls = TRAINER_CLASSES[cls]
    cfg.setdefault("device", device)
    return cls(**cfg)


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
) -> list[SAETrainer]:
    """Train one or more dictionaries on the same activation batches (dictionary_learning's ``trainSAE``).

    Args:
        data: iterator of ``[batch, activation_dim]`` activation tensors (e.g. an ``ActivationBuffer``).
        trainer_configs: one dict per trainer: ``{"trainer": TrainerClass or its name, **constructor args}``.
        steps: number of steps (one batch each); training stops early, with a warning, if ``data`` runs out.
        save_dir: output folder; each trainer gets ``save_dir/trainer_{i}/`` with ``config.json`` and
            ``ae.safetensors`` (weights that read raw activations). None: nothing is written.
        save_steps: steps at which to save intermediate weights to ``trainer_{i}/checkpoints/ae_{step}``.
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
        overwrite: allow replacing a non-empty ``save_dir``.
        verbose: print log lines.
        norm_factor_batches: batches used to estimate the norm factor.

    Returns:
        the trainers, each with ``.ae`` (in-memory weights still expect normalized input, see
        ``trainer.norm_factor``) and ``.log`` (list of logged dicts).

    Raises:
        ValueError: ``steps < 1``, no trainer configs, a bad trainer config, empty or non-finite activations, a
            non-finite loss at a log step, or a ``save_dir`` that ``overwrite`` may not replace.
        FloatingPointError: a trainer's weights became non-finite (checked before every save; nothing is saved).
        FileExistsError: ``save_dir`` exists and is not empty, without ``overwrite``.
    """
    if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if not trainer_configs:
        raise ValueError("trainer_configs is empty: nothing to train")
    if log_steps is not None and log_steps < 1:
        raise ValueError(f"log_steps must be >= 1, got {log_steps}")
    steps = int(steps)
    save_steps = sorted(set(save_steps or []))
    if save_dir is not None:
        check_output_dir(save_dir, overwrite)  # fail fast, before any work; nothing is changed yet
    trainers = [_build_trainer(c, device) for c in trainer_configs]

    data = iter(data)
    prefetched: list[torch.Tensor] = []
    norm_factor = 1.0
    if normalize_activations:
        for _ in range(norm_factor_batches):
            try:
                prefetched.append(next(data))
            except StopIteration:
                break
        if not prefetched:
            raise ValueError("the activation data is empty (is the text shorter than one context?)")
        norm_factor = get_norm_factor(prefetched)
    for tr in trainers:
        tr.norm_factor = norm_factor
        tr.log = []

    dirs = []
    out = prepare_output_dir(save_dir, overwrite) if save_dir is not None else None
    if out is not None:
        for i, tr in enumerate(trainers):
            d = out / f"trainer_{i}"
            d.mkdir()
            dirs.append(d)
            write_json(d / "config.json", _run_config(tr, norm_factor, run_cfg, steps_done=0))

    wandb_run = None
    if use_wandb:
        import wandb

        wandb_run = wandb.init(entity=wandb_entity or None, project=wandb_project or None,
                               config={f"trainer_{i}": _json_safe(t.config) for i, t in enumerate(trainers)})

    def batches():
        yield from prefetched
        yield from data

    dev_type = torch.device(device).type
    amp = (torch.autocast(device_type=dev_type, dtype=autocast_dtype)
           if autocast_dtype not in (None, torch.float32) else contextlib.nullcontext())
    step = 0
    t0 = time.time()
    bar = tqdm(total=steps, desc="training", unit="step", disable=not verbose and steps < 2)
    for act in batches():
        if step >= steps:
            break
        act = act.to(device)
        if not torch.isfinite(act).all():
            raise ValueError(f"activation batch at step {step} contains NaN or infinite values")
        if normalize_activations:
            act = act / norm_factor
        if log_steps is not None and step % log_steps == 0:
            _log(trainers, act, step, amp, verbose, wandb_run, time.time() - t0)
        for i, tr in enumerate(trainers):
            with amp:
                tr.update(step, act)
        if step in save_steps and out is not None:
            for tr, d in zip(trainers, dirs):
                _save(tr, d / "checkpoints" / f"ae_{step}", norm_factor, run_cfg, step + 1)
        step += 1
        bar.update(1)
    bar.close()
    if step < steps:
        print(f"warning: activation data ran out after {step} of {steps} steps")
    for tr in trainers:
        tr.steps_done = step
    if out is not None:
        for tr, d in zip(trainers, dirs):
            _save(tr, d, norm_factor, run_cfg, step)
    if wandb_run is not None:
        wandb_run.finish()
    return trainers


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
