"""The language model SAEBench's evals run: a TransformerLens ``HookedTransformer``.

Every SAEBench eval loads its model itself with ``HookedTransformer.from_pretrained_no_processing(name, ...)``
(and ``BaseSAE.test_sae`` with ``HookedTransformer.from_pretrained``); none accepts a model object. So:

* :func:`load_hooked_transformer` builds the model once: a name TransformerLens lists (e.g.
  ``"pythia-160m-deduped"``, ``"gemma-2-2b"``) is loaded as SAEBench loads it; the offline models
  ``"smollm2-135m-instruct"`` and ``"gemma-3-270m"`` (GGUF, via
  :func:`dictionary_learning_aligned.models.load_language_model`) and any other Hugging Face model of the LLaMA or
  Gemma-3 (text, ``Gemma3ForCausalLM``) architecture are converted with TransformerLens's own weight converters
  (``convert_llama_weights``, ``convert_gemma_weights``; :func:`hooked_transformer_from_hf`), after which their
  logits are checked against the Hugging Face model's.
* :func:`serve_model` is a context manager that makes both loaders return that model for its name and restores
  them on exit.

TransformerLens gets its own copy of the tokenizer (:func:`tokenizer_for_transformer_lens`), right-padded: nnsight
switches the tokenizer it is given to left padding, and SAEBench pads to max length and runs TransformerLens without
an attention mask. The copy prepends BOS, as TransformerLens's own loaders make it do; SAEBench masks that token.
"""

from __future__ import annotations

import contextlib
import copy
from typing import Optional

import torch

from . import import_saebench

#: text used to compare HookedTransformer and Hugging Face logits on load
CHECK_TEXT = "The quick brown fox jumps over the lazy dog. Sparse autoencoders find features in activations."


class ModelBridgeError(RuntimeError):
    """The HookedTransformer cannot be built, or disagrees with the Hugging Face model it was built from."""


def official_tl_name(name: str) -> Optional[str]:
    """TransformerLens's official name for ``name`` (or an alias), or None when it does not list the model."""
    import_saebench()
    from transformer_lens import loading_from_pretrained as lp

    try:
        return lp.get_official_model_name(name)
    except ValueError:
        return None


#: Hugging Face ``config.model_type`` values the bridge converts
CONVERTIBLE = ("llama", "gemma3_text")


def _rope_theta(c, rope) -> float:
    """The RoPE base of one RoPE parameter dict (``rope_parameters`` or a per-layer-type entry of it), refusing
    RoPE scaling, which the converted model would not reproduce."""
    rope_type = rope.get("rope_type", rope.get("type", "default")) if isinstance(rope, dict) else "default"
    if rope_type not in ("default", None):
        raise ModelBridgeError(f"RoPE scaling {rope_type!r} is not supported by the bridge")
    theta = rope.get("rope_theta") if isinstance(rope, dict) else None
    theta = theta or getattr(c, "rope_theta", None)
    if theta is None:
        raise ModelBridgeError("the model config has no rope_theta")
    return float(theta)


def _llama_config(hf, device, dtype, n_ctx: int):
    import_saebench()
    from transformer_lens import HookedTransformerConfig

    c = hf.config
    rope = getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {}
    theta = _rope_theta(c, rope)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    act = getattr(c, "hidden_act", "silu")
    return HookedTransformerConfig(
        model_name=getattr(c, "_name_or_path", "") or "llama", original_architecture="LlamaForCausalLM",
        d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, d_head=head_dim,
        d_mlp=c.intermediate_size, n_key_value_heads=c.num_key_value_heads, d_vocab=c.vocab_size,
        n_ctx=min(n_ctx, c.max_position_embeddings), eps=c.rms_norm_eps, act_fn=act, normalization_type="RMS",
        final_rms=True, positional_embedding_type="rotary", rotary_dim=head_dim, rotary_adjacent_pairs=False,
        rotary_base=theta, gated_mlp=True, default_prepend_bos=True, dtype=dtype, device=str(device))


