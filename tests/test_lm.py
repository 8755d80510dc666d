"""The LM gateway against a real HTTP endpoint: a small OpenAI-compatible stub on 127.0.0.1.

Covers what a user relies on when pointing delm-rlm at an API: the request it sends, retries
on 5xx/429/timeouts, clear errors for an unreachable endpoint and a bad key, the on-disk
response cache, and price accounting.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from delm_rlm.errors import LMError
from delm_rlm.llm.cache import ResponseCache
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.llm.usage import Budget, Usage
from delm_rlm.llm.prices import price_for, register_price


def chat_json(text: str, model: str = "stub-model", prompt_tokens: int = 11, completion_tokens: int = 3) -> dict:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": prompt_tokens + completion_tokens},
    }


class StubEndpoint:
    """An OpenAI-compatible chat endpoint that answers from a queue of planned responses
    (status, body, headers, delay) and records every request it receives."""

    def __init__(self) -> None:
        self.planned: deque[tuple[int, dict, dict, float]] = deque()
        self.requests: list[dict[str, Any]] = []
        self.default_text = "default answer"
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                stub.requests.append({"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "json": body})
                status, payload, headers, delay = (
                    stub.planned.popleft() if stub.planned else (200, chat_json(stub.default_text), {}, 0.0)
                )
                if delay:
                    time.sleep(delay)
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def plan(self, status: int, payload: dict, headers: dict | None = None, delay: float = 0.0) -> None:
        self.planned.append((status, payload, headers or {}, delay))

    def error(self, status: int, message: str = "boom", headers: dict | None = None, delay: float = 0.0) -> None:
        self.plan(status, {"error": {"message": message, "type": "test", "code": None}}, headers, delay)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub() -> Iterator[StubEndpoint]:
    s = StubEndpoint()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the user's cache or real API settings."""
    monkeypatch.setenv("DELM_RLM_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def api_lm(stub: StubEndpoint, **kw: Any) -> LM:
    kw.setdefault("cache", False)
    kw.setdefault("api_key", "sk-test")
    return LM(kw.pop("model", "stub-model"), base_url=stub.base_url, **kw)


# --------------------------------------------------------------------------- requests


async def test_sends_an_openai_chat_request_and_reads_usage(stub: StubEndpoint) -> None:
    stub.plan(200, chat_json("forty-two", prompt_tokens=25, completion_tokens=4))
    lm = api_lm(stub, temperature=0.3, max_tokens=64)
    c = await lm.complete([{"role": "system", "content": "be brief"}, {"role": "user", "content": "q?"}], stop=["\n\n"])
    assert (c.text, c.input_tokens, c.output_tokens, c.cached, c.finish_reason) == ("forty-two", 25, 4, False, "stop")
    req = stub.requests[0]
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["authorization"] == "Bearer sk-test"
    assert req["json"]["model"] == "stub-model"
    assert req["json"]["messages"] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q?"}]
    assert req["json"]["temperature"] == 0.3 and req["json"]["max_tokens"] == 64 and req["json"]["stop"] == ["\n\n"]
    assert lm.usage.total.calls == 1 and lm.usage.total.input_tokens == 25


async def test_endpoint_and_key_default_from_environment(stub: StubEndpoint, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", stub.base_url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    c = await LM("env-model", cache=False).complete("hi")
    assert c.text == "default answer"
    assert stub.requests[0]["headers"]["authorization"] == "Bearer sk-from-env"
    assert stub.requests[0]["json"]["model"] == "env-model"


async def test_routes_send_each_role_to_its_model(stub: StubEndpoint) -> None:
    lm = api_lm(stub, routes={"sub": "small-model"})
    await lm.complete("root question")
    await lm.complete("sub question", role="sub")
    assert [r["json"]["model"] for r in stub.requests] == ["stub-model", "small-model"]
    assert lm.model_for("sub") == "small-model" and lm.model_for("verifier") == "stub-model"
    assert set(lm.usage.by_model) == {"stub-model", "small-model"}


# --------------------------------------------------------------------------- retries and errors


async def test_retries_5xx_with_backoff_then_succeeds(stub: StubEndpoint) -> None:
    stub.error(500, "overloaded")  # no Retry-After: the client's exponential backoff (~0.4-0.5 s)
    stub.plan(200, chat_json("after retry"))
    lm = api_lm(stub)
    t0 = time.monotonic()
    c = await lm.complete("q")
    assert c.text == "after retry"
    assert len(stub.requests) == 2
    assert time.monotonic() - t0 >= 0.3  # it waited before retrying
    assert lm.usage.total.calls == 1 and lm.usage.total.failed_calls == 0


async def test_retries_rate_limit_honouring_retry_after(stub: StubEndpoint) -> None:
    stub.error(429, "slow down", headers={"retry-after-ms": "20"})
    stub.error(503, "unavailable", headers={"retry-after-ms": "20"})
    stub.plan(200, chat_json("finally"))
    c = await api_lm(stub).complete("q")
    assert c.text == "finally" and len(stub.requests) == 3


async def test_retries_a_timed_out_request(stub: StubEndpoint) -> None:
    stub.plan(200, chat_json("too late"), delay=1.5)
    stub.plan(200, chat_json("in time"))
    c = await api_lm(stub, timeout=0.4).complete("q")
    assert c.text == "in time" and len(stub.requests) == 2


async def test_gives_up_after_max_retries_with_the_status(stub: StubEndpoint) -> None:
    for _ in range(3):
        stub.error(503, "down for maintenance", headers={"retry-after-ms": "5"})
    lm = api_lm(stub, max_retries=2)
    with pytest.raises(LMError, match=r"503 after 2 retries: down for maintenance") as info:
        await lm.complete("q")
    assert info.value.status_code == 503
    assert len(stub.requests) == 3
    assert lm.usage.total.failed_calls == 1 and lm.usage.total.calls == 0


async def test_failed_calls_reach_failure_observers_and_the_trace(stub: StubEndpoint, tmp_path: Path) -> None:
    """A call that fails for good is reported to `on_failure` observers of the view and its
    parents (so a run's trace shows it), with the error; answered calls are not. An
    observer that raises does not replace the call's own error."""
    from delm_rlm.trace import Trace, observe_model_calls

    for _ in range(2):
        stub.error(503, "down for maintenance", headers={"retry-after-ms": "5"})
    stub.plan(200, chat_json("fine"))
    root = api_lm(stub, max_retries=1)
    seen: list[tuple[str, dict]] = []
    root.on_failure(lambda failure, tags: seen.append((failure.error, tags)))
    session = root.session()
    trace = Trace(tmp_path / "trace.jsonl")
    observe_model_calls(session, trace)
    session.on_failure(lambda failure, tags: 1 / 0)

    with pytest.raises(LMError, match="503 after 1 retries"):
        await session.complete("q", role="sub", tags={"agent": "a1", "task": "t2"})
    assert (await session.complete("q2")).text == "fine"
    trace.close()

    assert len(seen) == 1 and "503" in seen[0][0] and seen[0][1] == {"agent": "a1", "task": "t2"}
    events = Trace.load(tmp_path / "trace.jsonl")
    assert [e.kind for e in events] == ["model_call_failed", "model_call"]
    failed = events[0]
    assert (failed.agent, failed.task, failed.data["role"]) == ("a1", "t2", "sub")
    assert "down for maintenance" in failed.data["error"] and failed.data["seconds"] >= 0


async def test_timeout_error_says_what_to_change(stub: StubEndpoint) -> None:
    stub.plan(200, chat_json("never seen"), delay=1.5)
    with pytest.raises(LMError, match=r"did not answer within 0.3s \(retries off\): raise timeout"):
        await api_lm(stub, timeout=0.3, max_retries=0).complete("q")


async def test_wrong_key_is_a_clear_error_without_retries(stub: StubEndpoint) -> None:
    stub.error(401, "Incorrect API key provided")
    with pytest.raises(LMError, match=r"rejected the API key \(401\): set OPENAI_API_KEY") as info:
        await api_lm(stub).complete("q")
    assert info.value.status_code == 401 and len(stub.requests) == 1


async def test_unknown_model_is_a_clear_error(stub: StubEndpoint) -> None:
    stub.error(404, "model 'nope' not found")
    with pytest.raises(LMError, match=r"has no model 'nope'.*\(404\).*not found"):
        await api_lm(stub, model="nope").complete("q")


async def test_unreachable_endpoint_says_how_to_fix_it() -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/v1"
    lm = LM("m", base_url=url, api_key="k", max_retries=1, cache=False)
    with pytest.raises(LMError, match=rf"cannot reach {url}: is the server running\? set OPENAI_BASE_URL"):
        await lm.complete("q")
    assert lm.usage.total.failed_calls == 1


async def test_openai_without_key_says_which_variable_to_set() -> None:
    with pytest.raises(LMError, match="set OPENAI_API_KEY"):
        await LM("gpt-4o-mini", cache=False).complete("q")


def test_bad_arguments_are_refused_with_the_reason() -> None:
    with pytest.raises(LMError, match="is the offline local model"):
        LM("local", base_url="http://127.0.0.1:1/v1")
    with pytest.raises(LMError, match="unknown role 'planner'"):
        LM("m", base_url="http://x/v1", routes={"planner": "other"})
    with pytest.raises(LMError, match="temperature"):
        LM("m", temperature=-1)
    with pytest.raises(LMError, match="max_concurrency"):
        LM("m", max_concurrency=0)


async def test_bad_messages_and_role_are_refused(stub: StubEndpoint) -> None:
    lm = api_lm(stub)
    with pytest.raises(LMError, match="unknown role 'boss'"):
        await lm.complete("q", role="boss")
    with pytest.raises(LMError, match="message 0 must be a dict with 'role' and 'content'"):
        await lm.complete([{"text": "q"}])
    assert stub.requests == []


# --------------------------------------------------------------------------- cache


async def test_cache_is_on_at_temperature_zero_and_persists_on_disk(stub: StubEndpoint, tmp_path: Path) -> None:
    stub.plan(200, chat_json("cached answer", prompt_tokens=30, completion_tokens=5))
    first = await api_lm(stub, cache=None).complete("same question")
    # A new LM (as in a re-run of an evaluation) reads the same on-disk cache.
    lm = api_lm(stub, cache=None)
    again = await lm.complete("same question")
    assert len(stub.requests) == 1
    assert (tmp_path / "cache" / "responses.sqlite").is_file()
    assert not first.cached and again.cached
    assert (again.text, again.input_tokens, again.output_tokens) == ("cached answer", 30, 5)
    assert again.seconds == 0.0 and again.cost_usd == 0.0
    u = lm.usage.total
    assert (u.calls, u.cached_calls, u.seconds) == (1, 1, 0.0)


async def test_cache_misses_when_any_part_of_the_request_differs(stub: StubEndpoint, tmp_path: Path) -> None:
    path = tmp_path / "own.sqlite"
    await api_lm(stub, cache=path).complete("q")
    await api_lm(stub, cache=path).complete("q")  # hit
    await api_lm(stub, cache=path).complete("other q")
    await api_lm(stub, cache=path, temperature=0.5).complete("q")
    await api_lm(stub, cache=path).complete("q", max_tokens=7)
    await api_lm(stub, cache=path).complete("q", stop=["END"])
    await api_lm(stub, cache=path, model="other-model").complete("q")
    assert len(stub.requests) == 6
    assert len(ResponseCache(path)) == 6


async def test_no_cache_at_positive_temperature_or_when_disabled(stub: StubEndpoint) -> None:
    lm = api_lm(stub, cache=None, temperature=0.7)
    await lm.complete("q")
    await lm.complete("q")
    off = api_lm(stub, cache=False)
    await off.complete("q")
    await off.complete("q")
    assert len(stub.requests) == 4


async def test_failed_calls_are_not_cached(stub: StubEndpoint, tmp_path: Path) -> None:
    stub.error(400, "bad request")
    lm = api_lm(stub, cache=tmp_path)
    with pytest.raises(LMError, match=r"rejected the request \(400\): bad request"):
        await lm.complete("q")
    assert (await lm.complete("q")).text == "default answer"
    assert len(stub.requests) == 2


_WRITER = """
import sys
from delm_rlm.llm.cache import ResponseCache
from delm_rlm.llm.transport import ChatReply
cache = ResponseCache(sys.argv[1])
for i in range(40):
    cache.put(f"{sys.argv[2]}-{i}", "m", ChatReply(text=str(i), input_tokens=i, output_tokens=1))
"""


def test_cache_file_takes_concurrent_writers_from_several_processes(tmp_path: Path) -> None:
    path = tmp_path / "shared.sqlite"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(path), f"p{n}"], stderr=subprocess.PIPE) for n in range(3)]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err.decode()
    cache = ResponseCache(path)
    assert len(cache) == 120
    hit = cache.get("p2-39")
    assert hit is not None and (hit.text, hit.input_tokens) == ("39", 39)


