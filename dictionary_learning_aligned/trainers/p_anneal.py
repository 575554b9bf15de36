"""p-annealing trainer: an Lp sparsity penalty with p annealed from p_start toward p_end."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..dictionary import AutoEncoder
from ..registry import Architecture, register
from .base import DictionaryTrainer, make_aligned


class PAnnealTrainer(DictionaryTrainer):
    """ReLU SAE with an Lp sparsity penalty whose p is annealed from ``p_start`` to ``p_end`` (Karvonen et al.
    2024, "Measuring Progress in Dictionary Learning for Language Model Interpretability with Board Game Models",
    arXiv 2408.00113), with dictionary_learning's ``PAnnealTrainer`` defaults except ``p_end`` (0.2, the value of
    dictionary_learning's SAEBench recipe; p must stay in (0, 1]).

    The penalty is ``coeff * s(t) * mean_batch ||f||_p`` (``sparsity_function="Lp"``) or ``... sum_i f_i^p``
    (``"Lp^p"``). p takes the values ``linspace(p_start, p_end, n_sparsity_updates)`` at the steps
    ``linspace(anneal_start, anneal_end, n_sparsity_updates)``; at each change the coefficient is multiplied by
    ``mean Lp_old / mean Lp_new`` over the last ``sparsity_queue_length`` batches, so the penalty stays continuous.

    Args:
        steps, activation_dim, dict_size, layer, lm_name, lr (1e-3), warmup_steps (1000),
        sparsity_warmup_steps (2000), decay_start, seed, device, wandb_name, submodule_name, alignment,
        alignment_penalty: as :class:`StandardTrainer`.
        initial_sparsity_penalty: starting coefficient (0.1).
        sparsity_function: ``"Lp"`` or ``"Lp^p"``.
        anneal_start (15000), anneal_end (default ``steps - 1``), p_start (1), p_end (0.2),
        n_sparsity_updates (10), sparsity_queue_length (10).
        compile, fused_optimizer: speed options, see :class:`~.base.DictionaryTrainer`.

    Raises:
        ValueError: ``p_start``/``p_end`` outside (0, 1], an unknown sparsity function, ``anneal_start`` not
            below ``anneal_end`` or ``anneal_end`` beyond ``steps``, non-positive update counts.
    """

    dict_class = AutoEncoder

    def __init__(self, steps: int, activation_dim: int, dict_size: int, layer: int, lm_name: str,
                 dict_class: Optional[type] = None, lr: float = 1e-3, warmup_steps: int = 1000,
                 sparsity_warmup_steps: Optional[int] = 2000, decay_start: Optional[int] = None,
                 sparsity_function: str = "Lp", initial_sparsity_penalty: float = 1e-1, anneal_start: int = 15000,
                 anneal_end: Optional[int] = None, p_start: float = 1.0, p_end: float = 0.2,
                 n_sparsity_updates: int = 10, sparsity_queue_length: int = 10, seed: Optional[int] = None,
                 device: Optional[str] = None, wandb_name: Optional[str] = None,
                 submodule_name: Optional[str] = None, alignment: Optional[str] = None,
                 alignment_penalty: Optional[float] = None, compile: Union[bool, str] = False,
                 fused_optimizer: Optional[bool] = None):
        for name, p in (("p_start", p_start), ("p_end", p_end)):
            if not isinstance(p, (int, float)) or not 0 < p <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {p!r}")
        if sparsity_function not in ("Lp", "Lp^p"):
            raise ValueError(f"sparsity_function must be 'Lp' or 'Lp^p', got {sparsity_function!r}")
        if not initial_sparsity_penalty >= 0:
            raise ValueError(f"initial_sparsity_penalty must be >= 0, got {initial_sparsity_penalty!r}")
        if not (isinstance(n_sparsity_updates, int) and n_sparsity_updates >= 1 and sparsity_queue_length >= 1):
            raise ValueError("n_sparsity_updates and sparsity_queue_length must be positive integers")
        super().__init__(
            steps, activation_dim, dict_size, layer, lm_name, dict_class=dict_class, lr=lr,
            warmup_steps=warmup_steps, decay_start=decay_start, sparsity_warmup_steps=sparsity_warmup_steps,
            seed=seed, device=device, wandb_name=wandb_name, submodule_name=submodule_name, alignment=alignment,
            alignment_penalty=alignment_penalty, compile=compile, fused_optimizer=fused_optimizer,
        )
        self.anneal_end = self.steps - 1 if anneal_end is None else anneal_end
        if not 0 <= anneal_start < self.anneal_end < self.steps:
            raise ValueError(f"need 0 <= anneal_start ({anneal_start}) < anneal_end ({self.anneal_end}) < "
                             f"steps ({self.steps})")
        self.sparsity_function, self.initial_sparsity_penalty = sparsity_function, float(initial_sparsity_penalty)
        self.anneal_start, self.p_start, self.p_end = anneal_start, float(p_start), float(p_end)
        self.n_sparsity_updates, self.sparsity_queue_length = n_sparsity_updates, sparsity_queue_length
        self.update_steps = torch.linspace(anneal_start, self.anneal_end, n_sparsity_updates).round().long().tolist()
        self.p_values = torch.linspace(p_start, p_end, n_sparsity_updates).tolist()
        self.p, self.p_step_count = self.p_start, 0
        self.sparsity_coeff = self.initial_sparsity_penalty
        self.sparsity_queue: list[torch.Tensor] = []  # [2] tensors: (mean Lp_old, mean Lp_new) per step
        self.logging_parameters += ["p", "next_p", "sparsity_coeff"]

    @property
    def next_p(self) -> Optional[float]:
        """The p of the next scheduled change (None after the last)."""
        return self.p_values[self.p_step_count] if self.p_step_count < self.n_sparsity_updates else None

    def lp_norm(self, f: torch.Tensor, p: float) -> torch.Tensor:
        """``mean_batch ||f||_p`` (``"Lp"``) or ``mean_batch sum_i f_i^p`` (``"Lp^p"``) of ``f [batch, dict_size]``."""
        s = f.clamp_min(0).pow(p).sum(-1)
        return (s if self.sparsity_function == "Lp^p" else s.pow(1 / p)).mean()

    def sparsity_term(self, x, x_hat, f, aux, step):
        lp = self.lp_norm(f, self.p)
        return self.sparsity_coeff * self.sparsity_warmup_fn(step) * lp, {"sparsity_loss": lp}

    @torch.no_grad()
    def after_step(self, step, x, f, aux):
        nxt = self.next_p
        if nxt is None:
            return
        # means over this rank's tokens, averaged over ranks when data-parallel (equal shards: the global mean);
        # kept on the device ([2] tensors) and read only when p changes, so most steps need no host sync
        lp = self._global(torch.stack([self.lp_norm(f, self.p), self.lp_norm(f, nxt)]).float()) / self._world()
        self.sparsity_queue.append(lp)
        self.sparsity_queue = self.sparsity_queue[-self.sparsity_queue_length:]
        while self.next_p is not None and step + 1 >= self.update_steps[self.p_step_count]:
            new_p = self.next_p
            if new_p != self.p and self.sparsity_queue:
                old, new = torch.stack(self.sparsity_queue).double().mean(0).tolist()
                if new > 0:
                    self.sparsity_coeff *= old / new
                self.sparsity_queue = []  # its entries were measured for the old pair of p values
            self.p = new_p
            self.p_step_count += 1

    def _extra_state(self) -> dict:
        return {"p": self.p, "p_step_count": self.p_step_count, "sparsity_coeff": self.sparsity_coeff,
                "sparsity_queue": [q.tolist() for q in self.sparsity_queue]}

    def _load_extra_state(self, extra: dict) -> None:
        self.p, self.p_step_count = extra["p"], extra["p_step_count"]
        self.sparsity_coeff = extra["sparsity_coeff"]
        self.sparsity_queue = [torch.tensor(q, dtype=torch.float32, device=self.device)
                               for q in extra["sparsity_queue"]]

    def _extra_config(self) -> dict:
        return {"sparsity_function": self.sparsity_function, "initial_sparsity_penalty": self.initial_sparsity_penalty,
                "anneal_start": self.anneal_start, "anneal_end": self.anneal_end, "p_start": self.p_start,
                "p_end": self.p_end, "n_sparsity_updates": self.n_sparsity_updates,
                "sparsity_queue_length": self.sparsity_queue_length}


AlignedPAnnealTrainer = make_aligned(PAnnealTrainer)


def panneal_schedule(steps: int) -> dict:
    """Schedule settings of a p-anneal run of ``steps`` steps: as ReLU's (lr warmup 5%, sparsity warmup 10%,
    decay from 80%), with p annealed from 25% of the run to its end."""
    return {"warmup_steps": max(1, steps // 20), "decay_start": max(2, int(0.8 * steps)) if steps > 10 else None,
            "sparsity_warmup_steps": max(1, steps // 10), "anneal_start": max(1, steps // 4),
            "anneal_end": max(2, steps - 2) if steps > 3 else None}


PANNEAL = register(Architecture(
    name="panneal", label="p-anneal", trainer=PAnnealTrainer, aligned_trainer=AlignedPAnnealTrainer,
    sparsity_param="initial_sparsity_penalty", sparsity_values=(0.02, 0.04, 0.08), default_sparsity=0.04,
    schedule=panneal_schedule, saebench_kind="relu"))