def _gemma3_config(hf, device, dtype, n_ctx: int):
    """The HookedTransformerConfig of a text-only Gemma-3 model, read from its Hugging Face config (the fields
    TransformerLens hard-codes for ``google/gemma-3-270m``: sliding-window ("local") and global layers with their
    own RoPE bases, q/k RMSNorm, RMSNorm before and after attention and MLP, attention scale
    ``sqrt(query_pre_attn_scalar)``; Gemma 3 Technical Report, arXiv 2503.19786)."""
    import_saebench()
    from transformer_lens import HookedTransformerConfig

    c = hf.config
    rope = getattr(c, "rope_parameters", None) or {}
    if set(rope) != {"full_attention", "sliding_attention"}:
        raise ModelBridgeError(f"expected Gemma-3 RoPE parameters for full_attention and sliding_attention "
                               f"layers, got {sorted(rope)}")
    kinds = {"sliding_attention": "local", "full_attention": "global"}
    if not set(c.layer_types) <= set(kinds):
        raise ModelBridgeError(f"unsupported Gemma-3 layer types {sorted(set(c.layer_types) - set(kinds))}")
    if getattr(c, "use_bidirectional_attention", False):
        raise ModelBridgeError("a Gemma-3 model with bidirectional attention is not a causal LM")
    return HookedTransformerConfig(
        model_name=getattr(c, "_name_or_path", "") or "gemma3", original_architecture="Gemma3ForCausalLM",
        d_model=c.hidden_size, n_layers=c.num_hidden_layers, n_heads=c.num_attention_heads, d_head=c.head_dim,
        d_mlp=c.intermediate_size, n_key_value_heads=c.num_key_value_heads, d_vocab=c.vocab_size,
        n_ctx=min(n_ctx, c.max_position_embeddings), eps=c.rms_norm_eps, act_fn=c.hidden_activation,
        normalization_type="RMS", final_rms=True, positional_embedding_type="rotary", rotary_dim=c.head_dim,
        rotary_adjacent_pairs=False, rotary_base=_rope_theta(c, rope["full_attention"]),
        rotary_base_local=_rope_theta(c, rope["sliding_attention"]), use_attn_scale=True,
        attn_scale=float(c.query_pre_attn_scalar) ** 0.5, gated_mlp=True, use_normalization_before_and_after=True,
        use_qk_norm=True, use_local_attn=True, window_size=c.sliding_window,
        attn_types=[kinds[t] for t in c.layer_types],
        attn_scores_soft_cap=c.attn_logit_softcapping or -1.0,
        output_logits_soft_cap=c.final_logit_softcapping or -1.0,
        default_prepend_bos=True, dtype=dtype, device=str(device))


def _tl_config_and_converter(hf, device, dtype, n_ctx: int):
    """``(HookedTransformerConfig, TransformerLens weight converter)`` for a LLaMA or Gemma-3 Hugging Face model.

    Raises:
        ModelBridgeError: another architecture (the message names the ones the bridge converts).
    """
    model_type = hf.config.model_type
    if model_type == "llama":
        from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

        return _llama_config(hf, device, dtype, n_ctx), convert_llama_weights
    if model_type == "gemma3_text":
        from transformer_lens.pretrained.weight_conversions.gemma import convert_gemma_weights

        return _gemma3_config(hf, device, dtype, n_ctx), convert_gemma_weights
    raise ModelBridgeError(f"cannot convert a {model_type!r} Hugging Face model: the bridge builds only the "
                           f"architectures {CONVERTIBLE} (LLaMA, text-only Gemma-3); use a model TransformerLens "
                           f"lists instead")


