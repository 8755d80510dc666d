"""A faithful stand-in for the part of ``e2b_code_interpreter`` (2.x) that E2BSandbox uses.

Same names, signatures and result shapes as the SDK (``AsyncSandbox.create``, ``run_code``
returning an ``Execution`` with ``logs.stdout``/``logs.stderr`` lists of chunks, ``results``
and ``error`` (name, value, traceback str), code contexts, ``files.*``, ``kill``,
``TimeoutException``); ``tests/test_sandbox_e2b.py`` checks the signatures against the real
package when it is installed. Behind it runs a real local ipykernel per code context (the
E2B template is a Jupyter server too), and the sandbox filesystem is this machine's, at the
same absolute paths, so tests pass a temporary workspace.

Modelled behaviours: an API key is required; ``timeout=None`` means 300 s and ``0`` no limit;
a timed-out ``run_code`` raises ``TimeoutException`` and leaves the cell running (no
interrupt); a kernel that dies is restarted by the server, which reports the cell as an
error; ``files.write`` creates parent directories; ``files.read(format="bytes")`` gives a
``bytearray``. Counters (``calls``) let tests see what the adapter asked for.
"""

from __future__ import annotations

import asyncio
import os
import queue
import shutil
import subprocess
import tempfile
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from jupyter_client.manager import AsyncKernelManager

DEFAULT_TIMEOUT = 300


class SandboxException(Exception):
    pass


class TimeoutException(SandboxException):
    pass


class NotFoundException(SandboxException):
    pass


class AuthenticationException(Exception):
    pass


@dataclass
class ExecutionError:
    name: str
    value: str
    traceback: str


@dataclass
class Result:
    text: str | None = None
    is_main_result: bool = False


@dataclass
class Logs:
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)


@dataclass
class Execution:
    results: list[Result] = field(default_factory=list)
    logs: Logs = field(default_factory=Logs)
    error: ExecutionError | None = None
    execution_count: int | None = None

    @property
    def text(self) -> str | None:
        for r in self.results:
            if r.is_main_result:
                return r.text
        return None


class Context:
    def __init__(self, context_id: str, language: str, cwd: str, **kwargs: Any) -> None:
        self.id, self.language, self.cwd = context_id, language, cwd


@dataclass
class EntryInfo:
    name: str
    type: Literal["file", "dir"]
    path: str
    size: int = 0


@dataclass
class WriteInfo:
    name: str
    type: Literal["file", "dir"] | None
    path: str


