"""Gateway mechanics through ScriptedLM: usage, roles, budgets, sessions, observers,
concurrency and cache. ScriptedLM replaces only the transport, so these are the LM's own
accounting paths."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm.errors import BudgetExceeded, ConfigError, LMError
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.roles import BUILTIN_ROLES, register_role, role_names
from delm_rlm.llm.tokens import approx_tokens
from delm_rlm.llm.usage import Budget, Completion, Usage
from delm_rlm.llm.scripted import SCRIPTED_ENV, ScriptedLM, ScriptedTransport, load_script, scripted_from_env
from delm_rlm.llm.transport import ChatReply, ChatRequest, Slots, Transport


async def test_list_script_answers_in_order_then_says_it_is_exhausted() -> None:
    lm = ScriptedLM(["one", "two"])
    assert [(await lm.complete("q")).text for _ in range(2)] == ["one", "two"]
    with pytest.raises(LMError, match="script exhausted: all 2 answers were used and call 3"):
        await lm.complete("q")
    u = lm.usage.total
    assert (u.calls, u.failed_calls) == (2, 1)


async def test_function_script_sees_messages_and_role() -> None:
    seen: list[tuple[str, str]] = []

    def answer(messages: list[dict], role: str) -> str:
        seen.append((messages[-1]["content"], role))
        return f"{role}:{messages[-1]['content'].upper()}"

    lm = ScriptedLM(answer)
    assert (await lm.complete("abc", role="sub")).text == "sub:ABC"
    assert (await lm.complete([{"role": "system", "content": "s"}, {"role": "user", "content": "x"}])).text == "root:X"
    assert seen == [("abc", "sub"), ("x", "root")]


async def test_async_function_and_failures_become_lm_errors() -> None:
    async def answer(messages: list[dict], role: str) -> str:
        await asyncio.sleep(0)
        if "fail" in messages[-1]["content"]:
            raise ValueError("scripted failure")
        return "ok"

    lm = ScriptedLM(answer)
    assert (await lm.complete("fine")).text == "ok"
    with pytest.raises(LMError, match="raised ValueError: scripted failure"):
        await lm.complete("please fail")
    with pytest.raises(LMError, match="must return a str, got int"):
        await ScriptedLM(lambda m, r: 42).complete("q")
    assert lm.usage.by_role["root"].failed_calls == 1


def test_bad_script_is_refused() -> None:
    with pytest.raises(LMError, match="list of answers or a function"):
        ScriptedLM("just a string")  # type: ignore[arg-type]
    with pytest.raises(LMError, match="item 1 is int"):
        ScriptedLM(["a", 2])  # type: ignore[list-item]


async def test_usage_by_role_and_token_counts_are_the_documented_approximation() -> None:
    lm = ScriptedLM(lambda m, r: "the answer is 42")
    c = await lm.complete([{"role": "user", "content": "How many lines?"}], role="sub")
    assert c.input_tokens == approx_tokens("How many lines?") + 4 + 3
    assert c.output_tokens == approx_tokens("the answer is 42") == 5  # the, answer, is, 4, 2: digits one by one
    await lm.complete("x", role="verifier")
    await lm.complete("y", role="verifier")
    by_role = lm.usage.by_role
    assert set(by_role) == {"sub", "verifier"}
    assert by_role["verifier"].calls == 2 and by_role["sub"].input_tokens == c.input_tokens
    assert lm.usage.total.calls == 3


def test_approx_tokens_counts_digits_words_and_punctuation() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("12345") == 5
    assert approx_tokens("hello, world!") == 4
    assert approx_tokens("internationalization") == 1 + 19 // 6
    assert approx_tokens("a\nb") == 3


async def test_stop_strings_and_max_tokens_shape_the_reply() -> None:
    lm = ScriptedLM(lambda m, r: "first part END second part")
    c = await lm.complete("q", stop=["END"])
    assert (c.text, c.finish_reason) == ("first part ", "stop")
    long = await ScriptedLM(lambda m, r: "word " * 50).complete("q", max_tokens=5)
    assert long.finish_reason == "length" and long.output_tokens == 5 and approx_tokens(long.text) <= 5


async def test_prices_give_costs_to_scripted_calls() -> None:
    lm = ScriptedLM(lambda m, r: "ok", prices={"scripted": (1000.0, 2000.0)})
    c = await lm.complete("hello there")
    assert c.cost_usd == pytest.approx((c.input_tokens * 1000 + c.output_tokens * 2000) / 1e6)
    assert lm.usage.total.cost_usd == pytest.approx(c.cost_usd)
    assert (await ScriptedLM(["free"]).complete("q")).cost_usd == 0.0


# --------------------------------------------------------------------------- routing


async def test_route_to_a_model_name_and_to_another_lm() -> None:
    verifier = ScriptedLM(lambda m, r: "ADMIT", model="judge-model")
    lm = ScriptedLM(lambda m, r: "main", routes={"sub": "small-model", "verifier": verifier})
    sub = await lm.complete("q", role="sub")
    judged = await lm.complete("claim?", role="verifier")
    assert (sub.text, sub.model) == ("main", "small-model")
    assert (judged.text, judged.model) == ("ADMIT", "judge-model")
    assert lm.model_for("verifier") == "judge-model" and lm.model_for("root") == "scripted"
    # The routed LM is only a transport: usage and budgets are counted where the call was made.
    assert lm.usage.by_role["verifier"].calls == 1 and verifier.usage.total.calls == 0
    assert len(verifier.received) == 1


# --------------------------------------------------------------------------- budgets


async def test_call_budget_stops_before_the_call() -> None:
    lm = ScriptedLM(lambda m, r: "a", budget=Budget(max_calls=2))
    await lm.complete("1")
    await lm.complete("2")
    with pytest.raises(BudgetExceeded) as info:
        await lm.complete("3")
    e = info.value
    assert (e.limit, e.used, e.allowed, e.partial_answer) == ("calls", 2, 2, None)
    assert len(lm.received) == 2  # the third never reached the model
    e.partial_answer = "best so far"  # agents attach their partial answer
    assert "calls used 2 of 2" in str(e)


async def test_token_budget_counts_input_and_output() -> None:
    lm = ScriptedLM(lambda m, r: "word " * 10, budget=Budget(max_tokens=40))
    calls = 0
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(10):
            await lm.complete("count these words please")
            calls += 1
    assert info.value.limit == "tokens"
    per_call = lm.usage.total.total_tokens / calls
    assert calls == -(-40 // int(per_call))  # stops at the first call once used >= allowed
    assert info.value.used >= 40


async def test_dollar_budget() -> None:
    lm = ScriptedLM(lambda m, r: "ok", prices={"scripted": (100_000.0, 0.0)}, budget=Budget(max_usd=2.0))
    with pytest.raises(BudgetExceeded) as info:
        for _ in range(100):
            await lm.complete("four words of prompt")  # 4 + 4 + 3 = 11 tokens x $0.1 = $1.1 per call
    assert info.value.limit == "usd" and lm.usage.total.calls == 2
    assert info.value.used == pytest.approx(2.2)


async def test_seconds_budget_is_measured_from_the_session_start_and_cuts_a_slow_call() -> None:
    lm = ScriptedLM(lambda m, r: "slow", delay=5.0)
    run = lm.session(Budget(max_seconds=0.3))
    t0 = time.monotonic()
    with pytest.raises(BudgetExceeded) as info:
        await run.complete("q")
    assert info.value.limit == "seconds" and info.value.allowed == 0.3
    assert time.monotonic() - t0 < 2.0
    assert run.usage.total.failed_calls == 1
    fast = ScriptedLM(lambda m, r: "x").session(Budget(max_seconds=0.05))
    await fast.complete("q")
    await asyncio.sleep(0.06)
    with pytest.raises(BudgetExceeded, match="seconds"):
        await fast.complete("q")


# --------------------------------------------------------------------------- sessions


async def test_session_usage_counts_in_parents_and_parent_budget_binds_sessions() -> None:
    root = ScriptedLM(lambda m, r: "ok", budget=Budget(max_calls=5))
    run = root.session(Budget(max_calls=3))
    agent_a, agent_b = run.session(), run.session()
    await agent_a.complete("a1")
    await agent_a.complete("a2", role="sub")
    await agent_b.complete("b1")
    assert (agent_a.usage.total.calls, agent_b.usage.total.calls) == (2, 1)
    assert run.usage.total.calls == 3 and root.usage.total.calls == 3
    assert root.usage.by_role["sub"].calls == 1
    with pytest.raises(BudgetExceeded, match="calls used 3 of 3"):
        await agent_b.complete("b2")  # agent_b's own budget is unlimited; its run's is spent
    other_run = root.session()
    await other_run.complete("c1")
    await other_run.complete("c2")
    with pytest.raises(BudgetExceeded, match="calls used 5 of 5"):
        await other_run.complete("c3")


async def test_remaining_is_bounded_by_every_parent() -> None:
    root = ScriptedLM(lambda m, r: "ok", budget=Budget(max_calls=10, max_tokens=1000))
    run = root.session(Budget(max_calls=4))
    await run.complete("hello")
    left = run.remaining()
    assert left.max_calls == 3
    assert left.max_tokens == 1000 - run.usage.total.total_tokens
    assert left.max_usd is None and left.max_seconds is None
    child = run.session(run.remaining())  # handing the rest down to a recursive call
    for _ in range(3):
        await child.complete("x")
    assert child.remaining().max_calls == 0 and root.remaining().max_calls == 6


async def test_sessions_share_the_script_position() -> None:
    lm = ScriptedLM(["a", "b", "c"])
    s1, s2 = lm.session(), lm.session()
    assert [(await s1.complete("q")).text, (await s2.complete("q")).text, (await lm.complete("q")).text] == ["a", "b", "c"]


# --------------------------------------------------------------------------- observers


async def test_observers_get_completion_and_tags_including_from_sessions() -> None:
    lm = ScriptedLM(lambda m, r: "seen")
    at_root: list[tuple[Completion, dict]] = []
    at_agent: list[tuple[Completion, dict]] = []
    lm.on_call(lambda c, tags: at_root.append((c, tags)))
    agent = lm.session()
    agent.on_call(lambda c, tags: at_agent.append((c, tags)))
    await agent.complete("q", role="sub", tags={"agent": "a1", "task": "t3"})
    await lm.complete("q2")
    assert [(c.text, c.role, t) for c, t in at_root] == [("seen", "sub", {"agent": "a1", "task": "t3"}), ("seen", "root", {})]
    assert len(at_agent) == 1  # a session's observer sees only its own calls


# --------------------------------------------------------------------------- concurrency


async def test_concurrency_is_bounded_and_shared_by_sessions() -> None:
    in_flight = 0
    peak = 0

    async def answer(messages: list[dict], role: str) -> str:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.05)
        in_flight -= 1
        return "done"

    lm = ScriptedLM(answer, max_concurrency=2)
    sessions = [lm.session() for _ in range(3)]
    t0 = time.monotonic()
    out = await asyncio.gather(*(s.complete(f"q{i}") for i in range(3) for s in sessions))
    assert len(out) == 9 and peak == 2
    assert time.monotonic() - t0 >= 0.05 * 9 / 2 - 0.01


def test_concurrency_limit_holds_across_threads_and_event_loops() -> None:
    lock = threading.Lock()
    in_flight = 0
    peak = 0

    async def answer(messages: list[dict], role: str) -> str:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        await asyncio.sleep(0.03)
        with lock:
            in_flight -= 1
        return "ok"

    lm = ScriptedLM(answer, max_concurrency=1)

    def worker() -> None:  # like the sandbox bridge: its own thread, its own loop
        async def calls() -> None:
            await asyncio.gather(*(lm.complete(f"q{i}") for i in range(4)))

        asyncio.run(calls())

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert peak == 1 and lm.usage.total.calls == 12


async def test_cancelled_waiter_does_not_leak_a_slot() -> None:
    lm = ScriptedLM(lambda m, r: "ok", delay=0.05, max_concurrency=1)
    first = asyncio.create_task(lm.complete("a"))
    waiting = asyncio.create_task(lm.complete("b"))
    await asyncio.sleep(0.01)
    waiting.cancel()
    await first
    with pytest.raises(asyncio.CancelledError):
        await waiting
    # if the cancelled waiter had kept the slot this would hang
    assert (await asyncio.wait_for(lm.complete("c"), 2.0)).text == "ok"


# --------------------------------------------------------------------------- cache


async def test_cache_second_identical_call_makes_no_model_call(tmp_path: Path) -> None:
    lm = ScriptedLM(lambda m, r: f"answer to {m[-1]['content']}", cache=tmp_path)
    a = await lm.complete("q1")
    b = await lm.complete("q1", role="sub")  # the role is not part of the request
    c = await lm.complete("q2")
    assert (a.cached, b.cached, c.cached) == (False, True, False)
    assert b.text == a.text and len(lm.received) == 2
    warm = ScriptedLM(lambda m, r: "should not be asked", cache=tmp_path)
    again = await warm.complete("q1")
    assert again.cached and again.text == "answer to q1" and warm.received == []
    assert warm.usage.total.cached_calls == 1


async def test_cached_calls_still_count_against_call_budgets(tmp_path: Path) -> None:
    lm = ScriptedLM(lambda m, r: "x", cache=tmp_path)
    await lm.complete("q")
    run = lm.session(Budget(max_calls=1))
    await run.complete("q")
    with pytest.raises(BudgetExceeded):
        await run.complete("q")


# --------------------------------------------------------------------------- transports and roles


class EchoTransport:
    """A transport written against the public protocol only: answers with the prompt
    reversed, imposes its own concurrency limit, and counts what it was sent."""

    def __init__(self, limit: int | None = None) -> None:
        self.sent: list[ChatRequest] = []
        self.prepared = 0
        self.closed = 0
        self.in_flight = 0
        self.peak = 0
        self._slots = Slots(limit) if limit is not None else None

    @property
    def endpoint_id(self) -> str:
        return "echo-test-endpoint"

    @property
    def base_url(self) -> str | None:
        return "echo://here"

    @property
    def timeout(self) -> float:
        return 30.0

    @property
    def slots(self) -> Slots | None:
        return self._slots

    async def prepare(self) -> None:
        self.prepared += 1

    async def send(self, request: ChatRequest) -> ChatReply:
        self.sent.append(request)
        self.in_flight += 1
        self.peak = max(self.peak, self.in_flight)
        await asyncio.sleep(0.02)
        self.in_flight -= 1
        text = str(request.messages[-1]["content"])[::-1]
        return ChatReply(text=text, input_tokens=7, output_tokens=len(text), finish_reason="stop")

    async def aclose(self) -> None:
        self.closed += 1


async def test_an_lm_holds_any_transport_fitting_the_protocol(tmp_path: Path) -> None:
    echo = EchoTransport()
    assert isinstance(echo, Transport) and isinstance(ScriptedTransport(["x"]), Transport)
    lm = LM("echo-model", transport=echo, cache=tmp_path, prices={"echo-model": (1.0, 1.0)}, budget=Budget(max_calls=3))
    assert lm.transport is echo and lm.base_url == "echo://here" and lm.timeout == 30.0
    c = await lm.complete("abc", role="sub", max_tokens=9, stop=["\n"])
    assert (c.text, c.input_tokens, c.output_tokens, c.cached) == ("cba", 7, 3, False)
    assert c.cost_usd == pytest.approx(10 / 1e6)
    sent = echo.sent[0]
    assert (sent.model, sent.role, sent.max_tokens, sent.stop, sent.temperature) == ("echo-model", "sub", 9, ("\n",), 0.0)
    assert echo.prepared == 1
    again = await LM("echo-model", transport=EchoTransport(), cache=tmp_path).complete("abc", max_tokens=9, stop=["\n"])
    assert again.cached and again.text == "cba"  # the cache key names the transport's endpoint_id
    await lm.complete("d")
    await lm.complete("e")
    with pytest.raises(BudgetExceeded, match="calls used 3 of 3"):
        await lm.complete("f")
    assert len(echo.sent) == 3 and lm.usage.by_role["sub"].calls == 1
    await lm.aclose()
    assert echo.closed == 1 and "echo-test-endpoint" in repr(lm)


async def test_a_transports_own_slots_bind_every_lm_using_it() -> None:
    echo = EchoTransport(limit=1)
    lms = [LM("echo-model", transport=echo, cache=False, max_concurrency=4) for _ in range(2)]
    await asyncio.gather(*(lm.complete(f"q{i}") for i in range(3) for lm in lms))
    assert echo.peak == 1 and len(echo.sent) == 6
    free = EchoTransport()  # no limit of its own: the LM's max_concurrency holds
    lm = LM("m", transport=free, cache=False, max_concurrency=2)
    await asyncio.gather(*(lm.complete(f"q{i}") for i in range(6)))
    assert free.peak == 2


def test_something_that_is_no_transport_is_refused() -> None:
    with pytest.raises(ConfigError, match="transport must fit delm_rlm.llm.Transport"):
        LM("m", transport=object())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="concurrency limit must be >= 1"):
        Slots(0)


async def test_a_registered_role_is_routed_and_counted_like_a_built_in_one() -> None:
    assert set(BUILTIN_ROLES) <= set(role_names())
    with pytest.raises(LMError, match="unknown role 'delm-test-critic'.*register_role"):
        await ScriptedLM(["x"]).complete("q", role="delm-test-critic")
    role = register_role("delm-test-critic", "a role only this test uses")
    assert register_role("delm-test-critic") is role and "delm-test-critic" in role_names()
    critic = ScriptedLM(lambda m, r: f"{r} says no", model="critic-model")
    lm = ScriptedLM(lambda m, r: "main", routes={"delm-test-critic": critic})
    c = await lm.complete("claim?", role="delm-test-critic")
    assert (c.text, c.model, c.role) == ("delm-test-critic says no", "critic-model", "delm-test-critic")
    assert lm.usage.by_role["delm-test-critic"].calls == 1 and lm.model_for("delm-test-critic") == "critic-model"
    with pytest.raises(ConfigError, match="role name"):
        register_role(" padded ")


# --------------------------------------------------------------------------- test hook


SCRIPT = ["from the env hook"]


def test_scripted_from_env_loads_module_attribute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(SCRIPTED_ENV, raising=False)
    assert scripted_from_env() is None
    monkeypatch.setenv(SCRIPTED_ENV, f"{__name__}:SCRIPT")
    lm = scripted_from_env()
    assert lm is not None and asyncio.run(lm.complete("q")).text == "from the env hook"
    with pytest.raises(LMError, match="module:attribute"):
        load_script("no_colon")
    with pytest.raises(LMError, match="has no attribute 'nope'"):
        load_script(f"{__name__}:nope")


# --------------------------------------------------------------------------- invariants


call_plan = st.lists(
    st.tuples(st.integers(min_value=0, max_value=2), st.sampled_from(BUILTIN_ROLES), st.text(max_size=40)),
    max_size=25,
)


@settings(max_examples=40, deadline=None)
@given(call_plan)
def test_ledgers_add_up_for_any_sequence_of_calls(plan: list[tuple[int, str, str]]) -> None:
    """Whatever the calls, a view's total is the sum of its roles and of its completions, and
    the root's total is the sum of its sessions'."""
    lm = ScriptedLM(lambda m, r: m[-1]["content"][::-1] or "-", prices={"scripted": (3.0, 7.0)})
    sessions = [lm.session() for _ in range(3)]
    done: list[Completion] = []

    async def run() -> None:
        for which, role, prompt in plan:
            done.append(await sessions[which].complete(prompt or "?", role=role))

    asyncio.run(run())
    total = lm.usage.total
    by_role_sum = sum(lm.usage.by_role.values(), Usage())
    sessions_sum = sum((s.usage.total for s in sessions), Usage())
    for other in (by_role_sum, sessions_sum):
        assert (other.calls, other.input_tokens, other.output_tokens) == (total.calls, total.input_tokens, total.output_tokens)
        assert other.cost_usd == pytest.approx(total.cost_usd)
    assert total.calls == len(plan)
    assert total.output_tokens == sum(c.output_tokens for c in done)
    assert total.cost_usd == pytest.approx(sum(c.cost_usd or 0 for c in done))


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=6), st.integers(min_value=0, max_value=6))
def test_the_tighter_of_session_and_parent_call_budget_wins(own: int, parent: int) -> None:
    root = ScriptedLM(lambda m, r: "ok", budget=Budget(max_calls=parent))
    run = root.session(Budget(max_calls=own))

    async def go() -> int:
        n = 0
        try:
            while n < 20:
                await run.complete("q")
                n += 1
        except BudgetExceeded:
            pass
        return n

    assert asyncio.run(go()) == min(own, parent)


async def test_concurrent_calls_cannot_overrun_a_call_budget() -> None:
    """llm_query_batched fires many calls at once: exactly the budgeted number get through."""
    lm = ScriptedLM(lambda m, r: "ok", delay=0.02, max_concurrency=8)
    run = lm.session(Budget(max_calls=3))
    results = await asyncio.gather(*(run.complete(f"q{i}") for i in range(8)), return_exceptions=True)
    answered = [r for r in results if isinstance(r, Completion)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert (len(answered), len(refused)) == (3, 5)
    assert run.usage.total.calls == 3 and len(lm.received) == 3
    assert (await lm.session(Budget(max_calls=1)).complete("later")).text == "ok"  # nothing left reserved
