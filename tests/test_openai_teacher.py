"""The OpenAI-compatible client against a local server: request bodies, retries by cause,
Retry-After and its cap, giving up, early stop on a refused key or model or a redirect, the
rate limit, the concurrency bound, and the API key kept out of every message and every other
host."""

import contextlib
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from openai_server import MODEL, FakeOpenAI

from dsbs_jax.teacher.backends import TeacherError
from dsbs_jax.teacher.openai import SERVER_BODY_BYTES, SERVER_MESSAGE_CHARS, OpenAITeacher
from dsbs_jax.teacher.prompts import load_prompt

INPUTS = [f"Ann has {n} apples. She buys {n + 1} more. How many apples now?" for n in range(10)]
RESPONSES = {
    text: f"{n} + {n + 1} = {2 * n + 1}. So the answer is {2 * n + 1}."
    for n, text in enumerate(INPUTS)
}
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(scope="module")
def prompt():
    return load_prompt("synthetic")


def teacher(server: FakeOpenAI, prompt, **options) -> OpenAITeacher:
    options = {"timeout": 0.5, "backoff_base": 0.01, **options}
    return OpenAITeacher(server.base_url, MODEL, prompt, **options)


@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_bodies_follow_the_protocol(prompt, endpoint, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(RESPONSES) as server:
        client = teacher(server, prompt, endpoint=endpoint, stop=["\n\nQ:"], seed=7)
        assert client.generate(INPUTS[:2], samples=3) == [
            [RESPONSES[INPUTS[0]]] * 3,
            [RESPONSES[INPUTS[1]]] * 3,
        ]
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    assert {r.path for r in server.received} == {path}
    assert {r.headers["Authorization"] for r in server.received} == {f"Bearer {KEY}"}
    settings = {"model": MODEL, "max_tokens": 256, "temperature": 0.0, "n": 1, "stop": ["\n\nQ:"]}
    expected = [
        {**settings, **query(prompt, endpoint, text), "seed": 7 + sample}
        for text in INPUTS[:2]
        for sample in range(3)
    ]
    assert canonical(r.body for r in server.received) == canonical(expected)


def canonical(bodies) -> list[str]:
    """Request bodies as comparable text, in no particular order (threads race)."""
    return sorted(json.dumps(body, sort_keys=True) for body in bodies)


def query(prompt, endpoint: str, text: str) -> dict:
    return (
        {"messages": prompt.messages(text)} if endpoint == "chat" else {"prompt": prompt.text(text)}
    )


def test_no_authorization_header_without_a_key(prompt, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FakeOpenAI(RESPONSES) as server:
        teacher(server, prompt).generate(INPUTS[:1], samples=1)
    assert "Authorization" not in server.received[0].headers


def test_each_fault_is_retried_and_counted_by_cause(prompt):
    faults = dict(zip(INPUTS, ["429", "500", "timeout", "malformed", "no_choices"], strict=False))
    with FakeOpenAI(RESPONSES, faults=faults, fault_delay=1.5) as server:
        client = teacher(server, prompt, concurrency=4)
        outputs = client.generate(INPUTS, samples=1)
    assert outputs == [[RESPONSES[text]] for text in INPUTS]
    stats = client.stats()
    assert stats["retries"]["429"] == 1 and stats["retries"]["5xx"] == 1
    assert stats["retries"]["timeout"] >= 1  # more if the loaded machine is slow
    assert stats["retries"]["malformed"] == 2
    assert stats["succeeded"] == 10 and stats["failed"] == 0
    assert stats["requests"] == len(server.received) == 10 + sum(stats["retries"].values())


def test_retry_after_replaces_the_backoff(prompt):
    with FakeOpenAI(RESPONSES, faults={INPUTS[0]: "429"}) as server:
        start = time.monotonic()
        assert teacher(server, prompt, backoff_base=30.0).generate(INPUTS[:1], 1) == [
            [RESPONSES[INPUTS[0]]]
        ]
    assert time.monotonic() - start < 10  # Retry-After: 0, not 15-30 s of backoff


def test_retry_after_is_capped_at_the_backoff_maximum(prompt):
    with FakeOpenAI(RESPONSES, faults={INPUTS[0]: "429"}, retry_after="30") as server:
        start = time.monotonic()
        client = teacher(server, prompt, backoff_max=0.05)
        assert client.generate(INPUTS[:1], 1) == [[RESPONSES[INPUTS[0]]]]
    assert time.monotonic() - start < 10  # 0.05 s, not the 30 s asked for
    assert client.stats()["retries"]["429"] == 1


def test_a_request_that_keeps_failing_gives_up_after_max_retries(prompt, caplog):
    with FakeOpenAI(RESPONSES, faults={INPUTS[1]: "500"}, fault_attempts=100) as server:
        client = teacher(server, prompt, max_retries=2)
        outputs = client.generate(INPUTS[:3], samples=1)
    assert outputs == [[RESPONSES[INPUTS[0]]], [None], [RESPONSES[INPUTS[2]]]]
    assert server.attempts[INPUTS[1]] == 3
    assert client.stats()["failed"] == 1
    assert "failed after 3 attempt(s)" in caplog.text and "HTTP 500" in caplog.text


@pytest.mark.parametrize(
    ("padding", "quoted"),
    [
        (0, "bad request from Bearer ***"),
        # the key straddles the cut to SERVER_MESSAGE_CHARS: scrubbed before it, whole
        (SERVER_MESSAGE_CHARS - len("bad request from Bearer ") - len(KEY) // 2, "Bearer ***"),
        (SERVER_BODY_BYTES, f"over {SERVER_BODY_BYTES} bytes, not quoted"),
    ],
)
def test_other_client_errors_are_not_retried_and_the_key_is_scrubbed(
    prompt, monkeypatch, caplog, padding, quoted
):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    faults = {INPUTS[0]: "echo_key"}
    with FakeOpenAI(RESPONSES, faults=faults, echo_padding=padding) as server:
        client = teacher(server, prompt)
        assert client.generate(INPUTS[:2], samples=1) == [[None], [RESPONSES[INPUTS[1]]]]
    assert server.attempts[INPUTS[0]] == 1
    assert "HTTP 400" in caplog.text and quoted in caplog.text
    assert KEY[: len(KEY) // 2] not in caplog.text  # nor any part of it


@pytest.mark.parametrize(
    ("server_key", "model", "status"), [("right-key", MODEL, "401"), (None, "no-such-model", "404")]
)
def test_a_refused_key_or_model_stops_at_once(prompt, monkeypatch, server_key, model, status):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeOpenAI(RESPONSES, api_key=server_key) as server:
        client = OpenAITeacher(server.base_url, model, prompt, concurrency=2, backoff_base=0.01)
        with pytest.raises(TeacherError, match=f"HTTP {status}") as error:
            client.generate(INPUTS * 20, samples=1)
    assert "$OPENAI_API_KEY, which is set" in str(error.value) and KEY not in str(error.value)
    assert len(server.received) <= 4  # what was in flight, not 200 requests and their retries


@contextlib.contextmanager
def bare_server(status: int, headers: dict[str, str]):
    """Any HTTP server: answers every request `status` with `headers`. Yields its base URL and
    the (method, headers) of each request it got."""
    seen: list[tuple[str, dict[str, str]]] = []

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            seen.append((self.command, dict(self.headers)))
            self.send_response(status)
            for name, value in {**headers, "Content-Length": "0"}.items():
                self.send_header(name, value)
            self.end_headers()

        do_GET = do_POST = answer

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_a_redirect_is_not_followed_and_stops_the_run(prompt, monkeypatch, status):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with (
        bare_server(404, {}) as (elsewhere, reached),
        bare_server(status, {"Location": f"{elsewhere}/completions"}) as (moved, asked),
    ):
        client = OpenAITeacher(moved, MODEL, prompt, concurrency=2, backoff_base=0.01)
        with pytest.raises(TeacherError) as error:
            client.generate(INPUTS * 20, samples=1)
    method, headers = asked[0]
    assert method == "POST" and headers["Authorization"] == f"Bearer {KEY}"
    assert reached == []  # so the key went nowhere else
    message = str(error.value)
    assert f"redirected to {elsewhere}/completions: use {elsewhere} as --base_url" in message
    assert KEY not in message
    assert len(asked) <= 4  # what was in flight, not 200 requests


def test_requests_per_minute_spaces_requests(prompt):
    with FakeOpenAI(RESPONSES) as server:
        start = time.monotonic()
        teacher(server, prompt, concurrency=8, requests_per_minute=600).generate(INPUTS[:6], 1)
    assert time.monotonic() - start >= 5 * 0.1


def test_concurrency_bounds_the_requests_in_flight(prompt):
    with FakeOpenAI(RESPONSES, latency=0.2) as server:
        start = time.monotonic()
        teacher(server, prompt, concurrency=4, timeout=5.0).generate(INPUTS, samples=1)
    assert server.peak_concurrency == 4
    assert time.monotonic() - start < 10 * 0.2  # in parallel


def test_description_names_teacher_and_decoding_but_no_key_or_url(prompt, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    client = OpenAITeacher("http://127.0.0.1:1/v1", MODEL, prompt, endpoint="chat", temperature=0.7)
    assert client.description == {
        "backend": "openai",
        "endpoint": "chat",
        "model": MODEL,
        "temperature": 0.7,
        "max_tokens": 256,
        "stop": None,
        "seed": None,
    }


def test_an_unreachable_server_is_retried_then_fails(prompt, caplog):
    caplog.set_level(logging.WARNING)
    client = OpenAITeacher("http://127.0.0.1:9/v1", MODEL, prompt, max_retries=1, backoff_base=0.01)
    assert client.generate(INPUTS[:1], samples=1) == [[None]]
    assert client.stats()["retries"]["connection"] == 1
    assert "cannot connect" in caplog.text
