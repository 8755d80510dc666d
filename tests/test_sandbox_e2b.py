"""E2BSandbox against a faithful fake of the SDK (real kernels behind it), plus a live test."""

from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import pytest
import pytest_asyncio

import fake_e2b
from sandbox import E2BSandbox, SandboxError, make_sandbox

try:  # the real SDK, for the fidelity check (imported before the fake takes its name)
    from e2b.sandbox_async.filesystem.filesystem import Filesystem as RealFilesystem
    from e2b_code_interpreter import AsyncSandbox as RealAsyncSandbox
    from e2b_code_interpreter import models as real_models
except ImportError:
    RealAsyncSandbox = None

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module", autouse=True)
def fake_sdk():
    real = sys.modules.get("e2b_code_interpreter")
    sys.modules["e2b_code_interpreter"] = fake_e2b  # type: ignore[assignment]
    yield
    if real is None:
        sys.modules.pop("e2b_code_interpreter", None)
    else:
        sys.modules["e2b_code_interpreter"] = real


async def double(x: int) -> int:
    return 2 * x


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sb(tmp_path_factory: pytest.TempPathFactory):
    box = E2BSandbox(api_key="test-key", workspace=str(tmp_path_factory.mktemp("e2b") / "ws"), timeout=20)
    box.register("double", double)
    async with box:
        yield box


async def test_state_output_and_errors(sb: E2BSandbox) -> None:
    assert sb.isolation == "e2b"
    await sb.execute("x = 20")
    result = await sb.execute("import sys\nprint(x + 1)\nprint('e', file=sys.stderr)\nx * 2")
    assert result.stdout == "21\n40\n" and result.stderr == "e\n"
    result = await sb.execute("1 / 0")
    assert result.error is not None and result.error.startswith("ZeroDivisionError: division by zero")
    assert not result.restarted
    assert (await sb.execute("print(x)")).stdout == "20\n"


async def test_timeout_interrupts_in_kernel_and_keeps_state(sb: E2BSandbox) -> None:
    await sb.execute("kept = 5")
    result = await sb.execute(
        "try:\n    while True: pass\nexcept Exception:\n    print('user code must not swallow it')",
        timeout=1,
    )
    assert result.timed_out and not result.restarted and "swallow" not in result.stdout
    assert (await sb.execute("print(kept)")).stdout == "5\n"
    assert (await sb.execute("import time; time.sleep(1.2); print('default limit back')")).ok


async def test_bridge_through_broker(sb: E2BSandbox) -> None:
    result = await sb.execute("print(double(21))")
    assert result.stdout == "42\n", result
    sb.register("fail", lambda: 1 / 0)
    err = (await sb.execute("fail()")).error or ""
    assert err.startswith("BridgeError: ZeroDivisionError")


async def test_broker_refuses_requests_without_token(sb: E2BSandbox) -> None:
    broker = Path(str(sb.workspace)) / ".delm" / "bridge"
    code = (
        "import json, os, time\n"
        f"d = {str(broker)!r}\n"
        "open(os.path.join(d, 'x.tmp'), 'w').write(json.dumps({'name': 'double', 'args': [1]}))\n"
        "os.rename(os.path.join(d, 'x.tmp'), os.path.join(d, 'x.req'))\n"
        "p = os.path.join(d, 'x.resp')\n"
        "while not os.path.exists(p): time.sleep(0.01)\n"
        "print(json.load(open(p))['error'])"
    )
    result = await sb.execute(code, timeout=10)
    assert result.stdout.startswith("refused"), result


async def test_variables_and_context_through_files(sb: E2BSandbox) -> None:
    await sb.set_variables(items=[3, 4])
    await sb.execute("squares = [i * i for i in items]")
    assert await sb.get_variable("squares") == [9, 16]
    await sb.load_context(["first doc", "second doc"])
    result = await sb.execute("print(len(docs), df.shape, context.count('doc'))")
    assert result.stdout == "2 (2, 2) 2\n"
    assert sb._sbx.calls["files.write"] >= 2


