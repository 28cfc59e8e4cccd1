"""A local OpenAI-compatible server for the annotation tests and `bench/annotate.py`.

`dsbs-annotate` must be shown to work against a real HTTP server that misbehaves as real
ones do, so this one answers `/v1/completions` and `/v1/chat/completions` over real sockets
with answers the test chose, and can fail the first attempt of chosen inputs: 429 (with
`Retry-After: 0`, or `retry_after`), 500, an answer later than the client's timeout,
malformed JSON, JSON without `choices`, or a 400 whose message echoes the caller's
Authorization header after `echo_padding` dots (or the first `fault_attempts` attempts, to
make a request fail for good). It records every request, can hold each one for a fixed
latency, and can serve at most `max_concurrency` at once (others wait), as a server at its
limit does.

The input is found in the query (the prompt after its last `Q:`, or the last chat message):
the longest key of `responses` it contains. A response is one raw output, or a list of
them, one per sample: sample j is the request's `seed` (or the j-th request for the input).

Asked for `logprobs`, it returns each word-sized token (`\\s*\\S+`) with the log-probability
`token_logprob[output]` (default -0.1) and K-1 made-up alternatives below it, in the shape of
the endpoint asked (as vLLM and the OpenAI API do); with `logprobs="ignore"` it leaves them out,
with `"reject"` it answers 400 to any request asking for them.

Standard library only, so the benchmark needs no pytest.
"""

import collections
import contextlib
import dataclasses
import json
import re
import threading
import time
from collections.abc import Mapping, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULTS = ("429", "500", "timeout", "malformed", "no_choices", "echo_key")
LOGPROBS = ("serve", "ignore", "reject")
MODEL = "fake-teacher"


@dataclasses.dataclass(frozen=True)
class Received:
    """One request as the server saw it."""

    path: str
    headers: dict[str, str]
    body: dict


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    payload: dict | bytes
    headers: tuple[tuple[str, str], ...] = ()


def _error(status: int, message: str) -> Reply:
    return Reply(status, {"error": {"message": message, "type": "invalid_request_error"}})


