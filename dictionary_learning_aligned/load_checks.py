"""Checks that an offline model loaded correctly: its tokenizer's ids and its loss on one English sentence.

Some transformers versions convert a GGUF file wrongly: 5.17.0 splits Gemma-3's words into fragments, and a
conversion may de-quantise weights wrongly. :func:`check_tokenizer` compares the token ids of
:data:`TOKENIZER_PROBE` with a correct tokenizer's (:data:`TOKENIZER_PROBE_IDS`); :func:`check_model_loss`
compares the model's loss on that sentence with a correct load's (:data:`MODEL_PROBE_LOSS`). Each raises its own
``ValueError`` subclass whose message names the model, the versions and the fixes.

This module imports nothing from the package: it holds the aliases of the offline models (the keys of its reference
tables) and the Gemma-3 names its fixes give; :mod:`.models` loads the models, runs these checks on every offline
load, and re-exports every public name here.
"""
from __future__ import annotations

from pathlib import Path

import torch

SMOLLM2_NAME = "smollm2-135m-instruct"
GEMMA3_NAME = "gemma-3-270m"
#: the Gemma-3 GGUF file's name; its converted tokenizer is saved as the folder ``gemma-3-270m-q4_k_m.tokenizer``
GEMMA3_FILE = "gemma-3-270m-q4_k_m.gguf"
#: a saved Hugging Face tokenizer folder to use for Gemma-3 instead of converting the GGUF file's tokenizer
GEMMA3_TOKENIZER_ENV_VAR = "DLA_GEMMA3_TOKENIZER"
#: the sentence every offline model's tokenizer is checked on (:func:`check_tokenizer`)
TOKENIZER_PROBE = "The capital of France is Paris, and the river Seine flows through it."
#: its token ids without special tokens, as transformers 5.24.0 tokenizes it (SmolLM2: 5.17.0 gives the same ids)
TOKENIZER_PROBE_IDS = {
    SMOLLM2_NAME: (504, 3575, 282, 4649, 314, 7042, 28, 284, 260, 4626, 1268, 462, 8634, 738, 357, 30),
    GEMMA3_NAME: (818, 5279, 529, 7001, 563, 9079, 236764, 532, 506, 8858, 69598, 17752, 1343, 625, 236761),
}
#: the vocabulary size (``len(tokenizer)``) of each offline model's tokenizer, to name another model's tokenizer
#: given for one (:func:`check_tokenizer`)
TOKENIZER_VOCAB_SIZE = {SMOLLM2_NAME: 49152, GEMMA3_NAME: 262144}
#: the mean next-token cross-entropy (nats/token) of each offline model on BOS + :data:`TOKENIZER_PROBE`, float32
#: on a CPU with transformers 5.24.0 (bfloat16: within 0.013), and how far a load may be from it
#: (:func:`check_model_loss`)
MODEL_PROBE_LOSS = {SMOLLM2_NAME: 3.4746, GEMMA3_NAME: 2.5839}
MODEL_PROBE_TOLERANCE = 0.25
#: the oldest transformers version measured to give those ids when converting each model's GGUF tokenizer
#: (Gemma-3: 5.17.0 loses the merges and splits words into fragments; 5.18.0-5.22.0 give the right pieces but add
#: no BOS by default, 5.23.0 and newer add it)
TOKENIZER_GOOD_TRANSFORMERS = {SMOLLM2_NAME: "5.17.0", GEMMA3_NAME: "5.18.0"}


class ModelCheckError(ValueError):
    """A loaded offline model whose loss on :data:`TOKENIZER_PROBE` is far from a correct load's
    (:func:`check_model_loss`); a ``ValueError``."""


class TokenizerCheckError(ValueError):
    """A tokenizer that splits :data:`TOKENIZER_PROBE` differently from a correct tokenizer of its model
    (:func:`check_tokenizer`); a ``ValueError``."""


