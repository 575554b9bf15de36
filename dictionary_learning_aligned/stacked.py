"""The stacked sweep engine: many same-shape dictionaries trained as one batched model.

A sweep (seeds x sparsities x standard/aligned, one architecture and shape) is held as stacked parameters
``W_dec [n, activation_dim, dict_size]``, encoder (``W_enc`` or the aligned ``V``) ``[n, dict_size,
activation_dim]``, ``b_enc [n, dict_size]``, ``b_dec [n, activation_dim]``, and every step is one batched forward
and backward (``baddbmm`` over the stack) and one Adam update over the stacked tensors. Each dictionary keeps its
own settings as per-dictionary tensors: alignment mode (standard, ``project``, ``rescale``, ``projection``,
``penalty`` with its lambda; ``tied`` dictionaries form stacks of their own), learning rate and schedule, sparsity
coefficient or ``k`` and its schedule, dead-feature counters, inference threshold, p-annealing state.

The engine is built from ordinary trainers (:class:`~.trainers.base.DictionaryTrainer`), so each dictionary starts
from exactly the initialisation its own trainer made with its seed, and :meth:`StackedTrainer.sync_to_trainers`
writes the weights, optimizer moments, schedule position and trainer state back into those trainers: saving,
checkpoints, resume, evaluation and loading are the trainers' own and do not change. Trained one by one or
stacked, the dictionaries agree up to float rounding (the tests compare them for every architecture and mode).

What an architecture contributes is a :class:`StackRule` (its activation/selection, sparsity term, per-step
schedule tables and state), named by its registry entry (:class:`~.registry.Architecture` ``stack_rule``).

No host synchronisation happens inside a step: schedules and Adam's bias corrections are tables computed on the
host a chunk of steps ahead (copied to the device once per ``TABLE_CHUNK`` steps), and the non-finite guard
records, per dictionary, the first step whose loss or gradient was not finite, freezes that dictionary (its weights
stay those before that step) and is read every ``nan_check_every`` steps, when :meth:`StackedTrainer.check_finite`
names the dictionary and the step. ``python -m benchmarks.syncs`` counts the synchronising calls of training steps
on a GPU.

``StackedTrainer(compile=True)`` compiles the loss and the optimizer step with ``torch.compile``;
``compile="reduce-overhead"`` also replays them as CUDA graphs on a CUDA device (for small, launch-bound stacks).
"""

from __future__ import annotations

import math
from typing import Optional, Union

import torch

from . import alignment as al

#: schedule rows computed on the host per table refresh
TABLE_CHUNK = 1024
#: ``torch.compile`` modes that :class:`StackedTrainer` accepts as ``compile``
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: the modes among them in which Inductor replays CUDA graphs (cudagraph trees; CUDA devices only)
GRAPH_MODES = ("reduce-overhead", "max-autotune")


