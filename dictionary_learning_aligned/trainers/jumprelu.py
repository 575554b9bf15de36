"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with JumpReLU Sparse
Autoencoders", arXiv 2407.14435) with the names, defaults and math of dictionary_learning 0.1.0's
``JumpReluAutoEncoder`` / ``JumpReluTrainer``, and its aligned twin. Not evaluated in arXiv 2605.18629: registered
with ``in_paper=False`` (an extension)."""

from __future__ import annotations

from typing import Optional, Union

import torch
import torch.nn as nn

from ..dictionary import Dictionary, register_dictionary
from ..registry import Architecture, register
from ..stacked import StackRule
from .base import DictionaryTrainer, make_aligned
from .standard import relu_schedule


def rectangle(z: torch.Tensor) -> torch.Tensor:
    """The rectangle kernel ``1[-1/2 < z < 1/2]`` (same shape and dtype as ``z``)."""
    return ((z > -0.5) & (z < 0.5)).to(z.dtype)


def _sum_to(grad: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``grad [..., dict_size]`` summed to the shape of ``like``: over all leading dimensions for one dictionary's
    ``like [dict_size]``, over the broadcast ones for a stack's ``like [n, 1, dict_size]``."""
    if like.dim() == 1:
        return grad.reshape(-1, grad.shape[-1]).sum(0).reshape(like.shape)
    return grad.sum_to_size(like.shape)


