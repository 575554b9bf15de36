"""TopK and BatchTopK trainers (auxiliary-k loss, inference threshold, optional k annealing)."""

from __future__ import annotations

from typing import Optional, Union

import torch

from ..dictionary import AutoEncoderTopK, BatchTopKSAE
from ..registry import Architecture, register, scaled_lr_schedule
from ..stacked import TABLE_CHUNK, StackRule
from .base import DictionaryTrainer, make_aligned


@torch.no_grad()
def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Geometric median of ``points [n, d]`` by Weiszfeld's algorithm (Weiszfeld 1937), starting at the mean.

    Returns:
        ``[d]`` tensor minimising ``sum_n ||points_n - m||``.
    """
    points = points.float()
    m = points.mean(0)
    for _ in range(max_iter):
        w = 1.0 / (points - m).norm(dim=1).clamp_min(1e-8)
        new = (w[:, None] * points).sum(0) / w.sum()
        if (new - m).norm() < tol:
            return new
        m = new
    return m


class TopKTrainer(DictionaryTrainer):
    """TopK SAE training (Gao et al. 2024, arXiv 2406.04093) with dictionary_learning's ``TopKTrainer`` defaults.

    Loss: ``mean_batch ||x - x_hat||^2 + auxk_alpha * auxk``, where the auxiliary loss reconstructs the residual
    ``x - x_hat`` from the ``k_aux = activation_dim // 2`` largest pre-activations of dead features (no firing for
    ``dead_feature_threshold`` tokens), normalised by the residual's variance (Gao et al., appendix A.2).
    ``b_dec`` starts at the geometric median of the first batch; gradients are clipped to norm 1; after
    ``threshold_start_step`` the inference threshold is an EMA (``threshold_beta``) of the mean per-token smallest
    kept activation.

    Args:
        steps, activation_dim, dict_size, layer, lm_name: as :class:`StandardTrainer`.
        k: active features per token (``1 <= k <= dict_size``).
        lr: Adam learning rate; None: ``2e-4 / sqrt(dict_size / 2**14)`` (Gao et al.'s scaling).
        auxk_alpha: weight of the auxiliary loss (default 1/32).
        warmup_steps (default 1000), decay_start (default None): lr schedule.
        threshold_beta (0.999), threshold_start_step (1000): inference threshold EMA.
        k_anneal_steps: if set, k decreases linearly from ``activation_dim`` to ``k`` over these steps.
        dead_feature_threshold: tokens without firing after which a feature counts as dead (10M).
        seed, device, wandb_name, submodule_name, alignment, alignment_penalty: as :class:`StandardTrainer`.
        sparse_decode: decode from the kept (index, value) pairs with
            :meth:`~dictionary_learning_aligned.dictionary.AutoEncoderTopK.decode_sparse` (reads only the active
            decoder columns; no dense ``[batch, dict_size]`` code is built for the decoder) instead of the dense
            product ``f @ W_dec.T``. Same loss and gradients up to float rounding (under autocast both read the
            decoder in the autocast dtype). Default False (plain dense decoder).
        compile, fused_optimizer: speed options, see :class:`~.base.DictionaryTrainer`.
        dict_kwargs: further constructor arguments of the dictionary class (besides ``k`` and ``alignment``).

    Raises:
        ValueError: ``k`` out of range, bad schedule values, bad alignment settings.
    """

    dict_class = AutoEncoderTopK
    grad_clip_norm = 1.0
    config_fields = ("k", "auxk_alpha", "threshold_beta", "threshold_start_step", "k_anneal_steps",
                     "dead_feature_threshold")

    def __init__(self, steps: int, activation_dim: int, dict_size: int, k: int, layer: int, lm_name: str,
                 dict_class: Optional[type] = None, lr: Optional[float] = None, auxk_alpha: float = 1 / 32,
                 warmup_steps: int = 1000, decay_start: Optional[int] = None, threshold_beta: float = 0.999,
                 threshold_start_step: int = 1000, k_anneal_steps: Optional[int] = None,
                 dead_feature_threshold: int = 10_000_000, seed: Optional[int] = None, device: Optional[str] = None,
                 wandb_name: Optional[str] = None, submodule_name: Optional[str] = None,
                 alignment: Optional[str] = None, alignment_penalty: Optional[float] = None,
                 sparse_decode: bool = False, compile: Union[bool, str] = False,
                 fused_optimizer: Optional[bool] = None, dict_kwargs: Optional[dict] = None):
        if lr is None:
            if isinstance(dict_size, int) and dict_size > 0:
                lr = 2e-4 / (dict_size / 2**14) ** 0.5
        if not isinstance(auxk_alpha, (int, float)) or auxk_alpha < 0:
            raise ValueError(f"auxk_alpha must be a non-negative number, got {auxk_alpha!r}")
        if not 0 <= threshold_beta < 1:
            raise ValueError(f"threshold_beta must be in [0, 1), got {threshold_beta!r}")
        self.k, self.auxk_alpha = k, float(auxk_alpha)
        self.threshold_beta, self.threshold_start_step = threshold_beta, threshold_start_step
        self.k_anneal_steps, self.dead_feature_threshold = k_anneal_steps, dead_feature_threshold
        self.top_k_aux = activation_dim // 2 if isinstance(activation_dim, int) else 1
        super().__init__(
            steps, activation_dim, dict_size, layer, lm_name, dict_class=dict_class, lr=lr,
            warmup_steps=warmup_steps, decay_start=decay_start, sparsity_warmup_steps=None, seed=seed,
            device=device, wandb_name=wandb_name, submodule_name=submodule_name, alignment=alignment,
            alignment_penalty=alignment_penalty, dict_kwargs={"k": k, **(dict_kwargs or {})}, compile=compile,
            fused_optimizer=fused_optimizer,
        )
        self.sparse_decode = bool(sparse_decode)
        if k_anneal_steps is not None and not (0 <= k_anneal_steps < self.steps and activation_dim > k):
            raise ValueError(f"k_anneal_steps must be in [0, steps={self.steps}) with activation_dim > k, "
                             f"got {k_anneal_steps}")
        self.logging_parameters += ["dead_features", "pre_norm_auxk_loss"]
        self.pre_norm_auxk_loss = -1.0
        self._k_now = k

    @property
    def dead_features(self) -> int:
        """Number of features that have not fired for ``dead_feature_threshold`` tokens (read on demand, so the
        training step itself does not synchronise with the device for it)."""
        return int((self.tokens_since_fired >= self.dead_feature_threshold).sum())

    @property
    def current_k(self) -> int:
        """The k used at this step (differs from ``k`` during k annealing); a Python int, kept in step with the
        dictionary's ``k`` buffer, so that reading it needs no device synchronisation. Assign it to change the
        k of the next steps (e.g. a k schedule in :meth:`after_step`): the dictionary's ``k`` buffer follows.

        Raises:
            ValueError: on assignment, a k outside ``[1, dict_size]``.
        """
        if getattr(self, "_k_now", None) is None:
            self._k_now = int(self.ae.k)
        return self._k_now

    @current_k.setter
    def current_k(self, k: int) -> None:
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= self.ae.dict_size:
            raise ValueError(f"current_k must be an integer in [1, dict_size={self.ae.dict_size}], got {k!r}")
        self._k_now = k
        self.ae.k.fill_(k)

    # the batch-level selection differs between TopK and BatchTopK
    def select(self, x):
        """``(f, post_relu, kept_values)`` for training: top-k per token."""
        f, values, _, pre = self.ae.encode(x, return_topk=True, use_threshold=False, k=self.current_k)
        return f, pre, values

    def select_sparse(self, x):
        """The kept activations as ``(post_relu [batch, dict_size], aux)`` with the same selection as
        :meth:`select`; ``aux``: ``indices``, ``kept`` (values) ``[batch, k]`` and ``offsets`` None."""
        pre = self.ae.post_relu(x)
        top = pre.topk(self.current_k, dim=-1, sorted=False)
        return pre, {"indices": top.indices, "kept": top.values, "offsets": None}

    def encode_for_loss(self, x, step):
        if self.sparse_decode and not (self._dp_active and self._forward_has_collectives):
            pre, aux = self.select_sparse(x)
            return self.ae.decode_sparse(aux["indices"], aux["kept"], aux["offsets"]), None, {"post_relu": pre, **aux}
        f, pre, kept = self.select(x)
        return self.ae.decode(f), f, {"post_relu": pre, "kept": kept}

    def dense_features(self, f, aux):
        """``f [batch, dict_size]``, rebuilt from the kept (index, value) pairs on the sparse-decoder path."""
        if f is not None:
            return f
        pre, idx, vals = aux["post_relu"], aux["indices"], aux["kept"]
        if aux["offsets"] is None:
            return torch.zeros_like(pre).scatter_(-1, idx, vals.to(pre.dtype))
        return torch.zeros_like(pre).flatten().scatter_(0, aux["flat_indices"], vals.to(pre.dtype)).view_as(pre)

    def _fired_local(self, f, aux):
        if f is not None:
            return super()._fired_local(f, aux)
        hit = (aux["kept"] > 0).flatten().to(torch.int32)
        return torch.zeros(self.ae.dict_size, dtype=torch.int32, device=hit.device).scatter_reduce_(
            0, aux["indices"].flatten(), hit, "amax").bool()

    def auxk_loss(self, residual: torch.Tensor, post_relu: torch.Tensor) -> torch.Tensor:
        """Normalised auxiliary-k loss of the residual ``[batch, activation_dim]`` (0 when no feature is dead).
        When data-parallel, the residual variance is that of the global batch."""
        dead = self.tokens_since_fired >= self.dead_feature_threshold
        n_dead = int(dead.sum())
        if n_dead == 0:
            return residual.new_zeros(())
        acts = torch.where(dead[None], post_relu, torch.full_like(post_relu, -torch.inf))
        top = acts.topk(min(self.top_k_aux, n_dead), dim=-1, sorted=False)
        aux_f = torch.zeros_like(post_relu).scatter_(-1, top.indices, top.values.clamp_min(0))
        recon = aux_f @ self.ae.W_dec.T
        err = (residual.float() - recon.float()).pow(2).sum(-1).mean()
        r = residual.float()
        n = r.shape[0] * self._world()
        mean = self._global(r.sum(0)) / n
        var = self._global((r - mean).pow(2).sum()) / n
        return (err / var).nan_to_num(0.0)

    def sparsity_term(self, x, x_hat, f, aux, step):
        if self.auxk_alpha == 0:
            return x.new_zeros(()), {}
        auxk = self.auxk_loss((x - x_hat).detach(), aux["post_relu"])
        return self.auxk_alpha * auxk, {"auxk_loss": auxk}

    def before_step(self, step, x):
        if step == 0:
            with torch.no_grad():
                self.ae.b_dec.copy_(geometric_median(self._gather(x)).to(self.ae.b_dec.dtype))

    @torch.no_grad()
    def smallest_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """Statistic tracked by the threshold EMA: the mean over the (global) batch's tokens of each token's
        smallest positive kept value (tokens without one are left out; 0 if none has one). No host sync."""
        v = kept.float()
        mins = torch.where(v > 0, v, torch.full_like(v, torch.inf)).min(dim=-1).values
        ok = torch.isfinite(mins)
        stats = self._global(torch.stack([torch.where(ok, mins, 0.0).sum(), ok.sum().float()]))
        return stats[0] / stats[1].clamp_min(1.0)

    @torch.no_grad()
    def after_step(self, step, x, f, aux):
        if step > self.threshold_start_step:
            m = self.smallest_kept(aux["kept"])
            t = self.ae.threshold
            t.copy_(torch.where(t < 0, m, self.threshold_beta * t + (1 - self.threshold_beta) * m))
        if self.k_anneal_steps is not None:
            r = min(step, self.k_anneal_steps) / self.k_anneal_steps if self.k_anneal_steps else 1.0
            self.current_k = int(self.ae.activation_dim * (1 - r) + self.k * r)

    def _extra_state(self) -> dict:
        return {"dead_features": self.dead_features}

    def _load_extra_state(self, extra: dict) -> None:
        self._k_now = int(self.ae.k)  # dead_features is derived from the restored counters


class BatchTopKTrainer(TopKTrainer):
    """BatchTopK SAE training (Bussmann et al. 2024, arXiv 2412.06410): as :class:`TopKTrainer`, but the
    ``k * batch`` largest activations of the whole batch are kept, and the inference threshold is an EMA of the
    smallest kept activation of the batch. Same arguments and defaults as :class:`TopKTrainer`."""

    dict_class = BatchTopKSAE
    _forward_has_collectives = True  # the data-parallel selection gathers candidates from every rank

    def select_sparse(self, x):
        """The ``n = k * batch`` largest activations of the batch (the same selection as :meth:`select`) as
        ``(post_relu [batch, dict_size], aux)``; ``aux``: ``indices [n]`` (features, sorted by token),
        ``kept [n]`` (values), ``offsets [batch]`` (each token's start in ``indices``) and ``flat_indices [n]``
        (positions in the flattened ``[batch * dict_size]`` code)."""
        pre = self.ae.post_relu(x)
        n = min(self.current_k * x.shape[0], pre.numel())
        top = pre.flatten().topk(n, sorted=False)
        flat, order = top.indices.sort()
        rows = torch.div(flat, self.ae.dict_size, rounding_mode="floor")
        offsets = torch.searchsorted(rows, torch.arange(x.shape[0], device=rows.device))
        return pre, {"indices": flat - rows * self.ae.dict_size, "kept": top.values[order], "offsets": offsets,
                     "flat_indices": flat}

    def select(self, x):
        """``(f, post_relu, f)``: the ``k * batch`` largest activations of the (global) batch. Data-parallel,
        each rank keeps its activations at or above the global ``k * batch``-th largest value (found from every
        rank's local candidates), which selects the same entries as one process up to ties."""
        if not self._dp_active:
            f, _, pre = self.ae.encode(x, return_active=True, use_threshold=False, k=self.current_k)
            return f, pre, f
        pre = self.ae.post_relu(x)
        n = self.current_k * x.shape[0] * self._world()  # k * global batch (<= its dict_size * batch entries)
        with torch.no_grad():
            local = pre.detach().flatten().topk(min(n, pre.numel()), sorted=False).values
            thr = self._gather(local).topk(n, sorted=False).values.min()
        f = torch.where(pre >= thr, pre, torch.zeros_like(pre))
        return f, pre, f

    @torch.no_grad()
    def smallest_kept(self, kept):
        """The smallest positive kept activation of the (global) batch (0 if none). No host sync."""
        v = kept.float()
        m = self._global(torch.where(v > 0, v, torch.full_like(v, torch.inf)).min(), "min")
        return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


class TopKStackRule(StackRule):
    """Stacked TopK (see :mod:`..stacked`): per-token top-k of ``ReLU(pre)`` with each dictionary's k (one
    selection of the largest k, masked per dictionary, when the k differ or anneal), the auxiliary-k loss of dead
    features, the geometric-median ``b_dec`` start and the inference-threshold EMA, as :class:`TopKTrainer`.

    The auxiliary-k loss is planned on the host, without a per-step synchronisation (:meth:`_plan_aux`): it is
    skipped while no feature can be dead; and while no dictionary can have more than ``k_aux`` dead features, the
    top-``k_aux`` of the dead features is all of them, so the aux code is ``post_relu`` at the dead features, read
    from a fixed-width ``[n, k_aux]`` set of candidate columns (:meth:`_aux_recon_dead`: no ``topk``, no scatter,
    and a decoder product over ``k_aux`` columns instead of ``dict_size``); otherwise the general top-k path runs
    (:meth:`_aux_recon_topk`). Both give the reference loss and gradients up to float rounding.
    """

    def load_state(self):
        e, trs = self.engine, self.engine.trainers
        dev = e.device
        self.threshold = torch.stack([t.ae.threshold for t in trs]).detach().clone().float()
        self.annealing = any(t.k_anneal_steps is not None for t in trs)
        ks = {t.k for t in trs} | {t.current_k for t in trs}
        self.k_max = min(e.dict_size, max(ks | ({e.activation_dim} if self.annealing else set())))
        self.same_k = not self.annealing and len(ks) == 1
        self.auxk_alpha = torch.tensor([t.auxk_alpha for t in trs], device=dev)
        self.dead_threshold = torch.tensor([t.dead_feature_threshold for t in trs], device=dev)
        self.min_dead_threshold = min(t.dead_feature_threshold for t in trs)
        self.k_aux = min(trs[0].top_k_aux, e.dict_size)
        self.beta = torch.tensor([t.threshold_beta for t in trs], device=dev)
        self.one_minus_beta = torch.tensor([1 - t.threshold_beta for t in trs], device=dev)
        self._tokens_bound = float(e.tokens_since_fired.max()) if e.tokens_since_fired.numel() else 0.0
        self._horizon, self._soon_max = -1.0, 0
        self.aux_on = self.aux_fast = False
        self.aux_idx = torch.zeros(e.n, self.k_aux, dtype=torch.long, device=dev)

    @staticmethod
    def k_at(t, step: int) -> int:
        """The k that trainer ``t`` uses at ``step`` (its ``current_k`` there; differs from ``k`` while annealing)."""
        if t.k_anneal_steps is None or step == 0:
            return t.k
        r = min(step - 1, t.k_anneal_steps) / t.k_anneal_steps if t.k_anneal_steps else 1.0
        return int(t.ae.activation_dim * (1 - r) + t.k * r)

    def host_tables(self, steps):
        trs = self.engine.trainers
        return {"k": torch.tensor([[self.k_at(t, s) for t in trs] for s in steps], dtype=torch.long),
                "thr_on": torch.tensor([[s > t.threshold_start_step for t in trs] for s in steps])}

    def _top(self, scores: torch.Tensor, k_now: torch.Tensor, k_max: int):
        """``(values, indices)`` of the ``k_now [n]`` largest entries of each row of ``scores [n, ..., m]`` (the
        largest ``k_max`` selected once; ranks beyond a dictionary's ``k_now`` get value 0)."""
        if self.same_k:
            top = scores.topk(k_max, dim=-1, sorted=False)
            return top.values, top.indices
        top = scores.topk(k_max, dim=-1, sorted=True)
        keep = torch.arange(k_max, device=scores.device) < k_now.view(-1, *[1] * (scores.ndim - 1))
        return top.values * keep, top.indices

    def select(self, pre, tab):
        post = torch.relu(pre)
        values, indices = self._top(post, tab["k"], self.k_max)
        return torch.zeros_like(post).scatter_(-1, indices, values), {"post_relu": post, "kept": values}

    @torch.no_grad()
    def _refresh_dead_bound(self, batch: int) -> None:
        """Read the dead-feature counters (one synchronisation): the exact largest counter, and per dictionary the
        features that can be dead within the next ``TABLE_CHUNK`` steps of ``batch`` tokens (``counter +
        TABLE_CHUNK * batch >= threshold``; a counter grows by at most the batch size per step). Sets the horizon
        (a value of the host bound ``_tokens_bound``) up to which these sets hold, ``_soon_max`` (the largest set
        size) and, when every set fits in ``k_aux``, ``aux_idx [n, k_aux]``: each dictionary's set, padded with
        features that stay alive until the horizon."""
        e = self.engine
        reach = TABLE_CHUNK * batch
        soon = e.tokens_since_fired + reach >= self.dead_threshold[:, None]  # [n, dict_size]
        top, soon_max = torch.stack([e.tokens_since_fired.max(), soon.sum(-1).max()]).tolist()
        self._tokens_bound, self._soon_max = float(top), int(soon_max)
        self._horizon = self._tokens_bound + reach
        if self._soon_max <= self.k_aux:
            self.aux_idx.copy_(soon.float().topk(self.k_aux, dim=-1, sorted=False).indices)

    def _plan_aux(self, batch: int) -> None:
        """Set ``aux_on`` (some dictionary may have a dead feature) and ``aux_fast`` (no dictionary can have more
        than ``k_aux``) for this step. The host bound ``_tokens_bound`` (>= every counter) decides alone while it
        is below every dead threshold; past that, the sets of :meth:`_refresh_dead_bound` decide, refreshed once
        the bound has passed their horizon (so at most once per ``TABLE_CHUNK`` steps). Three compiled variants
        at most: off, dead-set path, top-k path."""
        if self._tokens_bound < self.min_dead_threshold:
            self.aux_on = False
            return
        if self._tokens_bound > self._horizon:
            self._refresh_dead_bound(batch)
        self.aux_on = self._tokens_bound >= self.min_dead_threshold and self._soon_max > 0
        self.aux_fast = self._soon_max <= self.k_aux

    def _aux_recon_topk(self, post: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """``[n, batch, activation_dim]``: the decoding (without ``b_dec``) of each token's ``k_aux`` largest
        ``post [n, batch, dict_size]`` among the ``dead [n, dict_size]`` features (fewer when fewer are dead: the
        non-dead ranks are -inf, clamped to 0)."""
        acts = torch.where(dead[:, None, :], post, torch.full_like(post, -torch.inf))
        top = acts.topk(self.k_aux, dim=-1, sorted=False)
        aux_f = torch.zeros_like(post).scatter_(-1, top.indices, top.values.clamp_min(0))
        return torch.bmm(aux_f, self.engine.W_dec.mT)

    def _aux_recon_dead(self, post: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
        """As :meth:`_aux_recon_topk` when no dictionary has more than ``k_aux`` dead features (then the top
        ``k_aux`` are all of them): ``post`` at the dead features, decoded, read only at the candidate columns
        ``aux_idx [n, k_aux]`` (which hold every dead feature until the refresh horizon)."""
        e = self.engine
        n, batch, _ = post.shape
        idx = self.aux_idx[:, None, :]
        acts = post.gather(-1, idx.expand(n, batch, -1))  # [n, batch, k_aux]
        acts = torch.where(dead.gather(-1, self.aux_idx)[:, None, :], acts, torch.zeros_like(acts))
        W = e.W_dec.gather(-1, idx.expand(n, e.activation_dim, -1))  # [n, activation_dim, k_aux]
        return torch.bmm(acts, W.mT)

    def sparsity(self, x, x_hat, f, aux, tab):
        e = self.engine
        if not self.aux_on:
            return x_hat.new_zeros(e.n, dtype=torch.float32), {}
        residual, post = (x - x_hat).detach(), aux["post_relu"]
        dead = e.tokens_since_fired >= self.dead_threshold[:, None]
        recon = self._aux_recon_dead(post, dead) if self.aux_fast else self._aux_recon_topk(post, dead)
        r = residual.float()
        err = (r - recon.float()).pow(2).sum(-1).mean(-1)
        var = (r - r.sum(1, keepdim=True) / r.shape[1]).pow(2).sum((1, 2)) / r.shape[1]
        auxk = torch.where(dead.any(-1), (err / var).nan_to_num(0.0), 0.0)
        return self.auxk_alpha * auxk, {"auxk_loss": auxk}

    @torch.no_grad()
    def before_step(self, step, x):
        self._plan_aux(x.shape[0])
        if step == 0:
            self.engine.b_dec.copy_(geometric_median(x).to(self.engine.b_dec.dtype).expand_as(self.engine.b_dec))

    @torch.no_grad()
    def smallest_kept(self, kept: torch.Tensor) -> torch.Tensor:
        """``[n]``: per dictionary, the mean over tokens of each token's smallest positive kept value."""
        v = kept.float()
        mins = torch.where(v > 0, v, torch.full_like(v, torch.inf)).min(dim=-1).values
        ok = torch.isfinite(mins)
        return torch.where(ok, mins, 0.0).sum(-1) / ok.sum(-1).float().clamp_min(1.0)

    @torch.no_grad()
    def after_step(self, step, x, f, aux, tab):
        self._tokens_bound += x.shape[0]
        if not bool(self.engine.host_row("thr_on", step).any()):
            return
        m, t = self.smallest_kept(aux["kept"]), self.threshold
        new = torch.where(t < 0, m, self.beta * t + self.one_minus_beta * m)
        t.copy_(torch.where(tab["thr_on"], new, t))

    @torch.no_grad()
    def sync_state(self, steps_done):
        for j, t in enumerate(self.engine.trainers):
            t.ae.threshold.copy_(self.threshold[j])
            if t.k_anneal_steps is not None:
                t._k_now = self.k_at(t, steps_done)
                t.ae.k.fill_(t._k_now)


class BatchTopKStackRule(TopKStackRule):
    """Stacked BatchTopK: per dictionary, the ``k * batch`` largest activations of the whole batch are kept, and
    the threshold EMA tracks the smallest kept activation, as :class:`BatchTopKTrainer`."""

    def select(self, pre, tab):
        post = torch.relu(pre)
        n, batch, size = post.shape
        flat = post.reshape(n, batch * size)
        k_now = (tab["k"] * batch).clamp(max=flat.shape[1])
        values, indices = self._top(flat, k_now, min(self.k_max * batch, flat.shape[1]))
        f = torch.zeros_like(flat).scatter_(-1, indices, values).view_as(post)
        return f, {"post_relu": post, "kept": values}

    @torch.no_grad()
    def smallest_kept(self, kept):
        v = kept.float()
        m = torch.where(v > 0, v, torch.full_like(v, torch.inf)).min(dim=-1).values
        return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


AlignedTopKTrainer = make_aligned(TopKTrainer)
AlignedBatchTopKTrainer = make_aligned(BatchTopKTrainer)


def topk_schedule(steps: int) -> dict:
    """Schedule settings of a TopK/BatchTopK run of ``steps`` steps: lr warmup 5%, decay from 80%, inference
    threshold learned from 10% of the run."""
    return {**scaled_lr_schedule(steps), "threshold_start_step": max(1, steps // 10)}


TOPK = register(Architecture(
    name="topk", label="TopK", trainer=TopKTrainer, aligned_trainer=AlignedTopKTrainer, sparsity_param="k",
    sparsity_values=(32, 64, 128), default_sparsity=64, schedule=topk_schedule, saebench_kind="topk",
    stack_rule=TopKStackRule, fixed_l0=True))
BATCHTOPK = register(Architecture(
    name="batchtopk", label="BatchTopK", trainer=BatchTopKTrainer, aligned_trainer=AlignedBatchTopKTrainer,
    sparsity_param="k", sparsity_values=(32, 64, 128), default_sparsity=64, schedule=topk_schedule,
    saebench_kind="batchtopk", stack_rule=BatchTopKStackRule, fixed_l0=True))
