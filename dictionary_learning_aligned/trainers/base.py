"""What every trainer shares: the ``SAETrainer`` interface, schedules, the unit-norm decoder step, the alignment
ablation hooks and dead-feature counters. Concrete trainers only define their sparsity loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import namedtuple
from typing import Callable, Optional, Union

import torch

from .. import distributed as _dist
from ..alignment import check_mode
from ..dictionary import Dictionary

LossLog = namedtuple("LossLog", ["x", "x_hat", "f", "losses"])


class NonFiniteError(FloatingPointError):
    """A non-finite loss or gradient; raised before the optimizer step, so the weights are still the last good
    ones (and the last checkpoint stays loadable)."""


class SAETrainer(ABC):
    """The interface of dictionary_learning's ``SAETrainer``: ``update(step, activations)``, ``loss(x, step,
    logging=False)``, ``config`` and ``get_logging_parameters()``.

    Args:
        seed: random seed recorded in ``config`` (None: not seeded).
    """

    def __init__(self, seed: Optional[int] = None):
        self.seed = seed
        self.logging_parameters: list[str] = []

    @abstractmethod
    def update(self, step: int, activations: torch.Tensor) -> None:
        """One optimizer step on ``activations [batch, activation_dim]``."""

    def get_logging_parameters(self) -> dict:
        """Values of the attributes named in ``self.logging_parameters`` (missing ones are skipped)."""
        return {p: getattr(self, p) for p in self.logging_parameters if hasattr(self, p)}

    @property
    def config(self) -> dict:
        """JSON-ready description of the trainer."""
        return {"trainer_class": type(self).__name__, "seed": self.seed}


def get_lr_schedule(
    total_steps: int,
    warmup_steps: int,
    decay_start: Optional[int] = None,
    resample_steps: Optional[int] = None,
) -> Callable[[int], float]:
    """Learning-rate multiplier per step, as in dictionary_learning: linear warmup from 0 to 1 over
    ``warmup_steps``, constant, then linear decay to 0 from ``decay_start`` to ``total_steps``. With
    ``resample_steps`` the warmup repeats after every resampling instead.

    Raises:
        ValueError: inconsistent step counts (warmup not below the total, decay start not after warmup...).
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"warmup_steps must be in [0, steps={total_steps}), got {warmup_steps}")
    if decay_start is not None:
        if resample_steps is not None:
            raise ValueError("decay_start and resample_steps cannot be used together")
        if not warmup_steps < decay_start < total_steps:
            raise ValueError(f"decay_start must be in (warmup_steps={warmup_steps}, steps={total_steps}), got {decay_start}")
    if resample_steps is not None:
        if not 0 < resample_steps < total_steps:
            raise ValueError(f"resample_steps must be in (0, steps={total_steps}), got {resample_steps}")
        return lambda step: min((step % resample_steps) / max(warmup_steps, 1), 1.0)

    def schedule(step: int) -> float:
        if step < warmup_steps:
            return step / warmup_steps
        if decay_start is not None and step >= decay_start:
            return (total_steps - step) / (total_steps - decay_start)
        return 1.0

    return schedule


def get_sparsity_warmup_fn(total_steps: int, sparsity_warmup_steps: Optional[int] = None) -> Callable[[int], float]:
    """Sparsity-penalty multiplier: linear ramp from 0 to 1 over ``sparsity_warmup_steps`` (1 throughout if None).

    Raises:
        ValueError: ``sparsity_warmup_steps`` negative or larger than ``total_steps``.
    """
    if sparsity_warmup_steps is None or sparsity_warmup_steps == 0:
        return lambda step: 1.0
    if not 0 < sparsity_warmup_steps <= total_steps:
        raise ValueError(f"sparsity_warmup_steps must be in [0, steps={total_steps}], got {sparsity_warmup_steps}")
    return lambda step: min(step / sparsity_warmup_steps, 1.0)


@torch.no_grad()
def remove_gradient_parallel_to_decoder_directions(W_dec: torch.Tensor) -> None:
    """Project ``W_dec.grad [activation_dim, dict_size]`` onto the tangent space of unit-norm columns, in place,
    so that the step does not change the column norms to first order (dictionary_learning's ConstrainedAdam)."""
    if W_dec.grad is None:
        return
    d = W_dec / W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)
    W_dec.grad -= (W_dec.grad * d).sum(0, keepdim=True) * d


