"""``ActivationBuffer``: residual-stream activations of one layer of a Hugging Face causal LM, read with nnsight,
served in shuffled batches (the interface of dictionary_learning's ``ActivationBuffer``)."""

from __future__ import annotations

import atexit
import contextlib
import copy
import itertools
import queue
import sys
import threading
import time
from typing import Callable, ContextManager, Iterable, Iterator, Optional

import torch


def pack_token_contexts(texts: Iterable[str], tokenizer, ctx_len: int, bos_token_id: Optional[int] = None,
                        add_special_tokens: bool = True, tokenize_batch: int = 64) -> Iterator[torch.Tensor]:
    """Pack documents into fixed-length contexts, each starting with BOS.

    Documents are tokenized one by one and concatenated (separated by the EOS token when the tokenizer has one),
    and the stream is cut into pieces of ``ctx_len - 1`` tokens, each prefixed with ``bos_token_id``. Nothing
    is padded, so every position of every context is a real token. A BOS token that the tokenizer puts at the
    start of each document (Gemma's does, SmolLM2's does not) is dropped: inside a context it would be a second
    attention sink with a massive activation (a norm about 14 times the median at Gemma-3-270M layer 8).

    Args:
        texts: documents (strings).
        tokenizer: a Hugging Face tokenizer.
        ctx_len: tokens per context, BOS included (>= 2).
        bos_token_id: the token that starts each context (default: the tokenizer's BOS, else its EOS).
        add_special_tokens: passed to the tokenizer for each document.
        tokenize_batch: documents tokenized in one call (a fast tokenizer runs them in parallel); the contexts
            are the same as with one document per call, only produced faster.

    Yields:
        ``[ctx_len]`` long tensors.

    Raises:
        ValueError: ``ctx_len < 2`` or a tokenizer with neither BOS nor EOS when ``bos_token_id`` is None.
    """
    if not isinstance(ctx_len, int) or ctx_len < 2:
        raise ValueError(f"ctx_len must be an integer >= 2, got {ctx_len!r}")
    if bos_token_id is None:
        bos_token_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if bos_token_id is None:
        raise ValueError("the tokenizer has no BOS or EOS token; pass bos_token_id")
    sep = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    stream: list[int] = []
    if not isinstance(tokenize_batch, int) or tokenize_batch < 1:
        raise ValueError(f"tokenize_batch must be a positive integer, got {tokenize_batch!r}")
    it = iter(texts)
    while True:
        docs = list(itertools.islice(it, tokenize_batch))
        if not docs:
            return
        for text in docs:
            if not isinstance(text, str):
                raise TypeError(f"texts must be strings, got {type(text).__name__}")
        for ids in tokenizer(docs, add_special_tokens=add_special_tokens)["input_ids"]:
            if ids and ids[0] == tokenizer.bos_token_id:
                ids = ids[1:]
            stream.extend(ids + sep)
            start = 0
            while len(stream) - start >= ctx_len - 1:
                yield torch.tensor([bos_token_id] + stream[start: start + ctx_len - 1], dtype=torch.long)
                start += ctx_len - 1
            del stream[:start]


#: producer threads still running, with their stop events (a thread removes itself when it ends)
_PRODUCERS: dict[threading.Thread, threading.Event] = {}
#: set when the interpreter starts to exit: every producer stops before its next item, and none starts
_SHUTDOWN = threading.Event()
#: seconds the exit hook waits, in all, for the producers to end (each finishes the item it is inside, e.g. one
#: tokenizer call of ``tokenize_batch`` documents)
EXIT_WAIT_S = 30.0


def _stop_prefetchers(timeout: float = EXIT_WAIT_S) -> list[threading.Thread]:
    """Tell every producer thread to stop and wait for them, ``timeout`` seconds at most in all.

    Returns:
        the threads still running after the wait (empty when all ended).
    """
    producers = list(_PRODUCERS.items())
    for _, stop in producers:
        stop.set()
    deadline = time.monotonic() + timeout
    for thread, _ in producers:
        thread.join(max(0.0, deadline - time.monotonic()))
    return [t for t, _ in producers if t.is_alive()]