class FakeOpenAI:
    """The server; use as a context manager, then point clients at `base_url`."""

    def __init__(
        self,
        responses: Mapping[str, str | Sequence[str]],
        *,
        faults: Mapping[str, str] | None = None,
        latency: float = 0.0,
        max_concurrency: int | None = None,
        fault_delay: float = 2.0,
        fault_attempts: int = 1,
        api_key: str | None = None,
        retry_after: str = "0",
        echo_padding: int = 0,
        logprobs: str = "serve",
        token_logprob: Mapping[str, float] | None = None,
    ):
        unknown = set((faults or {}).values()) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}: expected {FAULTS}")
        self.responses, self.faults = dict(responses), dict(faults or {})
        self.keys = sorted(self.responses, key=len, reverse=True)
        self.latency, self.fault_delay, self.api_key = latency, fault_delay, api_key
        self.fault_attempts, self.retry_after = fault_attempts, retry_after
        self.echo_padding = echo_padding
        self.logprobs, self.token_logprob = logprobs, dict(token_logprob or {})
        self.slots = (
            threading.BoundedSemaphore(max_concurrency)
            if max_concurrency
            else contextlib.nullcontext()
        )
        self.lock = threading.Lock()
        self.received: list[Received] = []
        self.attempts: collections.Counter[str] = collections.Counter()
        self.active = self.peak_concurrency = 0
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.fake = self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> "FakeOpenAI":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.server.shutdown()
        self.server.server_close()

    def handle(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        """The reply to one request, after the simulated latency, within the server's limit."""
        with self.slots:
            with self.lock:
                self.active += 1
                self.peak_concurrency = max(self.peak_concurrency, self.active)
            try:
                time.sleep(self.latency)
                return self._reply(path, headers, raw)
            finally:
                with self.lock:
                    self.active -= 1

    def _reply(self, path: str, headers: dict[str, str], raw: bytes) -> Reply:
        body = json.loads(raw)
        with self.lock:
            self.received.append(Received(path, headers, body))
        if self.api_key and headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Incorrect API key provided")
        chat = path == "/v1/chat/completions"
        if path not in ("/v1/completions", "/v1/chat/completions"):
            return _error(404, f"no route {path}")
        if body.get("model") != MODEL:
            return _error(404, f"The model {body.get('model')!r} does not exist")
        if self.logprobs == "reject" and "logprobs" in body:
            return _error(400, "logprobs is not supported by this server")
        query = body["messages"][-1]["content"] if chat else body["prompt"]
        key = next((k for k in self.keys if k in query.rsplit("Q:", 1)[-1]), None)
        if key is None:
            return _error(400, "the query holds none of the known inputs")
        with self.lock:
            attempt = self.attempts[key]
            self.attempts[key] += 1
        fault = self.faults.get(key) if attempt < self.fault_attempts else None
        if fault == "timeout":
            time.sleep(self.fault_delay)
        elif fault is not None:
            return self._fault(fault, headers)
        response = self.responses[key]
        if not isinstance(response, str):
            response = response[body.get("seed", attempt) % len(response)]
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": response}}
        else:
            choice = {"index": 0, "text": response}
        if body.get("logprobs") not in (None, False) and self.logprobs == "serve":
            top = body["top_logprobs"] if chat else body["logprobs"]
            choice["logprobs"] = self._logprobs(response, top, chat)
        return Reply(
            200, {"object": "completion", "choices": [{**choice, "finish_reason": "stop"}]}
        )

    def _logprobs(self, response: str, top: int, chat: bool) -> dict:
        tokens = re.findall(r"\s*\S+|\s+$", response)
        value = self.token_logprob.get(response, -0.1)
        alternatives = [
            [(token, value)] + [(f"<alt{i}>", value - 2 - i) for i in range(top - 1)]
            for token in tokens
        ]
        if chat:
            content = [
                {
                    "token": token,
                    "logprob": value,
                    "bytes": list(token.encode()),
                    "top_logprobs": [
                        {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in alts
                    ],
                }
                for token, alts in zip(tokens, alternatives, strict=True)
            ]
            return {"content": content}
        offsets = [sum(map(len, tokens[:i])) for i in range(len(tokens))]
        return {
            "tokens": tokens,
            "token_logprobs": [value] * len(tokens),
            "top_logprobs": [dict(alts) for alts in alternatives],
            "text_offset": offsets,
        }

    def _fault(self, fault: str, headers: dict[str, str]) -> Reply:
        if fault == "429":
            return Reply(
                429, {"error": {"message": "slow down"}}, (("Retry-After", self.retry_after),)
            )
        if fault == "500":
            return _error(500, "internal error")
        if fault == "malformed":
            return Reply(200, b'{"choices": [{"text": "cut o')
        if fault == "no_choices":
            return Reply(200, {"object": "completion"})
        padding = "." * self.echo_padding
        return _error(400, f"{padding}bad request from {headers.get('Authorization')}")


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        reply = self.server.fake.handle(self.path, dict(self.headers), raw)
        data = reply.payload
        data = data if isinstance(data, bytes) else json.dumps(data).encode()
        try:
            self.send_response(reply.status)
            for name, value in (("Content-Type", "application/json"), *reply.headers):
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting (a timeout fault)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the tests read `FakeOpenAI.received` instead."""


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many clients connect at once
    fake: FakeOpenAI


def synthetic_run_flags(server: "FakeOpenAI", input_path, output_dir) -> list[str]:
    """dsbs-annotate's flags for a JSONL of synthetic rows against `server`."""
    return [
        f"--input=jsonl:{input_path}",
        "--split=test",
        "--prompt=synthetic",
        "--dataset=synthetic",
        f"--base_url={server.base_url}",
        f"--model={MODEL}",
        f"--output_dir={output_dir}",
    ]
