"""The gateway against endpoints that misbehave: a fake OpenAI-compatible server on 127.0.0.1
that answers 200 with something other than a chat completion, answers slowly, dribbles its
body a byte at a time, or fails every call; and the default model an endpoint serves.

Timings are asserted loosely (a 3 s deadline must stop in under 6 s): machines are noisy. The
server's handlers wait on an event that closing the server sets, so none outlives its test
by more than a fraction of a second.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from delm_rlm.errors import BudgetExceeded, ConfigError, EndpointFailing, LMError
from delm_rlm.llm.gateway import LM, default_model
from delm_rlm.llm.health import EndpointHealth
from delm_rlm.llm.usage import Budget


def completion_body(text: str = "fine") -> bytes:
    return json.dumps({
        "id": "c1", "object": "chat.completion", "created": 0, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
    }).encode()


class Exchange(BaseHTTPRequestHandler):
    """One request to the fake endpoint; `respond` (the endpoint's) decides what goes back."""

    server: FakeServer

    def do_GET(self) -> None:  # noqa: N802 (http.server API)
        self._serve(None)

    def do_POST(self) -> None:  # noqa: N802
        raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self._serve(json.loads(raw or b"{}"))

    def _serve(self, body: dict | None) -> None:
        endpoint = self.server.endpoint
        endpoint.requests.append({"method": self.command, "path": self.path, "json": body,
                                  "authorization": self.headers.get("Authorization")})
        try:
            endpoint.respond(self, body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def reply(self, status: int, body: bytes, content_type: str = "application/json", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def dribble(self, body: bytes, every_s: float) -> None:
        """Headers at once, then the body one byte every `every_s` seconds."""
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.flush()
        for i in range(len(body)):
            if self.server.endpoint.stopping.wait(every_s):
                return
            self.wfile.write(body[i : i + 1])
            self.wfile.flush()

    def stall(self, seconds: float) -> None:
        self.server.endpoint.stopping.wait(seconds)

    def log_message(self, *args: Any) -> None:
        pass


class FakeServer(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: FakeEndpoint


class FakeEndpoint:
    """An OpenAI-compatible endpoint on loopback whose answers `respond(exchange, body)` writes."""

    def __init__(self, respond: Callable[[Exchange, dict | None], None]) -> None:
        self.respond = respond
        self.requests: list[dict[str, Any]] = []
        self.stopping = threading.Event()
        self.server = FakeServer(("127.0.0.1", 0), Exchange)
        self.server.endpoint = self
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    @property
    def chat_requests(self) -> int:
        return sum(1 for r in self.requests if r["path"].endswith("/chat/completions"))

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def endpoint() -> Iterator[Callable[[Callable[[Exchange, dict | None], None]], FakeEndpoint]]:
    made: list[FakeEndpoint] = []

    def make(respond: Callable[[Exchange, dict | None], None]) -> FakeEndpoint:
        made.append(FakeEndpoint(respond))
        return made[-1]

    yield make
    for e in made:
        e.close()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELM_RLM_CACHE_DIR", str(tmp_path / "cache"))
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "DELM_RLM_MODEL", "DELM_RLM_PRICE"):
        monkeypatch.delenv(name, raising=False)


def lm_at(e: FakeEndpoint, **kw: Any) -> LM:
    kw.setdefault("cache", False)
    kw.setdefault("api_key", "sk-test")
    return LM(kw.pop("model", "fake-model"), base_url=e.base_url, **kw)


# --------------------------------------------------------------------------- replies that are not completions


@pytest.mark.parametrize(
    ("content_type", "body", "what"),
    [
        ("text/html", b"<html><body><h1>502 Bad Gateway</h1> nginx</body></html>", r"a body that is not JSON \(text/html\)"),
        ("application/json", b'{"choices": [{"message": {"content": "cut o', r"a body that is not JSON \(application/json\)"),
        ("application/json", b"", r"a body that is not JSON"),
    ],
)
async def test_a_200_that_is_not_json_is_an_lm_error_naming_the_url_and_the_body(
    endpoint: Any, content_type: str, body: bytes, what: str
) -> None:
    e = endpoint(lambda x, _: x.reply(200, body, content_type))
    lm = lm_at(e)
    with pytest.raises(LMError, match=what) as info:
        await lm.complete("q")
    message = str(info.value)
    assert e.base_url in message and "instead of a chat completion" in message and "/v1 address" in message
    assert (body[:20].decode() if body else "an empty body") in message  # what came back, in short
    assert e.chat_requests == 1  # a 200 is not retried
    assert lm.usage.total.failed_calls == 1


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        ({"object": "list", "data": []}, "JSON without a 'choices' list"),
        ([1, 2, 3], "JSON list"),
        ({"choices": [{"index": 0, "message": None}]}, "a choice without a 'message' object"),
        ({"choices": [{"message": {"role": "assistant", "content": {"text": "hi"}}}]}, "a message whose content is not text"),
    ],
)
async def test_json_that_is_not_a_chat_completion_is_an_lm_error_showing_it(endpoint: Any, payload: Any, what: str) -> None:
    body = json.dumps(payload).encode()
    e = endpoint(lambda x, _: x.reply(200, body))
    with pytest.raises(LMError, match=what) as info:
        await lm_at(e).complete("q")
    assert e.base_url in str(info.value) and json.dumps(payload)[:12] in str(info.value)


async def test_an_error_sent_with_200_is_shown_as_the_servers_error(endpoint: Any) -> None:
    e = endpoint(lambda x, _: x.reply(200, b'{"error": {"message": "model is loading, try later"}}'))
    with pytest.raises(LMError, match=r"answered 200 with an error: model is loading, try later"):
        await lm_at(e).complete("q")


async def test_an_agent_gets_the_lm_error_of_a_non_json_reply(endpoint: Any) -> None:
    """A hybrid agent ends with an error result naming the endpoint, not a crash."""
    from delm_rlm.rlm import RLM

    e = endpoint(lambda x, _: x.reply(200, b"<html>Service page</html>", "text/html"))
    result = await RLM(lm_at(e)).run("How many lines?", "a\nb\nc")
    assert result.status == "error"
    assert "model call failed" in (result.error or "") and e.base_url in (result.error or "")
    assert "not JSON" in (result.error or "")


# --------------------------------------------------------------------------- deadlines and timeouts


async def test_a_seconds_budget_is_a_deadline_that_retries_share(endpoint: Any) -> None:
    """Retries of 2 s attempts against a server that never answers stop at the 3 s budget,
    for the LM's own budget and for a session's."""
    e = endpoint(lambda x, _: x.stall(30))
    lm = lm_at(e, timeout=2.0, max_retries=4, budget=Budget(max_seconds=3))
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        await lm.complete("q")
    assert info.value.limit == "seconds"
    assert time.monotonic() - t0 < 6

    session = lm_at(e, timeout=2.0, max_retries=4).session(Budget(max_seconds=3))
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded, match="seconds"):
        await session.complete("q")
    assert time.monotonic() - t0 < 6


