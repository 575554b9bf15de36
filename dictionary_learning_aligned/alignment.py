"""The aligned math, in one place.

Notation (shapes in brackets): an SAE has an encoder ``W_enc [dict_size, activation_dim]`` whose rows are
``e_i``, a decoder ``W_dec [activation_dim, dict_size]`` whose columns ``d_i`` have unit norm, and biases
``b_enc [dict_size]``, ``b_dec [activation_dim]``.

The **alignment score** of feature ``i`` is ``a_i = <e_i, d_i>`` (Brzozowski & Chung, "Aligned Training: A
Parameter-Free Method to Improve Feature Quality and Stability of SAEs", arXiv 2605.18629). It is invariant to the
rescaling symmetry ``e_i -> c e_i, d_i -> d_i / c``, so it is well defined even for decoders that are not unit norm.

**Aligned training** keeps ``a_i = 1`` for every feature at every step. The paper's text does not give the
formula; this module implements our reading of it and the alternatives a referee asked for. Each ``alignment``
mode names how the encoder used by ``encode`` is obtained from the free encoder parameter ``V [dict_size,
activation_dim]`` and the decoder:

==============  ==========================================================  =====================================
mode            encoder used in ``encode``                                  ``a_i = 1``?
==============  ==========================================================  =====================================
``None``        ``e_i = v_i`` (standard SAE)                                no
``"project"``   ``e_i = v_i + (1 - <v_i, d_i>) d_i / ||d_i||^2``            exactly, every step (default aligned)
``"rescale"``   ``e_i = v_i / <v_i, d_i>`` (denominator guarded, see below)  exactly while ``|<v_i, d_i>| >= eps``
``"penalty"``   ``e_i = v_i``, plus ``lambda * sum_i (a_i - 1)^2`` in loss   approximately (soft constraint)
``"projection"`` ``e_i = v_i``, ``V`` projected as in "project" after steps  exactly after each optimizer step
``"tied"``      ``e_i = d_i`` (encoder is the decoder transposed)           yes, for unit-norm decoders
==============  ==========================================================  =====================================

In "project" and "rescale" gradients flow through both ``V`` and ``W_dec``.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

ALIGNMENT_MODES = (None, "project", "rescale", "penalty", "projection", "tied")
#: modes whose encoder is computed from ``V`` and ``W_dec`` on every call (a reparameterization)
REPARAMETERIZED = ("project", "rescale")
#: guard on the denominator of the "rescale" form
RESCALE_EPS = 1e-6


def check_mode(alignment: Optional[str]) -> Optional[str]:
    """Validate an ``alignment`` mode name (any letter case: ``"PROJECT"`` is ``"project"``).

    Args:
        alignment: one of :data:`ALIGNMENT_MODES` (``None``, ``"none"`` or ``"standard"`` for a standard SAE).

    Returns:
        The canonical mode, lower case (``None`` for a standard SAE).

    Raises:
        ValueError: if the name is not a known mode.
    """
    name = alignment.lower() if isinstance(alignment, str) else alignment
    if name is None or name in ("none", "standard", ""):
        return None
    if name not in ALIGNMENT_MODES:
        raise ValueError(
            f"unknown alignment mode {alignment!r}; choose one of {[m for m in ALIGNMENT_MODES if m]} or None"
        )
    return name


def project_encoder(V: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Aligned encoder by projection: ``e_i = v_i + (1 - <v_i, d_i>) d_i / ||d_i||^2``.

    Adds to each ``v_i`` the multiple of ``d_i`` that makes ``<e_i, d_i> = 1``; the component of ``v_i``
    orthogonal to ``d_i`` is kept. This is our reading of the reparameterization of arXiv 2605.18629.

    Computed by :class:`ProjectEncoder`, a fused autograd function (same values and gradients as
    :func:`project_encoder_reference`, with fewer passes over the ``[dict_size, activation_dim]`` tensors).

    Args:
        V: free encoder parameter, ``[dict_size, activation_dim]``, or ``[n, dict_size, activation_dim]`` for a
            stack of ``n`` dictionaries (:mod:`.stacked`).
        W_dec: decoder, ``[activation_dim, dict_size]`` (or ``[n, activation_dim, dict_size]``; columns ``d_i``,
            need not be unit norm).

    Returns:
        ``W_enc [dict_size, activation_dim]`` (``[n, dict_size, activation_dim]``) with ``<e_i, d_i> = 1`` up to
        float rounding.
    """
    return ProjectEncoder.apply(V, W_dec)


