"""The autointerp judge: any OpenAI-compatible chat endpoint, or a local one served on loopback.

SAEBench's ``AutoInterp.get_api_response`` builds ``OpenAI(api_key=...)`` with no base URL and hard-codes the model
``"gpt-4o-mini"``. :func:`patch_autointerp` replaces it, inside a ``with`` block, by a call to a configurable
endpoint (:class:`JudgeConfig`: base URL, model name, API key).

:class:`LocalJudge` is a real judge for offline use: a stdlib ``http.server`` on ``127.0.0.1`` serving
``POST /v1/chat/completions`` (and ``GET /v1/models``) with SmolLM2-135M-Instruct through transformers chat
generation (greedy for one completion, sampling for several). **A 135M-parameter judge is far weaker than the
paper's (gpt-4o-mini); its autointerp scores test the pipeline, not the dictionaries.**
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import threading
import time
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from typing import Optional

import torch

WEAK_JUDGE_WARNING = ("WARNING: the local autointerp judge is SmolLM2-135M-Instruct, a 135M-parameter model far "
                      "weaker than the paper's judge (gpt-4o-mini); its autointerp scores check the pipeline and "
                      "are not comparable to published SAEBench numbers.")


@dataclass
class JudgeConfig:
    """Where autointerp sends its chat requests.

    Attributes:
        base_url: OpenAI-compatible API root, e.g. ``"https://api.openai.com/v1"`` or ``"http://127.0.0.1:8080/v1"``.
        model: model name sent in each request (SAEBench's default is ``"gpt-4o-mini"``).
        api_key: API key (local servers ignore it).
        lenient_predictions: for the scoring prompt, reduce the reply to the example numbers it contains (so a
            weak judge's "The answer is 2 and 5." reads as ``"2, 5"``); the explanation replies are untouched.
        local: whether this is the harness's local judge.
    """

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key: str = "none"
    lenient_predictions: bool = False
    local: bool = False

    def describe(self) -> dict:
        """JSON-ready description (without the API key), with the weak-judge warning for the local judge."""
        d = {k: v for k, v in asdict(self).items() if k != "api_key"}
        if self.local:
            d["warning"] = WEAK_JUDGE_WARNING
        return d


_SCORING_MARK = "comma-separated list of the examples"


def _lenient(reply: str, messages) -> str:
    if not any(_SCORING_MARK in m.get("content", "") for m in messages if m.get("role") == "system"):
        return reply
    nums = re.findall(r"\b\d+\b", reply)
    if not nums:
        return "None" if "none" in reply.lower() else reply
    return ", ".join(dict.fromkeys(nums))


@contextlib.contextmanager
def patch_autointerp(judge: JudgeConfig):
    """Within the block, SAEBench's ``AutoInterp.get_api_response`` sends its chat requests to ``judge`` (restored on
    exit). Request errors propagate (they are not turned into empty answers)."""
    from . import import_saebench

    import_saebench()
    import sae_bench.evals.autointerp.main as ai
    from openai import OpenAI
    from tabulate import tabulate

    # SAEBench sends up to 10 requests at once (a thread pool); a local judge answers them one after another, so a
    # request may wait minutes on a busy GPU: give it time (the OpenAI client's own connect timeout is 5 s)
    # (and no retries: a local judge that timed out is not helped by asking it again)
    client = OpenAI(base_url=judge.base_url, api_key=judge.api_key or "none",
                    **({"timeout": LOCAL_JUDGE_TIMEOUT_S, "max_retries": 0} if judge.local else {"max_retries": 2}))
    original = ai.AutoInterp.get_api_response

    def get_api_response(self, messages, max_tokens: int, n_completions: int = 1):
        for m in messages:
            if set(m) != {"content", "role"} or m["role"] not in ("system", "user", "assistant"):
                raise ValueError(f"malformed chat message {m!r}")
        result = client.chat.completions.create(model=judge.model, messages=messages, n=n_completions,
                                                max_tokens=max_tokens, stream=False)
        response = [(c.message.content or "").strip() for c in result.choices]
        if not response:
            raise RuntimeError(f"judge {judge.base_url} ({judge.model}) returned no choices")
        if judge.lenient_predictions:
            response = [_lenient(r, messages) for r in response]
        logs = tabulate([list(m.values()) for m in messages + [{"role": "assistant", "content": response[0]}]],
                        tablefmt="simple_grid", maxcolwidths=[None, 120])
        return response, logs

    ai.AutoInterp.get_api_response = get_api_response
    try:
        yield judge
    finally:
        ai.AutoInterp.get_api_response = original


LOCAL_JUDGE_TIMEOUT_S = 1800.0  # per request (connect included) to the local judge


class _Server(ThreadingHTTPServer):
    """Accepts every connection at once (one thread each; generation itself is serialised by the judge's lock), with
    a deep listen queue: SAEBench's autointerp opens 10 connections together, and a single-threaded server with the
    default queue of 5 left the rest unaccepted until the client's connect timeout (seen on the GPU, 2026-11-29)."""

    daemon_threads = True
    request_queue_size = 128

    def handle_error(self, request, client_address):
        """A client that went away (timeout, retry) is not a server error: no traceback for it."""
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError)):
            super().handle_error(request, client_address)


