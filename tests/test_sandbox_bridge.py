"""The bridge: REPL code calls host functions synchronously; only with the sandbox's token."""

from __future__ import annotations

import asyncio
import json

import pytest
import pytest_asyncio

from sandbox import KernelSandbox

pytestmark = pytest.mark.asyncio(loop_scope="module")

CALLS: list[tuple[str, tuple]] = []


async def llm_query(prompt: str) -> str:
    CALLS.append(("llm_query", (prompt,)))
    await asyncio.sleep(0.01)  # a real await: the host loop serves this while the cell blocks
    return f"answer to {prompt}"


def add(a: int, b: int = 0) -> int:
    CALLS.append(("add", (a, b)))
    return a + b


def fails() -> None:
    raise RuntimeError("model endpoint unreachable")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb():
    box = KernelSandbox(timeout=20)
    box.register("llm_query", llm_query)  # before start
    box.register("add", add)
    box.register("fails", fails)
    async with box:
        yield box


async def test_sync_and_async_host_functions_round_trip(sb: KernelSandbox) -> None:
    result = await sb.execute("r = llm_query('q1')\nprint(r)\nprint(add(2, b=3))")
    assert result.stdout == "answer to q1\n5\n", result
    assert ("llm_query", ("q1",)) in CALLS and ("add", (2, 3)) in CALLS


async def test_host_exception_raises_bridge_error_in_repl(sb: KernelSandbox) -> None:
    result = await sb.execute(
        "try:\n    fails()\nexcept BridgeError as e:\n    print('caught', e)"
    )
    assert result.stdout == "caught RuntimeError: model endpoint unreachable\n"
    assert (await sb.execute("fails()")).error.startswith("BridgeError: RuntimeError")


async def test_call_without_token_is_refused(sb: KernelSandbox) -> None:
    before = len(CALLS)
    code = (
        "import socket, json, _delm_bridge\n"
        "def raw(msg):\n"
        "    s = socket.socket(socket.AF_UNIX); s.connect(_delm_bridge.address)\n"
        "    s.sendall(json.dumps(msg).encode() + b'\\n'); out = s.makefile().read(); s.close()\n"
        "    return json.loads(out)\n"
        "print(json.dumps([raw({'name': 'add', 'args': [1, 1]}),\n"
        "                  raw({'token': 'guess', 'name': 'add', 'args': [1, 1]})]))"
    )
    result = await sb.execute(code)
    replies = json.loads(result.stdout)
    assert all("refused" in r["error"] for r in replies), replies
    assert len(CALLS) == before  # the host function never ran