async def test_dead_kernel_is_detected_and_state_reinstalled(sb: E2BSandbox) -> None:
    result = await sb.execute("import os; os._exit(1)")
    assert result.restarted and result.error is not None and result.error.startswith("KernelDied")
    assert (await sb.execute("print(len(docs), double(2))")).stdout == "2 4\n"


async def test_restart_keeps_context_and_bridge(sb: E2BSandbox) -> None:
    await sb.execute("temp = 1")
    await sb.restart()
    assert "NameError" in ((await sb.execute("temp")).error or "")
    assert (await sb.execute("print(docs[0], double(5))")).stdout == "first doc 10\n"


async def test_missing_key_and_missing_sdk_give_clear_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("E2B_API_KEY", raising=False)
    with pytest.raises(SandboxError, match="E2B_API_KEY"):
        await make_sandbox("e2b").start()
    monkeypatch.setitem(sys.modules, "e2b_code_interpreter", None)  # import now fails
    with pytest.raises(ImportError, match=r"pip install 'delm-rlm\[e2b\]'"):
        await E2BSandbox(api_key="k").start()


def _params(fn) -> dict[str, inspect.Parameter]:
    return {n: p for n, p in inspect.signature(fn).parameters.items() if p.kind is not p.VAR_KEYWORD}


async def test_fake_matches_the_real_sdk_surface() -> None:
    if RealAsyncSandbox is None:
        pytest.skip("e2b-code-interpreter is not installed (extra 'e2b')")
    real, RealFs, models = RealAsyncSandbox, RealFilesystem, real_models
    pairs = [
        (fake_e2b.AsyncSandbox.create, real.create),
        (fake_e2b.AsyncSandbox.run_code, real.run_code),
        (fake_e2b.AsyncSandbox.create_code_context, real.create_code_context),
        (fake_e2b.AsyncSandbox.restart_code_context, real.restart_code_context),
        (fake_e2b.Filesystem.write, RealFs.write),
        (fake_e2b.Filesystem.read, RealFs.read),
        (fake_e2b.Filesystem.list, RealFs.list),
        (fake_e2b.Filesystem.exists, RealFs.exists),
        (fake_e2b.Filesystem.remove, RealFs.remove),
        (fake_e2b.Filesystem.rename, RealFs.rename),
        (fake_e2b.Filesystem.make_dir, RealFs.make_dir),
    ]
    for fake_fn, real_fn in pairs:
        fake_p, real_p = _params(fake_fn), _params(real_fn)
        assert list(fake_p) == list(real_p)[: len(fake_p)], (fake_fn, list(fake_p), list(real_p))
        for name, p in fake_p.items():
            assert p.default == real_p[name].default, (fake_fn, name)
    for cls_name in ("Execution", "Logs", "ExecutionError", "Context"):
        fake_init, real_init = _params(getattr(fake_e2b, cls_name)), _params(getattr(models, cls_name))
        assert [n for n in fake_init if n != "kwargs"] == [n for n in real_init if n != "kwargs"][: len(fake_init)]
    import e2b

    assert issubclass(e2b.TimeoutException, e2b.SandboxException)


@pytest.mark.e2b_live
@pytest.mark.skipif(not os.environ.get("E2B_API_KEY"), reason="set E2B_API_KEY to run against the real E2B cloud")
async def test_live_e2b_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "e2b_code_interpreter", raising=False)
    async with E2BSandbox(timeout=60) as box:
        box.register("double", double)
        assert (await box.execute("x = 2\nprint(x + 1)")).stdout == "3\n"
        assert (await box.execute("print(double(4))")).stdout == "8\n"
        assert (await box.execute("while True: pass", timeout=2)).timed_out
        assert (await box.execute("print(x)")).stdout == "2\n"
        await box.load_context(["a", "b"])
        assert (await box.execute("print(len(docs))")).stdout == "2\n"
