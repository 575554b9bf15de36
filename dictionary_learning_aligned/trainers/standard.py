"""The standard (ReLU + L1) trainer and its aligned version."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..dictionary import AutoEncoder
from ..registry import Architecture, register, scaled_lr_schedule
from ..stacked import StackRule
from .base import DictionaryTrainer, make_aligned


class StandardTrainer(DictionaryTrainer):
    """ReLU SAE with an L1 penalty and unit-norm decoder columns (Bricken et al. 2023, "Towards
    Monosemanticity"), with dictionary_learning's ``StandardTrainer`` defaults.

    Loss: ``mean_batch sum_d (x - x_hat)^2 + l1_penalty * s(t) * mean_batch ||f||_1``, where ``s(t)`` ramps
    linearly from 0 to 1 over ``sparsity_warmup_steps``.

    Args:
        steps: total training steps (for the schedules).
        activation_dim, dict_size: dictionary shape.
        layer, lm_name: recorded in ``config`` (loaders key on them).
        dict_class: dictionary class (default :class:`AutoEncoder`).
        lr: peak Adam learning rate (default 1e-3).
        l1_penalty: L1 coefficient (default 0.1).
        warmup_steps: linear lr warmup (default 1000; repeated after each resampling).
        sparsity_warmup_steps: linear L1 warmup (default 2000).
        decay_start: step where the linear lr decay to 0 starts (default None: no decay).
        resample_steps: resample dead features every this many steps (default None: never).
        seed, device, wandb_name, submodule_name: as in dictionary_learning.
        alignment: None (standard) or an alignment mode / ablation (see :mod:`..alignment`).
        alignment_penalty: lambda of the ``"penalty"`` ablation.
        compile, fused_optimizer: speed options, see :class:`~.base.DictionaryTrainer`.

    Raises:
        ValueError: non-positive ``steps``/``lr``, negative ``l1_penalty``, inconsistent schedule steps,
            unknown alignment, ``"penalty"`` without ``alignment_penalty``.
    """

    dict_class = AutoEncoder
    config_fields = ("l1_penalty",)

    def __init__(
        self,
        steps: int,
        activation_dim: int,
        dict_size: int,
        layer: int,
        lm_name: str,
        dict_class: Optional[type] = None,
        lr: float = 1e-3,
        l1_penalty: float = 1e-1,
        warmup_steps: int = 1000,
        sparsity_warmup_steps: Optional[int] = 2000,
        decay_start: Optional[int] = None,
        resample_steps: Optional[int] = None,
        seed: Optional[int] = None,
        device: Optional[str] = None,
        wandb_name: Optional[str] = None,
        submodule_name: Optional[str] = None,
        alignment: Optional[str] = None,
        alignment_penalty: Optional[float] = None,
        compile: Union[bool, str] = False,
        fused_optimizer: Optional[bool] = None,
    ):
        if (not isinstance(l1_penalty, (int, float)) or isinstance(l1_penalty, bool) or not l1_penalty >= 0
                or l1_penalty == float("inf")):
            raise ValueError(f"l1_penalty must be a finite non-negative number, got {l1_penalty!r}")
        self.l1_penalty = float(l1_penalty)
        super().__init__(
            steps, activation_dim, dict_size, layer, lm_name, dict_class=dict_class, lr=lr,
            warmup_steps=warmup_steps, decay_start=decay_start, sparsity_warmup_steps=sparsity_warmup_steps,
            seed=seed, device=device, wandb_name=wandb_name, submodule_name=submodule_name,
            alignment=alignment, alignment_penalty=alignment_penalty, resample_steps=resample_steps,
            compile=compile, fused_optimizer=fused_optimizer,
        )

    def sparsity_term(self, x, x_hat, f, aux, step):
        """``l1_penalty * s(step) * mean_batch ||f||_1`` for ``f [batch, dict_size]``."""
        l1 = f.abs().sum(-1).mean()
        return self.l1_penalty * self.sparsity_warmup_fn(step) * l1, {"sparsity_loss": l1}

    @torch.no_grad()
    def resample_neurons(self, deads: torch.Tensor, activations: torch.Tensor) -> None:
        """Re-initialise dead features from badly reconstructed inputs (Bricken et al. 2023).

        Inputs are sampled with probability proportional to their reconstruction error ``||x - x_hat||``;
        each dead feature gets decoder column ``x / ||x||``, encoder row ``x * 0.2 * mean alive encoder norm``
        and ``b_enc = 0``, and its Adam moments are zeroed, all written into the live tensors.

        Args:
            deads: ``[dict_size]`` bool mask of dead features.
            activations: ``[batch, activation_dim]`` (already normalized, as trained on).

        Raises:
            ValueError: for dictionaries whose encoder is not a free parameter (aligned/tied modes).
        """
        if "W_enc" not in self.ae._parameters:
            raise ValueError(f"resampling needs a free W_enc; alignment={self.alignment!r} has none")
        n_dead = int(deads.sum())
        if n_dead == 0:
            return
        errors = (activations - self.ae(activations)).norm(dim=-1)
        n = min(n_dead, activations.shape[0])
        idx = torch.multinomial(errors.float().clamp_min(1e-12), n, replacement=False)
        sampled = activations[idx].to(self.ae.W_dec.dtype)
        alive = ~deads
        alive_norm = self.ae.W_enc[alive].norm(dim=-1).mean() if alive.any() else torch.tensor(1.0)
        which = deads.nonzero().flatten()[:n]
        self.ae.W_enc[which] = sampled * alive_norm * 0.2
        self.ae.W_dec[:, which] = (sampled / sampled.norm(dim=-1, keepdim=True).clamp_min(1e-12)).T
        self.ae.b_enc[which] = 0.0
        for p, rows in ((self.ae.W_enc, (which,)), (self.ae.b_enc, (which,)), (self.ae.W_dec, (slice(None), which))):
            state = self.optimizer.state.get(p, {})
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key][rows] = 0.0
        self.tokens_since_fired[which] = 0


class StandardStackRule(StackRule):
    """Stacked ReLU + L1 (see :mod:`..stacked`): ``f = ReLU(pre)``, sparsity term ``l1_penalty * s(t) *
    mean_batch ||f||_1`` with each dictionary's coefficient and sparsity warmup."""

    def host_tables(self, steps):
        trs = self.engine.trainers
        return {"l1_coef": torch.tensor([[t.l1_penalty * t.sparsity_warmup_fn(s) for t in trs] for s in steps],
                                        dtype=torch.float64)}

    def sparsity(self, x, x_hat, f, aux, tab):
        l1 = f.abs().sum(-1).mean(-1)
        return tab["l1_coef"] * l1, {"sparsity_loss": l1}


AlignedStandardTrainer = make_aligned(StandardTrainer)


def relu_schedule(steps: int) -> dict:
    """Schedule settings of a ReLU run of ``steps`` steps: lr warmup 5%, sparsity warmup 10%, decay from 80%."""
    return {**scaled_lr_schedule(steps), "sparsity_warmup_steps": max(1, steps // 10)}


RELU = register(Architecture(
    name="relu", label="ReLU", trainer=StandardTrainer, aligned_trainer=AlignedStandardTrainer,
    sparsity_param="l1_penalty", sparsity_values=(0.02, 0.04, 0.08), default_sparsity=0.04,
    schedule=relu_schedule, saebench_kind="relu", stack_rule=StandardStackRule))
