"""A teacher behind any OpenAI-compatible HTTP endpoint: vLLM, TGI, llama.cpp, Ollama, hosted APIs.

Annotating a dataset is thousands of small requests to a server that may be busy, rate
limited or briefly down. So each request is retried with exponential backoff and jitter on
429, 5xx, timeouts, dropped connections and unreadable answers (a `Retry-After` header is
honoured up to the backoff maximum: a server asking for an hour must not stall a worker that
long), all threads share one requests-per-minute budget, and a refusal no retry can fix (HTTP
401, 403, 404: a wrong key, URL or model; a redirect) stops the run at once rather than after
thousands of attempts. Any other 4xx fails its own request only.

Each sample is its own request (`n` is 1): not every server implements `n > 1`, and a server
at temperature 0 need not be deterministic either. With a `seed`, sample j asks for seed
`seed + j`, so servers that honour it (vLLM, llama.cpp, OpenAI) repeat their samples.

With `logprobs=K`, each request asks for the top-K log-probabilities of every generated
token (completions: `logprobs: K`; chat: `logprobs: true, top_logprobs: K`) and each output
comes with its `confidence.Tokens`. A server that ignores the parameter gives outputs without
them (counted); one that rejects it (HTTP 400) is asked again without, and if that succeeds
the run goes on text-only, saying so once.

The API key is read only from an environment variable, sent as a bearer token, and scrubbed
from every message this module writes. Redirects are not followed: urllib would send the key on
to wherever they point (and turn the POST into a GET), so one fails the run, naming its target.
The standard library does the HTTP: nothing to install. The base URL is not part of
`description`: it says where the teacher is served (a restarted local server has a new port),
not what it writes.
"""

import collections
import http.client
import json
import logging
import os
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from urllib.parse import urljoin

from dsbs_jax.teacher.backends import Answer, TeacherError
from dsbs_jax.teacher.confidence import Tokens
from dsbs_jax.teacher.prompts import Prompt

ENDPOINTS = {"completions": "/completions", "chat": "/chat/completions"}
REFUSED = (401, 403, 404)  # the key, URL or model is wrong: no request can succeed
RETRIED_CAUSES = ("429", "5xx", "timeout", "connection", "malformed")
SERVER_MESSAGE_CHARS = 300
SERVER_BODY_BYTES = 65536  # a longer error body is not quoted

log = logging.getLogger(__name__)