@atexit.register
def _stop_prefetchers_at_exit() -> None:
    """Stop every producer thread before the interpreter finalizes. A daemon thread still inside native code
    that released the GIL (a fast tokenizer's call, a torch op) when finalization starts is killed as it takes
    the GIL back, and the process aborts ("terminate called without an active exception", exit code 134). After
    this hook no producer starts another item; one that does not end within ``EXIT_WAIT_S`` is named on stderr."""
    _SHUTDOWN.set()
    alive = _stop_prefetchers()
    if alive:
        print(f"dictionary_learning_aligned: {len(alive)} text-producing thread(s) still running at exit after "
              f"{EXIT_WAIT_S:.0f} s; the process may abort", file=sys.stderr)


def prefetch(items: Iterable, ahead: int = 64, chunk: int = 64) -> "Prefetch":
    """The items of ``items`` in the same order, produced by a background thread up to ``ahead`` chunks of
    ``chunk`` items in advance (so tokenization overlaps the model's forward pass on the GPU).

    An exception raised while producing an item is raised here, at that item's place. Closing (or dropping) the
    returned iterator stops the thread before its next item (:meth:`Prefetch.close` can also wait for it).

    Raises:
        ValueError: ``ahead`` or ``chunk`` < 1.
    """
    if not (isinstance(ahead, int) and ahead >= 1 and isinstance(chunk, int) and chunk >= 1):
        raise ValueError(f"ahead and chunk must be positive integers, got {ahead!r} and {chunk!r}")
    return Prefetch(items, ahead, chunk)  # checked now; the thread starts at the first next()


class Prefetch:
    """The iterator :func:`prefetch` returns: ``items`` produced by a background thread (started at the first
    ``next()``), stopped by :meth:`close`, by dropping the iterator or at interpreter exit.

    Iterating raises RuntimeError when the thread was stopped (at interpreter exit, or by :meth:`close` from another
    thread while a reader waits) before the end of the items.
    """

    def __init__(self, items: Iterable, ahead: int, chunk: int):
        self.stop = threading.Event()
        self._threads: list[threading.Thread] = []  # the thread, once started (the generator holds no self)
        self._items = _consume(iter(items), ahead, chunk, self.stop, self._threads)

    def __iter__(self) -> "Prefetch":
        return self

    def __next__(self):
        return next(self._items)

    def close(self, timeout: float = 0.0) -> bool:
        """Stop the thread (it ends before its next item) and wait for it up to ``timeout`` seconds. A reader
        waiting in ``next()`` on another thread meanwhile gets a RuntimeError.

        Returns:
            whether no thread is running any more.
        """
        self.stop.set()
        with contextlib.suppress(ValueError):  # 'generator already executing': a reader waits in it; the stop ends it
            self._items.close()
        for thread in self._threads:
            thread.join(timeout)
        return not any(t.is_alive() for t in self._threads)

    def __del__(self):
        self.stop.set()


def _consume(items: Iterator, ahead: int, chunk: int, stop: threading.Event, threads: list) -> Iterator:
    """Start the producer thread (appended to ``threads`` and registered in ``_PRODUCERS``) and yield its items."""
    q: queue.Queue = queue.Queue(maxsize=ahead)
    thread = threading.Thread(target=_produce_until_stopped, args=(items, q, chunk, stop), daemon=True,
                              name="dla-prefetch")
    threads.append(thread)
    _PRODUCERS[thread] = stop
    thread.start()
    try:
        while True:
            kind, value = _get(q, thread)
            if kind == "items":
                yield from value
            elif kind == "end":
                return
            else:
                raise value
    finally:
        stop.set()  # the thread removes itself from _PRODUCERS when it ends (it may still be inside ``items``)


def _get(q: queue.Queue, thread: threading.Thread):
    """The next message of ``thread``; RuntimeError when the thread ended without sending it (it was stopped by
    the exit hook while this consumer still reads, e.g. in a later exit hook, or closed from another thread)."""
    while True:
        try:
            return q.get(timeout=0.1)
        except queue.Empty:
            if not thread.is_alive() and q.empty():
                raise RuntimeError("the text-producing thread was stopped (closed, or at interpreter exit) before "
                                   "the end of its items") from None


