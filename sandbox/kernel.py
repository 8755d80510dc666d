"""KernelSandbox: a local ipykernel driven by jupyter_client, isolated as well as the machine allows.

Per kernel: a private directory (0700) holding the IPC sockets, the connection file, a
kernelspec naming this interpreter, the bridge socket and, by default, the kernel's log;
a workspace that is the kernel's working directory and its only writable place (under
bubblewrap). Cells run under a wall-clock timeout that interrupts them (by message: signals
do not cross bubblewrap's new session); a kernel that dies or will not stop is restarted and
the cell reports it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import queue
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO, Any, Literal

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from sandbox import isolation as iso
from sandbox.base import INTERNAL_DIR, ExecResult, Sandbox, SandboxError, format_error
from sandbox.bridge import SocketBridge

KERNEL_NAME = "delm-python"
STARTUP_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell gets to stop before the kernel is restarted
ALIVE_CHECK = 0.25  # how often a silent cell checks that its kernel still lives
LOG_TAIL = 800

_LIVE: weakref.WeakSet[KernelSandbox] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Kernels are started independent of this process (a PID namespace needs that), so a
    # host that exits without close() must not leave them running.
    for sb in list(_LIVE):
        sb._kill_now()


class KernelSandbox(Sandbox):
    """A local, isolated, stateful Python REPL."""

    def __init__(
        self,
        workspace: str | Path | None = None,
        memory_limit: int | None = 2 * 1024**3,
        timeout: float = 60.0,
        isolation: str = "auto",
        log_dir: str | Path | None = None,
    ) -> None:
        super().__init__(timeout=timeout)
        if isolation != "auto" and isolation not in iso.MODES:
            raise ValueError(f"isolation={isolation!r} is not known; use 'auto' or one of {', '.join(iso.MODES)}")
        if memory_limit is not None and memory_limit < 256 * 1024**2:
            raise ValueError(f"memory_limit={memory_limit} bytes is too small to start Python; use at least 256 MiB")
        self._requested_isolation = isolation
        self.isolation = isolation
        self.memory_limit = memory_limit
        self._given_workspace = Path(workspace).resolve() if workspace is not None else None
        self.workspace = self._given_workspace or Path()
        self._log_dir = Path(log_dir).resolve() if log_dir is not None else None
        self.private_dir: Path | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self._log_mark = 0  # log size once the kernel was ready: the startup banner is not news
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None
        self._bridge: SocketBridge | None = None

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _backend_start(self) -> None:
        self.isolation = iso.choose(self._requested_isolation)
        private = Path(tempfile.mkdtemp(prefix="delm-sb-"))  # short: Unix socket paths are limited
        self.private_dir = private
        try:
            if self._given_workspace is not None:
                self._given_workspace.mkdir(parents=True, exist_ok=True)
                self.workspace = self._given_workspace
            else:
                self.workspace = Path(tempfile.mkdtemp(prefix="delm-ws-"))
            (self.workspace / INTERNAL_DIR).mkdir(exist_ok=True)
            for sub in ("home", "ipython", "mpl"):
                (private / sub).mkdir()
            log_dir = self._log_dir or private
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"kernel-{private.name}.log"
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the kernel

            spec_dir = private / "kernels" / KERNEL_NAME
            spec_dir.mkdir(parents=True)
            argv = iso.wrap(
                self.isolation, iso.kernel_argv(self.memory_limit), workspace=self.workspace, private_dir=private
            )
            spec = {"argv": argv, "display_name": "delm-rlm sandbox", "language": "python",
                    "interrupt_mode": "message", "env": {}}
            (spec_dir / "kernel.json").write_text(json.dumps(spec))

            self._km = AsyncKernelManager(
                kernel_name=KERNEL_NAME,
                kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(private / "kernels")]),
                transport="ipc",
                ip=str(private / "k"),
                connection_file=str(private / "connection.json"),
            )
            await self._km.start_kernel(
                env=iso.clean_env(private), cwd=str(self.workspace),
                stdout=self._log, stderr=self._log, independent=True,
            )
            _LIVE.add(self)
            self._kc = self._km.client()
            self._kc.start_channels()
            await self._wait_ready()
            self._bridge = SocketBridge(private / "bridge.sock", self._handle_bridge)
            await self._bridge.start()
        except BaseException:
            await self._backend_close()
            raise

    async def _wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._kc.wait_for_ready(timeout=STARTUP_TIMEOUT), STARTUP_TIMEOUT + 5)
        except (RuntimeError, asyncio.TimeoutError) as err:
            raise SandboxError(f"the kernel did not start ({self.isolation}): {err}{self._log_tail()}") from None
        if self.log_path is not None:
            self._log_mark = self.log_path.stat().st_size

    async def _backend_close(self) -> None:
        _LIVE.discard(self)
        if self._bridge is not None:
            await self._bridge.close()
            self._bridge = None
        if self._kc is not None:
            self._kc.stop_channels()
            self._kc = None
        if self._km is not None:
            with contextlib.suppress(Exception):
                await self._km.shutdown_kernel(now=True)
            self._km = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None
        if self._given_workspace is None and self.workspace != Path():
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = Path()

    def _kill_now(self) -> None:
        process = getattr(getattr(self._km, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            process.kill()

    async def _backend_restart(self) -> None:
        assert self._km is not None
        await self._km.restart_kernel(now=True)
        await self._wait_ready()

    # ---- one cell -----------------------------------------------------------------------------

    async def _run_cell(self, code: str, timeout: float) -> ExecResult:
        km, kc = self._km, self._kc
        if km is None or kc is None:
            raise SandboxError("the sandbox is closed")
        started = time.perf_counter()
        msg_id = kc.execute(code, store_history=False, allow_stdin=False)
        stdout: list[str] = []
        stderr: list[str] = []
        error: str | None = None
        tools_before = self.tool_seconds()
        interrupted_at: float | None = None
        outcome: Literal["done", "died", "stuck"] = "done"
        while True:
            now = time.perf_counter()
            # The limit is on the cell's own code: time the host spends answering its tool
            # calls (a classify over hundreds of lines is minutes of model time) is added back.
            deadline = started + timeout + (self.tool_seconds() - tools_before)
            if interrupted_at is None and now >= deadline:
                interrupted_at = now
                with contextlib.suppress(Exception):
                    await km.interrupt_kernel()
            if interrupted_at is not None and now >= interrupted_at + INTERRUPT_GRACE:
                outcome = "stuck"
                break
            limit = (deadline if interrupted_at is None else interrupted_at + INTERRUPT_GRACE) - now
            try:
                msg = await kc.get_iopub_msg(timeout=max(0.0, min(limit, ALIVE_CHECK)))
            except queue.Empty:
                if not await km.is_alive():
                    outcome = "died"
                    break
                continue
            if msg["parent_header"].get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                (stdout if content.get("name") == "stdout" else stderr).append(content.get("text", ""))
            elif kind in ("execute_result", "display_data"):
                text = content.get("data", {}).get("text/plain")
                if text is not None:
                    stdout.append(text + "\n")
            elif kind == "error":
                error = format_error(content.get("ename", "Error"), content.get("evalue", ""),
                                     content.get("traceback", []))
            elif kind == "status" and content.get("execution_state") == "idle":
                break
        if outcome == "done":
            await self._take_reply(msg_id)
        result = ExecResult(stdout="".join(stdout), stderr="".join(stderr), error=error)
        if outcome == "died":
            code_ = getattr(getattr(km.provisioner, "process", None), "returncode", None)
            result.error = (
                f"KernelDied: the kernel process exited (code {code_}) while running this cell; "
                f"it was restarted and all variables were lost (context and bridge are reloaded)"
                f"{self._log_tail()}"
            )
            result.restarted = True
            await self._backend_restart()
        elif interrupted_at is not None:
            result.timed_out = True
            if outcome == "stuck":
                result.error = (
                    f"TimeoutError: the cell ran longer than {timeout:g} s (model calls not counted) and did not stop when "
                    f"interrupted; the kernel was restarted and all variables were lost"
                )
                result.restarted = True
                await self._backend_restart()
            else:
                result.error = (
                    f"TimeoutError: the cell ran longer than {timeout:g} s (model calls not counted) and was interrupted; "
                    f"variables defined before it are kept"
                )
        result.duration_s = time.perf_counter() - started
        return result

    async def _take_reply(self, msg_id: str) -> None:
        """Consume the shell reply of ``msg_id`` (and any stale ones from abandoned cells)."""
        while True:
            try:
                reply = await self._kc.get_shell_msg(timeout=5.0)
            except queue.Empty:
                return
            if reply["parent_header"].get("msg_id") == msg_id:
                return

    def _log_tail(self) -> str:
        if self._log is None or self.log_path is None:
            return ""
        self._log.flush()
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(self._log_mark, f.tell() - LOG_TAIL))
                tail = f.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f"\nkernel log ({self.log_path}):\n{tail}" if tail else ""

    # ---- workspace files ----------------------------------------------------------------------

    def _internal_path(self, name: str) -> str:
        return str(self.workspace / INTERNAL_DIR / name)

    async def _put_file(self, name: str, data: bytes) -> None:
        path = Path(self._internal_path(name))
        path.parent.mkdir(parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, data)

    async def _get_file(self, name: str) -> bytes:
        return await asyncio.to_thread(Path(self._internal_path(name)).read_bytes)

    async def _has_file(self, name: str) -> bool:
        return Path(self._internal_path(name)).is_file()

    async def _drop_file(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            Path(self._internal_path(name)).unlink()

    def _bridge_route(self) -> tuple[Literal["socket", "broker"], str]:
        assert self.private_dir is not None
        return "socket", str(self.private_dir / "bridge.sock")