@torch.no_grad()
def check_against_hf(tl_model, hf, tokenizer, text: str = CHECK_TEXT, atol: Optional[float] = None) -> dict:
    """Compare the logits of ``tl_model`` with those of the Hugging Face model on ``[BOS] + tokens(text)``.

    Args:
        tl_model: the HookedTransformer. hf: the Hugging Face causal LM. tokenizer: its tokenizer.
        atol: largest allowed absolute logit difference (default 1e-2 in float32, 0.5 in 16-bit dtypes).

    Returns:
        ``{"max_abs_logit_diff", "argmax_agreement", "n_tokens", "atol"}``.

    Raises:
        ModelBridgeError: the difference exceeds ``atol`` or fewer than 95% of argmax tokens agree.
    """
    dtype = next(tl_model.parameters()).dtype
    if atol is None:
        atol = 1e-2 if dtype == torch.float32 else 0.5
    ids = tl_model.to_tokens(text, prepend_bos=True)  # [1, T]
    tl_logits = tl_model(ids).float()
    hf_logits = hf(ids.to(hf.device)).logits.float().to(tl_logits.device)
    diff = (tl_logits - hf_logits).abs().max().item()
    agree = (tl_logits.argmax(-1) == hf_logits.argmax(-1)).float().mean().item()
    info = {"max_abs_logit_diff": diff, "argmax_agreement": agree, "n_tokens": int(ids.shape[1]), "atol": atol}
    if not diff <= atol or agree < 0.95:
        raise ModelBridgeError(f"HookedTransformer disagrees with the Hugging Face model: max |logit diff| {diff:.3g} "
                               f"(allowed {atol:g}), argmax agreement {agree:.1%} on {ids.shape[1]} tokens")
    return info


def tokenizer_for_transformer_lens(tokenizer):
    """TransformerLens's copy of ``tokenizer``: right-padded (pad token: EOS if it has none) and prepending BOS to
    every text, as TransformerLens's own loaders make it (``get_tokenizer_with_bos``).

    SAEBench's sparse probing, SCR and TPP call ``model.tokenizer(texts)`` directly and then zero the activations
    of BOS, EOS and pad tokens before mean-pooling. SmolLM2's tokenizer adds no BOS, so without this the first
    word of every text became the model's attention sink, a massive activation (norm 164x the median at layer 12)
    that our dictionaries never saw in training (their contexts start with a BOS that is dropped) and that
    SAEBench did not mask. A tokenizer that already prepends BOS (Gemma's) is only copied.

    Raises:
        ModelBridgeError: the tokenizer has a BOS token but cannot be made to prepend it.
    """
    tok = copy.deepcopy(tokenizer)
    tok.padding_side = "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    bos = tok.bos_token_id
    if bos is not None and tok("x")["input_ids"][:1] != [bos]:
        tok.add_bos_token = True  # rebuilds the post-processor of a fast tokenizer
        if tok("x")["input_ids"][:1] != [bos]:
            raise ModelBridgeError(f"{type(tok).__name__} does not prepend its BOS token {tok.bos_token!r} even "
                                   f"with add_bos_token=True; SAEBench would not mask the first token")
    return tok


def hooked_transformer_from_hf(hf, tokenizer, device="cpu", dtype: torch.dtype = torch.float32, n_ctx: int = 2048,
                               check: bool = True):
    """Build a HookedTransformer from an already loaded LLaMA or Gemma-3 Hugging Face model with
    TransformerLens's weight converter (``convert_llama_weights`` / ``convert_gemma_weights``), without folding
    or centring anything (as ``from_pretrained_no_processing``).

    Args:
        hf: a ``LlamaForCausalLM`` or text-only ``Gemma3ForCausalLM`` (e.g. SmolLM2 or Gemma-3-270M loaded from
            GGUF; their weights are already de-quantized).
        tokenizer: its tokenizer; TransformerLens gets the copy of :func:`tokenizer_for_transformer_lens`.
        device, dtype: where and in which dtype to build the model.
        n_ctx: context length of the attention masks (capped at the model's ``max_position_embeddings``).
        check: compare logits with ``hf`` (:func:`check_against_hf`).

    Returns:
        ``(model, info)``: the HookedTransformer (eval mode) and the logit check (``{}`` if ``check`` is False).

    Raises:
        ModelBridgeError: neither LLaMA nor Gemma-3, unsupported RoPE scaling, or a failed logit check.
    """
    from transformer_lens import HookedTransformer

    cfg, convert = _tl_config_and_converter(hf, device, dtype, n_ctx)
    tok = tokenizer_for_transformer_lens(tokenizer)
    src = hf.to(dtype) if next(hf.parameters()).dtype != dtype else hf
    state = convert(src, cfg)
    model = HookedTransformer(cfg, tokenizer=tok, move_to_device=False)
    model.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                      fold_value_biases=False)
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    info = check_against_hf(model, src, tokenizer) if check else {}
    return model, info


