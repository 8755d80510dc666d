"""KernelSandbox: a local ipykernel driven by jupyter_client, isolated by ``sandbox.isolation``.

Per kernel: a private directory (0700) holding the IPC sockets, the connection file, a
kernelspec naming this interpreter, the bridge socket and, by default, the kernel's log;
a workspace that is the kernel's working directory. Under bubblewrap these two directories
are all the kernel sees of the host that it can write, and on a root host both belong to the
kernel's own uid while it runs. Cells run under a wall-clock timeout that interrupts them (by
message: signals do not cross bubblewrap's new session); a kernel that dies, will not stop,
or writes more than ``disk_limit`` into its directories is restarted and the cell reports it.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import queue
import signal
import stat
import shutil
import tempfile
import time
import weakref
from pathlib import Path
from typing import IO, Any, Literal

from jupyter_client.kernelspec import KernelSpecManager
from jupyter_client.manager import AsyncKernelManager

from delm_rlm.errors import ConfigError
from sandbox import isolation as iso
from sandbox.base import INTERNAL_DIR, ExecResult, Sandbox, SandboxError, format_error
from sandbox.bridge import SocketBridge

KERNEL_NAME = "delm-python"
STARTUP_TIMEOUT = 60.0
INTERRUPT_GRACE = 5.0  # seconds an interrupted cell gets to stop before the kernel is restarted
ALIVE_CHECK = 0.25  # how often a silent cell checks that its kernel still lives
LOG_TAIL = 800
DISK_CHECK = 0.2  # how often the host measures what the kernel wrote (disk_limit)
MiB, GiB = 1024**2, 1024**3

_LIVE: weakref.WeakSet[KernelSandbox] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    # Kernels are started independent of this process (a PID namespace needs that), so a
    # host that exits without close() must not leave them running.
    for sb in list(_LIVE):
        sb._kill_now()


class DiskUse:
    """What a kernel wrote into its directories: the bytes it added, and their removal.

    Files present before the kernel started and files the host put there do not count; the
    log (bounded by RLIMIT_FSIZE) and sockets neither. Sparse files count their blocks.
    """

    def __init__(self, roots: list[Path], skip: set[Path]) -> None:
        self.roots = roots
        self.skip = skip
        self.host_files: dict[Path, int] = {}
        self.baseline: set[Path] = set()
        self.baseline_bytes = 0
        for path, size in self._walk():
            self.baseline.add(path)
            self.baseline_bytes += size or 0

    def _entries(self, directory: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(directory) as it:
                return list(it)
        except PermissionError:
            # A directory the kernel made unreadable to hide what it holds: the host owns it
            # (or is root), so it opens it again.
            with contextlib.suppress(OSError):
                os.chmod(directory, 0o700)
            with contextlib.suppress(OSError), os.scandir(directory) as it:
                return list(it)
        except OSError:
            pass
        return []

    def _walk(self) -> list[tuple[Path, int | None]]:
        """Every directory (size None) and regular file (its blocks' bytes) under the roots."""
        found: list[tuple[Path, int | None]] = []
        pending = list(self.roots)
        while pending:
            for entry in self._entries(pending.pop()):
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(path)
                        found.append((path, None))
                    elif entry.is_file(follow_symlinks=False) and path not in self.skip:
                        found.append((path, entry.stat(follow_symlinks=False).st_blocks * 512))
                except OSError:
                    continue
        return found

    def host_put(self, path: Path) -> None:
        with contextlib.suppress(OSError):
            self.host_files[path] = path.stat().st_blocks * 512

    def host_dropped(self, path: Path) -> None:
        self.host_files.pop(path, None)

    def written(self) -> int:
        """Bytes the kernel added (never negative)."""
        total = sum(size or 0 for _, size in self._walk())
        return max(0, total - self.baseline_bytes - sum(self.host_files.values()))

    def remove_written(self) -> None:
        """Remove every file and directory the kernel made (sockets, the log and what the host
        put stay)."""
        keep = self.baseline | set(self.host_files) | self.skip
        pending = list(self.roots)
        while pending:
            for entry in self._entries(pending.pop()):
                path = Path(entry.path)
                try:
                    if entry.is_dir(follow_symlinks=False):
                        if path in keep:
                            pending.append(path)
                        else:
                            shutil.rmtree(path, ignore_errors=True)
                    elif path not in keep and not stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
                        path.unlink()
                except OSError:
                    continue


class KernelSandbox(Sandbox):
    """A local, isolated, stateful Python REPL.

    ``isolation``: "auto" (bubblewrap, or a ``SandboxError`` saying how to get it), or a mode of
    ``sandbox.isolation.MODES`` by name ("none", alias "rlimits", runs without isolation: an
    explicit opt-in). ``isolation`` holds the mode in force once started. Limits, each ``None``
    for none: ``memory_limit`` (address space), ``max_processes`` (processes and threads, where
    the mode can count them for this sandbox alone), ``disk_limit`` (all the kernel writes into
    its workspace and private directory; one file at most half of it), ``tmp_limit`` (/tmp and /dev/shm
    under bubblewrap, each).
    """

    def __init__(
        self,
        workspace: str | Path | None = None,
        memory_limit: int | None = 2 * GiB,
        timeout: float = 60.0,
        isolation: str = "auto",
        log_dir: str | Path | None = None,
        max_processes: int | None = 64,
        disk_limit: int | None = 1 * GiB,
        tmp_limit: int = 256 * MiB,
    ) -> None:
        super().__init__(timeout=timeout)
        if isolation != "auto" and iso.ALIASES.get(isolation, isolation) not in iso.MODES:
            raise ConfigError(f"isolation={isolation!r} is not known; use 'auto' or one of {', '.join(iso.MODES)}")
        if memory_limit is not None and memory_limit < 256 * MiB:
            raise ConfigError(f"memory_limit={memory_limit} bytes is too small to start Python; use at least 256 MiB")
        if max_processes is not None and max_processes < 16:
            raise ConfigError(f"max_processes={max_processes} is too few for a kernel's own threads; use at least 16")
        if disk_limit is not None and disk_limit < 16 * MiB:
            raise ConfigError(f"disk_limit={disk_limit} bytes is too small for a kernel's files; use at least 16 MiB")
        if tmp_limit < MiB:
            raise ConfigError(f"tmp_limit={tmp_limit} bytes is too small; use at least 1 MiB")
        self._requested_isolation = isolation
        self.isolation = isolation
        self.memory_limit = memory_limit
        self.max_processes = max_processes
        self.disk_limit = disk_limit
        self.tmp_limit = tmp_limit
        self.uid: int | None = None  # the kernel's own uid (bubblewrap on a root host), else None
        self._given_workspace = Path(workspace).resolve() if workspace is not None else None
        self.workspace = self._given_workspace or Path()
        self._workspace_owner: tuple[int, int] | None = None
        self._log_dir = Path(log_dir).resolve() if log_dir is not None else None
        self.private_dir: Path | None = None
        self.log_path: Path | None = None
        self._log: IO[bytes] | None = None
        self._log_mark = 0  # log size once the kernel was ready: the startup banner is not news
        self._km: AsyncKernelManager | None = None
        self._kc: Any = None
        self._bridge: SocketBridge | None = None
        self._disk: DiskUse | None = None
        self._disk_watch: asyncio.Task[None] | None = None
        self._disk_over: int | None = None  # bytes written when the kernel was stopped for it

    # ---- lifecycle ----------------------------------------------------------------------------

    async def _backend_start(self) -> None:
        self.isolation = iso.choose(self._requested_isolation)
        self.uid = iso.sandbox_uid(self.isolation)
        # short: Unix socket paths are limited; resolved: bubblewrap mounts it at this path
        private = Path(tempfile.mkdtemp(prefix="delm-sb-")).resolve()
        self.private_dir = private
        try:
            if self._given_workspace is not None:
                self._given_workspace.mkdir(parents=True, exist_ok=True)
                self.workspace = self._given_workspace
            else:
                self.workspace = Path(tempfile.mkdtemp(prefix="delm-ws-")).resolve()
            (self.workspace / INTERNAL_DIR).mkdir(exist_ok=True)
            for sub in ("home", "ipython", "mpl"):
                (private / sub).mkdir()
            log_dir = self._log_dir or private
            log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = log_dir / f"kernel-{private.name}.log"
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the kernel

            spec_dir = private / "kernels" / KERNEL_NAME
            spec_dir.mkdir(parents=True)
            # One file may take half of disk_limit: a single write then never overshoots the total.
            file_limit = self.disk_limit // 2 if self.disk_limit is not None else None
            kernel = iso.kernel_argv(self.memory_limit, mode=self.isolation, max_processes=self.max_processes,
                                     disk_limit=file_limit, uid=self.uid, cwd=self.workspace)
            argv = iso.wrap(self.isolation, kernel, workspace=self.workspace, private_dir=private,
                            tmp_limit=self.tmp_limit)
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
            self._km.write_connection_file()  # now, so that the kernel's uid can own it
            if self.uid is not None:
                self._hand_over(private)
            if self.disk_limit is not None:
                self._disk = DiskUse([self.workspace, private], skip={self.log_path})
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
            if self.uid is not None:
                os.chown(private / "bridge.sock", self.uid, self.uid)
            if self._disk is not None:
                self._disk_watch = asyncio.create_task(self._watch_disk())
        except BaseException:
            await self._backend_close()
            raise

    @property
    def connection_file(self) -> Path | None:
        """The kernel's connection file (its ports and message key) while it runs."""
        return Path(self._km.connection_file) if self._km is not None else None

    def _hand_over(self, private: Path) -> None:
        """Give the kernel's uid what it must write (its directories) and read (its connection file)."""
        assert self.uid is not None
        st = self.workspace.stat()
        self._workspace_owner = (st.st_uid, st.st_gid)
        for path in (private, *(private / sub for sub in ("home", "ipython", "mpl")), private / "connection.json",
                     self.workspace, self.workspace / INTERNAL_DIR):
            os.chown(path, self.uid, self.uid)

    def _give_back_workspace(self) -> None:
        """A workspace the caller gave is theirs again, with everything the kernel left in it."""
        if self._workspace_owner is None or self.uid is None or not self.workspace.is_dir():
            return
        owner, group = self._workspace_owner
        for root, dirs, files in os.walk(self.workspace):
            for name in [".", *dirs, *files]:
                path = os.path.join(root, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_uid == self.uid:
                        os.lchown(path, owner, group)

    async def _wait_ready(self) -> None:
        try:
            await asyncio.wait_for(self._kc.wait_for_ready(timeout=STARTUP_TIMEOUT), STARTUP_TIMEOUT + 5)
        except (RuntimeError, asyncio.TimeoutError) as err:
            raise SandboxError(f"the kernel did not start ({self.isolation}): {err}{self._log_tail()}") from None
        if self.log_path is not None:
            self._log_mark = self.log_path.stat().st_size

    async def _watch_disk(self) -> None:
        assert self._disk is not None and self.disk_limit is not None
        while True:
            await asyncio.sleep(DISK_CHECK)
            if self._disk_over is not None:
                continue  # stopped already; the restart removes the files
            written = await asyncio.to_thread(self._disk.written)
            if written > self.disk_limit:
                self._disk_over = written
                self._kill_now()

    async def _backend_close(self) -> None:
        _LIVE.discard(self)
        try:
            await self._stop_kernel()
        finally:
            # Even when the close itself is cancelled (an agent task cancelled at the end of a
            # run), the kernel's folders and its corpus copy never outlive the sandbox.
            self._remove_folders()

    async def _stop_kernel(self) -> None:
        if self._disk_watch is not None:
            self._disk_watch.cancel()
            with contextlib.suppress(BaseException):
                await self._disk_watch
            self._disk_watch = None
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

    def _remove_folders(self) -> None:
        if self._km is not None:
            # Stopping was cut short: kill the kernel's process group before its folders go.
            with contextlib.suppress(Exception):
                self._kill_now()
            self._km = None
        if self._kc is not None:
            with contextlib.suppress(Exception):
                self._kc.stop_channels()
            self._kc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.private_dir is not None:
            shutil.rmtree(self.private_dir, ignore_errors=True)
            self.private_dir = None
        if self._given_workspace is None and self.workspace != Path():
            shutil.rmtree(self.workspace, ignore_errors=True)
            self.workspace = Path()
        else:
            self._give_back_workspace()
        self._disk = None
        self._disk_over = None

    def _kill_now(self) -> None:
        """SIGKILL the kernel: its whole sandbox under bubblewrap or unshare, its process group
        under none (processes it moved to a session of their own survive that)."""
        provisioner = getattr(self._km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        if process is not None and process.poll() is None:
            pgid = getattr(provisioner, "pgid", None)
            if pgid:
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                process.kill()

    async def _backend_restart(self) -> None:
        assert self._km is not None
        if self._disk_over is not None and self._disk is not None:
            await asyncio.to_thread(self._disk.remove_written)
            self._disk_over = None
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
        if outcome == "died" and self._disk_over is not None:
            result.error = (
                f"DiskLimitExceeded: the sandbox wrote {self._disk_over:,} bytes into its workspace, over its "
                f"disk_limit of {self.disk_limit:,}; it was stopped, the files it wrote were removed and the kernel "
                f"restarted: all variables were lost (context and bridge are reloaded)"
            )
            result.restarted = True
            await self._backend_restart()
        elif outcome == "died":
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
        if self._disk is not None:
            self._disk.host_put(path)

    async def _get_file(self, name: str) -> bytes:
        return await asyncio.to_thread(Path(self._internal_path(name)).read_bytes)

    async def _has_file(self, name: str) -> bool:
        return Path(self._internal_path(name)).is_file()

    async def _drop_file(self, name: str) -> None:
        path = Path(self._internal_path(name))
        if self._disk is not None:
            self._disk.host_dropped(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def _bridge_route(self) -> tuple[Literal["socket", "broker"], str]:
        assert self.private_dir is not None
        return "socket", str(self.private_dir / "bridge.sock")