class StackRule:
    """The per-architecture part of a stacked step. Subclass it in the architecture's file and name the subclass
    as the :class:`~.registry.Architecture`'s ``stack_rule``.

    Attributes:
        engine: the :class:`StackedTrainer` (``engine.trainers``, ``engine.n``, ``engine.device``...).
        grad_clip_norm: per-dictionary gradient-norm clip (read from the trainer class; None: no clipping).
    """

    #: tables kept in float64 on the device (others are cast to float32)
    float64_tables: tuple = ()
    #: names of the dictionary's own parameters beyond ``W_dec``, the encoder, ``b_enc`` and ``b_dec`` (e.g.
    #: JumpReLU's ``threshold [dict_size]``): stacked as ``engine.extra[name] [n, ...]`` and trained, clipped,
    #: checked and written back like the others
    extra_params: tuple = ()

    def __init__(self, engine: "StackedTrainer"):
        self.engine = engine
        self.grad_clip_norm = type(engine.trainers[0]).grad_clip_norm

    @classmethod
    def group_key(cls, trainer) -> tuple:
        """Settings that must be equal for trainers to share a stack (beyond shape, device and dtype)."""
        return ()

    @classmethod
    def stackable(cls, trainer) -> Optional[str]:
        """None if ``trainer`` can be stacked, else the reason it must train alone."""
        if getattr(trainer, "resample_steps", None) is not None:
            return "resampling of dead features is not stacked"
        return None

    def host_tables(self, steps: range) -> dict:
        """``{name: tensor [len(steps), n]}`` (CPU) of per-step, per-dictionary schedule values (float64 tensors are
        cast to float32 on the device, others keep their dtype). Called with consecutive ranges."""
        return {}

    def pre_activations(self, x: torch.Tensor, tab: dict) -> torch.Tensor:
        """``[n, batch, dict_size]`` pre-activations of ``x [batch, activation_dim]`` (default: the engine's
        ``W_enc (x - b_dec) + b_enc``)."""
        return self.engine.pre_activations(x)

    def select(self, pre: torch.Tensor, tab: dict):
        """``(f [n, batch, dict_size], aux)`` from pre-activations ``pre [n, batch, dict_size]``."""
        return torch.relu(pre), {}

    def reconstruct(self, x: torch.Tensor, f: torch.Tensor, tab: dict):
        """``(x_hat [n, batch, activation_dim], reconstruction term [n])`` of ``x [batch, activation_dim]`` from
        the codes ``f [n, batch, dict_size]`` (default: ``W_dec f + b_dec`` and ``mean_batch ||x - x_hat||^2``)."""
        x_hat = self.engine.decode(f)
        return x_hat, (x - x_hat).pow(2).sum(-1).mean(-1)

    def sparsity(self, x, x_hat, f, aux, tab: dict):
        """``(term [n] added to each dictionary's loss, {name: [n] unscaled values})``."""
        return x_hat.new_zeros(self.engine.n, dtype=torch.float32), {}

    def before_step(self, step: int, x: torch.Tensor) -> None:
        """Called at the start of each step."""

    def after_step(self, step: int, x, f, aux, tab: dict) -> None:
        """Called at the end of each step (after the optimizer step and the dead-feature counters)."""

    def fired(self, f: torch.Tensor, aux: dict) -> torch.Tensor:
        """``[n, dict_size]`` bool: features that fired on some token of the batch."""
        return (f != 0).any(dim=1)

    def load_state(self) -> None:
        """Read the trainers' architecture-specific state into stacked tensors (at construction)."""

    def sync_state(self, steps_done: int) -> None:
        """Write the architecture-specific state back into the trainers after ``steps_done`` steps."""


def _adam_update(p, m, v, g, ok, step_size, bc2_sqrt, beta1: float, beta2: float, eps: float) -> None:
    """One Adam update of a stacked parameter ``p [n, ...]`` with moments ``m``, ``v`` and gradient ``g``, in place,
    in the order of operations of ``torch.optim.Adam`` (single-tensor path): ``step_size [n]`` is each
    dictionary's ``lr / (1 - beta1^t)``, ``bc2_sqrt`` (0-dim) ``sqrt(1 - beta2^t)``; rows with ``ok [n]`` False are
    left unchanged."""
    shape = (-1, *[1] * (p.ndim - 1))
    keep = ok.view(shape)
    m_new = m.lerp(g, 1 - beta1)
    v_new = v.mul(beta2).addcmul_(g, g, value=1 - beta2)
    denom = (v_new.sqrt() / bc2_sqrt).add_(eps)
    p_new = p - (m_new * step_size.view(shape)) / denom
    m.copy_(torch.where(keep, m_new, m))
    v.copy_(torch.where(keep, v_new, v))
    p.copy_(torch.where(keep, p_new, p))


def stack_rule_for(trainer) -> Optional[type]:
    """The :class:`StackRule` of ``trainer``'s registered architecture, when ``type(trainer)`` is exactly that
    architecture's standard or aligned trainer (a subclass may change the loss, so it trains alone) and the
    trainer's settings allow stacking; None otherwise."""
    from .registry import for_trainer

    arch = for_trainer(type(trainer))
    if arch is None or arch.stack_rule is None or type(trainer) not in (arch.trainer, arch.aligned_trainer):
        return None
    if getattr(trainer, "data_parallel", False) or arch.stack_rule.stackable(trainer) is not None:
        return None
    return arch.stack_rule


