"""The protocol every sandbox implements, and the logic they share.

A backend provides only its transport: start/stop/restart a kernel, run one cell, move
files in and out of the workspace, and say how the bridge reaches the host. Everything
else lives here once: variables through workspace files, context loading and re-loading,
bridge registration, re-installation after a restart, error formatting.
"""

from __future__ import annotations

from delm_rlm.errors import SandboxError

import asyncio
import pickle
import re
import secrets
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel

from sandbox import bridge, corpus, safe_pickle

INTERNAL_DIR = ".delm"  # inside the workspace: context file, variable transfers, bridge broker
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_RULE = re.compile(r"^-{20,}\s*$")
TRACEBACK_CHARS = 1500


class ExecResult(BaseModel):
    """What one cell produced."""

    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # "NameError: name 'x' is not defined\n<short traceback>"
    timed_out: bool = False
    duration_s: float = 0.0
    restarted: bool = False  # the kernel died (or would not stop) and was restarted: state lost

    @property
    def ok(self) -> bool:
        return self.error is None and not self.timed_out


def format_error(name: str, value: str, traceback: list[str] | str) -> str:
    """``"Name: value"`` plus the tail of the traceback, colour codes removed."""
    lines = traceback if isinstance(traceback, list) else [traceback]
    head = f"{name}: {value}" if value else name
    # IPython frames the traceback with a rule, a banner and the final line again: drop those.
    kept = [
        line for line in _ANSI.sub("", "\n".join(lines)).splitlines()
        if not _RULE.match(line) and "Traceback (most recent call last)" not in line
    ]
    while kept and (not kept[-1].strip() or kept[-1].strip() == head.strip()):
        kept.pop()
    tb = "\n".join(kept).strip()
    if not tb:
        return head
    if len(tb) > TRACEBACK_CHARS:
        tb = "..." + tb[-TRACEBACK_CHARS:]
    return f"{head}\n{tb}"


