"""``evaluate``: reconstruction, sparsity, downstream CE loss and alignment metrics of a dictionary."""

from __future__ import annotations

import itertools
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from .alignment import alignment_scores, summarize_scores


@torch.no_grad()
def ce_losses(model, submodule, dictionary, tokens: torch.Tensor, skip_first: bool = True,
              reference: Optional[dict] = None) -> dict:
    """Next-token cross-entropy of ``model`` on ``tokens`` clean, with the dictionary spliced in at
    ``submodule``'s output, and with that output zero-ablated.

    Args:
        model: ``nnsight.LanguageModel``.
        submodule: envoy whose output is replaced (e.g. ``model.model.layers[12]``).
        dictionary: reads raw activations of that output (``[..., activation_dim]``).
        tokens: ``[batch, ctx_len]`` token ids.
        skip_first: leave position 0 (the BOS token, whose activation is an outlier the dictionary is not
            trained on with ``remove_bos``) untouched in both interventions.
        reference: ``{"loss_original", "loss_zero"}`` already computed on these tokens (they do not depend on
            the dictionary), to skip those two forward passes. ``dictionary=None`` computes only them.

    Returns:
        ``{"loss_original", "loss_reconstructed", "loss_zero"}`` in nats per token (mean over all predicted
        positions); without a dictionary, no ``loss_reconstructed``.
    """
    tokens = tokens.to(model.device)
    start = 1 if skip_first else 0

    def run(intervention):
        with model.trace(tokens):
            if intervention is not None:
                out = submodule.output
                h = out[0] if isinstance(out, tuple) else out
                new = torch.cat([h[:, :start], intervention(h[:, start:])], dim=1)
                submodule.output = (new,) + tuple(out[1:]) if isinstance(out, tuple) else new
            logits = model.output.logits.save()
        return next_token_ce(logits, tokens)

    def reconstruct(h):
        return dictionary(h.to(dictionary.W_dec.dtype)).to(h.dtype)

    out = dict(reference) if reference else {"loss_original": run(None), "loss_zero": run(torch.zeros_like)}
    if dictionary is not None:
        out["loss_reconstructed"] = run(reconstruct)
    return out


#: logits whose float32 log-softmax :func:`next_token_ce` takes at once: 16 MiB (16 positions of Gemma-3's
#: 262,144-token vocabulary, 85 of SmolLM2's 49,152), memory the allocator reuses chunk after chunk
CE_CHUNK_ELEMENTS = 2**22