def _check_positive(name, value, integer=False, allow_zero=False):
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and (value >= 0 if allow_zero else value > 0)
    if integer:
        ok = ok and float(value).is_integer()
    if not ok or value != value or value in (float("inf"),):
        kind = "integer" if integer else "number"
        raise ValueError(f"{name} must be a {'non-negative' if allow_zero else 'positive'} {kind}, got {value!r}")


class DictionaryTrainer(SAETrainer):
    """Common machinery of the trainers in this library (not used directly).

    Owns one dictionary ``self.ae``, an Adam optimizer with the unit-norm decoder step, the lr schedule,
    the sparsity warmup, the alignment ablations (``"penalty"`` adds ``alignment_penalty * sum_i (a_i - 1)^2``
    to the loss; ``"projection"`` projects after each step, via ``Dictionary.after_optimizer_step``) and the
    dead-feature counter ``tokens_since_fired [dict_size]`` (tokens since each feature last fired).

    Speed options (they change how, not what, is computed; not recorded in ``config``): ``compile=True`` (or a
    ``torch.compile`` backend name) compiles the step-independent part of the loss (encoder, selection, decoder,
    reconstruction error) with ``torch.compile``; ``fused_optimizer`` (default: on for CUDA) uses PyTorch's fused
    Adam kernel.

    Subclasses set ``dict_class`` and implement :meth:`sparsity_term` (and, if needed, :meth:`encode_for_loss`,
    :meth:`before_step`, :meth:`after_step`); they list their own hyperparameters in ``config_fields`` so that
    ``config`` (and ``config.json``) records them (see :meth:`extra_config` and ``docs/extending.md``).
    """

    dict_class: type = Dictionary
    #: names of this class's own hyperparameters, each stored as an attribute of the same name; :meth:`extra_config`
    #: collects them from the class and all its bases, so a subclass lists only the ones it adds
    config_fields: tuple = ()
    #: Adam's (beta1, beta2); dictionary_learning's JumpReLU trainer uses (0.0, 0.999)
    adam_betas: tuple = (0.9, 0.999)

    def __init__(
        self,
        steps: int,
        activation_dim: int,
        dict_size: int,
        layer: int,
        lm_name: str,
        dict_class: Optional[type] = None,
        lr: float = 1e-3,
        warmup_steps: int = 1000,
        decay_start: Optional[int] = None,
        sparsity_warmup_steps: Optional[int] = 2000,
        seed: Optional[int] = None,
        device: Optional[str] = None,
        wandb_name: Optional[str] = None,
        submodule_name: Optional[str] = None,
        alignment: Optional[str] = None,
        alignment_penalty: Optional[float] = None,
        resample_steps: Optional[int] = None,
        dict_kwargs: Optional[dict] = None,
        compile: Union[bool, str] = False,
        fused_optimizer: Optional[bool] = None,
    ):
        super().__init__(seed)
        _check_positive("steps", steps, integer=True)
        _check_positive("lr", lr)
        if layer is None or lm_name is None:
            raise ValueError("layer and lm_name are required (they are recorded in config and used by loaders)")
        self.alignment = check_mode(alignment)
        if self.alignment == "penalty":
            if alignment_penalty is None:
                raise ValueError('alignment="penalty" needs alignment_penalty (the lambda of the soft constraint)')
            _check_positive("alignment_penalty", alignment_penalty)
        self.alignment_penalty = alignment_penalty
        self.steps, self.layer, self.lm_name, self.submodule_name = int(steps), layer, lm_name, submodule_name
        self.lr, self.warmup_steps, self.decay_start = lr, warmup_steps, decay_start
        self.sparsity_warmup_steps, self.resample_steps = sparsity_warmup_steps, resample_steps
        self.wandb_name = wandb_name or type(self).__name__
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if seed is not None:
            torch.manual_seed(seed)
            torch.cuda.manual_seed_all(seed)
        self.dict_class = dict_class or type(self).dict_class
        self.dict_kwargs = dict(dict_kwargs or {})
        self.ae = self.dict_class(activation_dim, dict_size, alignment=self.alignment, **self.dict_kwargs).to(self.device)
        if fused_optimizer is None:
            fused_optimizer = torch.device(self.device).type == "cuda"
        self.fused_optimizer = bool(fused_optimizer)
        # fused Adam: one kernel for the whole update instead of ~10 passes over the parameters (same math)
        self.optimizer = torch.optim.Adam(self.ae.parameters(), lr=lr, betas=tuple(self.adam_betas),
                                          **({"fused": True} if fused_optimizer else {}))
        if compile not in (False, None, True) and not isinstance(compile, str):
            raise ValueError(f"compile must be a bool or a torch.compile backend name, got {compile!r}")
        self.compile = compile or False
        self._forward_compiled = None
        self.lr_fn = get_lr_schedule(self.steps, warmup_steps, decay_start, resample_steps)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda=self.lr_fn)
        self.sparsity_warmup_fn = get_sparsity_warmup_fn(self.steps, sparsity_warmup_steps)
        self.tokens_since_fired = torch.zeros(dict_size, dtype=torch.long, device=self.device)
        self.logging_parameters = ["dead_fraction_10M"]
        self._ddp = None  # DistributedDataParallel wrapper of the loss (enable_data_parallel)
        self._dp_active = False  # True only inside update() of a data-parallel trainer: collectives allowed

    # -------------------------------------------------------------- data parallelism
    def enable_data_parallel(self) -> None:
        """Train data-parallel over the default ``torch.distributed`` process group from now on: ``update``
        then takes this rank's shard of each global batch (see :mod:`..distributed`), gradients are averaged
        over ranks by ``DistributedDataParallel``, and the statistics that are not per-token means are
        all-reduced, so every rank ends each step with the same weights and state as a single process trained
        on the global batch (up to float rounding). Rank 0's weights are broadcast to all ranks here.

        Raises:
            RuntimeError: no process group is initialised.
            ValueError: ``resample_steps`` is set (resampling draws random inputs per rank; not supported).
        """
        if not _dist.is_initialized():
            raise RuntimeError("enable_data_parallel needs torch.distributed.init_process_group first "
                               "(run under torchrun)")
        if self.resample_steps is not None:
            raise ValueError("resample_steps is not supported with data-parallel training")
        self._ddp = _dist.wrap(self)

    @property
    def data_parallel(self) -> bool:
        """Whether this trainer trains data-parallel (:meth:`enable_data_parallel`)."""
        return self._ddp is not None

    def _world(self) -> int:
        """Number of ranks whose shards make up the global batch inside :meth:`update` (1 otherwise)."""
        return _dist.world_size() if self._dp_active else 1

    def _global(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` all-reduced (``op``: sum/max/min) over ranks inside a data-parallel :meth:`update`; ``t``
        itself otherwise (single process, or :meth:`loss` called for logging)."""
        return _dist.all_reduce(t.clone(), op) if self._dp_active else t

    def _gather(self, t: torch.Tensor) -> torch.Tensor:
        """``t [n, ...]`` of all ranks concatenated in rank order inside a data-parallel :meth:`update`."""
        return _dist.all_gather_cat(t) if self._dp_active else t

    # -------------------------------------------------------------- hooks for subclasses
    #: clip the global gradient norm to this value before each step (None: no clipping)
    grad_clip_norm: Optional[float] = None
    #: check the loss and gradients for NaN/inf at every step (raises :class:`NonFiniteError`)
    check_finite: bool = True
    #: :meth:`_forward` runs collectives when data-parallel (then it is not compiled there)
    _forward_has_collectives: bool = False

    def encode_for_loss(self, x: torch.Tensor, step: Optional[int]):
        """``(x_hat [batch, activation_dim], f [batch, dict_size] or None, aux: dict)`` used by the loss;
        subclasses put extra tensors (pre-activations, top-k values) in ``aux``. ``f`` may be None when the
        code is kept sparse in ``aux`` (then :meth:`dense_features` and :meth:`fired` read ``aux``). Must not
        depend on ``step`` (it is None on the compiled path)."""
        x_hat, f = self.ae(x, output_features=True)
        return x_hat, f, {}

    @abstractmethod
    def sparsity_term(self, x, x_hat, f, aux, step: int):
        """``(scaled term added to the loss, {name: unscaled value})``; subclasses define their sparsity loss."""

    def before_step(self, step: int, x: torch.Tensor) -> None:
        """Called at the start of :meth:`update` (e.g. to initialise ``b_dec`` from the first batch)."""

    def after_step(self, step: int, x: torch.Tensor, f: torch.Tensor, aux: dict) -> None:
        """Called at the end of :meth:`update` with the step's features (threshold EMA, p-annealing...)."""

    # -------------------------------------------------------------- loss
    def _forward(self, x: torch.Tensor):
        """Step-independent part of the loss (what ``compile`` compiles): ``(recon, x_hat, f, aux)``."""
        x_hat, f, aux = self.encode_for_loss(x, None)
        return (x - x_hat).pow(2).sum(-1).mean(), x_hat, f, aux

    def _compile_forward(self):
        """``torch.compile`` of :meth:`_forward` for this trainer alone. Dynamo keeps its compiled variants per
        code object, at most ``recompile_limit`` (8) of them; a sweep has more trainer classes and settings than
        that, so each trainer compiles its own copy of the code (otherwise later trainers would silently run
        uncompiled)."""
        import types

        fn = type(self)._forward
        code = fn.__code__.replace(co_name=f"_forward_{type(self).__name__}_{id(self):x}")
        own = types.FunctionType(code, fn.__globals__, code.co_name, fn.__defaults__, fn.__closure__)
        backend = "inductor" if self.compile is True else self.compile
        return torch.compile(types.MethodType(own, self), backend=backend)

    def dense_features(self, f: Optional[torch.Tensor], aux: dict) -> torch.Tensor:
        """``f [batch, dict_size]`` (trainers with sparse codes rebuild it from ``aux`` when ``f`` is None)."""
        return f

    def _compute(self, x: torch.Tensor, step: int):
        if self.compile and not (self._dp_active and self._forward_has_collectives):
            if self._forward_compiled is None:
                self._forward_compiled = self._compile_forward()
            recon, x_hat, f, aux = self._forward_compiled(x)
        else:
            recon, x_hat, f, aux = self._forward(x)
        self._check_shapes(x, x_hat, f)
        sparse, terms = self.sparsity_term(x, x_hat, f, aux, step)
        loss = recon + sparse
        terms = {"mse_loss": recon, **terms}
        if self.alignment == "penalty":
            pen = self.ae.alignment_loss()
            loss = loss + self.alignment_penalty * pen
            terms["alignment_penalty"] = pen
        return loss, terms, x_hat, f, aux

    def _check_shapes(self, x: torch.Tensor, x_hat: torch.Tensor, f: Optional[torch.Tensor]) -> None:
        """Refuse a dictionary whose reconstruction is not ``[batch, activation_dim]`` or whose code is not
        ``[batch, dict_size]``: broadcasting would otherwise give a loss, and train, silently (a plug-in's
        ``encode`` returning ``[1, dict_size]``, or a ``decode`` returning ``[batch, 1]``). Shapes only: no host
        synchronisation.

        Raises:
            ValueError: naming the dictionary class and both shapes.
        """
        want_f = (x.shape[0], self.ae.dict_size)
        if x_hat.shape != x.shape or (f is not None and tuple(f.shape) != want_f):
            got_f = "sparse" if f is None else tuple(f.shape)
            raise ValueError(f"{type(self.ae).__name__} gave codes of shape {got_f} (expected {want_f}) and a "
                             f"reconstruction of shape {tuple(x_hat.shape)} (expected {tuple(x.shape)}) for a batch "
                             f"of shape {tuple(x.shape)}; its encode/decode must keep the batch dimension")

    def loss(self, x: torch.Tensor, step: int, logging: bool = False):
        """Training loss: ``mean_batch sum_d (x - x_hat)^2`` + the trainer's sparsity term [+ the
        ``"penalty"`` ablation's ``alignment_penalty * sum_i (a_i - 1)^2``]. Does not change trainer state.

        Args:
            x: ``[batch, activation_dim]``.
            step: current step (for warmups and schedules).
            logging: return ``LossLog(x, x_hat, f, losses: dict of floats)`` instead of the scalar tensor.
        """
        loss, terms, x_hat, f, _ = self._compute(x, step)
        if not logging:
            return loss
        terms["l2_loss"] = (x - x_hat).norm(dim=-1).mean()
        terms["loss"] = loss
        f = self.dense_features(f, _)
        return LossLog(x, x_hat, f, {k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})

    # -------------------------------------------------------------- step
    def update(self, step: int, activations: torch.Tensor) -> None:
        """One Adam step on ``activations [batch, activation_dim]``: loss, backward, decoder-gradient projection,
        optional gradient clipping, step, decoder renormalization (and the projection ablation), lr schedule,
        dead-feature counters, then :meth:`after_step`.

        Raises:
            ValueError: activations of the wrong shape, or an empty batch (no state is changed).
        """
        if not isinstance(activations, torch.Tensor) or not activations.is_floating_point():
            raise TypeError(f"{type(self).__name__}.update expects a floating-point tensor of activations, got "
                            f"{getattr(activations, 'dtype', type(activations).__name__)}")
        x = activations.to(self.device, self.ae.W_dec.dtype)
        if x.ndim != 2 or x.shape[1] != self.ae.activation_dim:
            raise ValueError(f"{type(self).__name__}.update expects activations [batch, {self.ae.activation_dim}], "
                             f"got shape {tuple(x.shape)}")
        if x.shape[0] == 0:  # before any state changes (b_dec init, optimizer, counters)
            raise ValueError(f"{type(self).__name__}.update got an empty batch (shape {tuple(x.shape)}); nothing "
                             f"was changed")
        self._dp_active = self._ddp is not None
        try:
            self._update(step, x)
        finally:
            self._dp_active = False

    def _update(self, step: int, x: torch.Tensor) -> None:
        self.before_step(step, x)
        self.optimizer.zero_grad(set_to_none=True)
        loss, _, _, f, aux = (self._ddp or self._compute)(x, step)
        # data-parallel: DDP averages the gradients over ranks here. torch.autograd.backward, not loss.backward():
        # nnsight replaces Tensor.backward on import, and its replacement fails when the loss came from a
        # torch.compile'd function (WithBlockNotFoundError, seen on the GPU with --compile)
        torch.autograd.backward(loss)
        if self.check_finite:
            self._check_finite(loss, step)
        remove_gradient_parallel_to_decoder_directions(self.ae.W_dec)
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.ae.parameters(), self.grad_clip_norm)
        self.optimizer.step()
        self.ae.after_optimizer_step()
        self.scheduler.step()
        f = None if f is None else f.detach()
        self._record_firing(self.fired(f, aux), x.shape[0] * self._world())
        self.after_step(step, x, f, aux)
        if self.resample_steps is not None and step > 0 and step % self.resample_steps == 0:
            self.resample_neurons(self.tokens_since_fired > self.resample_steps // 2 * x.shape[0], x)

    @torch.no_grad()
    def _check_finite(self, loss: torch.Tensor, step: int) -> None:
        """Raise :class:`NonFiniteError` if the loss or a gradient holds NaN/inf, before the optimizer step.

        One device-to-host synchronisation per call: the finiteness of the loss and of every gradient is
        reduced to one flag on the device (all-reduced over ranks when data-parallel, so all ranks agree) and
        read once; the culprits are named only after a failure."""
        grads = [p.grad for p in self.ae.parameters() if p.grad is not None]
        flags = torch.stack([torch.isfinite(loss.detach()).all()] + [torch.isfinite(g).all() for g in grads])
        ok = self._global(flags.all().to(torch.int32), "min")
        if bool(ok):
            return
        if not torch.isfinite(loss):
            raise NonFiniteError(f"{type(self).__name__}: non-finite loss ({float(loss)}) at step {step}")
        bad = [n for n, p in self.ae.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        raise NonFiniteError(f"{type(self).__name__}: non-finite "
                             + (f"gradient of {bad}" if bad else "loss or gradient on another rank")
                             + f" at step {step}")

    # -------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict:
        """Everything needed to continue training exactly: dictionary (with its buffers), optimizer, lr
        scheduler, dead-feature counters, training log and the trainer-specific state (:meth:`_extra_state`).
        Holds only tensors and plain Python values, so it loads with ``torch.load(weights_only=True)``."""
        return {"ae": self.ae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "tokens_since_fired": self.tokens_since_fired,
                "log": list(getattr(self, "log", [])), "extra": self._extra_state()}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (same trainer class and configuration)."""
        self.ae.load_state_dict(state["ae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.tokens_since_fired.copy_(state["tokens_since_fired"])
        self.log = list(state.get("log", []))
        self._load_extra_state(state.get("extra", {}))

    def _extra_state(self) -> dict:
        return {}

    def _load_extra_state(self, extra: dict) -> None:
        """Restore what :meth:`_extra_state` saved (nothing for trainers without extra state)."""

    @torch.no_grad()
    def fired(self, f: Optional[torch.Tensor], aux: dict) -> torch.Tensor:
        """``[dict_size]`` bool: features that fired on some token of the step's (global) batch; ``f [batch,
        dict_size]`` are this rank's features (OR-reduced over ranks when data-parallel)."""
        fired = self._fired_local(f, aux)
        return self._global(fired.to(torch.int32), "max").bool() if self._dp_active else fired

    def _fired_local(self, f: Optional[torch.Tensor], aux: dict) -> torch.Tensor:
        """``[dict_size]`` bool: features with a non-zero activation in this rank's batch."""
        return (f != 0).any(dim=0)

    @torch.no_grad()
    def _record_firing(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Advance the dead-feature counters by ``n_tokens`` and reset those of ``fired [dict_size]`` (bool),
        without a host synchronisation."""
        self.tokens_since_fired.add_(n_tokens).masked_fill_(fired, 0)

    def dead_mask(self, window_tokens: int = 10_000_000) -> torch.Tensor:
        """``[dict_size]`` bool: features that have not fired in the last ``window_tokens`` training tokens."""
        return self.tokens_since_fired >= window_tokens

    @property
    def dead_fraction_10M(self) -> float:
        """Fraction of features silent for the last 10M training tokens."""
        return float(self.dead_mask().float().mean())

    def resample_neurons(self, deads: torch.Tensor, activations: torch.Tensor) -> None:
        """Resampling is defined only by trainers that support it (see ``StandardTrainer``)."""
        raise ValueError(f"{type(self).__name__} does not support resample_steps")

    # -------------------------------------------------------------- config
    def extra_config(self) -> dict:
        """The trainer's own hyperparameters for ``config``: ``{name: getattr(self, name)}`` for every name in
        ``config_fields`` of this class and its bases (base classes first, each name once). Override it (and call
        ``super().extra_config()``) for values that are not plain attributes. Values must be JSON-ready.

        Raises:
            AttributeError: a name in ``config_fields`` that is not an attribute of the trainer.
        """
        names = dict.fromkeys(n for k in reversed(type(self).__mro__) for n in vars(k).get("config_fields", ()))
        return {n: getattr(self, n) for n in names}

    @property
    def config(self) -> dict:
        """JSON-ready trainer description; the keys dictionary_learning's and SAEBench's loaders read are
        present (``trainer_class``, ``dict_class``, ``activation_dim``, ``dict_size``, ``layer``, ``lm_name``)."""
        return {
            "trainer_class": type(self).__name__,
            "dict_class": self.dict_class.__name__,
            "activation_dim": self.ae.activation_dim,
            "dict_size": self.ae.dict_size,
            "alignment": self.alignment,
            "alignment_penalty": self.alignment_penalty,
            "lr": self.lr,
            "steps": self.steps,
            "warmup_steps": self.warmup_steps,
            "decay_start": self.decay_start,
            "sparsity_warmup_steps": self.sparsity_warmup_steps,
            "resample_steps": self.resample_steps,
            "seed": self.seed,
            "device": str(self.device),
            "layer": self.layer,
            "lm_name": self.lm_name,
            "wandb_name": self.wandb_name,
            "submodule_name": self.submodule_name,
            **self.ae.dictionary_config(),
            **self.extra_config(),
        }


def make_aligned(base: type) -> type:
    """Create ``Aligned<Base>``: ``base`` with aligned training (arXiv 2605.18629) switched on.

    The subclass takes the same arguments; ``alignment`` defaults to ``"project"`` and may be any mode but None
    (e.g. ``"rescale"`` or an ablation). Resampling of dead features is not allowed.
    """

    def __init__(self, *args, alignment: Optional[str] = "project", **kwargs):
        alignment = check_mode(alignment)
        if alignment is None:
            raise ValueError(f"{type(self).__name__} needs an alignment mode; use {base.__name__} for standard training")
        if kwargs.get("resample_steps") is not None:
            raise ValueError("aligned training does not resample dead features; leave resample_steps=None")
        base.__init__(self, *args, alignment=alignment, **kwargs)

    name = f"Aligned{base.__name__}"
    doc = (f":class:`{base.__name__}` with aligned training: the encoder is reparameterized so that "
           f"``<e_i, d_i> = 1`` for every feature at every step (default ``alignment=\"project\"``). Same "
           f"arguments as :class:`{base.__name__}`; ``alignment=None`` or ``resample_steps`` raise ValueError.")
    return type(name, (base,), {"__init__": __init__, "__doc__": doc, "__module__": base.__module__, "__qualname__": name})