async def test_host_side_connection_without_token_is_refused(sb: KernelSandbox) -> None:
    assert sb.private_dir is not None
    reader, writer = await asyncio.open_unix_connection(str(sb.private_dir / "bridge.sock"))
    writer.write(json.dumps({"token": "", "name": "add", "args": [1]}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline())
    writer.close()
    assert "refused" in reply["error"]
    assert (sb.private_dir / "bridge.sock").stat().st_mode & 0o077 == 0


async def test_registered_after_start_and_survives_restart(sb: KernelSandbox) -> None:
    sb.register("shout", lambda s: s.upper())
    assert (await sb.execute("print(shout('hi'))")).stdout == "HI\n"
    await sb.restart()
    result = await sb.execute("print(shout('again'), add(1, 1))")
    assert result.stdout == "AGAIN 2\n", result


async def test_bad_arguments_and_results_give_bridge_errors(sb: KernelSandbox) -> None:
    sb.register("give_set", lambda: {1, 2})
    err = (await sb.execute("add(object())")).error or ""
    assert err.startswith("BridgeError") and "JSON-serializable" in err
    err = (await sb.execute("give_set()")).error or ""
    assert err.startswith("BridgeError") and "not JSON-serializable" in err
    with pytest.raises(ValueError):
        sb.register("_private", add)
    with pytest.raises(ValueError):
        sb.register("not a name", add)
    with pytest.raises(TypeError):
        sb.register("thing", 42)  # type: ignore[arg-type]


async def test_many_concurrent_calls_from_threads(sb: KernelSandbox) -> None:
    result = await sb.execute(
        "from concurrent.futures import ThreadPoolExecutor\n"
        "with ThreadPoolExecutor(8) as pool:\n"
        "    out = list(pool.map(llm_query, [f'p{i}' for i in range(32)]))\n"
        "print(out[0], out[31], len(out))"
    )
    assert result.stdout == "answer to p0 answer to p31 32\n", result


async def test_two_sandboxes_have_different_tokens(sb: KernelSandbox) -> None:
    other = KernelSandbox()
    assert other._token != sb._token and len(sb._token) >= 32


async def test_cell_timeout_leaves_out_time_spent_in_tool_calls(sb: KernelSandbox) -> None:
    # A cell that waits on slow model calls (classify over many lines) is not cut off: the
    # limit is on its own code. Its own runaway code still is.
    async def slow_model(prompt: str) -> str:
        await asyncio.sleep(0.8)
        return prompt.upper()

    sb.register("slow_model", slow_model)
    before = sb.tool_seconds()
    r = await sb.execute("out = [slow_model(w) for w in ['a', 'b', 'c']]\nprint(out)", timeout=1.0)
    assert r.ok and not r.timed_out, r.error
    assert r.stdout.strip() == "['A', 'B', 'C']" and r.duration_s > 2.0
    assert sb.tool_seconds() - before >= 2.3
    r = await sb.execute("slow_model('x')\nwhile True:\n    pass", timeout=1.0)
    assert r.timed_out and "model calls not counted" in (r.error or "")
    assert 1.7 < r.duration_s < 6.0


def hanging_call() -> tuple[dict[str, asyncio.Event], object]:
    """A host function that never answers, with events for 'it started' and 'it was cancelled'."""
    seen = {"started": asyncio.Event(), "cancelled": asyncio.Event()}

    async def hang(prompt: str = "") -> str:
        seen["started"].set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            seen["cancelled"].set()
            raise
        return "never"

    return seen, hang


async def test_a_call_whose_caller_hangs_up_is_cancelled(sb: KernelSandbox) -> None:
    # An interrupted cell or a killed kernel closes its end: the model call it was waiting for
    # must stop, not run on for minutes with nobody to read the answer.
    seen, hang = hanging_call()
    sb.register("hang", hang)
    assert sb.private_dir is not None
    reader, writer = await asyncio.open_unix_connection(str(sb.private_dir / "bridge.sock"))
    writer.write(json.dumps({"token": sb._token, "name": "hang", "args": ["q"]}).encode() + b"\n")
    await writer.drain()
    await asyncio.wait_for(seen["started"].wait(), 10)
    writer.close()
    await asyncio.wait_for(seen["cancelled"].wait(), 10)
    assert (await sb.execute("print(add(2, 2))")).stdout == "4\n"  # the bridge serves on


async def test_closing_a_sandbox_cancels_the_host_calls_its_cell_left_running() -> None:
    # A team run cancelled on its timeout closes its sandboxes; a bridge call still in flight
    # (an llm_query) must be cancelled with them, not keep the model busy afterwards.
    seen, hang = hanging_call()
    box = KernelSandbox(timeout=20)
    box.register("hang", hang)
    await box.start()
    try:
        cell = asyncio.create_task(box.execute("hang('a long prompt')"))
        await asyncio.wait_for(seen["started"].wait(), 20)
        cell.cancel()
        with pytest.raises(asyncio.CancelledError):
            await cell
    finally:
        await asyncio.wait_for(box.close(), 30)
    assert seen["cancelled"].is_set()


async def test_closing_with_a_call_in_flight_logs_no_error() -> None:
    # asyncio logs a cancelled connection handler as "Exception in callback": a closed
    # sandbox's cancelled calls must end quietly.
    seen, hang = hanging_call()
    box = KernelSandbox(timeout=20)
    box.register("hang", hang)
    loop = asyncio.get_running_loop()
    errors: list[dict] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    try:
        await box.start()
        cell = asyncio.create_task(box.execute("hang()"))
        await asyncio.wait_for(seen["started"].wait(), 20)
        await asyncio.wait_for(box.close(), 30)
        cell.cancel()
        await asyncio.gather(cell, return_exceptions=True)
        await asyncio.sleep(0.05)  # done-callbacks run on the next loop turns
    finally:
        loop.set_exception_handler(previous)
    assert seen["cancelled"].is_set()
    assert errors == []