def reference_model(model) -> str | None:
    """The offline model whose references (:data:`TOKENIZER_PROBE_IDS`, :data:`MODEL_PROBE_LOSS`) a model loaded
    from a GGUF file must match: Gemma-3 for a Gemma-3 model (``model_type`` ``gemma3_text``/``gemma3``), SmolLM2
    for a LLaMA model with SmolLM2's 49,152-token vocabulary; ``None`` (not checked) for any other model."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", "")
    if model_type in ("gemma3_text", "gemma3"):
        return GEMMA3_NAME
    if model_type == "llama" and getattr(config, "vocab_size", None) == TOKENIZER_VOCAB_SIZE[SMOLLM2_NAME]:
        return SMOLLM2_NAME
    return None


def check_tokenizer(tokenizer, model: str, source: str = "") -> None:
    """Check that ``tokenizer`` splits English text as a correct tokenizer of the offline ``model`` does.

    One encode of :data:`TOKENIZER_PROBE` with ``add_special_tokens=False`` (BOS handling differs across
    transformers versions, and :func:`~.buffer.pack_token_contexts` puts BOS at the start of each context itself),
    compared with :data:`TOKENIZER_PROBE_IDS`. It catches GGUF tokenizer conversions that lose the merges:
    transformers 5.17.0 turns Gemma-3's ``"capital"`` into ``'▁c' 'ap' 'it' 'al'``, and a model run on such ids
    sees mangled text (Gemma-3-270M's clean CE loss on the same text: 5.6 instead of 3.7 nats/token).

    Args:
        tokenizer: a Hugging Face tokenizer (called as ``tokenizer(text, add_special_tokens=False)``).
        model: an offline alias, a key of :data:`TOKENIZER_PROBE_IDS` (``"smollm2-135m-instruct"``,
            ``"gemma-3-270m"``).
        source: where the tokenizer was read from, for the message (e.g. ``"$DLA_GEMMA3_TOKENIZER=..."``).

    Raises:
        TokenizerCheckError: other ids; the message names the model, the installed transformers version, the
            source, the first differing pieces (as the tokenizer decodes them) and the fixes (a transformers
            version measured to work; for Gemma-3 also :data:`GEMMA3_TOKENIZER_ENV_VAR`), or, for a tokenizer
            with another offline model's vocabulary size (:data:`TOKENIZER_VOCAB_SIZE`), which model it is of.
        KeyError: ``model`` has no reference ids.
    """
    import transformers

    expected = TOKENIZER_PROBE_IDS[model]
    got = tuple(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    if got == expected:
        return
    first = next((i for i, (a, b) in enumerate(zip(got, expected)) if a != b), min(len(got), len(expected)))
    where = f" ({source})" if source else ""
    other = _other_model(tokenizer, model)
    if other is not None:
        raise TokenizerCheckError(
            f"the {model} tokenizer{where} is {other}'s tokenizer: its vocabulary has "
            f"{TOKENIZER_VOCAB_SIZE[other]:,} tokens where {model}'s has {TOKENIZER_VOCAB_SIZE[model]:,}. Fix: use "
            f"{model}'s own tokenizer" + (f" (unset {GEMMA3_TOKENIZER_ENV_VAR}, or point it at a Gemma-3 tokenizer "
                                          f"folder; see docs/gemma.md)" if model == GEMMA3_NAME else ""))
    raise TokenizerCheckError(
        f"the {model} tokenizer{where} is broken under transformers {transformers.__version__}: it splits "
        f"{TOKENIZER_PROBE!r} into {len(got)} tokens instead of {len(expected)}; from token {first} on it gives "
        f"{_pieces(tokenizer, got[first:first + 6])} where a correct tokenizer gives "
        f"{_pieces(tokenizer, expected[first:first + 6])}. Activations harvested with it would be of mangled "
        f"text. Fix: {_tokenizer_fix(model)}")


@torch.no_grad()
def check_model_loss(model, tokenizer, name: str) -> float:
    """Check that a loaded offline model predicts English as a correct load of it does: its mean next-token
    cross-entropy on BOS + :data:`TOKENIZER_PROBE` (16-17 tokens, one forward pass where the model is) must be
    within :data:`MODEL_PROBE_TOLERANCE` of :data:`MODEL_PROBE_LOSS`. It catches what the tokenizer check cannot:
    weights that a transformers version converts or de-quantises wrongly. Run after :func:`check_tokenizer`.

    Args:
        model: the Hugging Face causal LM; tokenizer: its (checked) tokenizer; name: a key of
            :data:`MODEL_PROBE_LOSS`.

    Returns:
        the loss in nats per predicted token.

    Raises:
        ModelCheckError: the loss is further than the tolerance; the message names the model, both losses, the
            transformers and torch versions, and what to try.
        ValueError: the tokenizer has neither a BOS nor an EOS token to start the sentence with.
        KeyError: ``name`` has no reference loss.
    """
    import torch.nn.functional as F
    import transformers

    expected = MODEL_PROBE_LOSS[name]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos is None:
        raise ValueError(f"the {name} tokenizer has neither a BOS nor an EOS token, so neither this check nor "
                         f"harvesting (each context starts with BOS) can run: use a tokenizer saved with its special "
                         f"tokens (tokenizer_config.json, special_tokens_map.json)")
    ids = [bos] + list(tokenizer(TOKENIZER_PROBE, add_special_tokens=False)["input_ids"])
    weight = next(model.parameters())
    x = torch.tensor([ids], device=weight.device)
    loss = float(F.cross_entropy(model(x).logits[0, :-1].float(), x[0, 1:]))
    if abs(loss - expected) <= MODEL_PROBE_TOLERANCE:
        return loss
    raise ModelCheckError(
        f"the loaded {name} model scores {loss:.3f} nats/token on {TOKENIZER_PROBE!r}, where a correct load "
        f"scores {expected:.3f} (tolerance {MODEL_PROBE_TOLERANCE}) in {weight.dtype}; "
        f"transformers {transformers.__version__}, torch {torch.__version__}. Its weights were converted wrongly "
        f"from the GGUF file, or its dtype overflows (Gemma's activations exceed float16's range): try float32, "
        f"another transformers version (the reference was measured with 5.24.0) or a fresh copy of the file")


def _other_model(tokenizer, model: str) -> str | None:
    """The other offline model whose vocabulary size ``tokenizer`` has (:data:`TOKENIZER_VOCAB_SIZE`), or None
    (also for a tokenizer without ``len``)."""
    try:
        size = len(tokenizer)
    except TypeError:
        return None
    return next((m for m, n in TOKENIZER_VOCAB_SIZE.items() if m != model and n == size), None)


def _pieces(tokenizer, ids) -> str:
    """``ids`` as the tokenizer's pieces, e.g. ``'▁c' 'ap' 'it'`` (the ids themselves if it cannot convert them)."""
    try:
        return " ".join(repr(p) for p in tokenizer.convert_ids_to_tokens(list(ids)))
    except Exception:  # only for the message
        return str(list(ids))


def _tokenizer_fix(model: str) -> str:
    """The fixes a :class:`TokenizerCheckError` of a broken conversion names for ``model``."""
    fix = (f"upgrade transformers to {TOKENIZER_GOOD_TRANSFORMERS[model]} or newer (`pip install -U "
           f"'transformers>={TOKENIZER_GOOD_TRANSFORMERS[model]}'`, the oldest version measured to work)")
    if model != GEMMA3_NAME:
        return fix
    return (f"{fix}, or set {GEMMA3_TOKENIZER_ENV_VAR} to a tokenizer folder saved by a version that works "
            f"(`tokenizer.save_pretrained(folder)`, or a copy of the `{Path(GEMMA3_FILE).stem}.tokenizer` folder "
            f"this package saves in its cache folder under such a version; see docs/gemma.md)")