async def test_the_timeout_bounds_the_whole_request_not_each_read(endpoint: Any) -> None:
    """A server sending one byte every 0.25 s never leaves a read waiting 1 s, yet a 1 s
    timeout ends the attempt after about 1 s (the body would take ~40 s)."""
    e = endpoint(lambda x, _: x.dribble(completion_body("slow"), 0.25))
    t0 = time.monotonic()
    with pytest.raises(LMError, match=r"did not answer within 1s \(retries off\)"):
        await lm_at(e, timeout=1.0, max_retries=0).complete("q")
    assert time.monotonic() - t0 < 4

    t0 = time.monotonic()
    with pytest.raises(LMError, match=r"did not answer within 1s after 1 retries"):
        await lm_at(e, timeout=1.0, max_retries=1).complete("q")
    assert time.monotonic() - t0 < 6
    assert e.chat_requests == 3

    # A whole answer within the timeout still arrives, however it is cut into pieces.
    quick = endpoint(lambda x, _: x.dribble(completion_body("ok"), 0.002))
    c = await lm_at(quick, timeout=5.0, max_retries=0).complete("q")
    assert (c.text, c.input_tokens, c.output_tokens) == ("ok", 5, 1)


# --------------------------------------------------------------------------- an endpoint that keeps failing


def always_500(x: Exchange, _: dict | None) -> None:
    x.reply(500, b'{"error": {"message": "internal meltdown"}}', headers={"retry-after-ms": "1"})


async def test_an_endpoint_that_always_fails_is_stopped_after_a_bounded_number_of_calls(endpoint: Any) -> None:
    """A caller that keeps retrying failed calls (as a hybrid agent does) sends the endpoint
    at most 8 calls (each with its own retries), then gets EndpointFailing at once; the LM's
    sessions share the count."""
    e = endpoint(always_500)
    lm = lm_at(e, max_retries=1)
    sessions = [lm.session(), lm.session()]
    errors: list[LMError] = []
    t0 = time.monotonic()
    for i in range(40):
        try:
            await sessions[i % 2].complete(f"q{i}")
        except LMError as exc:
            errors.append(exc)
    assert time.monotonic() - t0 < 30
    assert e.chat_requests == 8 * 2  # 8 calls, each tried twice
    assert len(errors) == 40
    assert not any(isinstance(x, EndpointFailing) for x in errors[:8])
    assert all(isinstance(x, EndpointFailing) for x in errors[8:])
    stop = str(errors[-1])
    assert e.base_url in stop and "last 8 calls failed in a row" in stop
    assert "500" in stop and "internal meltdown" in stop and "max_consecutive_failures" in stop
    assert lm.usage.total.failed_calls == 8  # refused calls never reached the endpoint