def _adam_settings(trainer) -> tuple:
    group = trainer.optimizer.param_groups[0]
    return tuple(group["betas"]), group["eps"], group.get("weight_decay", 0), group.get("amsgrad", False)


def stack_key(trainer) -> Optional[tuple]:
    """Trainers with equal keys can share a stack; None for a trainer that must train alone."""
    rule = stack_rule_for(trainer)
    if rule is None:
        return None
    W = trainer.ae.W_dec
    return (rule, trainer.ae.activation_dim, trainer.ae.dict_size, str(W.device), W.dtype,
            trainer.alignment == "tied", _adam_settings(trainer), rule.group_key(trainer))


def plan_stacks(trainers: list) -> tuple[list[list[int]], list[int]]:
    """Group trainers into stacks.

    Args:
        trainers: the trainers of a sweep.

    Returns:
        ``(stacks, alone)``: lists of trainer indices that train together (same architecture, shape, device, dtype
        and stack-relevant settings; a stack may hold one trainer), and the indices of trainers that train one at
        a time (a trainer class without a stack rule, a subclass of a built-in, resampling, data-parallel).
    """
    groups: dict = {}
    alone = []
    for i, tr in enumerate(trainers):
        key = stack_key(tr)
        if key is None:
            alone.append(i)
        else:
            groups.setdefault(key, []).append(i)
    return list(groups.values()), alone


def spread_over_processes(keys: list, sizes: list, world: int) -> list[int]:
    """The process (``0..world-1``) of each item of a sweep that ``world`` processes share without
    communicating: items with equal keys (one stack: e.g. same architecture and dict_size) go to one process,
    stacks largest first (by the sum of their ``sizes``) onto the least loaded process, ties by key order. Every
    process computes the same assignment from the same lists.

    Args:
        keys: one hashable key per item (the caller decides what must stay together).
        sizes: one load per item (e.g. dict_size).
        world: number of processes.

    Raises:
        ValueError: ``world < 1`` or ``keys`` and ``sizes`` of different lengths.
    """
    if world < 1 or len(keys) != len(sizes):
        raise ValueError(f"need world >= 1 and one size per key, got world {world}, {len(keys)} keys, "
                         f"{len(sizes)} sizes")
    load_of: dict = {}
    for k, n in zip(keys, sizes):
        load_of[k] = load_of.get(k, 0) + n
    loads, owner = [0] * world, {}
    for k in sorted(load_of, key=lambda k: (-load_of[k], str(k))):
        owner[k] = loads.index(min(loads))
        loads[owner[k]] += load_of[k]
    return [owner[k] for k in keys]


def compile_mode(compile) -> Optional[str]:
    """The ``torch.compile`` mode of :class:`StackedTrainer`'s ``compile`` argument: None (eager) for False/None,
    ``"default"`` for True, else the mode string itself.

    Raises:
        ValueError: anything else (the message names the accepted values).
    """
    if isinstance(compile, str):
        if compile in COMPILE_MODES:
            return compile
    elif compile in (False, None, True):
        return "default" if compile else None
    raise ValueError(f"compile must be False, True or a torch.compile mode, one of {', '.join(COMPILE_MODES)}; "
                     f"got {compile!r}")