class Sandbox(ABC):
    """A stateful Python REPL; use as ``async with`` or call ``start()`` / ``close()``."""

    isolation: str
    workspace: Path | PurePosixPath

    def __init__(self, timeout: float = 60.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        self.timeout = timeout
        self._token = secrets.token_urlsafe(32)
        self._tools: dict[str, Callable[..., Any]] = {}
        self._pending: list[str] = []
        self._context: tuple[Any, corpus.Kind, str] | None = None  # object, kind, file name
        self._started = False
        self._lock = asyncio.Lock()
        # Host time spent serving the REPL's tool calls (model calls through the bridge): a
        # cell's timeout is for its own code, so a backend may leave this time out of it.
        self._tool_calls_in_flight = 0
        self._tool_seconds_done = 0.0
        self._tool_busy_since: float | None = None

    # ---- what a backend provides ------------------------------------------------------------

    @abstractmethod
    async def _backend_start(self) -> None: ...

    @abstractmethod
    async def _backend_close(self) -> None: ...

    @abstractmethod
    async def _backend_restart(self) -> None: ...

    @abstractmethod
    async def _run_cell(self, code: str, timeout: float) -> ExecResult:
        """Run one cell. If the kernel had to be restarted, return ``restarted=True``."""

    @abstractmethod
    def _internal_path(self, name: str) -> str:
        """Path, as the kernel sees it, of a file in the workspace's internal directory."""

    @abstractmethod
    async def _put_file(self, name: str, data: bytes) -> None: ...

    @abstractmethod
    async def _get_file(self, name: str) -> bytes: ...

    @abstractmethod
    async def _has_file(self, name: str) -> bool: ...

    @abstractmethod
    async def _drop_file(self, name: str) -> None: ...

    def _setup_code(self) -> str:
        """Backend-specific code run in every fresh interpreter before the bridge is installed."""
        return ""

    @abstractmethod
    def _bridge_route(self) -> tuple[Literal["socket", "broker"], str]:
        """The bridge transport and its address (socket path or broker directory)."""

    # ---- lifecycle ----------------------------------------------------------------------------

    async def __aenter__(self) -> Sandbox:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        await self._backend_start()
        self._started = True
        try:
            await self._install()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        if not self._started:
            return
        self._started = False
        await self._backend_close()

    async def restart(self) -> None:
        """Fresh interpreter: variables are lost; context and bridge functions come back."""
        self._require_started()
        async with self._lock:
            await self._backend_restart()
            await self._install()

    # ---- running code -------------------------------------------------------------------------

    async def execute(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run ``code`` as one cell; errors and timeouts come back in the result, never raised."""
        self._require_started()
        if not isinstance(code, str):
            raise TypeError(f"execute takes the code as a str, not {type(code).__name__}")
        if timeout is not None and timeout <= 0:
            raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
        async with self._lock:
            if self._pending:
                await self._internal(bridge.stubs_code(self._pending))
                self._pending.clear()
            result = await self._run_cell(code, self.timeout if timeout is None else timeout)
            if result.restarted:
                await self._install()
        return result

    async def set_variables(self, **values: Any) -> None:
        """Define REPL variables from picklable host values, through a workspace file."""
        self._require_started()
        for name in values:
            if not name.isidentifier():
                raise ValueError(f"{name!r} is not a valid Python variable name")
        try:
            data = pickle.dumps(values, protocol=5)
        except (pickle.PicklingError, TypeError, AttributeError) as err:
            raise TypeError(f"set_variables: a value cannot be pickled ({err}); pass plain data") from err
        name = f"vars-{uuid.uuid4().hex}.pkl"
        async with self._lock:
            await self._put_file(name, data)
            try:
                await self._internal(
                    "def __delm_set(path):\n"
                    "    import pickle\n"
                    "    with open(path, 'rb') as f:\n"
                    "        globals().update(pickle.load(f))\n"
                    f"__delm_set({self._internal_path(name)!r})\n"
                    "del __delm_set\n"
                )
            finally:
                await self._drop_file(name)

    async def get_variable(self, name: str) -> Any:
        """A REPL variable's value (plain data types only), through a workspace file."""
        self._require_started()
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{name!r} is not a valid Python variable name")
        file = f"get-{uuid.uuid4().hex}.pkl"
        async with self._lock:
            result = await self._run_cell(
                "def __delm_get(name, path):\n"
                "    import pickle\n"
                "    if name not in globals():\n"
                "        raise NameError(f'name {name!r} is not defined in the sandbox')\n"
                "    with open(path, 'wb') as f:\n"
                "        pickle.dump(globals()[name], f, protocol=4)\n"
                f"try:\n    __delm_get({name!r}, {self._internal_path(file)!r})\n"
                "finally:\n    del __delm_get\n",
                self.timeout,
            )
            if result.restarted:
                await self._install()
            if not result.ok:
                if result.error and result.error.startswith("NameError"):
                    raise NameError(f"name {name!r} is not defined in the sandbox")
                raise SandboxError(f"could not read {name!r} from the sandbox: {result.error}")
            try:
                data = await self._get_file(file)
            finally:
                await self._drop_file(file)
        try:
            return safe_pickle.loads(data)
        except pickle.UnpicklingError as err:
            raise TypeError(f"{name!r} is not plain data and cannot be brought to the host: {err}") from None

    async def load_context(self, context: str | list[str] | pd.DataFrame) -> None:
        """Define ``context``, ``docs`` and ``df`` in the REPL (see ``sandbox.corpus``)."""
        self._require_started()
        encoded = corpus.encode(context)
        async with self._lock:
            await self._put_file(encoded.filename, encoded.data)
            self._context = (context, encoded.kind, encoded.filename)
            await self._internal(corpus.loader_code(encoded.kind, self._internal_path(encoded.filename)))

    def register(self, name: str, fn: Callable[..., Any]) -> None:
        """Make ``name(*args, **kwargs)`` in the REPL call ``fn`` on the host (sync or async)."""
        bridge.check_name(name)
        if not callable(fn):
            raise TypeError(f"register({name!r}, ...) needs a callable, got {type(fn).__name__}")
        self._tools[name] = fn
        if self._started and name not in self._pending:
            self._pending.append(name)

    # ---- shared internals ---------------------------------------------------------------------

    def _require_started(self) -> None:
        if not self._started:
            raise SandboxError("the sandbox is not started: use `async with sandbox:` or `await sandbox.start()`")

    def tool_seconds(self) -> float:
        """Seconds so far (cumulative, the call in flight included) during which the host was
        serving at least one of this REPL's tool calls."""
        busy = self._tool_seconds_done
        if self._tool_busy_since is not None:
            busy += time.perf_counter() - self._tool_busy_since
        return busy

    async def _handle_bridge(self, request: Any) -> dict[str, Any]:
        if self._tool_calls_in_flight == 0:
            self._tool_busy_since = time.perf_counter()
        self._tool_calls_in_flight += 1
        try:
            return await bridge.dispatch(self._tools, self._token, request)
        finally:
            self._tool_calls_in_flight -= 1
            if self._tool_calls_in_flight == 0 and self._tool_busy_since is not None:
                self._tool_seconds_done += time.perf_counter() - self._tool_busy_since
                self._tool_busy_since = None

    async def _internal(self, code: str) -> None:
        """Run framework code in the REPL; it must succeed."""
        result = await self._run_cell(code, max(self.timeout, 120.0))
        if not result.ok:
            raise SandboxError(f"sandbox setup code failed: {result.error or 'timed out'}")

    async def _install(self) -> None:
        """(Re)install the bridge client, every registered function and the context."""
        transport, address = self._bridge_route()
        code = self._setup_code() + bridge.client_code(transport, address, self._token) + bridge.stubs_code(list(self._tools))
        await self._internal(code)
        self._pending.clear()
        if self._context is not None:
            context, kind, filename = self._context
            if not await self._has_file(filename):  # user code removed it: write it again
                await self._put_file(filename, corpus.encode(context).data)
            await self._internal(corpus.loader_code(kind, self._internal_path(filename)))
