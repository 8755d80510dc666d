"""E2BSandbox: the same protocol over an E2B cloud sandbox (``e2b-code-interpreter``).

Only the transport differs from the local kernel; state, variables, context and bridge logic
are the base class's. Specifics:

- The SDK is imported when the sandbox starts, with an install hint when it is missing.
- Cells run in a code context of their own (``create_code_context``), so ``restart()`` is
  ``restart_code_context``.
- E2B has no interrupt call, so the per-cell wall clock is enforced inside the kernel: a
  ``SIGALRM`` timer armed around every cell raises ``CellTimeout`` (a ``BaseException``, so
  user code's ``except Exception`` does not swallow it); the variables survive. If even that
  fails, the SDK's own timeout (cell limit + margin) ends the call and the context is restarted.
- The bridge is a broker: the REPL writes each call as a request file in
  ``<workspace>/.delm/bridge`` and waits for the answer file; while a cell runs the host
  polls that directory through the SDK's filesystem calls and writes the answers back.
- A kernel that died under the server is noticed by the bridge module missing after an
  error; the cell then reports ``restarted=True`` and everything is re-installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import time
from pathlib import PurePosixPath
from types import ModuleType
from typing import Any, Literal

from sandbox.base import INTERNAL_DIR, ExecResult, Sandbox, SandboxError, format_error

INSTALL_HINT = "E2BSandbox needs the e2b extra: pip install 'delm-rlm[e2b]'"
SDK_MARGIN = 30.0  # the SDK's own timeout beyond the in-kernel cell limit
BROKER = "bridge"

_TIMER = r'''
def __delm_install_timer(limit, memory_limit):
    import resource, signal, sys, types

    class CellTimeout(BaseException):
        """The cell ran past its wall-clock limit."""

    state = {"limit": limit}

    def on_alarm(signum, frame):
        raise CellTimeout(f"the cell ran longer than {state['limit']:g} s")

    signal.signal(signal.SIGALRM, on_alarm)
    ip = get_ipython()
    ip.events.register("pre_run_cell", lambda *a: signal.setitimer(signal.ITIMER_REAL, state["limit"]))
    ip.events.register("post_run_cell", lambda *a: signal.setitimer(signal.ITIMER_REAL, 0))
    if memory_limit:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit, memory_limit))
    module = types.ModuleType("_delm_timer")
    module.state = state
    sys.modules["_delm_timer"] = module

__delm_install_timer(%(limit)r, %(memory_limit)r)
del __delm_install_timer
'''


def import_sdk() -> ModuleType:
    try:
        return importlib.import_module("e2b_code_interpreter")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT} ({err})") from err


class E2BSandbox(Sandbox):
    """A stateful Python REPL in an E2B cloud sandbox."""

    isolation = "e2b"

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        api_key: str | None = None,
        template: str | None = None,
        workspace: str = "/home/user/delm",
        memory_limit: int | None = None,
        lifetime_s: int = 3600,
        poll_interval: float = 0.05,
    ) -> None:
        super().__init__(timeout=timeout)
        if not workspace.startswith("/"):
            raise ValueError(f"workspace must be an absolute path inside the sandbox, got {workspace!r}")
        self.workspace = PurePosixPath(workspace)
        self.memory_limit = memory_limit
        self.lifetime_s = lifetime_s
        self.poll_interval = poll_interval
        self._api_key = api_key
        self._template = template
        self._sdk: ModuleType | None = None
        self._sbx: Any = None
        self._ctx: Any = None
        self._limit = timeout  # the cell limit currently armed inside the kernel

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _backend_start(self) -> None:
        self._sdk = import_sdk()
        key = self._api_key or os.environ.get("E2B_API_KEY")
        if not key:
            raise SandboxError("E2BSandbox needs an API key: set E2B_API_KEY or pass api_key=...")
        kwargs: dict[str, Any] = {"timeout": self.lifetime_s, "api_key": key}
        if self._template:
            kwargs["template"] = self._template
        self._sbx = await self._sdk.AsyncSandbox.create(**kwargs)
        try:
            await self._sbx.files.make_dir(str(self.workspace / INTERNAL_DIR / BROKER))
            self._ctx = await self._sbx.create_code_context(cwd=str(self.workspace), language="python")
        except BaseException:
            await self._backend_close()
            raise
        self._limit = self.timeout

    async def _backend_close(self) -> None:
        if self._sbx is not None:
            with contextlib.suppress(Exception):
                await self._sbx.kill()
        self._sbx = self._ctx = None

    async def _backend_restart(self) -> None:
        await self._sbx.restart_code_context(self._ctx)
        self._limit = self.timeout

    def _setup_code(self) -> str:
        return _TIMER % {"limit": float(self._limit), "memory_limit": self.memory_limit}

    # ---- one cell -----------------------------------------------------------------------------

    async def _run_cell(self, code: str, timeout: float) -> ExecResult:
        if self._sbx is None:
            raise SandboxError("the sandbox is closed")
        started = time.perf_counter()
        if timeout != self._limit:
            await self._sdk_run(f"import _delm_timer\n_delm_timer.state['limit'] = {float(timeout)!r}", 30.0)
            self._limit = timeout
        poller = asyncio.create_task(self._serve_broker())
        result = ExecResult()
        try:
            execution = await self._sdk_run(code, timeout + SDK_MARGIN)
        except self._sdk.TimeoutException:
            result.timed_out = True
            result.restarted = True
            result.error = (f"TimeoutError: the cell ran longer than {timeout:g} s and did not stop; "
                            f"the code context was restarted and all variables were lost")
        except Exception as err:  # the SDK lost the kernel or the sandbox mid-cell
            result.error = f"KernelDied: {type(err).__name__}: {err}"
            result.restarted = await self._lost_state()
        else:
            result.stdout = "".join(execution.logs.stdout)
            result.stderr = "".join(execution.logs.stderr)
            for item in execution.results:
                if getattr(item, "text", None) is not None:
                    result.stdout += item.text + "\n"
            error = execution.error
            if error is not None and error.name == "CellTimeout":
                result.timed_out = True
                result.error = (f"TimeoutError: the cell ran longer than {timeout:g} s and was interrupted; "
                                f"variables defined before it are kept")
            elif error is not None:
                result.error = format_error(error.name, error.value, error.traceback)
                if await self._lost_state():
                    result.restarted = True
                    result.error = (f"KernelDied: the kernel died while running this cell ({result.error}); "
                                    f"all variables were lost (context and bridge are reloaded)")
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        if result.restarted and result.timed_out:
            await self._backend_restart()
        result.duration_s = time.perf_counter() - started
        return result

    async def _sdk_run(self, code: str, sdk_timeout: float) -> Any:
        return await self._sbx.run_code(code, context=self._ctx, timeout=sdk_timeout)

    async def _lost_state(self) -> bool:
        """Whether the kernel behind the context was replaced (our installed module is gone)."""
        with contextlib.suppress(Exception):
            probe = await self._sdk_run("import sys\nprint('_delm_bridge' in sys.modules)", 30.0)
            if "".join(probe.logs.stdout).strip() == "True":
                return False
        with contextlib.suppress(Exception):
            await self._backend_restart()
        return True

    # ---- the broker: bridge calls while a cell runs ------------------------------------------

    async def _serve_broker(self) -> None:
        directory = str(self.workspace / INTERNAL_DIR / BROKER)
        busy: set[str] = set()
        tasks: set[asyncio.Task[None]] = set()
        try:
            while True:
                with contextlib.suppress(Exception):
                    for entry in await self._sbx.files.list(directory):
                        if entry.name.endswith(".req") and entry.name not in busy:
                            busy.add(entry.name)
                            task = asyncio.create_task(self._answer(directory, entry.name))
                            tasks.add(task)
                            task.add_done_callback(tasks.discard)
                await asyncio.sleep(self.poll_interval)
        finally:
            for task in tasks:
                task.cancel()

    async def _answer(self, directory: str, name: str) -> None:
        path = f"{directory}/{name}"
        raw = await self._sbx.files.read(path, format="bytes")
        await self._sbx.files.remove(path)
        try:
            request = json.loads(bytes(raw))
        except ValueError:
            reply: dict[str, Any] = {"error": "malformed bridge request: not JSON"}
        else:
            reply = await self._handle_bridge(request)
        stem = name[: -len(".req")]
        await self._sbx.files.write(f"{directory}/{stem}.part", json.dumps(reply).encode())
        await self._sbx.files.rename(f"{directory}/{stem}.part", f"{directory}/{stem}.resp")

    # ---- workspace files ----------------------------------------------------------------------

    def _internal_path(self, name: str) -> str:
        return str(self.workspace / INTERNAL_DIR / name)

    async def _put_file(self, name: str, data: bytes) -> None:
        await self._sbx.files.write(self._internal_path(name), data)

    async def _get_file(self, name: str) -> bytes:
        return bytes(await self._sbx.files.read(self._internal_path(name), format="bytes"))

    async def _has_file(self, name: str) -> bool:
        return bool(await self._sbx.files.exists(self._internal_path(name)))

    async def _drop_file(self, name: str) -> None:
        with contextlib.suppress(Exception):
            await self._sbx.files.remove(self._internal_path(name))

    def _bridge_route(self) -> tuple[Literal["socket", "broker"], str]:
        return "broker", str(self.workspace / INTERNAL_DIR / BROKER)
