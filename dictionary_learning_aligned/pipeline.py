"""The shared steps of every pipeline of the library, written once: load the model -> harvest (into a buffer, or
once into an on-disk cache) -> train (:func:`.training.trainSAE`) -> evaluate on held-out text.

``demo`` (:func:`.demo.run_demo`) and ``train`` (:func:`.train.run`, :func:`.train.harvest_cache`) are built from
these functions; the reproduction (:mod:`.reproduce`) maps onto them one to one:

==============================================  ============================================================
step                                            function
==============================================  ============================================================
load the language model and its layer           :func:`load_model` -> :class:`LoadedModel`
wrap a model already loaded                     :func:`wrap_model`
the layer read when none is given               :func:`default_layer`
how activations are read (one run's settings)   :class:`Harvest`
what its forward passes compute in              :func:`precision_used` (float32, TF32, the model's dtype)
a buffer over a corpus split                    :func:`activation_buffer` (size: :func:`buffer_ctxs`)
harvest once into a cache                       :func:`cache_meta`, :func:`cache_location`, :func:`harvest_into`,
                                                :func:`harvest_once` (process 0 builds, the others wait)
read the cache, metadata checked                :func:`open_cache`
held-out evaluation data                        :func:`heldout_data` -> :class:`HeldOut`
evaluate trained dictionaries                   :func:`evaluate_dictionaries`
==============================================  ============================================================

Heavy imports (nnsight, transformers) happen inside the functions that need them, so importing this module is
cheap.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

#: what every pipeline harvests: the residual stream after the block, BOS removed, massive tokens dropped
DEFAULT_CTX_LEN = 128
DEFAULT_MAX_NORM_MULTIPLE = 10.0


@dataclass(frozen=True)
class LoadedModel:
    """A language model ready for harvesting and CE-loss splicing, with the layer that is read.

    Attributes:
        name: the model name it was loaded by (recorded in caches and results).
        layer: the 0-based decoder block whose output is read.
        lm: the ``nnsight`` ``TransformersModel`` (text-generation) wrapping the Hugging Face model.
        submodule: the envoy of that block (``lm.model.layers[layer]`` or the architecture's equivalent).
        d_model: the width of its output (the model's ``hidden_size``), the ``activation_dim`` of dictionaries.
    """

    name: str
    layer: int
    lm: object = field(repr=False)
    submodule: object = field(repr=False)
    d_model: int


def default_layer(model: Optional[str] = None) -> int:
    """The decoder block read when no layer is given, the one default of every command (``demo``, ``train``):
    8 for Gemma-3-270M (the offline alias or ``google/gemma-3-270m``; the paper's relative depth,
    :data:`.experiments.GEMMA3_LAYER`), else 12 (:data:`.experiments.OFFLINE_LAYER`, the offline default
    SmolLM2-135M-Instruct's; ``model=None`` means that default model). Names are compared case-insensitively."""
    from .experiments import GEMMA3_LAYER, OFFLINE_LAYER
    from .models import GEMMA3_HF_ID, GEMMA3_NAME

    name = (model or "").strip().lower()
    return GEMMA3_LAYER if name in (GEMMA3_NAME, GEMMA3_HF_ID) else OFFLINE_LAYER


def load_model(name: str, layer: int, device: str = "cpu", dtype: torch.dtype | str = torch.float32) -> LoadedModel:
    """Load ``name`` (:func:`.models.load_language_model`: an offline alias, a Hugging Face name or a folder) on
    ``device`` in ``dtype``, wrap it with nnsight and find block ``layer``. Third-party loading messages are kept
    off the console unless verbose (:func:`.console.captured_output`).

    Returns:
        the :class:`LoadedModel`.

    Raises:
        FileNotFoundError / ValueError: the model cannot be found or loaded (the message says how to install the
            offline model).
        LayerIndexError (a ValueError): ``layer`` outside ``0..n_layers-1``; TypeError: ``layer`` not an int.
    """
    from . import console
    from .models import load_language_model

    with console.captured_output(None, stderr=True):  # transformers' loading bars; errors still raise
        hf, tok = load_language_model(name, device=device, dtype=dtype)
    return wrap_model(name, layer, hf, tok)


def wrap_model(name: str, layer: int, hf, tokenizer) -> LoadedModel:
    """The :class:`LoadedModel` of an already loaded Hugging Face causal LM ``hf`` (used as is: its device and
    dtype) and its ``tokenizer`` (copied), named ``name``, reading block ``layer``.

    Raises:
        LayerIndexError (a ValueError): ``layer`` outside ``0..n_layers-1``; TypeError: ``layer`` not an int.
    """
    import copy

    from nnsight.modeling.transformers import TransformersModel

    from .models import get_layer

    # TransformersModel with task="text-generation" is what nnsight's deprecated LanguageModel alias builds
    lm = TransformersModel(hf, tokenizer=copy.deepcopy(tokenizer), task="text-generation")
    return LoadedModel(name=name, layer=layer, lm=lm, submodule=get_layer(lm, layer),
                       d_model=hf.config.hidden_size)


@dataclass(frozen=True)
class Harvest:
    """How one run reads activations of a loaded model: every buffer of the run (training, held-out, cache
    building) shares these settings and differs only in its split and size.

    Attributes:
        model: the :class:`LoadedModel` whose layer is read.
        corpus: text source (:func:`.data.iter_texts`; None: the bundled corpus).
        batch_size: activations per served batch.
        ctx_len: tokens per context, BOS included (>= 2).
        refresh_batch_size: contexts per language-model forward pass.
        device: where served activations live.
        max_norm_multiple: drop tokens whose activation norm exceeds this multiple of their harvest batch's median
            norm; None, 0 or negative: keep every token.
        seed: seed of the text order (held-out split) and of the buffer's shuffling.
        precision: the precision asked for the forward passes that harvest the training activations (buffers of
            :func:`activation_buffer`, caches of :func:`harvest_into`): a key of :data:`.dtypes.HARVEST_PRECISIONS`,
            ``"float32"`` or ``"tf32"``; what they run at is :func:`precision_used` (``"tf32"`` on a CPU runs
            float32). The held-out data (:func:`heldout_data`) is always harvested in float32.

    Raises:
        ValueError: ``precision`` not a key of :data:`.dtypes.HARVEST_PRECISIONS`.
    """

    model: LoadedModel
    corpus: Optional[str] = None
    batch_size: int = 8192
    ctx_len: int = DEFAULT_CTX_LEN
    refresh_batch_size: int = 32
    device: str = "cpu"
    max_norm_multiple: Optional[float] = DEFAULT_MAX_NORM_MULTIPLE
    seed: int = 0
    precision: str = "float32"

    def __post_init__(self):
        from .dtypes import check_harvest_precision

        check_harvest_precision(self.precision)


def precision_used(harvest: Harvest) -> str:
    """What the forward passes of ``harvest`` compute in, as caches and records name it: the model's dtype when it
    is not float32 (e.g. ``"bfloat16"``: ``train`` harvests so on a GPU), else ``harvest.precision`` where the
    model's device has it (:func:`.dtypes.effective_harvest_precision`: ``"tf32"`` on a CPU is ``"float32"``)."""
    from .dtypes import effective_harvest_precision

    lm = harvest.model.lm
    if lm.dtype != torch.float32:
        return str(lm.dtype).removeprefix("torch.")
    return effective_harvest_precision(harvest.precision, lm.device)


def buffer_ctxs(tokens: int, ctx_len: int = DEFAULT_CTX_LEN) -> int:
    """Contexts a buffer holds when harvesting ``tokens`` activations in one pass: a quarter of the contexts the
    tokens need, at least 64 and at most 8000 (about 1M activations at ``ctx_len`` 128)."""
    return min(8000, max(64, tokens // ctx_len // 4))


def activation_buffer(harvest: Harvest, split: str, n_ctxs: int, verbose: bool = False,
                      max_rows: Optional[int] = None):
    """A shuffling :class:`.buffer.ActivationBuffer` over ``split`` of ``harvest.corpus``, reading the output of
    ``harvest.model``'s layer with BOS removed.

    Args:
        harvest: the run's settings.
        split: ``"train"`` or ``"test"`` (the held-out split, :func:`.data.iter_texts`).
        n_ctxs: contexts held (about ``n_ctxs * ctx_len`` activations; see :func:`buffer_ctxs`).
        verbose: a progress bar while the buffer fills.
        max_rows: the activations the run draws in all (``demo``: steps x batch size; a cache: its size), when
            known: if they fit in ``n_ctxs`` contexts, the buffer is filled once with just them and never refilled
            (a short run harvests no more than it trains on); if not, the buffer is as without it (same batches).

    Returns:
        the buffer; it yields ``[harvest.batch_size, d_model]`` float32 tensors on ``harvest.device``; its forward
        passes run at :func:`precision_used` (the float32 matmul precision of :data:`.dtypes.HARVEST_PRECISIONS`,
        set for each forward pass only; a model of another dtype leaves the setting alone).

    Raises:
        ValueError: bad sizes, or a corpus that cannot be read.
    """
    from .buffer import ActivationBuffer
    from .data import iter_texts
    from .dtypes import HARVEST_PRECISIONS

    m = harvest.model
    keep_all = harvest.max_norm_multiple is None or harvest.max_norm_multiple <= 0
    return ActivationBuffer(iter_texts(harvest.corpus, split=split, seed=harvest.seed), m.lm, m.submodule,
                            d_submodule=m.d_model, n_ctxs=n_ctxs, ctx_len=harvest.ctx_len,
                            refresh_batch_size=harvest.refresh_batch_size, out_batch_size=harvest.batch_size,
                            device=harvest.device, remove_bos=True,
                            max_norm_multiple=None if keep_all else harvest.max_norm_multiple, verbose=verbose,
                            seed=harvest.seed, matmul_precision=HARVEST_PRECISIONS.get(precision_used(harvest)),
                            max_rows=max_rows)


def check_corpus(corpus: Optional[str], seed: int = 0, splits: Sequence[str] = ("train", "test")) -> None:
    """Read the first document of each split, so an unreadable corpus or an empty split fails before the model
    is loaded or anything is trained.

    Raises:
        FileNotFoundError / ValueError: as :func:`.data.iter_texts` (a missing file, an unreadable source, or a
            split with no text, ``"... contains no text"``).
    """
    from .data import iter_texts

    for split in splits:
        next(iter_texts(corpus, split=split, seed=seed))


def cache_meta(model: str, layer: int, corpus: Optional[str], ctx_len: int = DEFAULT_CTX_LEN,
               max_norm_multiple: Optional[float] = DEFAULT_MAX_NORM_MULTIPLE, precision: str = "float32") -> dict:
    """What a cache harvested by :func:`harvest_into` holds (its ``meta.json`` ``meta``, checked on reuse by
    :func:`open_cache`): model name, layer, ``io="out"``, corpus (``"bundled"`` for None), the train split, the
    context length, ``remove_bos=True``, the norm filter and ``harvest_precision`` (:func:`precision_used`; a cache
    written before it was recorded reads as ``"float32"``, :data:`.cache.META_DEFAULTS`)."""
    return {"model": model, "layer": layer, "io": "out", "corpus": corpus or "bundled", "split": "train",
            "ctx_len": ctx_len, "remove_bos": True, "max_norm_multiple": max_norm_multiple,
            "harvest_precision": precision}


def cache_location(root, model: str, layer: int, corpus: Optional[str], tokens: int,
                   ctx_len: int = DEFAULT_CTX_LEN, precision: str = "float32") -> tuple[Path, dict]:
    """Where under the folder ``root`` the cache of ``tokens`` activations of ``model``'s ``layer`` over
    ``corpus`` harvested at ``precision`` lives (``root/<model>_L<layer>_<corpus file name or bundled>_<tokens>``,
    with ``_<precision>`` appended for any precision other than ``"float32"``, e.g. ``_tf32``; unsafe characters as
    ``_``), and the metadata it must carry (:func:`cache_meta`). Nothing is read or written."""
    tag = "".join(c if c.isalnum() or c in "-_." else "_" for c in
                  f"{model}_L{layer}_{Path(str(corpus)).name if corpus else 'bundled'}_{tokens}"
                  + ("" if precision == "float32" else f"_{precision}"))
    return Path(root) / tag, cache_meta(model, layer, corpus, ctx_len, precision=precision)


def harvest_into(path, harvest: Harvest, tokens: int) -> Path:
    """Harvest ``tokens`` activations of the train split into a new cache at ``path`` (:func:`.cache.build_cache`,
    float16 shards, ``meta`` from :func:`cache_meta` with the precision the forward passes ran at,
    :func:`precision_used`), through a buffer of :func:`buffer_ctxs` contexts (filled once with ``tokens`` rows
    when they fit in it).

    Returns:
        the cache folder.

    Raises:
        FileExistsError: ``path`` exists. ValueError: no activations, non-finite activations (also any beyond
        float16's range, 65504), bad sizes. OSError: a shard could not be written. The folder is removed on error.
    """
    from .cache import build_cache

    m = harvest.model
    buf = activation_buffer(harvest, "train", buffer_ctxs(tokens, harvest.ctx_len), max_rows=tokens)
    meta = cache_meta(m.name, m.layer, harvest.corpus, harvest.ctx_len, harvest.max_norm_multiple,
                      precision_used(harvest))
    return build_cache(buf, path, tokens, meta)


def rank0_first(fn: Callable[[], object]) -> None:
    """Run ``fn`` on process 0 only, then let every process continue (a barrier under ``torch.distributed``); an
    exception on process 0 is raised on every process, so none waits forever: on the others as the same built-in
    class when it is a ValueError or OSError (a user error, reported as such by the commands), else as a
    RuntimeError, its message naming process 0. Without a process group, just ``fn()``."""
    from . import distributed as dd

    err = None
    if dd.rank() == 0:
        try:
            fn()
        except Exception as e:  # re-raised below, on every rank
            err = e
    if dd.world_size() > 1:
        msg = [None if err is None else (type(err).__name__, str(err))]
        torch.distributed.broadcast_object_list(msg, src=0)
        if msg[0] is not None and err is None:
            raise _same_kind(*msg[0])
    if err is not None:
        raise err


def _same_kind(name: str, message: str) -> Exception:
    """Process 0's error, re-created on another process: the built-in ValueError/OSError subclass of that name
    (so the commands report it as a user error), else a RuntimeError naming it."""
    import builtins

    cls = getattr(builtins, name, None)
    if isinstance(cls, type) and issubclass(cls, (ValueError, OSError)):
        return cls(f"(on process 0) {message}")
    return RuntimeError(f"rank 0 failed: {name}: {message}")


def harvest_once(path, build: Callable[[Path], object]) -> Path:
    """Make sure ``path`` holds a complete activation cache: process 0 calls ``build(path)`` (e.g.
    ``lambda p: harvest_into(p, harvest, tokens)``) unless one is there already, after deleting an interrupted
    build of ours (:func:`.cache.clear_unfinished`; nothing else is ever deleted), while every other process
    waits (:func:`rank0_first`). The cache's metadata is checked when it is read (:func:`open_cache`).

    Returns:
        ``path``.

    Raises:
        FileExistsError: ``path`` is a file or a folder that is not a cache (before ``build`` is called).
        whatever ``build`` raises (on process 0; a RuntimeError naming it on the others).
    """
    from .cache import clear_unfinished

    path = Path(path)

    def work():
        if not clear_unfinished(path):
            build(path)

    rank0_first(work)
    return path


def open_cache(path, batch_size: int, device: str = "cpu", *, expect: Optional[dict] = None, epochs: int = 1,
               preload: bool = False, drop_last: bool = False, seed: int = 0):
    """The training batches of the cache at ``path`` (:class:`.cache.ActivationCache`: shuffled with ``seed``,
    ``epochs`` passes), refused unless its metadata matches ``expect`` (e.g. :func:`cache_meta`'s, or only the
    fields a user named).

    Args:
        batch_size: activations per batch; device: where batches go (and the cache, with ``preload``);
        drop_last: leave out each epoch's smaller last batch, so every batch is full (data-parallel training
            needs it; ``train`` and ``reproduce`` train from a cache on full batches only).

    Returns:
        the cache; it yields ``[batch_size, activation_dim]`` float32 tensors (``finite_checked`` says whether
        they are known finite; ``with_order`` serves it again in another order without reading it again).

    Raises:
        FileNotFoundError: no complete cache at ``path``. ValueError: metadata other than ``expect`` (the message
            names the field), a damaged cache, or bad sizes.
    """
    from .cache import ActivationCache

    return ActivationCache(path, batch_size=batch_size, epochs=epochs, seed=seed, device=device, expect=expect,
                           preload=preload, drop_last=drop_last)


@dataclass
class HeldOut:
    """The held-out evaluation data of a run, drawn once so every dictionary is evaluated on the same text.

    Attributes:
        acts: up to ``eval_batches`` ``[batch_size, d_model]`` activation tensors (reconstruction metrics).
        ce_tokens: up to ``ce_batches`` ``[ce_batch_size, ctx_len]`` token tensors (CE losses; may be empty).
        ce_reference: per ``ce_tokens`` batch, the dictionary-independent ``{"loss_original", "loss_zero"}`` in
            nats per predicted token (:func:`.evaluation.ce_losses` without a dictionary, BOS position kept).
    """

    acts: list
    ce_tokens: list
    ce_reference: list


def heldout_data(harvest: Harvest, eval_batches: int, ce_batches: int, ce_batch_size: int) -> HeldOut:
    """Draw the held-out data from the test split (a buffer holding just enough contexts for ``eval_batches``
    batches of ``harvest.batch_size``, harvested in float32 whatever ``harvest.precision``, so that every run is
    evaluated on the same activations), and compute the model's clean and zero-ablated CE losses on it once.

    Returns:
        the :class:`HeldOut` data (fewer batches than asked for when the text runs out).

    Raises:
        ValueError: the test split produced no activations, or bad sizes.
    """
    from .evaluation import ce_losses, collect_eval_data

    n_ctxs = (eval_batches * harvest.batch_size) // harvest.ctx_len + 1
    float32 = dataclasses.replace(harvest, precision="float32")
    acts, ce_tokens = collect_eval_data(activation_buffer(float32, "test", n_ctxs), eval_batches, ce_batches,
                                        ce_batch_size)
    m = harvest.model
    reference = [ce_losses(m.lm, m.submodule, None, t, skip_first=True) for t in ce_tokens]
    return HeldOut(acts=acts, ce_tokens=ce_tokens, ce_reference=reference)


def evaluate_dictionaries(folders: Sequence, heldout: HeldOut, model: LoadedModel, device: str = "cpu",
                          per_feature: bool = False, keep: bool = True, bar: bool = False) -> tuple[list, list[dict]]:
    """Load each trained dictionary (``ae.safetensors`` + ``config.json`` in each of ``folders``, e.g.
    ``save_dir/trainer_{i}``) onto ``device`` and evaluate it on ``heldout`` (:func:`.evaluation.evaluate`:
    reconstruction metrics over ``heldout.acts``, CE losses spliced into ``model``'s layer, BOS untouched).

    Args:
        per_feature: also return each dictionary's ``fired`` list (``[dict_size]`` bools).
        keep: return the loaded dictionaries (e.g. for cross-seed stability); False: None in their place, so
            each is freed after its evaluation.
        bar: a progress bar on stderr counting the dictionaries evaluated (:func:`.console.progress`), for callers
            that evaluate many after their training bar closed (``reproduce``: 32 at smoke scale, minutes on a CPU).

    Returns:
        ``(dictionaries, metrics)``: two lists in the order of ``folders``; each metrics dict as
        :func:`.evaluation.evaluate` returns it (with CE losses when ``heldout.ce_tokens`` is not empty).

    Raises:
        CheckpointError: a folder without a loadable dictionary (missing, or no weights file). ValueError: held-out
            activations of another width than a dictionary's ``activation_dim``.
    """
    from .console import progress
    from .dictionary import Dictionary
    from .evaluation import evaluate

    dictionaries, metrics = [], []
    for folder in progress(folders, total=len(folders), desc="evaluating", unit="dict", disable=not bar):
        ae = Dictionary.from_pretrained(Path(folder), device=device)
        metrics.append(evaluate(ae, heldout.acts, n_batches=len(heldout.acts), model=model.lm,
                                submodule=model.submodule, ce_tokens=heldout.ce_tokens, skip_first=True,
                                ce_reference=heldout.ce_reference, per_feature=per_feature))
        dictionaries.append(ae if keep else None)
    return dictionaries, metrics
