"""Isolation of the local kernel, for every mode this machine offers (strongest: all checks)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import KernelSandbox, SandboxError
from sandbox import isolation as iso

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODES = iso.available()
STRONGEST = MODES[0]
GiB = 1024**3


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def box(request: pytest.FixtureRequest):
    async with KernelSandbox(isolation=request.param, memory_limit=2 * GiB, timeout=30) as sb:
        yield sb


async def test_detection_prefers_bubblewrap_when_present() -> None:
    assert MODES[-1] == "rlimits"
    assert list(MODES) == [m for m in iso.MODES if m in MODES]  # strongest first
    if iso._bwrap_user_ns() is not None:
        assert STRONGEST == "bubblewrap"


async def test_isolation_names_the_mode_in_force(box: KernelSandbox) -> None:
    assert box.isolation in MODES
    assert (await box.execute("print('ok')")).stdout == "ok\n"


async def test_memory_limit_raises_memoryerror_and_kernel_survives(box: KernelSandbox) -> None:
    result = await box.execute("block = bytearray(3 * 1024**3)")
    assert result.error is not None and result.error.startswith("MemoryError"), result
    assert not result.restarted
    assert (await box.execute("print(len(bytearray(10**6)))")).stdout == "1000000\n"


async def test_workspace_is_writable(box: KernelSandbox) -> None:
    result = await box.execute("open('note.txt', 'w').write('hi'); print(open('note.txt').read())")
    assert result.stdout == "hi\n"
    assert (box.workspace / "note.txt").read_text() == "hi"


async def test_write_outside_workspace_fails(box: KernelSandbox, tmp_path: Path) -> None:
    if box.isolation != "bubblewrap":
        pytest.skip("only bubblewrap makes the root read-only")
    target = tmp_path / "escape.txt"
    for path in (target, Path("/etc/delm-escape"), Path("/usr/delm-escape")):
        result = await box.execute(f"open({str(path)!r}, 'w').write('x')")
        assert result.error is not None and ("Read-only file system" in result.error
                                             or "No such file or directory" in result.error), result
        assert not path.exists()
    # its /tmp is private: a file written there does not appear on the host
    await box.execute("open('/tmp/delm-private-probe', 'w').write('x')")
    assert not Path("/tmp/delm-private-probe").exists()


async def test_host_home_is_hidden(box: KernelSandbox) -> None:
    if box.isolation != "bubblewrap":
        pytest.skip("only bubblewrap hides the host's files")
    home = Path.home()
    visible = {p.name for p in home.iterdir()}
    result = await box.execute(f"import os; print(sorted(os.listdir({str(home)!r})))")
    shown = set(eval(result.stdout))
    assert shown < visible or not visible, (shown, visible)


async def test_no_network_to_host_ports(box: KernelSandbox) -> None:
    if box.isolation == "rlimits":
        pytest.skip("rlimits mode has no network namespace")
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    try:
        result = await box.execute(
            "import socket\ns = socket.socket(); s.settimeout(2)\n"
            f"s.connect(('127.0.0.1', {port}))\nprint('connected')"
        )
    finally:
        server.close()
    assert "connected" not in result.stdout
    assert result.error is not None and ("ConnectionRefused" in result.error or "OSError" in result.error
                                         or "unreachable" in result.error), result


async def test_interrupt_works_in_every_mode(box: KernelSandbox) -> None:
    await box.execute("survivor = 7")
    result = await box.execute("import time\nwhile True: time.sleep(0.01)", timeout=1)
    assert result.timed_out and not result.restarted
    assert (await box.execute("print(survivor)")).stdout == "7\n"


async def test_forcing_an_unavailable_mode_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iso, "available", lambda: ("rlimits",))
    with pytest.raises(SandboxError, match="bubblewrap"):
        await KernelSandbox(isolation="bubblewrap").start()


async def test_bridge_and_ipc_work_across_namespaces(box: KernelSandbox) -> None:
    box.register("host_pid", lambda: __import__("os").getpid())
    result = await box.execute("import os; print(host_pid() != os.getpid())")
    assert result.stdout == "True\n", result


async def test_wrapped_command_names_this_interpreter(tmp_path: Path) -> None:
    import sys

    argv = iso.wrap(STRONGEST, iso.kernel_argv(GiB), workspace=tmp_path, private_dir=tmp_path)
    assert sys.executable in argv and "{connection_file}" in argv
    if STRONGEST == "bubblewrap":
        assert "--unshare-net" in argv and "--ro-bind" in argv and "--die-with-parent" in argv
    env = iso.clean_env(tmp_path)
    assert "HOME" in env and all("KEY" not in k for k in env)




_HOST = """
import asyncio, sys, time
from sandbox import KernelSandbox

async def main():
    sb = KernelSandbox(isolation=sys.argv[1], timeout=30)
    await sb.start()
    await sb.execute("x = 1")
    print(sb._km.connection_file, flush=True)
    time.sleep(120)  # the test kills this process with SIGKILL

asyncio.run(main())
"""


def _processes_naming(needle: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if needle.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("mode", MODES)
async def test_a_sigkilled_host_leaves_no_kernel_behind(mode: str, tmp_path: Path) -> None:
    """A run killed with SIGKILL (no atexit, no cleanup) must not leave its kernels running:
    they hold the corpus in memory and would pile up over killed runs."""
    import signal
    import subprocess
    import sys
    import time

    host = subprocess.Popen([sys.executable, "-c", _HOST, mode], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        connection_file = host.stdout.readline().strip()
        assert connection_file, "the host process did not start its kernel"
        assert _processes_naming(connection_file), "the kernel is not running"
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    deadline = time.monotonic() + 15
    while _processes_naming(connection_file) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _processes_naming(connection_file) == [], f"{mode}: the kernel outlived its killed host"