class _Failure(Exception):
    """One attempt failed. cause: one of RETRIED_CAUSES, "refused" or "rejected" (other 4xx)."""

    def __init__(self, cause: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.cause, self.message, self.retry_after = cause, message, retry_after


class RateLimiter:
    """Hands out request slots `60 / requests_per_minute` seconds apart, to all threads."""

    def __init__(self, requests_per_minute: float | None):
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.lock = threading.Lock()
        self.next_slot = 0.0

    def wait(self, stop: threading.Event) -> None:
        """Block until this caller's slot (or until `stop` is set)."""
        if not self.interval:
            return
        with self.lock:
            now = time.monotonic()
            slot = max(now, self.next_slot)
            self.next_slot = slot + self.interval
        stop.wait(slot - now)


def _retry_after(headers: object) -> float | None:
    """Seconds from a `Retry-After: N` header; None when absent or an HTTP date."""
    try:
        return max(0.0, float(headers.get("Retry-After", "")))
    except (AttributeError, ValueError):
        return None


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect, so the 3xx reaches the caller as an `HTTPError`: urllib's default
    handler would copy the Authorization header to the new URL, on any host."""

    def redirect_request(self, *args: object) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirects)


def _server_message(error: urllib.error.HTTPError, scrub: Callable[[str], str]) -> str:
    """What the server said about an error: its JSON `error.message`, else its text. Scrubbed
    whole before it is shortened, since a key cut in two would no longer match."""
    try:
        raw = error.read(SERVER_BODY_BYTES + 1)
    except OSError:
        return ""
    if len(raw) > SERVER_BODY_BYTES:
        return f"(an answer of over {SERVER_BODY_BYTES} bytes, not quoted)"
    body = raw.decode("utf-8", "replace")
    try:
        message = json.loads(body)["error"]
        message = message.get("message", message) if isinstance(message, dict) else message
    except (ValueError, KeyError, TypeError):
        message = body
    return scrub(" ".join(str(message).split()))[:SERVER_MESSAGE_CHARS]


class OpenAITeacher:
    """Completions or chat completions from `{base_url}/completions` or
    `{base_url}/chat/completions`, `concurrency` requests at a time."""

    def __init__(
        self,
        base_url: str,
        model: str,
        prompt: Prompt,
        *,
        endpoint: str = "completions",
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        requests_per_minute: float | None = None,
        max_retries: int = 6,
        timeout: float = 60.0,
        temperature: float = 0.0,
        max_tokens: int = 256,
        stop: Sequence[str] | None = None,
        seed: int | None = None,
        backoff_base: float = 1.0,
        backoff_max: float = 60.0,
        logprobs: int | None = None,
    ):
        if endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint {endpoint!r}: expected one of {sorted(ENDPOINTS)}")
        if concurrency < 1 or max_retries < 0:
            raise ValueError("concurrency must be at least 1 and max_retries at least 0")
        self.url = base_url.rstrip("/") + ENDPOINTS[endpoint]
        self.model, self.prompt, self.endpoint = model, prompt, endpoint
        self.api_key_env, self._key = api_key_env, os.environ.get(api_key_env) or None
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.temperature, self.max_tokens, self.seed = temperature, max_tokens, seed
        self.stop = list(stop) if stop else None
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.logprobs, self.logprobs_refused = logprobs, ""
        self._rate = RateLimiter(requests_per_minute)
        self._halt, self._fatal = threading.Event(), ""
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()
        self._retries: collections.Counter[str] = collections.Counter()

    @property
    def description(self) -> dict:
        return {
            "backend": "openai",
            "endpoint": self.endpoint,
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "stop": self.stop,
            "seed": self.seed,
            **({"logprobs": self.logprobs} if self.logprobs is not None else {}),
        }

    def stats(self) -> dict:
        """Attempts sent, requests that succeeded or failed for good, retries by cause."""
        with self._lock:
            counts = {name: self._counts[name] for name in ("requests", "succeeded", "failed")}
            return {**counts, "retries": {cause: self._retries[cause] for cause in RETRIED_CAUSES}}

    def generate(self, inputs: Sequence[str], samples: int) -> list[list[str | None]]:
        """Per input, `samples` outputs (None: failed after retries), `concurrency` at a time.
        Raises `TeacherError` when the server refuses the key, URL or model."""
        answers = self.answers(inputs, samples)
        return [[a and a.text for a in outputs] for outputs in answers]

    def answers(self, inputs: Sequence[str], samples: int) -> list[list[Answer | None]]:
        """As `generate`, with each output's token log-probabilities (when asked for)."""
        answers: list[list[Answer | None]] = [[] for _ in inputs]
        for index, outputs in self.stream(inputs, samples):
            answers[index] = outputs
        return answers

    def stream(
        self, inputs: Sequence[str], samples: int
    ) -> Iterator[tuple[int, list[Answer | None]]]:
        """Each input's index and `samples` answers (None: failed) as soon as all are in. The
        requests go out in input order, `concurrency` in flight, so that few inputs wait on
        a part of their samples. Raises `TeacherError` at the end when the server refused
        the key, URL or model (what was answered before was yielded)."""
        requests = ((index, sample) for index in range(len(inputs)) for sample in range(samples))
        answers: dict[int, list[Answer | None]] = {}
        missing: dict[int, int] = {}
        flight: dict[Future, tuple[int, int]] = {}
        with ThreadPoolExecutor(self.concurrency) as pool:
            try:
                while True:
                    for index, sample in requests:
                        if self._halt.is_set():  # the server refused: send nothing more
                            break
                        future = pool.submit(self._sample, inputs[index], sample)
                        flight[future] = index, sample
                        if len(flight) == self.concurrency:
                            break
                    if not flight:
                        break
                    done, _ = wait(flight, return_when=FIRST_COMPLETED)
                    for future in done:
                        index, sample = flight.pop(future)
                        answers.setdefault(index, [None] * samples)[sample] = future.result()
                        missing[index] = missing.get(index, samples) - 1
                        if not missing[index]:
                            del missing[index]
                            yield index, answers.pop(index)
            finally:
                if flight:  # the caller stopped early: the requests in flight stop retrying
                    self._halt.set()
        if self._fatal:
            raise TeacherError(self._fatal)

    # -----------------------------------------------------------------------------------------

    def _sample(self, text: str, sample: int) -> Answer | None:
        """One sample with retries; None when it failed for good or the run is halted."""
        body, attempts, refusal = self._body(text, sample), 0, ""
        while not self._halt.is_set():
            self._rate.wait(self._halt)
            try:
                output = self._post(body)
            except _Failure as failure:
                if failure.cause == "rejected" and "logprobs" in body:
                    body, refusal = self._body(text, sample, logprobs=False), failure.message
                    continue  # the server may not take logprobs: ask again without
                attempts += 1
                if failure.cause not in RETRIED_CAUSES or attempts > self.max_retries:
                    return self._give_up(failure, attempts)
                self._count(self._retries, failure.cause)
                delay = failure.retry_after
                self._halt.wait(
                    self._backoff(attempts - 1) if delay is None else min(delay, self.backoff_max)
                )
                continue
            self._count(self._counts, "succeeded")
            if refusal:
                self._refuse_logprobs(refusal)
            return output
        return None

    def _refuse_logprobs(self, message: str) -> None:
        """The server answers without logprobs what it rejected with them: stop asking."""
        with self._lock:
            first, self.logprobs_refused = not self.logprobs_refused, message
        if first:
            log.warning(
                "the server rejects logprobs (%s): annotating text only", self._scrub(message)
            )

    def _give_up(self, failure: _Failure, attempts: int) -> None:
        self._count(self._counts, "failed")
        message = self._scrub(f"{self.url}: {failure.message}")
        if failure.cause == "refused":
            key = "set" if self._key else "not set"
            with self._lock:
                self._fatal = self._fatal or (
                    f"{message} (check the API key in ${self.api_key_env}, which is {key}, "
                    "--base_url and --model)"
                )
            self._halt.set()
        else:
            log.warning("request failed after %d attempt(s): %s", attempts, message)

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with jitter: between half and all of base * 2^attempt."""
        return min(self.backoff_max, self.backoff_base * 2**attempt) * random.uniform(0.5, 1.0)

    def _count(self, counter: collections.Counter, name: str) -> None:
        with self._lock:
            counter[name] += 1

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _body(self, text: str, sample: int, logprobs: bool = True) -> dict:
        body = {
            "model": self.model,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "n": 1,
        }
        if self.endpoint == "chat":
            body["messages"] = self.prompt.messages(text)
        else:
            body["prompt"] = self.prompt.text(text)
        if self.stop:
            body["stop"] = self.stop
        if self.seed is not None:
            body["seed"] = self.seed + sample
        if logprobs and self.logprobs is not None and not self.logprobs_refused:
            if self.endpoint == "chat":
                body.update(logprobs=True, top_logprobs=self.logprobs)
            else:
                body["logprobs"] = self.logprobs
        return body

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "User-Agent": "dsbs-annotate"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        return headers

    def _post(self, body: dict) -> Answer:
        """One attempt: the output text, or `_Failure` saying why not."""
        data = json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.url, data, self._headers(), method="POST")
        self._count(self._counts, "requests")
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            raise self._http_failure(error) from None
        except urllib.error.URLError as error:
            cause = "timeout" if isinstance(error.reason, TimeoutError) else "connection"
            raise _Failure(cause, f"cannot connect ({error.reason})") from None
        except TimeoutError:
            raise _Failure("timeout", f"no answer within {self.timeout} s") from None
        except (OSError, http.client.HTTPException) as error:
            raise _Failure("connection", f"connection failed ({error!r})") from None
        return self._output(payload)

    def _http_failure(self, error: urllib.error.HTTPError) -> _Failure:
        status = f"HTTP {error.code} {error.reason}"
        location = error.headers.get("Location") if 300 <= error.code < 400 else None
        if location is not None:
            target = urljoin(self.url, location)
            base = target.removesuffix(ENDPOINTS[self.endpoint])
            message = f"{status}: redirected to {target}: use {base} as --base_url"
            return _Failure("refused", message)
        message = f"{status}: {_server_message(error, self._scrub)}".rstrip(": ")
        if error.code == 429:
            return _Failure("429", message, _retry_after(error.headers))
        if error.code >= 500:
            return _Failure("5xx", message, _retry_after(error.headers))
        return _Failure("refused" if error.code in REFUSED else "rejected", message)

    def _output(self, payload: bytes) -> Answer:
        """`choices[0].text` (completions) or `choices[0].message.content` (chat), with
        `choices[0].logprobs` when the server gave them."""
        field = "choices[0].message.content" if self.endpoint == "chat" else "choices[0].text"
        try:
            choice = json.loads(payload)["choices"][0]
            text = choice["message"]["content"] if self.endpoint == "chat" else choice["text"]
        except (ValueError, KeyError, IndexError, TypeError):
            text = None
        if not isinstance(text, str):
            raise _Failure("malformed", f"the answer is not JSON with a string {field}")
        return Answer(text, _tokens(choice.get("logprobs"), self.endpoint == "chat"))


def _tokens(logprobs: object, chat: bool) -> Tokens | None:
    """The tokens of a choice's `logprobs` in either endpoint's shape; None when absent or
    not in that shape (a server that ignores the parameter, or one of its own)."""
    try:
        if chat:
            content = logprobs["content"]
            tokens = [item["token"] for item in content]
            values = [item["logprob"] for item in content]
            top = [
                [(t["token"], t["logprob"]) for t in item.get("top_logprobs") or []]
                for item in content
            ]
        else:
            tokens, values = logprobs["tokens"], logprobs["token_logprobs"]
            top = [list((alts or {}).items()) for alts in logprobs.get("top_logprobs") or []]
            top = top or [[] for _ in tokens]
        return Tokens.from_json({"tokens": tokens, "logprobs": values, "top": top})
    except (KeyError, TypeError, ValueError):
        return None
