"""Dictionaries (sparse autoencoders), mirroring ``saprmarks/dictionary_learning``'s ``Dictionary`` interface.

Every dictionary has ``activation_dim``, ``dict_size``, ``encode(x)``, ``decode(f)``, ``forward(x,
output_features=False)`` and the classmethod ``from_pretrained(path, device=None, dtype=None)``, plus the
field's standard weights ``W_enc [dict_size, activation_dim]``, ``W_dec [activation_dim, dict_size]`` (unit-norm
columns), ``b_enc [dict_size]`` and ``b_dec [activation_dim]``.

The ``alignment`` argument (see :mod:`dictionary_learning_aligned.alignment`) selects how ``W_enc`` is obtained.
For the reparameterized modes (``"project"``, ``"rescale"``) the stored parameter is ``V`` and ``W_enc`` is
computed from ``V`` and ``W_dec`` on every access; in mode ``"tied"`` no encoder is stored; otherwise the stored
parameter is ``W_enc`` itself. ``dictionary.W_enc`` always returns the encoder that ``encode`` uses.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from . import alignment as al
from . import checkpoints as _ckpt
# checkpoint names kept importable from here (they live in .checkpoints)
from .checkpoints import (FORMAT_NAME, FORMAT_VERSION, LEGACY_WEIGHTS_FILE, WEIGHTS_FILE,  # noqa: F401
                          CheckpointError, register_dictionary)


class Dictionary(nn.Module, ABC):
    """Base class of all dictionaries.

    Subclasses implement ``encode`` and ``decode`` and call :meth:`_init_weights` in their constructor.

    Attributes:
        activation_dim: width ``D`` of the activations the dictionary reads.
        dict_size: number of features ``F``.
        alignment: the alignment mode (None for a standard SAE).
    """

    activation_dim: int
    dict_size: int

    def __init__(self, activation_dim: int, dict_size: int, alignment: Optional[str] = None):
        super().__init__()
        for name, v in (("activation_dim", activation_dim), ("dict_size", dict_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        self.activation_dim = activation_dim
        self.dict_size = dict_size
        self.alignment = al.check_mode(alignment)

    # ------------------------------------------------------------------ weights
    def _init_weights(self, encoder_scale: float = 0.1) -> None:
        """Create ``W_dec`` (random unit-norm columns), the free encoder (``encoder_scale * W_dec.T``) and zero
        biases. With this start ``a_i = encoder_scale`` for a standard SAE and ``a_i = 1`` when aligned."""
        W_dec = torch.randn(self.activation_dim, self.dict_size)
        W_dec = W_dec / W_dec.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(W_dec)
        if self.alignment in al.REPARAMETERIZED:
            self.V = nn.Parameter((encoder_scale * W_dec.T).contiguous())
        elif self.alignment != "tied":
            self.W_enc = nn.Parameter((encoder_scale * W_dec.T).contiguous())
        self.b_enc = nn.Parameter(torch.zeros(self.dict_size))
        self.b_dec = nn.Parameter(torch.zeros(self.activation_dim))

    def __getattr__(self, name: str):
        # ``W_enc`` is a stored parameter for standard SAEs and is computed for reparameterized/tied ones.
        if name == "W_enc":
            mode = self.__dict__.get("alignment")
            if mode in al.REPARAMETERIZED or mode == "tied":
                params = self.__dict__["_parameters"]
                return al.effective_encoder(mode, params.get("V"), params["W_dec"])
        return super().__getattr__(name)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder column ``d_i`` to unit norm, in place (the function changes unless the
        encoder is rescaled too; trainers call this after each optimizer step, as dictionary_learning does)."""
        self.W_dec.div_(self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def after_optimizer_step(self) -> None:
        """Hook run by trainers after each optimizer step: renormalizes the decoder and, for the
        ``"projection"`` ablation, projects the encoder onto ``<e_i, d_i> = 1``."""
        self.normalize_decoder_()
        if self.alignment == "projection":
            self.W_enc.copy_(al.project_encoder(self.W_enc, self.W_dec))

    def alignment_loss(self) -> torch.Tensor:
        """``sum_i (a_i - 1)^2`` for the ``"penalty"`` ablation (the trainer multiplies it by lambda)."""
        return al.alignment_penalty(self.W_enc, self.W_dec)

    @torch.no_grad()
    def scale_biases(self, scale: float) -> None:
        """Fold an activation scale into the weights: a dictionary trained on ``x / scale`` becomes one that
        reads raw ``x``. Multiplies ``b_enc`` and ``b_dec`` by ``scale`` (features are then ``scale`` times
        larger; ``W_enc``, ``W_dec`` and hence the alignment scores are unchanged).

        Raises:
            ValueError: if ``scale`` is not a positive finite number.
        """
        scale = float(scale)
        if not (scale > 0 and torch.isfinite(torch.tensor(scale))):
            raise ValueError(f"scale must be a positive finite number, got {scale}")
        self.b_enc.mul_(scale)
        self.b_dec.mul_(scale)

    # ------------------------------------------------------------------ forward
    def _check_input(self, x: torch.Tensor) -> torch.Tensor:
        """Validate activations and cast them to the weights' dtype.

        Raises:
            TypeError: not a floating-point tensor. ValueError: last dimension is not ``activation_dim``.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"expected a torch.Tensor of activations, got {type(x).__name__}")
        if x.shape[-1] != self.activation_dim:
            raise ValueError(
                f"activations have last dimension {x.shape[-1]} but this dictionary has activation_dim "
                f"{self.activation_dim} (shape {tuple(x.shape)})"
            )
        if not x.is_floating_point():
            raise TypeError(f"activations must be a floating-point tensor, got dtype {x.dtype}")
        return x.to(self.W_dec.dtype)

    def _affine_encode(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_dec) + b_enc``: ``[..., activation_dim] -> [..., dict_size]`` (input checked).

        One ``linear`` call: under autocast the bias is added in the matmul's epilogue and the ``[batch,
        dict_size]`` result stays in the autocast dtype (``x @ W.T + b`` would promote it to float32, doubling
        the memory traffic of every later elementwise op on it)."""
        return torch.nn.functional.linear(self._check_input(x) - self.b_dec, self.W_enc, self.b_enc)

    def _affine_decode(self, f: torch.Tensor) -> torch.Tensor:
        """``W_dec f + b_dec``: ``[..., dict_size] -> [..., activation_dim]``, one ``linear`` call (as above)."""
        return torch.nn.functional.linear(f, self.W_dec, self.b_dec)

    @abstractmethod
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Features ``f [..., dict_size]`` of activations ``x [..., activation_dim]``."""

    @abstractmethod
    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``x_hat [..., activation_dim]`` of features ``f [..., dict_size]``."""

    def forward(self, x: torch.Tensor, output_features: bool = False):
        """Reconstruct activations.

        Args:
            x: ``[..., activation_dim]``.
            output_features: also return the features.

        Returns:
            ``x_hat [..., activation_dim]``, or ``(x_hat, f)`` with ``f [..., dict_size]``.
        """
        f = self.encode(x)
        x_hat = self.decode(f)
        return (x_hat, f) if output_features else x_hat

    # ------------------------------------------------------------------ save / load
    def dictionary_config(self) -> dict:
        """Constructor arguments that rebuild this dictionary (JSON-ready)."""
        return {"activation_dim": self.activation_dim, "dict_size": self.dict_size, "alignment": self.alignment}

    def save(self, path, config: Optional[dict] = None) -> Path:
        """Write the weights as safetensors, atomically (see :func:`.checkpoints.save_dictionary`).

        Args:
            path: a folder (``ae.safetensors`` is written inside, with ``config.json`` when ``config`` is
                given) or a ``.safetensors`` file path.
            config: optional JSON-ready dict written to ``config.json`` beside the weights.

        Returns:
            the path of the weights file.
        """
        return _ckpt.save_dictionary(self, path, config)

    @classmethod
    def from_pretrained(cls, path, device=None, dtype=None) -> "Dictionary":
        """Load a dictionary without unpickling anything (see :func:`.checkpoints.load_dictionary`).

        Args:
            path: a run folder (``trainer_i``) or a weights file of this library; a dictionary_learning folder
                (``ae.pt`` + ``config.json``: AutoEncoder, AutoEncoderTopK, BatchTopKSAE); or a SAELens folder
                (``cfg.json`` + ``sae_weights.safetensors``: standard, topk, and jumprelu as exported from a
                BatchTopK dictionary). ``.pt`` files are read only with ``torch.load(weights_only=True)``.
            device: where to put the weights.
            dtype: dtype of the weights (default: as stored).

        Returns:
            an instance of the saved class (which must be ``cls`` or a subclass of it), in eval mode.

        Raises:
            CheckpointError: missing file, corrupt or truncated file, a file that is not a dictionary
                checkpoint, pickled code in a ``.pt`` file, a format this library cannot represent (named),
                tensors whose shapes do not match the recorded configuration, or NaN/inf weights (named).
        """
        return _ckpt.load_dictionary(cls, path, device, dtype)


@register_dictionary
class AutoEncoder(Dictionary):
    """ReLU sparse autoencoder: ``f = ReLU(W_enc (x - b_dec) + b_enc)``, ``x_hat = W_dec f + b_dec``.

    As in dictionary_learning's ``AutoEncoder`` (Bricken et al. 2023, "Towards Monosemanticity"), with the
    decoder bias subtracted before encoding. Decoder columns start at unit norm and the encoder at
    ``0.1 * W_dec.T``.

    Args:
        activation_dim: ``D``, width of the activations.
        dict_size: ``F``, number of features.
        alignment: None (standard), ``"project"`` or ``"rescale"`` (aligned: ``<e_i, d_i> = 1`` exactly), or
            one of the ablations ``"penalty"``, ``"projection"``, ``"tied"``.

    Raises:
        ValueError: non-positive sizes or an unknown alignment mode.
    """

    def __init__(self, activation_dim: int, dict_size: int, alignment: Optional[str] = None):
        super().__init__(activation_dim, dict_size, alignment)
        self._init_weights()

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``W_enc (x - b_dec) + b_enc``: ``[..., activation_dim] -> [..., dict_size]``."""
        return self._affine_encode(x)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(W_enc (x - b_dec) + b_enc)``: ``[..., activation_dim] -> [..., dict_size]``."""
        return torch.relu(self.pre_activations(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``W_dec f + b_dec``: ``[..., dict_size] -> [..., activation_dim]``."""
        return self._affine_decode(f)


def _check_k(k, dict_size) -> int:
    if isinstance(k, torch.Tensor):
        k = int(k)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= dict_size:
        raise ValueError(f"k must be an integer in [1, dict_size={dict_size}], got {k!r}")
    return k


class _SparseCodeDictionary(Dictionary):
    """Shared parts of the TopK-family dictionaries: buffers ``k`` and ``threshold``, the ReLU pre-activations,
    the linear decoder, and folding of the activation scale into the threshold. The encoder starts equal to
    ``W_dec.T`` (so ``a_i = 1`` at initialization even for standard training), as in dictionary_learning."""

    def __init__(self, activation_dim: int, dict_size: int, k: int, alignment: Optional[str] = None):
        super().__init__(activation_dim, dict_size, alignment)
        self.register_buffer("k", torch.tensor(_check_k(k, dict_size), dtype=torch.int))
        self.register_buffer("threshold", torch.tensor(-1.0))
        self._init_weights(encoder_scale=1.0)

    def post_relu(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(W_enc (x - b_dec) + b_enc)``: ``[..., activation_dim] -> [..., dict_size]``."""
        return torch.relu(self._affine_encode(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """``W_dec f + b_dec``: ``[..., dict_size] -> [..., activation_dim]``."""
        return self._affine_decode(f)

    def decode_sparse(self, indices: torch.Tensor, values: torch.Tensor,
                      offsets: Optional[torch.Tensor] = None) -> torch.Tensor:
        """:meth:`decode` of a sparse code, reading only the decoder columns of the active features
        (``embedding_bag`` with per-sample weights; differentiable in ``values`` and ``W_dec``).

        Args:
            indices: ``[batch, k]`` feature indices (TopK), or ``[n]`` indices with ``offsets``.
            values: activations of those features, same shape as ``indices``.
            offsets: ``[batch]`` start of each token's run in 1-D ``indices`` (sorted by token; empty runs
                allowed), or None for 2-D ``indices``.

        Returns:
            ``x_hat [batch, activation_dim]``. Under autocast the decoder is read in the autocast dtype (as the dense
            product ``f @ W_dec.T`` would be), except bfloat16 on CUDA (read in its own dtype, as CUDA lacks that
            backward kernel), otherwise in its own dtype.
        """
        W = self.W_dec.T
        dev = W.device.type
        if torch.is_autocast_enabled(dev):
            amp = torch.get_autocast_dtype(dev)
            # CUDA has no bfloat16 kernel for the backward of a per-sample-weighted embedding_bag (PyTorch 2.11:
            # "_embedding_bag_per_sample_weights_backward_cuda not implemented for 'BFloat16'"): read in float32
            if not (dev == "cuda" and amp == torch.bfloat16):
                W = W.to(amp)
        W = W.contiguous()  # rows d_i contiguous: coalesced gathers (a strided view reads slowly on GPUs)
        out = torch.nn.functional.embedding_bag(indices, W, offsets, mode="sum",
                                                per_sample_weights=values.to(W.dtype))
        return out + self.b_dec

    @torch.no_grad()
    def scale_biases(self, scale: float) -> None:
        """As :meth:`Dictionary.scale_biases`, and the learned threshold is scaled too (if set)."""
        super().scale_biases(scale)
        if self.threshold >= 0:
            self.threshold.mul_(scale)

    def dictionary_config(self) -> dict:
        return {**super().dictionary_config(), "k": int(self.k)}


@register_dictionary
class AutoEncoderTopK(_SparseCodeDictionary):
    """TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093): the ``k``
    largest ReLU pre-activations of each token are kept.

    Args:
        activation_dim, dict_size: shape.
        k: active features per token, ``1 <= k <= dict_size``.
        alignment: see :class:`AutoEncoder`.

    Buffers: ``k`` (int), ``threshold`` (EMA of the smallest kept activation, learned by the trainer; -1 until
    set; used only with ``use_threshold=True``).

    Raises:
        ValueError: bad sizes, ``k`` out of range, unknown alignment.
    """

    def encode(self, x: torch.Tensor, return_topk: bool = False, use_threshold: bool = False,
               k: Optional[int] = None):
        """Features ``f [..., dict_size]`` with exactly ``k`` non-negative entries kept per token.

        Args:
            x: ``[..., activation_dim]``.
            k: override of the ``k`` buffer (trainers pass the current k as a Python int, which avoids reading
                the buffer from the device at every step).
            return_topk: also return ``(top_values [..., k], top_indices [..., k], post_relu [..., dict_size])``.
            use_threshold: instead of top-k, keep every activation above the learned ``threshold`` (JumpReLU
                style inference); requires a learned threshold.

        Raises:
            ValueError: ``use_threshold`` before a threshold was learned.
        """
        pre = self.post_relu(x)
        if use_threshold and self.threshold < 0:
            raise ValueError("this TopK dictionary has no learned threshold yet (threshold = -1)")
        k = int(self.k) if k is None else k
        top = pre.topk(k, dim=-1, sorted=False) if (return_topk or not use_threshold) else None
        if use_threshold:
            f = pre * (pre > self.threshold)
        else:
            f = torch.zeros_like(pre).scatter_(-1, top.indices, top.values)
        return (f, top.values, top.indices, pre) if return_topk else f


@register_dictionary
class BatchTopKSAE(_SparseCodeDictionary):
    """BatchTopK SAE (Bussmann et al. 2024, "BatchTopK Sparse Autoencoders", arXiv 2412.06410): during training
    the ``k * batch`` largest ReLU pre-activations of the whole batch are kept; at inference a threshold learned
    during training (an EMA of the smallest kept activation) is applied per token.

    Args and buffers as :class:`AutoEncoderTopK`.
    """

    def encode(self, x: torch.Tensor, return_active: bool = False, use_threshold: bool = True,
               k: Optional[int] = None):
        """Features ``f [..., dict_size]``.

        Args:
            x: ``[batch, activation_dim]`` (or ``[..., activation_dim]``, flattened for the batch top-k).
            return_active: also return ``(active [dict_size] bool, post_relu [..., dict_size])``.
            use_threshold: keep activations above the learned threshold (inference, the default). If no
                threshold has been learned yet (``threshold < 0``), the batch top-k is used instead.
            k: override of the ``k`` buffer for the batch top-k (a Python int: no device read).

        Rows never interact once a threshold is learned. Without one (inference falls back to the batch top-k),
        a row holding NaN/inf is refused, as it would change the other rows' features.

        Raises:
            ValueError: ``use_threshold`` without a learned threshold and a non-finite input row.
        """
        pre = self.post_relu(x)
        if use_threshold and self.threshold >= 0:
            f = pre * (pre > self.threshold)
        else:
            if use_threshold:
                _refuse_nonfinite_rows(pre)
            flat = pre.reshape(-1, self.dict_size)
            n = min((int(self.k) if k is None else k) * flat.shape[0], flat.numel())
            top = flat.flatten().topk(n, sorted=False)
            f = torch.zeros_like(flat).flatten().scatter_(-1, top.indices, top.values).reshape(pre.shape)
        if return_active:
            return f, (f.reshape(-1, self.dict_size) > 0).any(0), pre
        return f


def _refuse_nonfinite_rows(pre: torch.Tensor) -> None:
    """Inference without a learned threshold selects across the whole batch, so one row holding NaN/inf would
    change the features of every other row: refuse it instead (training finds such rows through its loss check).

    Raises:
        ValueError: naming the first offending rows of ``pre [..., dict_size]``.
    """
    bad = ~torch.isfinite(pre.reshape(-1, pre.shape[-1])).all(-1)
    if bool(bad.any()):
        rows = bad.nonzero().flatten()[:5].tolist()
        raise ValueError(f"BatchTopKSAE.encode: input rows {rows} (flattened) hold NaN or infinite values; without "
                         f"a learned threshold the batch top-k would let them change the features of the other rows")