async def test_the_number_of_failures_that_stops_calls_is_a_setting(endpoint: Any) -> None:
    e = endpoint(always_500)
    lm = lm_at(e, max_retries=0, max_consecutive_failures=3)
    for _ in range(3):
        with pytest.raises(LMError, match="failed with 500"):
            await lm.complete("q")
    with pytest.raises(EndpointFailing, match="last 3 calls failed in a row"):
        await lm.complete("q")
    assert e.chat_requests == 3

    never = lm_at(e, max_retries=0, max_consecutive_failures=None)
    for _ in range(12):
        with pytest.raises(LMError, match="failed with 500"):
            await never.complete("q")
    assert e.chat_requests == 15
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ConfigError, match="max_consecutive_failures"):
            lm_at(e, max_consecutive_failures=bad)


async def test_an_answered_call_resets_the_failure_count(endpoint: Any) -> None:
    plan = iter([500, 500, 200, 500, 500, 200, 500, 500, 200])

    def flaky(x: Exchange, _: dict | None) -> None:
        status = next(plan, 200)
        if status == 200:
            x.reply(200, completion_body())
        else:
            x.reply(status, b'{"error": {"message": "hiccup"}}')

    e = endpoint(flaky)
    lm = lm_at(e, max_retries=0, max_consecutive_failures=3)
    answered = 0
    for _ in range(9):
        try:
            await lm.complete("q")
            answered += 1
        except EndpointFailing:
            raise
        except LMError:
            pass
    assert answered == 3 and e.chat_requests == 9


def test_stopped_calls_are_let_through_again_after_the_cooldown() -> None:
    health = EndpointHealth(2, reopen_after_s=0.2)
    health.admit("http://x/v1")
    health.failed("LMError: boom")
    health.admit("http://x/v1")
    health.failed("LMError: boom again")
    with pytest.raises(EndpointFailing, match=r"stopped calling http://x/v1: its last 2 calls.*boom again.*after 0.2s"):
        health.admit("http://x/v1")
    time.sleep(0.25)
    health.admit("http://x/v1")  # one more try
    health.failed("LMError: still down")
    with pytest.raises(EndpointFailing, match="last 3 calls.*still down"):
        health.admit("http://x/v1")  # stopped again at once
    health.succeeded()
    health.admit("http://x/v1")
    assert health.consecutive_failures == 0


# --------------------------------------------------------------------------- the default model


def models_list(*names: str) -> Callable[[Exchange, dict | None], None]:
    def respond(x: Exchange, _: dict | None) -> None:
        if x.path.rstrip("/").endswith("/models"):
            x.reply(200, json.dumps({"object": "list", "data": [{"id": n, "object": "model"} for n in names]}).encode())
        else:
            x.reply(404, b'{"error": {"message": "no such route"}}')

    return respond


def test_the_default_model_is_the_one_the_endpoint_serves(endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    e = endpoint(models_list("Qwen/Qwen2.5-7B-Instruct"))
    monkeypatch.setenv("OPENAI_BASE_URL", e.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-endpoint")
    assert default_model() == "Qwen/Qwen2.5-7B-Instruct"
    assert e.requests[-1]["path"] == "/v1/models" and e.requests[-1]["authorization"] == "Bearer sk-endpoint"

    monkeypatch.setenv("DELM_RLM_MODEL", "named-model")  # a named model is not looked up
    before = len(e.requests)
    assert default_model() == "named-model" and len(e.requests) == before


def test_several_served_models_fail_with_the_list(endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    e = endpoint(models_list("llama-3-8b", "mistral-7b"))
    monkeypatch.setenv("OPENAI_BASE_URL", e.base_url)
    with pytest.raises(ConfigError, match=r"serves 2 models \(llama-3-8b, mistral-7b\): name one with --model"):
        default_model()


def test_an_endpoint_that_cannot_be_asked_is_an_error_not_the_local_model(endpoint: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENAI_BASE_URL", f"http://127.0.0.1:{port}/v1")
    with pytest.raises(LMError, match=rf"cannot reach http://127.0.0.1:{port}/v1/models.*--model NAME"):
        default_model()

    page = endpoint(lambda x, _: x.reply(200, b"<html>login</html>", "text/html"))
    monkeypatch.setenv("OPENAI_BASE_URL", page.base_url)
    with pytest.raises(LMError, match=r"did not answer with a model list.*<html>login</html>"):
        default_model()

    empty = endpoint(models_list())
    monkeypatch.setenv("OPENAI_BASE_URL", empty.base_url)
    with pytest.raises(ConfigError, match="serves no models"):
        default_model()

    monkeypatch.delenv("OPENAI_BASE_URL")
    assert default_model() == "local"
