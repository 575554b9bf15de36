"""The local autointerp judge's server under SAEBench's concurrency (no model needed: generation is stubbed)."""
import json
import socket
import threading
import time
import urllib.request
from types import SimpleNamespace

from benchmarks.saebench.judge import LocalJudge


class SlowJudge(LocalJudge):
    """Answers after ``delay`` seconds, one request at a time (like the real judge's lock around generation)."""

    def __init__(self, delay):
        super().__init__(model=object(), tokenizer=SimpleNamespace(chat_template="stub"))
        self.delay = delay

    def complete(self, messages, max_tokens=32, n=1):
        with self._lock:
            time.sleep(self.delay)
            self.n_requests += 1
        return ["stub"] * n


def _post(url, timeout):
    req = urllib.request.Request(url + "/chat/completions", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode())
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())["choices"][0]["message"]["content"]


def test_server_accepts_many_connections_while_busy():
    # SAEBench's autointerp sends 10 requests at once; while one is being answered, every other connection must be
    # accepted at once (a single-threaded server with a listen queue of 5 left them to the client's connect timeout)
    with SlowJudge(delay=3.0) as judge:
        host, port = judge._server.server_address
        busy = threading.Thread(target=_post, args=(judge.base_url, 30))
        busy.start()
        time.sleep(0.3)  # the server is now inside the slow request
        socks = [socket.create_connection((host, port), timeout=1.5) for _ in range(24)]
        for s in socks:
            s.close()
        busy.join()


def test_concurrent_requests_all_answered():
    with SlowJudge(delay=0.05) as judge:
        replies = [None] * 12

        def one(i):
            replies[i] = _post(judge.base_url, 30)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert replies == ["stub"] * 12 and judge.n_requests == 12


def _raw(port, data: bytes, timeout=10) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_bad_requests_are_rejected_without_reaching_the_model(capsys):
    with SlowJudge(delay=0.0) as judge:
        port = judge._server.server_address[1]
        msg = [{"role": "user", "content": "hi"}]
        bodies = [b"{nope", b"[]", json.dumps({"messages": msg, "n": 10**6}).encode(),
                  json.dumps({"messages": msg, "n": -3}).encode(),
                  b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": Infinity}']
        for body in bodies:
            head = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % len(body)
            assert _raw(port, head + body).startswith(b"HTTP/1.0 400"), body
        for length in (b"", b"Content-Length: -1\r\n", b"Content-Length: 1000000000000\r\n"):
            assert _raw(port, b"POST /v1/chat/completions HTTP/1.1\r\n" + length + b"\r\n{}").startswith(b"HTTP/1.0 400")
        assert judge.n_requests == 0
    assert "Traceback" not in capsys.readouterr().err


def test_start_twice_keeps_one_server_and_stop_closes_it():
    judge = SlowJudge(delay=0.0).start()
    port = judge._server.server_address[1]
    assert judge.start()._server.server_address[1] == port
    judge.stop()
    judge.stop()
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        raise AssertionError("a server still listens after stop()")
    except ConnectionRefusedError:
        pass