#: most completions one request may ask for (SAEBench asks for 1), and largest request body accepted
MAX_N = 16
MAX_BODY_BYTES = 16 * 2**20


class LocalJudge:
    """A chat-completions server on ``127.0.0.1`` backed by a Hugging Face causal LM (default: SmolLM2-135M-Instruct
    from its GGUF file). Use as a context manager, or :meth:`start` / :meth:`stop`.

    Args:
        model, tokenizer: an instruct model with a chat template (default: ``load_language_model()``).
        port: TCP port (0: any free port).
        max_new_tokens_cap: upper bound on ``max_tokens`` per request.
        device: where the model runs (only used when it is loaded here).

    Attributes:
        base_url: ``http://127.0.0.1:PORT/v1`` once started. model_name: ``"smollm2-135m-instruct"``.

    Raises:
        RuntimeError: :meth:`start` when the tokenizer has no chat template.
    """

    model_name = "smollm2-135m-instruct"

    def __init__(self, model=None, tokenizer=None, port: int = 0, max_new_tokens_cap: int = 64, device="cpu"):
        if model is None:
            from dictionary_learning_aligned.models import load_language_model

            model, tokenizer = load_language_model(device=device)
        if tokenizer is None:
            raise ValueError("LocalJudge needs the model's tokenizer")
        self.model, self.tokenizer = model, tokenizer
        self.port, self.cap = port, max_new_tokens_cap
        self._server: Optional[HTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self.n_requests = 0

    @torch.no_grad()
    def complete(self, messages: list[dict], max_tokens: int = 32, n: int = 1) -> list[str]:
        """Chat completion(s) for ``messages`` (``[{"role", "content"}]``): ``n`` replies of at most ``max_tokens``
        new tokens (greedy when ``n == 1``)."""
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        enc = self.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(self.model.device)
        kw = dict(max_new_tokens=max(1, min(int(max_tokens), self.cap)), num_return_sequences=n,
                  pad_token_id=self.tokenizer.pad_token_id or self.tokenizer.eos_token_id)
        kw.update(dict(do_sample=True, temperature=0.7, top_p=0.95) if n > 1 else dict(do_sample=False))
        with self._lock:
            out = self.model.generate(**enc, **kw)
            self.n_requests += 1
        return [self.tokenizer.decode(o[enc["input_ids"].shape[1]:], skip_special_tokens=True).strip() for o in out]

    def _handler(self):
        judge = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 120  # seconds a client may take to send its request (a stalled one frees its thread)

            def log_message(self, *args):
                """Silence http.server's line per request (the harness reports progress itself)."""

            def _send(self, code: int, obj: dict):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    return self._send(200, {"object": "list", "data": [{"id": judge.model_name, "object": "model"}]})
                self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                if self.path.rstrip("/") != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                try:
                    size = int(self.headers.get("Content-Length", -1))
                    if not 0 <= size <= MAX_BODY_BYTES:
                        raise ValueError(f"need a Content-Length between 0 and {MAX_BODY_BYTES}")
                    req = json.loads(self.rfile.read(size))
                    msgs = req["messages"]
                    if not isinstance(msgs, list) or not msgs:
                        raise ValueError("messages must be a non-empty list")
                    n = int(req.get("n") or 1)
                    if not 1 <= n <= MAX_N:
                        raise ValueError(f"n must be between 1 and {MAX_N}, got {n}")
                    replies = judge.complete(msgs, int(req.get("max_tokens") or 32), n)
                except (ValueError, KeyError, TypeError, OverflowError) as e:
                    return self._send(400, {"error": {"message": f"bad request: {e}"}})
                except Exception as e:  # generation failed: report it to the client
                    return self._send(500, {"error": {"message": f"{type(e).__name__}: {e}"}})
                self._send(200, {
                    "id": f"chatcmpl-local-{judge.n_requests}", "object": "chat.completion",
                    "created": int(time.time()), "model": judge.model_name,
                    "choices": [{"index": i, "message": {"role": "assistant", "content": r}, "finish_reason": "stop"}
                                for i, r in enumerate(replies)],
                    "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}})

        return Handler

    @property
    def base_url(self) -> str:
        if self._server is None:
            raise RuntimeError("the local judge is not running")
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def config(self) -> JudgeConfig:
        """The :class:`JudgeConfig` pointing at this server (lenient prediction parsing on)."""
        return JudgeConfig(base_url=self.base_url, model=self.model_name, api_key="local",
                           lenient_predictions=True, local=True)

    def start(self) -> "LocalJudge":
        """Start serving in a daemon thread; prints the weak-judge warning."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise RuntimeError("the judge's tokenizer has no chat template; use an instruct model")
        if self._server is not None:  # already serving: a second server would outlive stop()
            return self
        self._server = _Server(("127.0.0.1", self.port), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="local-judge")
        self._thread.start()
        print(WEAK_JUDGE_WARNING, flush=True)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=10)
            self._server = self._thread = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


__all__ = ["JudgeConfig", "LocalJudge", "patch_autointerp", "WEAK_JUDGE_WARNING"]
