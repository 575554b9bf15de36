"""p-annealing trainer: an Lp sparsity penalty with p annealed from p_start toward p_end."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..dictionary import AutoEncoder
from ..registry import Architecture, register, scaled_lr_schedule
from ..stacked import StackRule
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
    config_fields = ("sparsity_function", "initial_sparsity_penalty", "anneal_start", "anneal_end", "p_start", "p_end",
                     "n_sparsity_updates", "sparsity_queue_length")

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


class PAnnealStackRule(StackRule):
    """Stacked p-annealing (see :mod:`..stacked`): ``f = ReLU(pre)``, the Lp penalty with each dictionary's p
    schedule (deterministic: tables computed on the host) and its coefficient, rescaled at each change of p by the
    ratio of the queued Lp means (data-dependent: kept on the device), as :class:`PAnnealTrainer`."""

    float64_tables = ("warm",)

    @classmethod
    def group_key(cls, trainer) -> tuple:
        return (trainer.sparsity_function, trainer.sparsity_queue_length)

    def load_state(self):
        e, trs = self.engine, self.engine.trainers
        self._sim = [[t.p, t.p_step_count] for t in trs]
        self.coeff = torch.tensor([t.sparsity_coeff for t in trs], dtype=torch.float64, device=e.device)
        self.q_len = trs[0].sparsity_queue_length
        self.queue = torch.zeros(e.n, self.q_len, 2, device=e.device)
        self.q_count = torch.zeros(e.n, dtype=torch.long, device=e.device)
        for j, t in enumerate(trs):
            kept = t.sparsity_queue[-self.q_len:]
            for i, q in enumerate(kept):
                self.queue[j, i] = q.to(e.device, torch.float32)
            self.q_count[j] = len(kept)
        self.p_power_sum = trs[0].sparsity_function == "Lp^p"
        self.scalar_p = {}

    @staticmethod
    def advance(t, state: list, step: int) -> tuple:
        """One step of trainer ``t``'s p schedule from ``state = [p, p_step_count]`` (updated in place), as
        :meth:`PAnnealTrainer.after_step`: ``(p, next p or p, has next, coefficient update)``."""
        p, count = state
        has_next = count < t.n_sparsity_updates
        nxt = t.p_values[count] if has_next else p
        change = False
        while count < t.n_sparsity_updates and step + 1 >= t.update_steps[count]:
            change = change or t.p_values[count] != p
            p, count = t.p_values[count], count + 1
        before = state[0]
        state[:] = [p, count]
        return before, nxt, has_next, change

    def host_tables(self, steps):
        trs = self.engine.trainers
        rows = [[self.advance(t, st, s) + (st[0], st[1]) for t, st in zip(trs, self._sim)] for s in steps]
        col = lambda i, dtype: torch.tensor([[r[i] for r in row] for row in rows], dtype=dtype)  # noqa: E731
        return {"p": col(0, torch.float64), "p_next": col(1, torch.float64), "has_next": col(2, torch.bool),
                "change": col(3, torch.bool), "p_after": col(4, torch.float64), "count_after": col(5, torch.long),
                "warm": torch.tensor([[t.sparsity_warmup_fn(s) for t in trs] for s in steps], dtype=torch.float64)}

    def lp_norm(self, f: torch.Tensor, name: str, tab: dict) -> torch.Tensor:
        """``[n]``: ``mean_batch ||f||_p`` (``"Lp"``) or ``mean_batch sum_i f_i^p`` (``"Lp^p"``), with each
        dictionary's p from table ``name`` (one scalar exponent when all are equal, as a lone trainer computes)."""
        p = self.scalar_p[name] if self.scalar_p.get(name) is not None else tab[name][:, None, None].float()
        s = f.clamp_min(0).pow(p).sum(-1)
        return (s if self.p_power_sum else s.pow(1 / p if isinstance(p, float) else 1 / p[..., 0])).mean(-1)

    def before_step(self, step, x):
        # one scalar exponent when the whole stack shares p (not under torch.compile: a changing Python float
        # would recompile the loss at every change of p)
        self.scalar_p = {}
        if not self.engine.compiled:
            for name in ("p", "p_next"):
                host = self.engine.host_row(name, step)
                self.scalar_p[name] = float(host[0]) if bool((host == host[0]).all()) else None

    def sparsity(self, x, x_hat, f, aux, tab):
        lp = self.lp_norm(f, "p", tab)
        return (self.coeff * tab["warm"]).float() * lp, {"sparsity_loss": lp}

    @torch.no_grad()
    def after_step(self, step, x, f, aux, tab):
        e = self.engine
        if bool(e.host_row("has_next", step).any()):
            pair = torch.stack([self.lp_norm(f, "p", tab), self.lp_norm(f, "p_next", tab)], -1).float()
            rows, pos = torch.arange(e.n, device=e.device), self.q_count % self.q_len
            has = tab["has_next"]
            self.queue[rows, pos] = torch.where(has[:, None], pair, self.queue[rows, pos])
            self.q_count += has.long()
        if bool(e.host_row("change", step).any()):
            n_valid = self.q_count.clamp(max=self.q_len)
            valid = torch.arange(self.q_len, device=e.device) < n_valid[:, None]
            mean = (self.queue.double() * valid[..., None]).sum(1) / n_valid.clamp_min(1)[:, None]
            hit = tab["change"] & (self.q_count > 0)
            self.coeff = torch.where(hit & (mean[:, 1] > 0), self.coeff * (mean[:, 0] / mean[:, 1]), self.coeff)
            self.q_count = torch.where(hit, 0, self.q_count)

    def sync_state(self, steps_done):
        e = self.engine
        if e.step is None:
            return
        p_after, count_after = e.host_row("p_after", e.step), e.host_row("count_after", e.step)
        counts, coeff = self.q_count.tolist(), self.coeff.tolist()
        for j, t in enumerate(e.trainers):
            t.p, t.p_step_count, t.sparsity_coeff = float(p_after[j]), int(count_after[j]), coeff[j]
            n, start = min(counts[j], self.q_len), counts[j] % self.q_len if counts[j] > self.q_len else 0
            order = [(start + i) % self.q_len for i in range(n)]
            t.sparsity_queue = [self.queue[j, i].clone() for i in order]


AlignedPAnnealTrainer = make_aligned(PAnnealTrainer)


def panneal_schedule(steps: int) -> dict:
    """Schedule settings of a p-anneal run of ``steps`` steps: as ReLU's (lr warmup 5%, sparsity warmup 10%,
    decay from 80%), with p annealed from 25% of the run to its end."""
    return {**scaled_lr_schedule(steps), "sparsity_warmup_steps": max(1, steps // 10),
            "anneal_start": max(1, steps // 4), "anneal_end": max(2, steps - 2) if steps > 3 else None}


PANNEAL = register(Architecture(
    name="panneal", label="p-anneal", trainer=PAnnealTrainer, aligned_trainer=AlignedPAnnealTrainer,
    sparsity_param="initial_sparsity_penalty", sparsity_values=(0.02, 0.04, 0.08), default_sparsity=0.04,
    schedule=panneal_schedule, saebench_kind="relu", stack_rule=PAnnealStackRule))