def next_token_ce(logits: torch.Tensor, tokens: torch.Tensor, chunk_rows: Optional[int] = None) -> float:
    """Mean next-token cross-entropy in nats: ``logits [batch, ctx_len, vocab]`` (any float dtype) at position
    ``i`` predict ``tokens [batch, ctx_len]`` at ``i + 1``, averaged over the ``batch * (ctx_len - 1)`` predicted
    positions.

    Equal, up to float rounding, to ``F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(),
    tokens[:, 1:].reshape(-1))`` for token ids (``F.cross_entropy`` would skip targets of ``-100``, its
    ``ignore_index``; here every position counts), but computed ``chunk_rows`` positions at a time in float32
    (default: as many as make :data:`CE_CHUNK_ELEMENTS` logits), the chunks' sums added in float64 on the CPU (one
    device read): with a large vocabulary that formula copied all logits and took the log-softmax of all of them at
    once, each a tensor as large as the logits (1 GiB for 8 contexts of 128 tokens with Gemma-3), much slower than
    the chunks on a CPU.

    Raises:
        ValueError: ``chunk_rows`` < 1, or no predicted position (``batch`` 0 or ``ctx_len`` < 2).
    """
    batch, ctx_len, vocab = logits.shape
    if chunk_rows is not None and chunk_rows < 1:
        raise ValueError(f"chunk_rows must be at least 1, got {chunk_rows}")
    if batch == 0 or ctx_len < 2:
        raise ValueError(f"no predicted position in logits of shape {tuple(logits.shape)} (batch, ctx_len, vocab): "
                         "the next-token loss needs at least one context of two tokens")
    rows = chunk_rows or max(1, CE_CHUNK_ELEMENTS // vocab)
    predicting, labels = logits[:, :-1], tokens[:, 1:].to(logits.device)  # a view: nothing copied
    sums = [F.cross_entropy(predicting[b, i:i + rows].float(), labels[b, i:i + rows], reduction="sum")
            for b in range(batch) for i in range(0, ctx_len - 1, rows)]
    return float(torch.stack(sums).cpu().double().sum()) / (batch * (ctx_len - 1))


@torch.no_grad()
def evaluate(dictionary, activations: Iterable[torch.Tensor], n_batches: int = 10, ce_batches: int = 2,
             ce_batch_size: int = 8, device: Optional[str] = None, *, model=None, submodule=None,
             ce_tokens: Optional[list] = None, skip_first: Optional[bool] = None,
             ce_reference: Optional[list] = None, per_feature: bool = False) -> dict:
    """Evaluate a dictionary on held-out activations.

    Args:
        dictionary: any dictionary of this library, reading raw activations (as loaded by ``from_pretrained``).
        activations: an iterator of ``[batch, activation_dim]`` activations (a single ``[tokens,
            activation_dim]`` tensor is one batch; ``[batch, seq, activation_dim]`` is read as ``batch * seq``
            tokens). If it is an ``ActivationBuffer``,
            downstream CE losses are computed too, on ``ce_batches`` further batches of ``ce_batch_size``
            contexts from its text stream.
        n_batches: activation batches for the reconstruction and sparsity metrics.
        ce_batches, ce_batch_size: size of the CE-loss evaluation drawn from a buffer (0 batches: skip it).
        device: where to run the dictionary (default: where its weights are).
        model, submodule, ce_tokens: compute CE losses on these ``[batch, ctx_len]`` token batches with this
            nnsight model and envoy instead of drawing from a buffer (so several dictionaries can be compared
            on the same text; see :func:`collect_eval_data`).
        skip_first: leave position 0 (BOS) untouched when splicing (default: the buffer's ``remove_bos``,
            else True).
        per_feature: also return ``fired`` (``[dict_size]`` list of bools: fired at least once).
        ce_reference: per ``ce_tokens`` batch, the dictionary-independent ``{"loss_original", "loss_zero"}``
            (from ``ce_losses(model, submodule, None, tokens)``), so they are not recomputed per dictionary.

    Returns:
        dict with ``n_tokens`` (tokens the metrics below were computed over), ``l0`` (mean active features per
        token), ``l1``, ``mse`` (mean squared error per element), ``l2_loss`` (mean ``||x - x_hat||``),
        ``frac_variance_explained`` (``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2``; None when the
        activations have no variance, e.g. a single token), ``cossim`` (mean
        cosine similarity of ``x`` and ``x_hat``), ``l2_ratio`` (mean ``||x_hat|| / ||x||``), ``frac_alive``
        (features that fired at least once over ``n_tokens`` tokens), ``alignment`` (the alignment-score
        summary) and, for a buffer, ``loss_original``, ``loss_reconstructed``, ``loss_zero`` (nats/token),
        ``ce_n_tokens`` (predicted positions the CE losses average over) and ``frac_recovered = (L_zero - L_sae) / (L_zero - L_clean)``.

    Raises:
        ValueError: no activations, non-finite activations, or activations whose width is not the dictionary's
            ``activation_dim`` (or with fewer than 2 dimensions).
    """
    if isinstance(activations, torch.Tensor):
        if activations.ndim < 2:
            raise ValueError(f"activations must be [tokens, activation_dim] (or [batch, seq, activation_dim]) or an "
                             f"iterator of such batches, got shape {tuple(activations.shape)}")
        activations = [activations]
    device = device or dictionary.W_dec.device
    dictionary = dictionary.to(device)
    out = _reconstruction_metrics(dictionary, activations, n_batches, device, per_feature)
    if ce_tokens is None and ce_batches and hasattr(activations, "token_batch"):
        if activations.io != "out":
            raise ValueError("CE-loss metrics splice into a layer's output; evaluate with an io='out' buffer")
        ce_tokens = [t for t in (activations.token_batch(ce_batch_size) for _ in range(ce_batches)) if t is not None]
    if hasattr(activations, "submodule"):
        model = model or activations.model
        submodule = submodule or activations.submodule
        skip_first = activations.remove_bos if skip_first is None else skip_first
    if ce_tokens:
        if model is None or submodule is None:
            raise ValueError("CE-loss metrics need model and submodule (or an ActivationBuffer)")
        out.update(_ce_metrics(model, submodule, dictionary, ce_tokens, ce_reference,
                               True if skip_first is None else skip_first))
    return out


def _reconstruction_metrics(dictionary, activations, n_batches: int, device, per_feature: bool) -> dict:
    """:func:`evaluate`'s token-averaged reconstruction metrics over at most ``n_batches`` batches of
    ``activations``, the alive fraction and alignment-score summary (and ``fired`` with ``per_feature``).

    Raises:
        ValueError: no activations, non-finite activations or activations of another width.
    """
    n = 0
    sums = dict(sq_err=0.0, l0=0.0, l1=0.0, cos=0.0, ratio=0.0, l2=0.0)
    sum_x = None
    sum_x2 = 0.0
    fired = torch.zeros(dictionary.dict_size, dtype=torch.bool, device=device)
    for x in itertools.islice(iter(activations), n_batches):
        x = _as_tokens(x, dictionary.activation_dim).to(device, dictionary.W_dec.dtype)
        if not torch.isfinite(x).all():
            raise ValueError("evaluate got activations with NaN or infinite values")
        x_hat, f = dictionary(x, output_features=True)
        err = (x - x_hat).float()
        xf, xh = x.float(), x_hat.float()
        n += x.shape[0]
        sums["sq_err"] += float(err.pow(2).sum())
        sums["l2"] += float(err.norm(dim=-1).sum())
        sums["l0"] += float((f != 0).float().sum())
        sums["l1"] += float(f.abs().float().sum())
        sums["cos"] += float(F.cosine_similarity(xf, xh, dim=-1).sum())
        sums["ratio"] += float((xh.norm(dim=-1) / xf.norm(dim=-1).clamp_min(1e-12)).sum())
        sum_x = xf.sum(0) if sum_x is None else sum_x + xf.sum(0)
        sum_x2 += float(xf.pow(2).sum())
        fired |= (f != 0).any(0)
    if n == 0:
        raise ValueError("evaluate got no activations")
    total_var = sum_x2 - float(sum_x.pow(2).sum()) / n
    out = {
        "n_tokens": n,
        "l0": sums["l0"] / n,
        "l1": sums["l1"] / n,
        "mse": sums["sq_err"] / (n * dictionary.activation_dim),
        "l2_loss": sums["l2"] / n,
        "frac_variance_explained": 1.0 - sums["sq_err"] / total_var if total_var > 0 else None,
        "cossim": sums["cos"] / n,
        "l2_ratio": sums["ratio"] / n,
        "frac_alive": float(fired.float().mean()),
        "alignment": summarize_scores(alignment_scores(dictionary)),
    }
    if per_feature:
        out["fired"] = fired.cpu().tolist()
    return out


def _ce_metrics(model, submodule, dictionary, ce_tokens: list, ce_reference: Optional[list],
                skip_first: bool) -> dict:
    """:func:`evaluate`'s CE-loss metrics: clean, spliced and zero-ablated losses (nats per predicted token,
    weighted by each batch's predicted tokens), their token count and the fraction of CE loss recovered."""
    refs = ce_reference or [None] * len(ce_tokens)
    losses = [(t.numel() - t.shape[0], ce_losses(model, submodule, dictionary, t, skip_first=skip_first,
                                                 reference=r))
              for t, r in zip(ce_tokens, refs)]
    total = sum(w for w, _ in losses)
    out = {key: sum(w * l[key] for w, l in losses) / total
           for key in ("loss_original", "loss_reconstructed", "loss_zero")}
    out["ce_n_tokens"] = total
    denom = out["loss_zero"] - out["loss_original"]
    out["frac_recovered"] = (out["loss_zero"] - out["loss_reconstructed"]) / denom if denom else None
    return out


def _as_tokens(x: torch.Tensor, activation_dim: int) -> torch.Tensor:
    """``[..., activation_dim]`` activations as ``[tokens, activation_dim]`` (a ``[batch, seq, d]`` batch counts
    every position as a token).

    Raises:
        ValueError: a last dimension other than ``activation_dim``, or fewer than 2 dimensions.
    """
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[-1] != activation_dim:
        raise ValueError(f"evaluate expects activations [tokens, {activation_dim}] or [batch, seq, {activation_dim}] "
                         f"(the dictionary's activation_dim), got shape {tuple(getattr(x, 'shape', ()))}")
    return x.reshape(-1, activation_dim)


def collect_eval_data(buffer, n_batches: int, ce_batches: int, ce_batch_size: int):
    """Draw a fixed evaluation set from a buffer, so several dictionaries are evaluated on the same data.

    Returns:
        ``(activations, tokens)``: a list of up to ``n_batches`` ``[batch, activation_dim]`` tensors and a list
        of up to ``ce_batches`` ``[ce_batch_size, ctx_len]`` token tensors (fewer when the text runs out).

    Raises:
        ValueError: the buffer yields no activations.
    """
    acts = list(itertools.islice(buffer, n_batches))
    if not acts:
        raise ValueError("the evaluation text produced no activations")
    tokens = [t for t in (buffer.token_batch(ce_batch_size) for _ in range(ce_batches)) if t is not None]
    return acts, tokens