def _produce_until_stopped(items: Iterator, q: queue.Queue, chunk: int, stop: threading.Event) -> None:
    """The producer thread: puts ``("items", list)`` chunks of ``items`` on ``q``, then ``("end", None)`` or
    ``("error", exception)``. It checks ``stop`` and the interpreter's exit before each item, so once either is
    set it starts no other item (no tokenizer call, no torch op) and ends."""
    def stopped() -> bool:
        return stop.is_set() or _SHUTDOWN.is_set()

    def put(msg) -> bool:
        while not stopped():
            try:
                q.put(msg, timeout=0.05)
            except queue.Full:
                continue
            return True
        return False

    try:
        part = []
        while not stopped():
            try:
                part.append(next(items))
            except StopIteration:
                if not part or put(("items", part)):
                    put(("end", None))
                return
            except BaseException as e:  # handed to the consumer, raised after the items before it
                if not part or put(("items", part)):
                    put(("error", e))
                return
            if len(part) == chunk:
                if not put(("items", part)):
                    return
                part = []
    finally:  # registered until the thread ends, so that an exit after close() still waits for it
        _PRODUCERS.pop(threading.current_thread(), None)


def norm_keep_mask(acts: torch.Tensor, max_norm_multiple: float) -> torch.Tensor:
    """Which tokens the norm filter keeps: ``acts [tokens, d]`` (one forward pass's activations, any float dtype)
    -> bool ``[tokens]``, True where the token's L2 norm (in float32) is at most ``max_norm_multiple`` times the
    median norm of ``acts`` (the massive-activation tokens, such as attention sinks, are the False ones)."""
    norms = acts.float().norm(dim=-1)
    return norms <= max_norm_multiple * norms.median()