class JumpReLUFunction(torch.autograd.Function):
    """``JumpReLU_t(z) = z * 1[z > t]`` with the straight-through estimator of arXiv 2407.14435 (eq. 11): the
    gradient in ``z`` is ``1[z > t]``, the pseudo-gradient in the threshold ``t`` is ``-(t / bandwidth) *
    rectangle((z - t) / bandwidth)``.

    ``apply(z [..., dict_size], threshold [dict_size], bandwidth: float) -> [..., dict_size]``; stacked (see
    :class:`JumpReluStackRule`): ``z [n, batch, dict_size]``, ``threshold [n, 1, dict_size]``, ``bandwidth`` a float
    or ``[n, 1, 1]``."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return z * (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, t = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_t = -(t / bw) * rectangle((z - t) / bw) * grad
        return (z > t).to(grad.dtype) * grad, _sum_to(grad_t, t), None


class StepFunction(torch.autograd.Function):
    """Heaviside step ``1[z > t]`` with the pseudo-gradient ``-(1 / bandwidth) * rectangle((z - t) / bandwidth)``
    in the threshold and none in ``z`` (arXiv 2407.14435, eq. 12); the L0 penalty is built from it.

    ``apply(z [..., dict_size], threshold [dict_size], bandwidth: float) -> [..., dict_size]`` (stacked shapes as
    :class:`JumpReLUFunction`)."""

    @staticmethod
    def forward(ctx, z, threshold, bandwidth):
        ctx.save_for_backward(z, threshold)
        ctx.bandwidth = bandwidth
        return (z > threshold).to(z.dtype)

    @staticmethod
    def backward(ctx, grad):
        z, t = ctx.saved_tensors
        bw = ctx.bandwidth
        grad_t = -(1.0 / bw) * rectangle((z - t) / bw) * grad
        return torch.zeros_like(z), _sum_to(grad_t, t), None


@register_dictionary
class JumpReluAutoEncoder(Dictionary):
    """JumpReLU SAE: ``f = ReLU(pre * 1[pre > threshold])`` with ``pre = W_enc x + b_enc`` (``W_enc (x - b_dec) +
    b_enc`` when ``apply_b_dec_to_input``), ``x_hat = W_dec f + b_dec``; a learned ``threshold [dict_size]``
    (a parameter, starting at ``initial_threshold``). As dictionary_learning's ``JumpReluAutoEncoder``, the
    encoder starts at ``W_dec.T`` (``a_i = 1`` at initialization) and ``b_dec`` is not subtracted by default.

    Args:
        activation_dim, dict_size: shape.
        alignment: see :class:`~dictionary_learning_aligned.dictionary.AutoEncoder`.
        apply_b_dec_to_input: subtract ``b_dec`` before encoding (dictionary_learning: False; SAE-Lens-style
            JumpReLU SAEs may set it).
        initial_threshold: starting value of every threshold (0.001, arXiv 2407.14435 appendix I).

    Raises:
        ValueError: bad sizes, an unknown alignment, a negative or non-finite ``initial_threshold``.
    """

    def __init__(self, activation_dim: int, dict_size: int, alignment: Optional[str] = None,
                 apply_b_dec_to_input: bool = False, initial_threshold: float = 0.001):
        super().__init__(activation_dim, dict_size, alignment)
        if not 0 <= float(initial_threshold) < float("inf"):
            raise ValueError(f"initial_threshold must be a finite number >= 0, got {initial_threshold!r}")
        self.apply_b_dec_to_input = bool(apply_b_dec_to_input)
        self._init_weights(encoder_scale=1.0)
        self.threshold = nn.Parameter(torch.full((dict_size,), float(initial_threshold)))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc x + b_enc`` (or ``W_enc (x - b_dec) + b_enc``): ``[..., activation_dim] -> [..., dict_size]``."""
        if self.apply_b_dec_to_input:
            return self._affine_encode(x)
        return nn.functional.linear(self._check_input(x), self.W_enc, self.b_enc)

    def encode(self, x: torch.Tensor, output_pre_jump: bool = False):
        """Features ``f [..., dict_size]`` (and the pre-activations ``[..., dict_size]`` with ``output_pre_jump``)."""
        pre = self.pre_activations(x)
        f = torch.relu(pre * (pre > self.threshold).to(pre.dtype))
        return (f, pre) if output_pre_jump else f

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``W_dec f + b_dec``: ``[..., dict_size] -> [..., activation_dim]``."""
        return self._affine_decode(f)

    @torch.no_grad()
    def scale_biases(self, scale: float) -> None:
        """As :meth:`Dictionary.scale_biases`, and the thresholds are scaled too (they are in feature units)."""
        super().scale_biases(scale)
        self.threshold.mul_(float(scale))

    def dictionary_config(self) -> dict:
        return {**super().dictionary_config(), "apply_b_dec_to_input": self.apply_b_dec_to_input}

    @classmethod
    def from_dictionary_learning_state(cls, state: dict, trainer_config: Optional[dict] = None) -> tuple[dict, dict]:
        """Map a dictionary_learning ``JumpReluAutoEncoder`` state dict (``ae.pt``: ``W_enc [activation_dim,
        dict_size]``, ``b_enc``, ``W_dec [dict_size, activation_dim]``, ``b_dec``, ``threshold``) to ours.

        Args:
            state: the loaded state dict (tensors).
            trainer_config: ``config.json``'s ``trainer`` section (unused; accepted for a uniform interface).

        Returns:
            ``(constructor kwargs, state dict with our names and layout)``: ``cls(**kwargs).load_state_dict(state)``
            rebuilds it (standard, not aligned; ``apply_b_dec_to_input`` False as in dictionary_learning).

        Raises:
            ValueError: keys other than dictionary_learning's, or shapes that disagree.
        """
        want = {"W_enc", "b_enc", "W_dec", "b_dec", "threshold"}
        if set(state) != want:
            raise ValueError(f"not a dictionary_learning JumpReluAutoEncoder state dict: keys {sorted(state)}, "
                             f"expected {sorted(want)}")
        activation_dim, dict_size = state["W_enc"].shape
        if tuple(state["W_dec"].shape) != (dict_size, activation_dim) or state["threshold"].shape != (dict_size,):
            raise ValueError(f"inconsistent shapes: W_enc {tuple(state['W_enc'].shape)}, W_dec "
                             f"{tuple(state['W_dec'].shape)}, threshold {tuple(state['threshold'].shape)}")
        ours = {"W_enc": state["W_enc"].T.contiguous(), "W_dec": state["W_dec"].T.contiguous(), "b_enc": state["b_enc"],
                "b_dec": state["b_dec"], "threshold": state["threshold"]}
        return {"activation_dim": int(activation_dim), "dict_size": int(dict_size)}, ours


class JumpReluTrainer(DictionaryTrainer):
    """JumpReLU SAE training with dictionary_learning 0.1.0's ``JumpReluTrainer`` defaults and loss:
    ``mean_batch ||x - x_hat||^2 + sparsity_penalty * s(t) * (L0 / target_l0 - 1)^2``, where ``L0`` is the mean
    number of active features per token computed with :class:`StepFunction` on the features (as
    dictionary_learning does), ``s(t)`` the sparsity warmup, and the threshold is learned through the
    straight-through estimators of :class:`JumpReLUFunction` / :class:`StepFunction` with a rectangle kernel of
    width ``bandwidth``. Adam with betas (0, 0.999), gradients clipped to norm 1, unit-norm decoder columns.

    Args:
        steps, activation_dim, dict_size, layer, lm_name: as :class:`~.standard.StandardTrainer`.
        dict_class: default :class:`JumpReluAutoEncoder`.
        lr: Adam learning rate (7e-5).
        bandwidth: width of the rectangle kernel (0.001).
        sparsity_penalty: coefficient of the L0 penalty (1.0).
        target_l0: the L0 the penalty steers to (20).
        warmup_steps (1000), sparsity_warmup_steps (2000), decay_start (None): schedules.
        seed, device, wandb_name, submodule_name, alignment, alignment_penalty, compile, fused_optimizer: as
            :class:`~.standard.StandardTrainer`.

    Raises:
        ValueError: non-positive ``bandwidth`` or ``target_l0``, negative ``sparsity_penalty``, and the base
            trainer's checks.
    """

    dict_class = JumpReluAutoEncoder
    grad_clip_norm = 1.0
    adam_betas = (0.0, 0.999)
    config_fields = ("bandwidth", "sparsity_penalty", "target_l0")

    def __init__(self, steps: int, activation_dim: int, dict_size: int, layer: int, lm_name: str,
                 dict_class: Optional[type] = None, seed: Optional[int] = None, lr: float = 7e-5,
                 bandwidth: float = 0.001, sparsity_penalty: float = 1.0, warmup_steps: int = 1000,
                 sparsity_warmup_steps: Optional[int] = 2000, decay_start: Optional[int] = None,
                 target_l0: float = 20.0, device: Optional[str] = None, wandb_name: Optional[str] = None,
                 submodule_name: Optional[str] = None, alignment: Optional[str] = None,
                 alignment_penalty: Optional[float] = None, compile: Union[bool, str] = False,
                 fused_optimizer: Optional[bool] = None):
        for name, v, ok in (("bandwidth", bandwidth, lambda v: v > 0), ("target_l0", target_l0, lambda v: v > 0),
                            ("sparsity_penalty", sparsity_penalty, lambda v: v >= 0)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v) or v == float("inf"):
                raise ValueError(f"{name} must be a finite {'non-negative' if name == 'sparsity_penalty' else 'positive'}"
                                 f" number, got {v!r}")
        self.bandwidth, self.sparsity_penalty, self.target_l0 = float(bandwidth), float(sparsity_penalty), float(target_l0)
        super().__init__(
            steps, activation_dim, dict_size, layer, lm_name, dict_class=dict_class, lr=lr,
            warmup_steps=warmup_steps, decay_start=decay_start, sparsity_warmup_steps=sparsity_warmup_steps,
            seed=seed, device=device, wandb_name=wandb_name, submodule_name=submodule_name, alignment=alignment,
            alignment_penalty=alignment_penalty, compile=compile, fused_optimizer=fused_optimizer,
        )

    def encode_for_loss(self, x, step):
        f = JumpReLUFunction.apply(self.ae.pre_activations(x), self.ae.threshold, self.bandwidth)
        return self.ae.decode(f), f, {}

    def sparsity_term(self, x, x_hat, f, aux, step):
        """``sparsity_penalty * s(step) * (L0 / target_l0 - 1)^2`` with the step-function L0 of ``f``."""
        l0 = StepFunction.apply(f, self.ae.threshold, self.bandwidth).sum(-1).mean()
        term = self.sparsity_penalty * (l0 / self.target_l0 - 1).pow(2) * self.sparsity_warmup_fn(step)
        return term, {"sparsity_loss": l0}


class JumpReluStackRule(StackRule):
    """Stacked JumpReLU (see :mod:`..stacked`), as :class:`JumpReluTrainer`: each dictionary's learned
    ``threshold`` is a stacked parameter (``engine.extra["threshold"] [n, dict_size]``, Adam and gradient clipping
    with the others), ``f = JumpReLU_threshold(pre)`` with the straight-through estimators, and the sparsity term
    ``sparsity_penalty * s(t) * (L0 / target_l0 - 1)^2`` with each dictionary's ``sparsity_penalty``,
    ``target_l0``, ``bandwidth``, sparsity warmup and ``apply_b_dec_to_input``."""

    extra_params = ("threshold",)

    def load_state(self):
        e, trs = self.engine, self.engine.trainers
        dtype = e.W_dec.dtype
        widths = [t.bandwidth for t in trs]
        # one Python float when the stack shares it (the lone trainer's arithmetic), else [n, 1, 1]
        self.bandwidth = (widths[0] if len(set(widths)) == 1
                          else torch.tensor(widths, device=e.device, dtype=dtype)[:, None, None])
        self.target_l0 = torch.tensor([t.target_l0 for t in trs], device=e.device, dtype=torch.float32)
        sub = [bool(t.ae.apply_b_dec_to_input) for t in trs]
        self.all_sub, self.any_sub = all(sub), any(sub)
        self.sub_b_dec = torch.tensor(sub, device=e.device, dtype=dtype)[:, None, None]

    def host_tables(self, steps):
        trs = self.engine.trainers
        return {"l0_coef": torch.tensor([[t.sparsity_penalty * t.sparsity_warmup_fn(s) for t in trs] for s in steps],
                                        dtype=torch.float64)}

    def pre_activations(self, x, tab):
        """``W_enc x + b_enc`` (``W_enc (x - b_dec) + b_enc`` for dictionaries with ``apply_b_dec_to_input``):
        ``x [batch, activation_dim] -> [n, batch, dict_size]``."""
        e = self.engine
        if self.all_sub:
            return e.pre_activations(x)
        xs = x.unsqueeze(0).expand(e.n, -1, -1)
        if self.any_sub:
            xs = xs - e.b_dec.unsqueeze(1) * self.sub_b_dec
        return torch.baddbmm(e.b_enc.unsqueeze(1), xs, e.encoder().mT)

    def _threshold(self) -> torch.Tensor:
        return self.engine.extra["threshold"].unsqueeze(1)

    def select(self, pre, tab):
        return JumpReLUFunction.apply(pre, self._threshold(), self.bandwidth), {}

    def sparsity(self, x, x_hat, f, aux, tab):
        l0 = StepFunction.apply(f, self._threshold(), self.bandwidth).sum(-1).mean(-1)
        return tab["l0_coef"] * (l0 / self.target_l0 - 1).pow(2), {"sparsity_loss": l0}


AlignedJumpReluTrainer = make_aligned(JumpReluTrainer)


JUMPRELU = register(Architecture(
    name="jumprelu", label="JumpReLU", trainer=JumpReluTrainer, aligned_trainer=AlignedJumpReluTrainer,
    sparsity_param="target_l0", sparsity_values=(32, 64, 128), default_sparsity=64, schedule=relu_schedule,
    saebench_kind="jumprelu", stack_rule=JumpReluStackRule, in_paper=False))
