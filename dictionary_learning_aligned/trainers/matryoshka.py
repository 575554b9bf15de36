"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, "Learning Multi-Level Features with Matryoshka Sparse
Autoencoders", arXiv 2503.17547; Nabeshima 2024) with the names, defaults and math of dictionary_learning 0.1.0's
``MatryoshkaBatchTopKSAE`` / ``MatryoshkaBatchTopKTrainer``, and its aligned twin. Not evaluated in arXiv
2605.18629: registered with ``in_paper=False`` (an extension)."""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import torch

from ..dictionary import BatchTopKSAE, register_dictionary
from ..registry import Architecture, register
from .base import make_aligned
from .top_k import BatchTopKStackRule, BatchTopKTrainer, topk_schedule

#: default nested group fractions (dictionary_learning has no default): groups doubling in size, 1/32 ... 17/32
DEFAULT_GROUP_FRACTIONS = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 17 / 32)


def group_sizes_from_fractions(dict_size: int, fractions: Sequence[float]) -> list[int]:
    """Group sizes as dictionary_learning computes them: ``int(fraction * dict_size)`` for all but the last group,
    the remainder for the last.

    Raises:
        ValueError: fractions that are not positive, do not sum to 1, or give an empty group.
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not f > 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"group_fractions must be positive numbers summing to 1, got {fractions}")
    sizes = [int(f * dict_size) for f in fractions[:-1]]
    sizes.append(dict_size - sum(sizes))
    if min(sizes) < 1:
        raise ValueError(f"group_fractions {fractions} give an empty group for dict_size {dict_size}: {sizes}")
    return sizes


@register_dictionary
class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """Matryoshka BatchTopK SAE: a :class:`~dictionary_learning_aligned.dictionary.BatchTopKSAE` whose features
    form nested groups (the first ``group_sizes[0]`` features, then the next ``group_sizes[1]``...); the trainer
    asks every prefix of groups to reconstruct the input on its own. Encoding and decoding are BatchTopK's.

    Args:
        activation_dim, dict_size, k, alignment: as :class:`~dictionary_learning_aligned.dictionary.BatchTopKSAE`.
        group_sizes: positive integers summing to ``dict_size`` (stored as the buffer ``group_sizes``).

    Raises:
        ValueError: group sizes that are not positive integers summing to ``dict_size``, and BatchTopK's checks.
    """

    def __init__(self, activation_dim: int, dict_size: int, k: int, group_sizes: Sequence[int],
                 alignment: Optional[str] = None):
        sizes = [int(s) for s in group_sizes]
        if not sizes or any(s < 1 for s in sizes) or sum(sizes) != dict_size:
            raise ValueError(f"group_sizes must be positive integers summing to dict_size={dict_size}, got {sizes}")
        super().__init__(activation_dim, dict_size, k, alignment)
        self.register_buffer("group_sizes", torch.tensor(sizes))
        self._sizes = sizes

    @property
    def group_bounds(self) -> list[tuple[int, int]]:
        """``[(start, end)]`` feature ranges of the groups, in order."""
        ends = list(itertools.accumulate(self._sizes))
        return list(zip([0] + ends[:-1], ends))

    def dictionary_config(self) -> dict:
        return {**super().dictionary_config(), "group_sizes": list(self._sizes)}

    @classmethod
    def from_dictionary_learning_state(cls, state: dict, trainer_config: Optional[dict] = None) -> tuple[dict, dict]:
        """Map a dictionary_learning ``MatryoshkaBatchTopKSAE`` state dict (``ae.pt``: ``W_enc [activation_dim,
        dict_size]``, ``b_enc``, ``W_dec [dict_size, activation_dim]``, ``b_dec``, ``k``, ``threshold``,
        ``group_sizes``) to ours.

        Args:
            state: the loaded state dict (tensors).
            trainer_config: ``config.json``'s ``trainer`` section (unused: ``k`` and ``group_sizes`` are buffers).

        Returns:
            ``(constructor kwargs, state dict with our names and layout)``.

        Raises:
            ValueError: keys other than dictionary_learning's, or shapes that disagree.
        """
        want = {"W_enc", "b_enc", "W_dec", "b_dec", "k", "threshold", "group_sizes"}
        if set(state) != want:
            raise ValueError(f"not a dictionary_learning MatryoshkaBatchTopKSAE state dict: keys {sorted(state)}, "
                             f"expected {sorted(want)}")
        activation_dim, dict_size = state["W_enc"].shape
        if tuple(state["W_dec"].shape) != (dict_size, activation_dim):
            raise ValueError(f"inconsistent shapes: W_enc {tuple(state['W_enc'].shape)}, W_dec "
                             f"{tuple(state['W_dec'].shape)}")
        kwargs = {"activation_dim": int(activation_dim), "dict_size": int(dict_size), "k": int(state["k"]),
                  "group_sizes": [int(s) for s in state["group_sizes"].tolist()]}
        ours = {"W_enc": state["W_enc"].T.contiguous(), "W_dec": state["W_dec"].T.contiguous(),
                "b_enc": state["b_enc"], "b_dec": state["b_dec"], "k": state["k"].to(torch.int),
                "threshold": state["threshold"].float(), "group_sizes": state["group_sizes"]}
        return kwargs, ours