class ActivationBuffer:
    """Shuffled batches of one layer's activations, harvested with nnsight.

    Holds about ``n_ctxs * ctx_len`` activations; when less than half are unread it runs the model on
    ``refresh_batch_size`` new contexts at a time, stopping the forward pass right after the layer that is read,
    and serves random unread rows. A consumer that draws only ``max_rows`` rows in all, fewer than the buffer
    holds, gets one fill of just those rows and no refill.

    Args:
        data: iterator of documents (strings).
        model: an ``nnsight.LanguageModel`` (its ``.tokenizer`` is used).
        submodule: the envoy to read, e.g. ``model.model.layers[12]`` (its output is the residual stream after
            that block; with ``io="in"``, its input, i.e. the residual stream before it).
        d_submodule: activation width (default: the model's ``hidden_size``).
        io: ``"out"`` or ``"in"``.
        n_ctxs: contexts held in the buffer.
        ctx_len: tokens per context (BOS included).
        refresh_batch_size: contexts per model forward pass.
        out_batch_size: activations per served batch.
        device: where served batches live.
        remove_bos: drop the BOS position of each context (its activation is an outlier in most models).
        add_special_tokens: passed to the tokenizer.
        dtype: dtype of stored activations (default float32).
        max_norm_multiple: drop tokens whose activation norm exceeds this multiple of the median norm of their
            harvest batch (as dictionary_learning's ``max_activation_norm_multiple``): the massive activations of
            a few tokens (attention sinks) otherwise dominate the reconstruction loss. None keeps every token.
        max_rows: the rows the consumer draws in all, when known (e.g. a training run's steps x batch size). When
            they fit (``max_rows <= n_ctxs * ctx_len``), the buffer is filled once with ``max_rows`` rows (the run
            shuffles over all of its own rows, and no text beyond them is harvested) and never refilled; when they
            do not fit, it changes nothing: the buffer fills and refills, and serves the same batches, as without
            it. None: unknown.
        verbose: show a progress bar while the buffer fills.
        seed: seed of the buffer's own random generator for shuffling (so the same text gives the same batches,
            which resuming a run relies on); None: a random seed.
        matmul_precision: the float32 matmul precision of the model's forward passes
            (``torch.set_float32_matmul_precision``: ``"highest"``, ``"high"``, i.e. TF32 on a GPU that has it, or
            ``"medium"``), set for each forward pass and restored after it (:func:`.dtypes.matmul_precision`);
            None: the setting in force.

    Iterating yields ``[out_batch_size, d_submodule]`` tensors (the last batch may be smaller) and stops
    when the text is exhausted. A consumer may set :attr:`refill_context` to be told when serving a batch waits
    for a fill (e.g. the training bar says so, :func:`.training.trainSAE`).

    Raises:
        ValueError: bad sizes, ``io`` or ``matmul_precision``.
    """

    def __init__(self, data: Iterable[str], model, submodule, d_submodule: Optional[int] = None, io: str = "out",
                 n_ctxs: int = 30_000, ctx_len: int = 128, refresh_batch_size: int = 512,
                 out_batch_size: int = 8192, device: str = "cpu", remove_bos: bool = False,
                 add_special_tokens: bool = True, dtype: torch.dtype = torch.float32,
                 max_norm_multiple: Optional[float] = None, verbose: bool = False, seed: Optional[int] = None,
                 matmul_precision: Optional[str] = None, max_rows: Optional[int] = None):
        if io not in ("in", "out"):
            raise ValueError(f"io must be 'in' or 'out', got {io!r}")
        if matmul_precision not in (None, "highest", "high", "medium"):
            raise ValueError(f"matmul_precision must be 'highest', 'high', 'medium' or None, got {matmul_precision!r}")
        if not isinstance(ctx_len, int) or ctx_len < 2:
            raise ValueError(f"ctx_len must be an integer >= 2, got {ctx_len!r}")
        if max_norm_multiple is not None and not max_norm_multiple > 1:
            raise ValueError(f"max_norm_multiple must be > 1 or None, got {max_norm_multiple!r}")
        for name, v in (("n_ctxs", n_ctxs), ("refresh_batch_size", refresh_batch_size),
                        ("out_batch_size", out_batch_size)):
            if not v >= 1:
                raise ValueError(f"{name} must be >= 1, got {v!r}")
        if max_rows is not None and not (isinstance(max_rows, int) and max_rows >= 1):
            raise ValueError(f"max_rows must be a positive integer or None, got {max_rows!r}")
        self.model, self.submodule, self.io = model, submodule, io
        self.d_submodule = d_submodule or model.config.hidden_size
        self.n_ctxs, self.ctx_len = int(n_ctxs), ctx_len
        self.refresh_batch_size, self.out_batch_size = int(refresh_batch_size), int(out_batch_size)
        self.device, self.remove_bos, self.add_special_tokens, self.dtype = device, remove_bos, add_special_tokens, dtype
        self.max_norm_multiple, self.verbose, self.matmul_precision = max_norm_multiple, verbose, matmul_precision
        self.max_rows = max_rows
        #: the consumer's rows fit in one fill: harvest just them, once
        self.fill_once = max_rows is not None and max_rows <= self.n_ctxs * ctx_len
        #: rows each fill brings the buffer to (activations after the norm filter)
        self.fill_rows = max_rows if self.fill_once else self.n_ctxs * ctx_len
        self.fills = 0
        #: called with no argument around each fill that serving a batch starts; the context manager it returns
        #: is entered for the fill's duration (None: nothing)
        self.refill_context: Optional[Callable[[], ContextManager]] = None
        self.tokens_dropped = 0
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ()).item()))
        # the background thread gets its own tokenizer: a fast tokenizer used from two threads at once can fail
        packed = pack_token_contexts(data, copy.deepcopy(model.tokenizer), ctx_len,
                                     add_special_tokens=add_special_tokens, tokenize_batch=256)
        self.contexts = prefetch(packed, ahead=max(2, 4 * int(refresh_batch_size) // 64))
        self.activations = torch.empty(0, self.d_submodule, dtype=dtype, device=device)
        self.read = torch.zeros(0, dtype=torch.bool, device=device)
        self.tokens_harvested = 0
        self._exhausted = False

    @property
    def config(self) -> dict:
        """JSON-ready parameters of the buffer."""
        return {"d_submodule": self.d_submodule, "io": self.io, "n_ctxs": self.n_ctxs, "ctx_len": self.ctx_len,
                "refresh_batch_size": self.refresh_batch_size, "out_batch_size": self.out_batch_size,
                "device": str(self.device), "remove_bos": self.remove_bos,
                "max_norm_multiple": self.max_norm_multiple, "matmul_precision": self.matmul_precision,
                "max_rows": self.max_rows}

    def __iter__(self):
        return self

    def close(self, timeout: float = 10.0) -> bool:
        """Stop the thread that tokenizes the text ahead (it ends before its next item) and wait for it up to
        ``timeout`` seconds; the buffer serves no further contexts. Returns whether the thread ended. ``with
        ActivationBuffer(...) as buf:`` closes it on leaving (the exit hook stops a buffer left open)."""
        return self.contexts.close(timeout)

    def __enter__(self) -> "ActivationBuffer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __next__(self) -> torch.Tensor:
        unread = (~self.read).nonzero().squeeze(1)
        if self._wants_fill(len(unread)):
            with self.refill_context() if self.refill_context is not None else contextlib.nullcontext():
                self.refresh()
            unread = (~self.read).nonzero().squeeze(1)
        if len(unread) == 0:
            raise StopIteration
        idx = unread[torch.randperm(len(unread), device=unread.device, generator=self.generator)[: self.out_batch_size]]
        self.read[idx] = True
        return self.activations[idx]

    def _wants_fill(self, unread: int) -> bool:
        """Whether the buffer fills before serving the next batch, ``unread`` rows being left: fewer than half of
        ``n_ctxs * ctx_len`` are unread and the text is not exhausted, and, with :attr:`fill_once`, it was never
        filled."""
        if self._exhausted or (self.fill_once and self.fills > 0):
            return False
        return unread < self.n_ctxs * self.ctx_len // 2

    def token_batch(self, batch_size: Optional[int] = None) -> Optional[torch.Tensor]:
        """The next ``[batch, ctx_len]`` contexts of tokens (consumed from the same text stream), or None when
        the text is exhausted.

        Raises:
            ValueError: ``batch_size < 1``.
        """
        n = self.refresh_batch_size if batch_size is None else batch_size
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        rows = []
        for ctx in self.contexts:
            rows.append(ctx)
            if len(rows) == n:
                break
        if not rows:
            self._exhausted = True
            return None
        return torch.stack(rows)

    @torch.no_grad()
    def harvest(self, tokens: torch.Tensor) -> torch.Tensor:
        """Activations ``[batch, ctx_len, d_submodule]`` of ``tokens [batch, ctx_len]`` (forward stopped after
        the submodule, under ``matmul_precision``)."""
        from .dtypes import matmul_precision

        with matmul_precision(self.matmul_precision), self.model.trace(tokens.to(self.model.device)) as tracer:
            h = (self.submodule.output if self.io == "out" else self.submodule.input).save()
            tracer.stop()
        h = h[0] if isinstance(h, tuple) else h
        return h

    def rows(self, h: torch.Tensor) -> torch.Tensor:
        """The rows one forward pass adds to the buffer: ``h [batch, ctx_len, d_submodule]`` (from :meth:`harvest`)
        with the BOS position removed (``remove_bos``), flattened to ``[tokens, d_submodule]``, moved to ``device``
        as ``dtype``, and the massive-norm tokens dropped (:func:`norm_keep_mask`, with ``max_norm_multiple``).
        Counts ``tokens_harvested`` (before the drop) and ``tokens_dropped``."""
        if self.remove_bos:
            h = h[:, 1:]
        h = h.reshape(-1, self.d_submodule).to(self.device, self.dtype)
        self.tokens_harvested += h.shape[0]
        if self.max_norm_multiple is not None:
            ok = norm_keep_mask(h, self.max_norm_multiple)
            self.tokens_dropped += int((~ok).sum())
            h = h[ok]
        return h

    def refresh(self) -> None:
        """Drop read activations and fill the buffer with new ones, up to :attr:`fill_rows` rows."""
        from .console import progress

        keep = self.activations[~self.read]
        chunks, n = [keep], len(keep)
        target = self.fill_rows
        self.fills += 1
        bar = progress(total=target, initial=n, desc="harvesting activations", unit="tok", leave=False,
                       disable=not self.verbose)
        while n < target:
            tokens = self.token_batch(min(self.refresh_batch_size, max(1, (target - n) // self.ctx_len + 1)))
            if tokens is None:
                break
            h = self.rows(self.harvest(tokens))
            chunks.append(h)
            n += h.shape[0]
            bar.update(h.shape[0])
        bar.close()
        self.activations = torch.cat(chunks)
        self.read = torch.zeros(len(self.activations), dtype=torch.bool, device=self.device)