# --------------------------------------------------------------------------- prices


async def test_cost_from_price_table_and_overrides(stub: StubEndpoint) -> None:
    stub.plan(200, chat_json("a", model="gpt-4o-mini", prompt_tokens=1_000_000, completion_tokens=100_000))
    lm = api_lm(stub, model="gpt-4o-mini-2024-07-18")  # dated variant of a listed model
    c = await lm.complete("q")
    assert c.cost_usd == pytest.approx(0.15 + 0.06)
    stub.plan(200, chat_json("b", prompt_tokens=2_000, completion_tokens=1_000))
    own = api_lm(stub, model="house-model", prices={"house-model": (1.0, 4.0)})
    assert (await own.complete("q")).cost_usd == pytest.approx((2_000 * 1.0 + 1_000 * 4.0) / 1e6)


async def test_unknown_price_counts_tokens_and_reports_unknown_cost(stub: StubEndpoint) -> None:
    lm = api_lm(stub, model="mystery-model-xyz")
    c = await lm.complete("q")
    assert c.cost_usd is None and c.input_tokens == 11
    assert lm.usage.total.cost_usd is None and lm.usage.total.input_tokens == 11
    with pytest.raises(LMError, match="price of model 'mystery-model-xyz' is unknown"):
        await api_lm(stub, model="mystery-model-xyz", budget=Budget(max_usd=1.0)).complete("q")