class Filesystem:
    def __init__(self, owner: AsyncSandbox) -> None:
        self._owner = owner

    async def write(self, path: str, data: str | bytes, user: str | None = None,
                    request_timeout: float | None = None, gzip: bool = False,
                    use_octet_stream: bool | None = None, metadata: dict[str, str] | None = None) -> WriteInfo:
        self._owner._count("files.write")
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(p.write_bytes, data.encode() if isinstance(data, str) else bytes(data))
        return WriteInfo(p.name, "file", path)

    async def read(self, path: str, format: Literal["text", "bytes", "stream"] = "text",
                   user: str | None = None, request_timeout: float | None = None, gzip: bool = False,
                   stream_idle_timeout: float | None = None) -> str | bytearray:
        self._owner._count("files.read")
        p = Path(path)
        if not p.is_file():
            raise NotFoundException(f"file {path} not found")
        data = await asyncio.to_thread(p.read_bytes)
        return bytearray(data) if format == "bytes" else data.decode()

    async def list(self, path: str, depth: int | None = 1, user: str | None = None,
                   request_timeout: float | None = None) -> list[EntryInfo]:
        self._owner._count("files.list")
        p = Path(path)
        if not p.is_dir():
            raise NotFoundException(f"directory {path} not found")
        return [EntryInfo(c.name, "dir" if c.is_dir() else "file", str(c)) for c in sorted(p.iterdir())]

    async def exists(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        self._owner._count("files.exists")
        return Path(path).exists()

    async def remove(self, path: str, user: str | None = None, request_timeout: float | None = None) -> None:
        self._owner._count("files.remove")
        p = Path(path)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()

    async def rename(self, old_path: str, new_path: str, user: str | None = None,
                     request_timeout: float | None = None) -> EntryInfo:
        self._owner._count("files.rename")
        if not Path(old_path).exists():
            raise NotFoundException(f"file {old_path} not found")
        os.replace(old_path, new_path)
        return EntryInfo(Path(new_path).name, "file", new_path)

    async def make_dir(self, path: str, user: str | None = None, request_timeout: float | None = None) -> bool:
        self._owner._count("files.make_dir")
        p = Path(path)
        if p.exists():
            return False
        p.mkdir(parents=True)
        return True


class _Kernel:
    """One code context: a local kernel, like the Jupyter server behind the E2B template."""

    def __init__(self, cwd: str) -> None:
        self.cwd = cwd
        self.dir = tempfile.mkdtemp(prefix="fake-e2b-")
        self.km = AsyncKernelManager(transport="ipc", ip=f"{self.dir}/k",
                                     connection_file=f"{self.dir}/conn.json")
        self.kc: Any = None
        self.lock = asyncio.Lock()  # the server runs one cell per context at a time

    async def start(self) -> None:
        Path(self.cwd).mkdir(parents=True, exist_ok=True)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": self.dir}
        await self.km.start_kernel(cwd=self.cwd, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)

    async def restart(self) -> None:
        await self.km.restart_kernel(now=True)
        await self.kc.wait_for_ready(timeout=60)

    async def stop(self) -> None:
        if self.kc is not None:
            self.kc.stop_channels()
        await self.km.shutdown_kernel(now=True)
        shutil.rmtree(self.dir, ignore_errors=True)

    async def run(self, code: str) -> Execution:
        execution = Execution()
        msg_id = self.kc.execute(code, store_history=True, allow_stdin=False)
        while True:
            try:
                msg = await self.kc.get_iopub_msg(timeout=0.2)
            except queue.Empty:
                if not await self.km.is_alive():
                    await self.restart()
                    execution.error = ExecutionError("DeadKernelError", "Kernel died", "")
                    return execution
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (execution.logs.stdout if content["name"] == "stdout" else execution.logs.stderr).append(
                    content["text"])
            elif kind in ("execute_result", "display_data"):
                execution.results.append(Result(text=content["data"].get("text/plain"),
                                                is_main_result=kind == "execute_result"))
                if kind == "execute_result":
                    execution.execution_count = content.get("execution_count")
            elif kind == "error":
                execution.error = ExecutionError(content["ename"], content["evalue"],
                                                 "\n".join(content["traceback"]))
            elif kind == "status" and content["execution_state"] == "idle":
                return execution


class AsyncSandbox:
    instances: list[AsyncSandbox] = []

    def __init__(self, sandbox_id: str) -> None:
        self.sandbox_id = sandbox_id
        self.files = Filesystem(self)
        self.calls: Counter[str] = Counter()
        self._contexts: dict[str, _Kernel] = {}
        self._alive = True

    def _count(self, name: str) -> None:
        if not self._alive:
            raise SandboxException("sandbox was killed")
        self.calls[name] += 1

    @classmethod
    async def create(cls, template: str | None = None, timeout: int | None = None,
                     metadata: dict[str, str] | None = None, envs: dict[str, str] | None = None,
                     secure: bool | None = None, allow_internet_access: bool | None = None,
                     **opts: Any) -> AsyncSandbox:
        if not (opts.get("api_key") or os.environ.get("E2B_API_KEY")):
            raise AuthenticationException("API key is required")
        sbx = cls(uuid.uuid4().hex[:12])
        cls.instances.append(sbx)
        return sbx

    async def create_code_context(self, cwd: str | None = None, language: str | None = None,
                                  request_timeout: float | None = None) -> Context:
        self._count("create_code_context")
        ctx = Context(uuid.uuid4().hex, language or "python", cwd or "/home/user")
        kernel = _Kernel(ctx.cwd)
        await kernel.start()
        self._contexts[ctx.id] = kernel
        return ctx

    async def restart_code_context(self, context: Context | str) -> None:
        self._count("restart_code_context")
        kernel = self._contexts[context.id if isinstance(context, Context) else context]
        await kernel.restart()

    async def remove_code_context(self, context: Context | str) -> None:
        self._count("remove_code_context")
        kernel = self._contexts.pop(context.id if isinstance(context, Context) else context)
        await kernel.stop()

    async def run_code(self, code: str, language: str | None = None, context: Context | None = None,
                       on_stdout: Any = None, on_stderr: Any = None, on_result: Any = None,
                       on_error: Any = None, envs: dict[str, str] | None = None,
                       timeout: float | None = None, request_timeout: float | None = None) -> Execution:
        self._count("run_code")
        if context is None:
            if "default" not in self._contexts:
                self._contexts["default"] = _Kernel("/home/user")
                await self._contexts["default"].start()
            kernel = self._contexts["default"]
        else:
            kernel = self._contexts[context.id]
        timeout = None if timeout == 0 else (timeout or DEFAULT_TIMEOUT)
        async with kernel.lock:
            try:
                return await asyncio.wait_for(kernel.run(code), timeout)
            except asyncio.TimeoutError:
                raise TimeoutException(
                    "Execution timed out — the 'timeout' option can be used to increase this timeout"
                ) from None

    async def is_running(self, request_timeout: float | None = None) -> bool:
        return self._alive

    async def kill(self, **opts: Any) -> bool:
        if not self._alive:
            return False
        for kernel in self._contexts.values():
            await kernel.stop()
        self._contexts.clear()
        self._alive = False
        return True

    async def __aenter__(self) -> AsyncSandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()