class MatryoshkaBatchTopKTrainer(BatchTopKTrainer):
    """Matryoshka BatchTopK training with dictionary_learning 0.1.0's ``MatryoshkaBatchTopKTrainer`` loss and
    defaults: BatchTopK selection (``k * batch`` activations per batch, learned inference threshold, auxiliary-k
    loss on the full reconstruction's residual, ``b_dec`` at the geometric median of the first batch), and the
    reconstruction term ``mean_g w_g * mean_batch ||x - x_hat_g||^2`` over the groups ``g``, where ``x_hat_g =
    b_dec + W_dec[:, :end_g] f[:end_g]`` decodes with the features of groups ``0..g`` only (``w_g``: the group
    weights; this mean of weighted losses is dictionary_learning's formula).

    Args:
        steps, activation_dim, dict_size, k, layer, lm_name, lr, auxk_alpha, warmup_steps, decay_start,
        threshold_beta, threshold_start_step, k_anneal_steps, dead_feature_threshold, seed, device, wandb_name,
        submodule_name, alignment, alignment_penalty, compile, fused_optimizer: as
            :class:`~.top_k.BatchTopKTrainer`.
        group_fractions: fraction of the features in each nested group, summing to 1 (default
            :data:`DEFAULT_GROUP_FRACTIONS`, our choice: dictionary_learning requires the argument).
        group_weights: weight of each group's reconstruction loss (default ``1 / n_groups`` each).
        dict_class: default :class:`MatryoshkaBatchTopKSAE`.

        sparse_decode: accepted for a uniform interface and ignored (a speed option only; the nested loss
            decodes every prefix of groups from the dense code).

    Raises:
        ValueError: bad fractions or weights, and BatchTopK's checks.
    """

    dict_class = MatryoshkaBatchTopKSAE
    config_fields = ("group_fractions", "group_weights", "group_sizes")

    def __init__(self, steps: int, activation_dim: int, dict_size: int, k: int, layer: int, lm_name: str,
                 group_fractions: Sequence[float] = DEFAULT_GROUP_FRACTIONS,
                 group_weights: Optional[Sequence[float]] = None, sparse_decode: bool = False, **kwargs):
        self.group_sizes = group_sizes_from_fractions(dict_size, group_fractions)
        self.group_fractions = [float(f) for f in group_fractions]
        n = len(self.group_sizes)
        weights = [1.0 / n] * n if group_weights is None else [float(w) for w in group_weights]
        if len(weights) != n or any(not 0 <= w < float("inf") for w in weights):
            raise ValueError(f"group_weights must be {n} finite non-negative numbers (one per group), got "
                             f"{group_weights}")
        self.group_weights = weights
        super().__init__(steps, activation_dim, dict_size, k, layer, lm_name,
                         dict_kwargs={"group_sizes": self.group_sizes, **kwargs.pop("dict_kwargs", {})}, **kwargs)

    def nested_reconstruction(self, x: torch.Tensor, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_hat [batch, activation_dim] from every group, the nested loss (scalar))`` of ``x [batch,
        activation_dim]`` and its code ``f [batch, dict_size]``."""
        x_hat = self.ae.b_dec.expand_as(x).to(f.dtype)
        losses = []
        for w, (lo, hi) in zip(self.group_weights, self.ae.group_bounds):
            x_hat = x_hat + torch.nn.functional.linear(f[:, lo:hi], self.ae.W_dec[:, lo:hi])
            losses.append(w * (x - x_hat).pow(2).sum(-1).mean())
        return x_hat, torch.stack(losses).mean()

    def _forward(self, x: torch.Tensor):
        f, pre, kept = self.select(x)
        x_hat, nested = self.nested_reconstruction(x, f)
        return nested, x_hat, f, {"post_relu": pre, "kept": kept}


class MatryoshkaStackRule(BatchTopKStackRule):
    """Stacked Matryoshka BatchTopK (see :mod:`..stacked`), as :class:`MatryoshkaBatchTopKTrainer`: BatchTopK's
    selection, auxiliary-k loss, ``b_dec`` start and threshold EMA (:class:`~.top_k.BatchTopKStackRule`), with the
    nested reconstruction term ``mean_g w_g * mean_batch ||x - x_hat_g||^2`` of each dictionary's own groups.

    Dictionaries with different ``group_fractions`` or ``group_weights`` share a stack: the prefix reconstructions
    are computed once at every group end of any dictionary of the stack (``ends``), and each dictionary's term
    weighs those at its own ends (``group_w [n, len(ends)]``: ``w_g`` at its ends, 0 elsewhere) and divides by its
    number of groups."""

    def load_state(self):
        super().load_state()
        e, trs = self.engine, self.engine.trainers
        own = [list(itertools.accumulate(t.group_sizes)) for t in trs]
        self.ends = sorted({end for ends in own for end in ends})
        weights = torch.zeros(e.n, len(self.ends))
        for j, (t, ends) in enumerate(zip(trs, own)):
            for w, end in zip(t.group_weights, ends):
                weights[j, self.ends.index(end)] = w
        self.group_w = weights.to(e.device)
        self.n_groups = torch.tensor([float(len(t.group_sizes)) for t in trs], device=e.device)

    def reconstruct(self, x, f, tab):
        """``(x_hat [n, batch, activation_dim] from all groups, nested term [n])``: prefix decodings accumulated
        over the segments between consecutive ``ends``, as :meth:`MatryoshkaBatchTopKTrainer.nested_reconstruction`."""
        e = self.engine
        x_hat = e.b_dec.unsqueeze(1).expand(-1, x.shape[0], -1).to(f.dtype)
        losses, lo = [], 0
        for hi in self.ends:
            x_hat = torch.baddbmm(x_hat, f[..., lo:hi], e.W_dec[..., lo:hi].mT)
            losses.append((x - x_hat).pow(2).sum(-1).mean(-1))
            lo = hi
        return x_hat, (self.group_w * torch.stack(losses, -1)).sum(-1) / self.n_groups


AlignedMatryoshkaBatchTopKTrainer = make_aligned(MatryoshkaBatchTopKTrainer)

MATRYOSHKA = register(Architecture(
    name="matryoshka", label="Matryoshka BatchTopK", trainer=MatryoshkaBatchTopKTrainer,
    aligned_trainer=AlignedMatryoshkaBatchTopKTrainer, sparsity_param="k", sparsity_values=(32, 64, 128),
    default_sparsity=64, schedule=topk_schedule, saebench_kind="matryoshka_batch_topk",
    stack_rule=MatryoshkaStackRule, fixed_l0=True, in_paper=False))