def load_hooked_transformer(model_name: str, device="cpu", dtype: torch.dtype = torch.float32,
                            hf_model=None, tokenizer=None, n_ctx: int = 2048):
    """The HookedTransformer for ``model_name``.

    Args:
        model_name: a TransformerLens model name (loaded from the hub or its cache by
            ``HookedTransformer.from_pretrained_no_processing``, as SAEBench does), or anything
            :func:`~dictionary_learning_aligned.models.load_language_model` loads (the offline models
            ``"smollm2-135m-instruct"`` and ``"gemma-3-270m"``, a local folder, a hub id), which is then
            converted (LLaMA and Gemma-3 only). The offline aliases are always converted from their GGUF files,
            also ``"gemma-3-270m"``, which TransformerLens lists (as ``google/gemma-3-270m``, from the hub).
        device, dtype: where and in which dtype.
        hf_model, tokenizer: an already loaded Hugging Face model and tokenizer to convert (skips loading).
        n_ctx: context length for converted models.

    Returns:
        ``(model, info)`` where ``info`` records ``{"model_name", "source": "transformer_lens" | "converted",
        "logit_check": {...}}``.

    Raises:
        ModelBridgeError: conversion or logit check failed. ValueError / FileNotFoundError: the model cannot be
        loaded (from ``load_language_model``).
    """
    from transformer_lens import HookedTransformer

    from dictionary_learning_aligned.models import OFFLINE_NAMES

    offline = hf_model is not None or model_name.lower() in OFFLINE_NAMES
    official = None if offline else official_tl_name(model_name)
    if official is not None:
        model = _ORIGINAL.get("from_pretrained_no_processing", HookedTransformer.from_pretrained_no_processing)(
            official, device=device, dtype=dtype)
        return model, {"model_name": model_name, "source": "transformer_lens", "official_name": official}
    if hf_model is None:
        from dictionary_learning_aligned.models import load_language_model

        hf_model, tokenizer = load_language_model(model_name, device=device, dtype=dtype)
    if tokenizer is None:
        raise ValueError("hf_model given without its tokenizer")
    model, check = hooked_transformer_from_hf(hf_model, tokenizer, device, dtype, n_ctx)
    return model, {"model_name": model_name, "source": "converted", "logit_check": check}


_ORIGINAL: dict = {}


@contextlib.contextmanager
def serve_model(model, names):
    """Within the block, ``HookedTransformer.from_pretrained_no_processing(name, ...)`` and
    ``HookedTransformer.from_pretrained(name, ...)`` return ``model`` for every ``name`` in ``names``; both are
    restored on exit (also on error).

    Raises (inside the block, from the patched loaders):
        ModelBridgeError: an eval asks for another model, or for a dtype other than the model's.
    """
    import_saebench()
    from transformer_lens import HookedTransformer

    names = {names} if isinstance(names, str) else set(names)
    dtype = next(model.parameters()).dtype
    saved = {k: HookedTransformer.__dict__[k] for k in ("from_pretrained_no_processing", "from_pretrained")}

    def serve(name, *args, **kwargs):
        if name not in names:
            raise ModelBridgeError(f"an eval asked for model {name!r}, but the harness serves only "
                                   f"{sorted(names)}")
        want = kwargs.get("dtype")
        if isinstance(want, str):
            want = getattr(torch, want.removeprefix("torch."), None)
        if want is not None and want != dtype:
            raise ModelBridgeError(f"an eval asked for {name!r} in {want}, but the model was built in {dtype}; "
                                   f"pass the same --dtype")
        return model

    _ORIGINAL.update({k: v.__get__(None, HookedTransformer) for k, v in saved.items()})
    HookedTransformer.from_pretrained_no_processing = staticmethod(serve)
    HookedTransformer.from_pretrained = staticmethod(serve)
    try:
        yield model
    finally:
        for k, v in saved.items():
            setattr(HookedTransformer, k, v)
        _ORIGINAL.clear()