def project_encoder_reference(V: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """:func:`project_encoder` written with plain tensor operations (autograd derives the backward); the
    reference the fused version is tested against. Same arguments and result."""
    D = W_dec.mT  # [dict_size, activation_dim]
    dots = (V * D).sum(-1, keepdim=True)
    return V + (1.0 - dots) * D / (D * D).sum(-1, keepdim=True)


class ProjectEncoder(torch.autograd.Function):
    """``E = V + c D`` with ``c_i = (1 - <v_i, d_i>) / ||d_i||^2`` (``D = W_dec.mT``), and its hand-derived
    backward: with ``G = dL/dE``, ``g_i = <G_i, d_i>`` and ``s_i = g_i / ||d_i||^2``,
    ``dL/dV = G - s D`` and ``dL/dD = c G - s V - 2 c s D``. Saves only the inputs and two ``[dict_size]``
    vectors (autograd of the plain formula keeps several ``[dict_size, activation_dim]`` temporaries). Forward and
    backward each make one row-major copy of ``W_dec.mT``, so that the row-wise products and reductions read one
    memory layout (with the transposed view they mixed two: strided reads). Twice differentiable: under
    ``create_graph=True`` the backward is recomputed with plain tensor operations."""

    @staticmethod
    def _coefficients(V: torch.Tensor, D: torch.Tensor):
        """``(c, ||d_i||^2)``, both ``[dict_size]``, for rows ``v_i`` of ``V`` and ``d_i`` of ``D``."""
        nn_ = (D * D).sum(-1)
        return (1.0 - (V * D).sum(-1)) / nn_, nn_

    @staticmethod
    def forward(ctx, V: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
        D = W_dec.mT.contiguous()
        c, nn_ = ProjectEncoder._coefficients(V, D)
        ctx.save_for_backward(V, W_dec, c, nn_)
        return torch.addcmul(V, c[..., None], D)

    @staticmethod
    def backward(ctx, G: torch.Tensor):
        V, W_dec, c, nn_ = ctx.saved_tensors
        if torch.is_grad_enabled():
            # create_graph=True (double backward, e.g. a gradient penalty): the same formulas from the inputs, so
            # that autograd records them (c and nn_ were saved without a graph)
            D = W_dec.mT
            c, nn_ = ProjectEncoder._coefficients(V, D)
            s = (G * D).sum(-1) / nn_
            gV = G - s[..., None] * D if ctx.needs_input_grad[0] else None
            gD = (c[..., None] * G - s[..., None] * V - (2 * c * s)[..., None] * D).mT if ctx.needs_input_grad[1] else None
            return gV, gD
        D, G = W_dec.mT.contiguous(), G.contiguous()
        s = (G * D).sum(-1) / nn_
        gV = torch.addcmul(G, s[..., None], D, value=-1.0) if ctx.needs_input_grad[0] else None
        gD = None
        if ctx.needs_input_grad[1]:
            gD = torch.addcmul(torch.addcmul(c[..., None] * G, s[..., None], V, value=-1.0), (2 * c * s)[..., None], D,
                               value=-1.0).mT
        return gV, gD


def rescale_encoder(V: torch.Tensor, W_dec: torch.Tensor, eps: float = RESCALE_EPS) -> torch.Tensor:
    """Aligned encoder by rescaling: ``e_i = v_i / <v_i, d_i>``.

    The denominator is guarded: where ``|<v_i, d_i>| < eps`` it is replaced by ``eps`` with the sign of
    ``<v_i, d_i>`` (``+eps`` at exactly 0), so the result stays finite; for those features ``a_i != 1``.

    Args:
        V: ``[dict_size, activation_dim]`` (or ``[n, dict_size, activation_dim]``, a stack).
        W_dec: ``[activation_dim, dict_size]`` (or ``[n, activation_dim, dict_size]``).
        eps: smallest magnitude allowed for the denominator.

    Returns:
        ``W_enc [dict_size, activation_dim]``.
    """
    dots = (V * W_dec.mT).sum(-1, keepdim=True)
    sign = torch.where(dots < 0, -1.0, 1.0).to(dots.dtype)
    return V / (sign * dots.abs().clamp_min(eps))


def effective_encoder(alignment: Optional[str], V: Optional[torch.Tensor], W_dec: torch.Tensor) -> torch.Tensor:
    """The encoder ``W_enc [dict_size, activation_dim]`` used by ``encode`` for a given mode.

    Args:
        alignment: a mode of :data:`ALIGNMENT_MODES`.
        V: free encoder parameter ``[dict_size, activation_dim]`` (ignored, may be None, for "tied").
        W_dec: decoder ``[activation_dim, dict_size]``.

    Raises:
        ValueError: unknown mode.
    """
    alignment = check_mode(alignment)
    if alignment == "project":
        return project_encoder(V, W_dec)
    if alignment == "rescale":
        return rescale_encoder(V, W_dec)
    if alignment == "tied":
        return W_dec.mT
    return V


def scores_from_weights(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Alignment scores ``a_i = <e_i, d_i>`` from raw weights.

    Args:
        W_enc: ``[dict_size, activation_dim]``.
        W_dec: ``[activation_dim, dict_size]``.

    Returns:
        ``[dict_size]`` tensor of scores (float32, detached).

    Raises:
        ValueError: if the shapes do not pair up.
    """
    if W_enc.ndim != 2 or W_dec.ndim != 2 or W_enc.shape != W_dec.T.shape:
        raise ValueError(
            f"W_enc must be [dict_size, activation_dim] and W_dec [activation_dim, dict_size]; "
            f"got W_enc {tuple(W_enc.shape)} and W_dec {tuple(W_dec.shape)}"
        )
    return (W_enc.detach().float() * W_dec.detach().float().T).sum(-1)


def alignment_scores(dictionary) -> torch.Tensor:
    """Alignment scores ``a_i = <e_i, d_i>`` of any dictionary, aligned or not.

    Args:
        dictionary: an object with ``W_enc [dict_size, activation_dim]`` and ``W_dec [activation_dim,
            dict_size]`` (every dictionary of this library), or a tuple ``(W_enc, W_dec)``.

    Returns:
        ``[dict_size]`` float32 tensor on the dictionary's device.
    """
    if isinstance(dictionary, tuple):
        return scores_from_weights(*dictionary)
    with torch.no_grad():
        return scores_from_weights(dictionary.W_enc, dictionary.W_dec)


def alignment_penalty(W_enc: torch.Tensor, W_dec: torch.Tensor) -> torch.Tensor:
    """Soft-constraint ablation term ``sum_i (a_i - 1)^2`` (multiply by ``lambda`` in the loss).

    Args:
        W_enc: ``[dict_size, activation_dim]``; W_dec: ``[activation_dim, dict_size]`` (or both with a leading stack
            dimension ``n``).

    Returns:
        scalar tensor (``[n]`` for a stack), differentiable in both weights.
    """
    a = (W_enc * W_dec.mT).sum(-1)
    return ((a - 1.0) ** 2).sum(-1)


#: histogram used by :func:`summarize_scores`: 41 bins of width 0.05 centred on -0.5, -0.45, ..., 1.5 (so 1.0 is a
#: bin centre, not an edge); scores outside go to the under/overflow counts
HIST_RANGE = (-0.525, 1.525)
HIST_BINS = 41


def bimodality_coefficient(x: torch.Tensor) -> Optional[float]:
    """Sarle's bimodality coefficient ``BC = (g^2 + 1) / (k + 3 (n-1)^2 / ((n-2)(n-3)))``.

    ``g`` is the sample skewness and ``k`` the sample excess kurtosis (both bias-corrected). A uniform
    distribution gives 5/9 ~ 0.555; values above it suggest bimodality, a normal distribution gives ~0.33.
    Source: SAS/STAT User's Guide (PROC CLUSTER); Pfister et al., "Good things peak in pairs", Front.
    Psychol. 4:700 (2013).

    Args:
        x: 1-D tensor with at least 4 values.

    Returns:
        the coefficient, or ``None`` when it is undefined (fewer than 4 values, or all values equal within
        1e-6, as for a perfectly aligned SAE).
    """
    x = x.detach().double().flatten()
    n = x.numel()
    if n < 4:
        return None
    m = x.mean()
    d = x - m
    m2 = (d**2).mean()
    if m2.sqrt() < 1e-6:
        return None
    m3, m4 = (d**3).mean(), (d**4).mean()
    g1, g2 = m3 / m2**1.5, m4 / m2**2 - 3.0
    skew = g1 * math.sqrt(n * (n - 1)) / (n - 2)
    kurt = ((n + 1) * g2 + 6) * (n - 1) / ((n - 2) * (n - 3))
    return float((skew**2 + 1) / (kurt + 3 * (n - 1) ** 2 / ((n - 2) * (n - 3))))


def summarize_scores(scores: torch.Tensor, bins: int = HIST_BINS, range_: tuple = HIST_RANGE) -> dict:
    """Summary of an alignment-score distribution, JSON-ready.

    Args:
        scores: ``[dict_size]`` alignment scores.
        bins: number of equal-width histogram bins over ``range_``.
        range_: ``(low, high)`` of the histogram.

    Returns:
        dict with ``n``, ``mean``, ``std``, ``median``, ``min``, ``max``, ``frac_within_0.1_of_1``
        (``|a_i - 1| < 0.1``), ``frac_below_0.5`` (``a_i < 0.5``), ``bimodality_coefficient`` (see
        :func:`bimodality_coefficient`; None when undefined), ``hist_counts`` (list of ``bins`` ints),
        ``hist_edges`` (``bins + 1`` floats), ``underflow`` / ``overflow`` (counts outside the range).

    Raises:
        ValueError: on an empty or non-finite score tensor.
    """
    s = scores.detach().float().flatten().cpu()
    if s.numel() == 0:
        raise ValueError("cannot summarize an empty set of alignment scores")
    if not torch.isfinite(s).all():
        raise ValueError(f"alignment scores contain {int((~torch.isfinite(s)).sum())} non-finite values")
    lo, hi = range_
    inside = s[(s >= lo) & (s <= hi)]
    counts = torch.histc(inside, bins=bins, min=lo, max=hi)
    return {
        "n": int(s.numel()),
        "mean": float(s.mean()),
        "std": float(s.std(unbiased=False)),
        "median": float(s.median()),
        "min": float(s.min()),
        "max": float(s.max()),
        "frac_within_0.1_of_1": float(((s - 1).abs() < 0.1).float().mean()),
        "frac_below_0.5": float((s < 0.5).float().mean()),
        "bimodality_coefficient": bimodality_coefficient(s),
        "hist_counts": [int(c) for c in counts.tolist()],
        "hist_edges": torch.linspace(lo, hi, bins + 1).tolist(),
        "underflow": int((s < lo).sum()),
        "overflow": int((s > hi).sum()),
    }