def test_register_price_and_lookup_rules() -> None:
    assert price_for("delm-test-model-9") is None
    register_price("delm-test-model", 3.0, 6.0)
    assert price_for("delm-test-model-9") is not None and price_for("delm-test-model-9").input_per_mtok == 3.0
    assert price_for("openrouter/delm-test-model").output_per_mtok == 6.0
    assert price_for("delm-test-modelX") is None  # not a variant: no boundary
    assert price_for("gpt-4o-mini").input_per_mtok == 0.15 and price_for("gpt-4o").input_per_mtok == 2.5


def test_usage_addition_keeps_unknown_cost_unknown() -> None:
    a = Usage(calls=1, input_tokens=10, output_tokens=2, seconds=0.5, cost_usd=0.01)
    b = Usage(calls=2, cached_calls=1, input_tokens=5, output_tokens=1, seconds=0.25, cost_usd=0.02)
    s = a + b
    assert (s.calls, s.cached_calls, s.input_tokens, s.output_tokens, s.total_tokens) == (3, 1, 15, 3, 18)
    assert s.seconds == pytest.approx(0.75) and s.cost_usd == pytest.approx(0.03)
    assert (a + Usage(calls=1, cost_usd=None)).cost_usd is None


async def test_a_retried_step_has_the_same_call_key_in_the_trace(tmp_path: Path) -> None:
    """Every model call's trace event carries the request's key (a content hash): the same
    request made again, by a retry here or by another worker redoing a task, shows the same
    key, also when the response cache answers it or is off; another request gets another."""
    from delm_rlm.llm.scripted import ScriptedLM
    from delm_rlm.trace import Trace, observe_model_calls

    for cache in (False, str(tmp_path / "cache.sqlite")):
        lm = ScriptedLM(lambda messages, role: "ok", cache=cache)
        trace = Trace(tmp_path / f"trace-{bool(cache)}.jsonl")
        observe_model_calls(lm, trace)
        await lm.complete("count the lines", tags={"agent": "a1", "task": "t1"})
        await lm.complete("count the lines", tags={"agent": "w.a1", "task": "t1"})
        await lm.complete("count the words", tags={"agent": "a1", "task": "t1"})
        trace.close()
        calls = [e for e in Trace.load(trace.path) if e.kind == "model_call"]
        keys = [e.data.get("call_key") for e in calls]
        assert all(isinstance(k, str) and len(k) == 16 for k in keys), keys
        assert keys[0] == keys[1] != keys[2]
        assert [e.data.get("cached") for e in calls] == ([False] * 3 if not cache else [False, True, False])


async def test_a_session_with_its_own_cache_path_neither_reads_nor_writes_the_shared_cache(tmp_path: Path) -> None:
    """Benchmarks give each method a fresh cache (evals.runner fresh_cache_dir): a reply one
    method paid for must not be served to another as a free, zero-second call."""
    lm = ScriptedLM(lambda messages, role: "reply", cache=tmp_path / "shared.sqlite")
    await lm.complete("same prompt")  # now in the shared cache
    first = lm.session(cache_path=tmp_path / "a.sqlite")
    a1, a2 = await first.complete("same prompt"), await first.complete("same prompt")
    second = lm.session(cache_path=tmp_path / "b.sqlite")
    inner = second.session()  # a session of the view keeps the view's cache
    b1 = await inner.complete("same prompt")
    assert (a1.cached, a2.cached, b1.cached) == (False, True, False)
    assert lm.transport_calls == 3
    assert len(ResponseCache(tmp_path / "shared.sqlite")) == 1
    assert len(ResponseCache(tmp_path / "a.sqlite")) == len(ResponseCache(tmp_path / "b.sqlite")) == 1
    for view in (first, second, inner):
        view.close_cache()
    assert (await lm.complete("same prompt")).cached  # the LM's own cache stays open