class StackedTrainer:
    """N dictionaries of one architecture and shape, trained as one batched model.

    Args:
        trainers: trainers of one stack (see :func:`plan_stacks`); their current weights, optimizer moments and
            state are read (so a trainer restored from a checkpoint continues exactly).
        indices: the trainers' positions in the caller's list, used in error messages (default 0..n-1).
        nan_check_every: read the non-finite flags every this many steps (one host synchronisation).
        compile: ``torch.compile`` the loss (forward and backward) and everything between the backward pass and
            the next step (finiteness check, decoder-gradient projection, clipping, Adam, decoder renormalisation:
            fewer kernels; same math up to float rounding). Host decisions (schedules, whether any feature may be
            dead) stay outside the compiled code. False (eager), True (Inductor's default mode) or a mode of
            :data:`COMPILE_MODES`; ``"reduce-overhead"`` (and ``"max-autotune"``) also replay the compiled code as
            CUDA graphs on a CUDA device (see :meth:`_prepare_graphs`; elsewhere they compile without graphs).

    Raises:
        ValueError: no trainers, trainers that cannot share a stack (different architecture, shape, device, dtype
            or settings: the message names the first mismatch), or a ``compile`` that is not one of the above.
    """

    def __init__(self, trainers: list, indices: Optional[list[int]] = None, nan_check_every: int = 100,
                 compile: Union[bool, str] = False):
        mode = compile_mode(compile)
        self._check_compatible(trainers)
        self.trainers = list(trainers)
        self.indices = list(indices) if indices is not None else list(range(len(trainers)))
        self.n = len(trainers)
        self.nan_check_every = int(nan_check_every)
        first = trainers[0]
        self.device = first.ae.W_dec.device
        self.activation_dim, self.dict_size = first.ae.activation_dim, first.ae.dict_size
        rule_cls = stack_rule_for(first)
        self.extra_names = tuple(rule_cls.extra_params)
        self._gather_parameters()
        self._gather_modes()
        self._gather_optimizer()
        self.tokens_since_fired = torch.stack([t.tokens_since_fired for t in trainers]).clone()
        self.bad_step = torch.full((self.n,), -1, dtype=torch.long, device=self.device)
        self._tables, self._host, self._table_start, self.step = {}, {}, None, None
        self._bias_table, self._bias_start = None, None
        self.rule = rule_cls(self)
        self.rule.load_state()
        self.compiled = mode is not None
        #: CUDA graphs requested (a mode of :data:`GRAPH_MODES`): each update starts a cudagraph-tree step
        self.graphs = mode in GRAPH_MODES
        if self.graphs:
            self._prepare_graphs()
        self._losses, self._optimizer_step = self._compile(self.losses, mode), self._compile(self.optimizer_step, mode)

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _compile(fn, mode: Optional[str]):
        """``fn`` itself (mode None: eager), or ``torch.compile(fn)`` in ``mode`` (``"default"``, i.e.
        ``compile=True``: no mode argument, as before modes were accepted)."""
        if mode is None:
            return fn
        if mode == "default":
            return torch.compile(fn, dynamic=False)
        return torch.compile(fn, dynamic=False, mode=mode)

    def _prepare_graphs(self) -> None:
        """Mark the tensors that live across steps at a fixed address as static inputs of the compiled code
        (``torch._dynamo.mark_static_address``): the stacked parameters, their gradients and the Adam moments,
        which :meth:`optimizer_step` changes in place (Inductor replays a graph that mutates an input only when
        that input is static or itself an output of an earlier graph of the step), and the per-dictionary mode
        tensors and dead-feature counters read by the loss (a non-static input is copied into the graph's own
        buffer at every replay).

        The gradients are allocated here, zero, and stay: the backward pass adds into them and
        :meth:`optimizer_step` zeroes them at its end. (Set to None before each backward pass, as in the other
        modes, the decoder's and encoder's gradients would be fresh copies at each step: the compiled backward
        returns them transposed, and autograd copies such a gradient into the parameter's layout.) Nothing of a
        step's graph outputs (loss, codes, ``ok``) is read after that step: the next replay overwrites them."""
        for p in self.params:
            p.grad = torch.zeros_like(p)
        mark = torch._dynamo.mark_static_address
        for t in (*self.params, *[p.grad for p in self.params], *self.exp_avg, *self.exp_avg_sq,
                  self.tokens_since_fired, self.m_project, self.m_rescale, self.m_projection, self.penalty):
            mark(t)

    @staticmethod
    def _check_compatible(trainers) -> None:
        if not trainers:
            raise ValueError("a stack needs at least one trainer")
        keys = [stack_key(t) for t in trainers]
        for i, (t, k) in enumerate(zip(trainers, keys)):
            if k is None:
                raise ValueError(f"trainer {i} ({type(t).__name__}) cannot be stacked: no stack rule for its class or "
                                 f"its settings (see plan_stacks)")
        names = ("architecture", "activation_dim", "dict_size", "device", "dtype", "tied", "Adam settings",
                 "architecture settings")
        for i, k in enumerate(keys[1:], 1):
            for name, a, b in zip(names, keys[0], k):
                if a != b:
                    raise ValueError(f"trainers 0 and {i} cannot share a stack: different {name} ({a} vs {b}); "
                                     f"group them with plan_stacks")

    def _gather_parameters(self) -> None:
        aes = [t.ae for t in self.trainers]
        self.tied = aes[0].alignment == "tied"
        enc = None if self.tied else ("V" if "V" in aes[0]._parameters else "W_enc")
        self.enc_names = [("V" if "V" in a._parameters else "W_enc") for a in aes] if enc else []
        self.names = ["W_dec"] + (["E"] if enc else []) + ["b_enc", "b_dec"]
        with torch.no_grad():
            self.W_dec = torch.stack([a.W_dec for a in aes]).clone().requires_grad_(True)
            self.E = (torch.stack([a._parameters[nm] for a, nm in zip(aes, self.enc_names)]).clone().requires_grad_(True)
                      if enc else None)
            self.b_enc = torch.stack([a.b_enc for a in aes]).clone().requires_grad_(True)
            self.b_dec = torch.stack([a.b_dec for a in aes]).clone().requires_grad_(True)
            self.extra = {nm: torch.stack([a._parameters[nm] for a in aes]).clone().requires_grad_(True)
                          for nm in self.extra_names}
        self.names += list(self.extra_names)
        self.params = [p for p in (self.W_dec, self.E, self.b_enc, self.b_dec) if p is not None]
        self.params += list(self.extra.values())

    def _trainer_params(self, t) -> list:
        """The trainer's parameters in the order of :attr:`params`."""
        ae = t.ae
        enc = [] if self.tied else [ae._parameters["V" if "V" in ae._parameters else "W_enc"]]
        return [ae.W_dec, *enc, ae.b_enc, ae.b_dec, *[ae._parameters[nm] for nm in self.extra_names]]

    def _gather_modes(self) -> None:
        modes = [t.alignment for t in self.trainers]
        dev = self.device
        self.m_project = torch.tensor([m == "project" for m in modes], device=dev)
        self.m_rescale = torch.tensor([m == "rescale" for m in modes], device=dev)
        self.m_projection = torch.tensor([m == "projection" for m in modes], device=dev)
        self.penalty = torch.tensor([float(t.alignment_penalty) if m == "penalty" else 0.0
                                     for t, m in zip(self.trainers, modes)], device=dev)
        self.any = {name: name in modes for name in ("project", "rescale", "projection", "penalty")}
        self.all_project = all(m == "project" for m in modes)

    def _gather_optimizer(self) -> None:
        (self.beta1, self.beta2), self.eps, wd, amsgrad = _adam_settings(self.trainers[0])
        if wd or amsgrad:
            raise ValueError("the stacked optimizer implements Adam without weight decay or amsgrad")
        steps, exp_avg, exp_avg_sq = set(), [], []
        for t in self.trainers:
            states = [t.optimizer.state.get(p, {}) for p in self._trainer_params(t)]
            steps.add(int(float(states[0].get("step", 0))))
            exp_avg.append([s.get("exp_avg") for s in states])
            exp_avg_sq.append([s.get("exp_avg_sq") for s in states])
        if len(steps) != 1:
            raise ValueError(f"trainers of one stack must have taken the same number of optimizer steps, got {steps}")
        self.adam_step = steps.pop()
        self.exp_avg = [self._stack_state([row[j] for row in exp_avg], p) for j, p in enumerate(self.params)]
        self.exp_avg_sq = [self._stack_state([row[j] for row in exp_avg_sq], p) for j, p in enumerate(self.params)]
        self.base_lr = [t.optimizer.param_groups[0].get("initial_lr", t.optimizer.param_groups[0]["lr"])
                        for t in self.trainers]

    @staticmethod
    def _stack_state(tensors: list, like: torch.Tensor) -> torch.Tensor:
        if all(s is None for s in tensors):
            return torch.zeros_like(like, requires_grad=False)
        return torch.stack([s if s is not None else torch.zeros_like(like[0]) for s in tensors]).detach().clone()

    # ------------------------------------------------------------------ schedules
    def _row(self, step: int) -> dict:
        """This step's row of every schedule table (device tensors ``[n]``), refreshing the tables a chunk ahead."""
        start = self._table_start
        if start is None or not start <= step < start + TABLE_CHUNK:
            self._refresh_tables(step)
        i = step - self._table_start
        return {k: v[i] for k, v in self._tables.items()}

    def _refresh_tables(self, step: int) -> None:
        steps = range(step, step + TABLE_CHUNK)
        host = {"lr": torch.tensor([[b * t.lr_fn(s) for b, t in zip(self.base_lr, self.trainers)] for s in steps],
                                   dtype=torch.float64)}
        host.update(self.rule.host_tables(steps))
        self._host, self._table_start = host, step
        keep64 = ("lr", *self.rule.float64_tables)
        self._tables = {k: (v.to(self.device, torch.float32) if k not in keep64 and v.dtype == torch.float64
                            else v.to(self.device)) for k, v in host.items()}

    def _bias_row(self, t: int) -> torch.Tensor:
        """Adam's bias corrections at optimizer step ``t``, float64 ``[1 - beta1^t, sqrt(1 - beta2^t)]`` on the
        device: a row of a table of ``TABLE_CHUNK`` steps computed on the host and copied once per chunk (a tensor
        built from host values at every step would be a synchronising copy on a GPU). The values are the Python
        floats ``1 - beta1 ** t`` and ``(1 - beta2 ** t) ** 0.5``, as a trainer's Adam computes them."""
        start = self._bias_start
        if start is None or not start <= t < start + TABLE_CHUNK:
            rows = [[1 - self.beta1 ** s, (1 - self.beta2 ** s) ** 0.5] for s in range(t, t + TABLE_CHUNK)]
            self._bias_table = torch.tensor(rows, dtype=torch.float64).to(self.device)
            self._bias_start = start = t
        return self._bias_table[t - start]

    def host_row(self, name: str, step: int) -> torch.Tensor:
        """The host copy of table ``name`` at ``step`` (``[n]``; the step must lie in the current chunk)."""
        return self._host[name][step - self._table_start]

    # ------------------------------------------------------------------ forward
    def encoder(self) -> torch.Tensor:
        """The encoders used by ``encode``, ``[n, dict_size, activation_dim]`` (aligned modes applied per
        dictionary; see :mod:`.alignment`)."""
        if self.tied:
            return self.W_dec.mT
        if self.all_project:
            return al.project_encoder(self.E, self.W_dec)
        W = self.E
        if self.any["project"]:
            W = torch.where(self.m_project[:, None, None], al.project_encoder(self.E, self.W_dec), W)
        if self.any["rescale"]:
            W = torch.where(self.m_rescale[:, None, None], al.rescale_encoder(self.E, self.W_dec), W)
        return W

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_dec) + b_enc`` per dictionary: ``x [batch, activation_dim] -> [n, batch, dict_size]``."""
        W = self.encoder()
        return torch.baddbmm(self.b_enc.unsqueeze(1), x.unsqueeze(0) - self.b_dec.unsqueeze(1), W.mT)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``W_dec f + b_dec`` per dictionary: ``f [n, batch, dict_size] -> [n, batch, activation_dim]``."""
        return torch.baddbmm(self.b_dec.unsqueeze(1), f, self.W_dec.mT)

    def losses(self, x: torch.Tensor, tab: dict):
        """Per-dictionary training losses ``[n]`` (reconstruction + sparsity [+ alignment penalty]), as each
        trainer's ``loss``; returns ``(loss [n], terms, f, aux)``."""
        f, aux = self.rule.select(self.rule.pre_activations(x, tab), tab)
        x_hat, recon = self.rule.reconstruct(x, f, tab)
        sparse, terms = self.rule.sparsity(x, x_hat, f, aux, tab)
        loss = recon + sparse
        if self.any["penalty"]:
            loss = loss + self.penalty * al.alignment_penalty(self.encoder(), self.W_dec)
        return loss, {"mse_loss": recon, **terms}, f, aux

    # ------------------------------------------------------------------ step
    def update(self, step: int, x: torch.Tensor) -> None:
        """One step of every dictionary on ``x [batch, activation_dim]`` (the same batch for all).

        Raises:
            ValueError: a batch of the wrong shape or an empty batch (nothing is changed).
            NonFiniteError: at a check (every ``nan_check_every`` steps), when a dictionary had a non-finite loss or
                gradient (see :meth:`check_finite`).
        """
        x = self._check_batch(x)
        if self.graphs:  # the graphs' outputs of the previous step may now be overwritten
            torch.compiler.cudagraph_mark_step_begin()
        self.step = step
        tab = self._row(step)
        self.rule.before_step(step, x)
        if not self.graphs:  # in graph mode the gradients stay, zeroed by the optimizer step
            for p in self.params:
                p.grad = None
        loss, _, f, aux = self._losses(x, tab)
        torch.autograd.backward(loss.sum())
        self.adam_step += 1
        ok = self._optimizer_step(loss.detach(), tab["lr"], self._bias_row(self.adam_step))
        f = f.detach()
        with torch.no_grad():
            self.tokens_since_fired.add_(x.shape[0]).masked_fill_(self.rule.fired(f, aux), 0)
            self.bad_step.copy_(torch.where(~ok & (self.bad_step < 0), step, self.bad_step))
        self.rule.after_step(step, x, f, aux, tab)
        if self.nan_check_every and (step + 1) % self.nan_check_every == 0:
            self.check_finite()

    def _check_batch(self, x) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError(f"stacked update expects a floating-point tensor, got {getattr(x, 'dtype', type(x))}")
        if x.ndim != 2 or x.shape[1] != self.activation_dim or x.shape[0] == 0:
            raise ValueError(f"stacked update expects a non-empty batch [batch, {self.activation_dim}], got shape "
                             f"{tuple(x.shape)}")
        return x.to(self.device, self.W_dec.dtype)

    @torch.no_grad()
    def optimizer_step(self, loss: torch.Tensor, lr: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """Everything after the backward pass, as each trainer does it: which dictionaries are finite, decoder
        gradient projection, clipping, Adam with learning rates ``lr [n]`` and bias corrections ``bias`` (float64
        ``[1 - beta1^t, sqrt(1 - beta2^t)]``), decoder renormalisation. Returns ``ok [n]`` (False: that dictionary
        had a non-finite loss or gradient and kept its parameters and moments). In graph mode it also zeroes the
        gradients for the next backward pass (see :meth:`_prepare_graphs`)."""
        ok = self._finite(loss)
        self._project_decoder_grad()
        if self.rule.grad_clip_norm is not None:
            self._clip_grad(self.rule.grad_clip_norm)
        self._adam(lr, ok, bias)
        self._after_optimizer_step(ok)
        if self.graphs:
            for p in self.params:
                p.grad.zero_()
        return ok

    @torch.no_grad()
    def _finite(self, loss: torch.Tensor) -> torch.Tensor:
        ok = torch.isfinite(loss.detach())
        for p in self.params:
            ok &= torch.isfinite(p.grad).flatten(1).all(1)
        return ok

    @torch.no_grad()
    def _project_decoder_grad(self) -> None:
        """Remove each decoder gradient's component along its unit column (as the single trainer does)."""
        W, g = self.W_dec, self.W_dec.grad
        d = W / W.norm(dim=-2, keepdim=True).clamp_min(1e-12)
        g -= (g * d).sum(-2, keepdim=True) * d

    @torch.no_grad()
    def _clip_grad(self, max_norm: float) -> None:
        """Clip each dictionary's gradient (all its parameters together) to norm ``max_norm``, as
        ``torch.nn.utils.clip_grad_norm_`` does for one trainer."""
        norms = torch.stack([p.grad.flatten(1).norm(dim=1) for p in self.params])
        coef = (max_norm / (norms.norm(dim=0) + 1e-6)).clamp(max=1.0)
        for p in self.params:
            p.grad.mul_(coef.view(-1, *[1] * (p.ndim - 1)))

    @torch.no_grad()
    def _adam(self, lr: torch.Tensor, ok: torch.Tensor, bias: torch.Tensor) -> None:
        """Adam (Kingma & Ba 2015, as ``torch.optim.Adam`` computes it) with a learning rate per dictionary
        ``lr [n]`` and the bias corrections ``bias`` (see :meth:`optimizer_step`); dictionaries with ``ok`` False
        keep their parameters and moments."""
        step_size = (lr / bias[0]).to(torch.float32)
        bc2_sqrt = bias[1].to(torch.float32)
        for p, m, v in zip(self.params, self.exp_avg, self.exp_avg_sq):
            _adam_update(p, m, v, p.grad, ok, step_size, bc2_sqrt, self.beta1, self.beta2, self.eps)

    @torch.no_grad()
    def _after_optimizer_step(self, ok: torch.Tensor) -> None:
        """Unit-norm decoder columns, and the ``projection`` ablation's encoder projection, per dictionary."""
        W = self.W_dec
        W.copy_(torch.where(ok[:, None, None], W / W.norm(dim=-2, keepdim=True).clamp_min(1e-12), W))
        if self.any["projection"]:
            keep = (self.m_projection & ok)[:, None, None]
            self.E.copy_(torch.where(keep, al.project_encoder(self.E, W), self.E))

    # ------------------------------------------------------------------ checks and write-back
    def check_finite(self) -> None:
        """Raise :class:`~.trainers.base.NonFiniteError` naming the first dictionary (by its index in the caller's
        list) and step whose loss or gradient was not finite. That dictionary was frozen at that step (its
        weights are those before it); the other dictionaries trained on normally. One host synchronisation."""
        bad = self.bad_step.tolist()
        hit = [(s, j) for j, s in enumerate(bad) if s >= 0]
        if not hit:
            return
        from .trainers.base import NonFiniteError

        step, j = min(hit)
        tr = self.trainers[j]
        raise NonFiniteError(
            f"trainer {self.indices[j]} ({type(tr).__name__}, alignment={tr.alignment}) stopped: non-finite loss or "
            f"gradient at step {step}. Its weights are those before step {step}; the other dictionaries of its "
            f"stack ({len(hit) - 1} more with a non-finite step) are unaffected")

    @torch.no_grad()
    def sync_to_trainers(self, steps_done: int) -> None:
        """Write weights, optimizer moments and step, learning-rate schedule position, dead-feature counters and
        the architecture's state back into each trainer, as if it had taken ``steps_done`` steps itself."""
        for j, t in enumerate(self.trainers):
            for p_stack, p, m, v in zip(self.params, self._trainer_params(t), self.exp_avg, self.exp_avg_sq):
                p.copy_(p_stack[j])
                t.optimizer.state[p] = {"step": torch.tensor(float(self.adam_step)),
                                        "exp_avg": m[j].clone(), "exp_avg_sq": v[j].clone()}
            t.tokens_since_fired.copy_(self.tokens_since_fired[j])
            t.scheduler.last_epoch = steps_done
            lr = self.base_lr[j] * t.lr_fn(steps_done)
            t.optimizer.param_groups[0]["lr"] = lr
            t.scheduler._last_lr = [lr]
        self.rule.sync_state(steps_done)
