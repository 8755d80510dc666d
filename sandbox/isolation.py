"""Isolation of the local kernel: detect what the machine offers and wrap the kernel command.

Strongest first:
- ``bubblewrap``: read-only root, the host's home hidden, a private writable workspace and
  runtime directory, private /tmp, no network, own PID/IPC/UTS namespaces, no capabilities.
- ``unshare``: own user and network namespace (no network), files as on the host.
- ``rlimits``: resource limits and a private working directory only.

Every mode also gets the resource limits (``RLIMIT_AS`` memory, no core files) applied by a
tiny launcher that then execs the kernel, so they hold whatever wrapper runs outside it.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

MODES: tuple[str, ...] = ("bubblewrap", "unshare", "rlimits")

INSTALL_HINT = {
    "bubblewrap": "install it with `apt-get install -y bubblewrap` (Debian/Ubuntu) and make sure "
    "user namespaces are allowed (sysctl kernel.unprivileged_userns_clone=1)",
    "unshare": "needs util-linux `unshare` and unprivileged user namespaces "
    "(sysctl kernel.unprivileged_userns_clone=1)",
    "rlimits": "",
}

# Runs inside the sandbox just before the kernel: limits are set on the kernel process itself.
# PR_SET_PDEATHSIG (1) survives the exec: the kernel is killed when the process that started
# it dies, even by SIGKILL, so a killed run leaves no kernel behind (bubblewrap's
# --die-with-parent does the same for its own wrapper). Strictly it fires when the starting
# *thread* ends: kernels start on the event loop's thread, which outlives its sandboxes.
# Linux only; elsewhere it is skipped.
_LAUNCHER = (
    "import os,resource,sys\n"
    "m=int(sys.argv[1])\n"
    "if m>0: resource.setrlimit(resource.RLIMIT_AS,(m,m))\n"
    "resource.setrlimit(resource.RLIMIT_CORE,(0,0))\n"
    "try:\n"
    "    import ctypes,signal\n"
    "    ctypes.CDLL(None,use_errno=True).prctl(1,int(signal.SIGKILL),0,0,0)\n"
    "except Exception:\n"
    "    pass\n"
    "os.execv(sys.executable,[sys.executable,'-m','ipykernel_launcher','-f',sys.argv[2]])\n"
)


def kernel_argv(memory_limit: int | None) -> list[str]:
    """The kernel command (jupyter fills in ``{connection_file}``), resource limits applied."""
    return [sys.executable, "-c", _LAUNCHER, str(memory_limit or 0), "{connection_file}"]


def _probe(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _bwrap_base(user_ns: bool) -> list[str]:
    argv = ["bwrap"]
    if user_ns:
        argv.append("--unshare-user")
    argv += [
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--tmpfs", "/tmp",
        "--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
        "--die-with-parent",
        # A new session keeps the sandbox off the host's terminal (TIOCSTI); signals from
        # the host then do not reach the kernel, hence the kernelspec's message interrupts.
        "--new-session",
        "--cap-drop", "ALL",
    ]
    return argv


@functools.cache
def _bwrap_user_ns() -> bool | None:
    """Whether bwrap works here: True with its own user namespace, False without, None not at all."""
    if shutil.which("bwrap") is None:
        return None
    for user_ns in (True, False):
        if _probe(_bwrap_base(user_ns) + ["--", "/bin/true"]):
            return user_ns
    return None


@functools.cache
def available() -> tuple[str, ...]:
    """The isolation modes this machine offers, strongest first (probed once per process)."""
    modes = []
    if _bwrap_user_ns() is not None:
        modes.append("bubblewrap")
    if shutil.which("unshare") and _probe(
        ["unshare", "--user", "--map-root-user", "--net", "--", "/bin/true"]
    ):
        modes.append("unshare")
    modes.append("rlimits")
    return tuple(modes)


def choose(requested: str) -> str:
    """Resolve ``"auto"`` to the strongest mode available, or check that a forced mode works."""
    if requested == "auto":
        return available()[0]
    if requested not in MODES:
        raise ValueError(
            f"isolation={requested!r} is not known; use 'auto' or one of {', '.join(MODES)}"
        )
    if requested not in available():
        from sandbox.base import SandboxError

        raise SandboxError(
            f"isolation={requested!r} is not available on this machine: {INSTALL_HINT[requested]}; "
            f"available here: {', '.join(available())}"
        )
    return requested


def _home_hidden_binds() -> list[str]:
    """Hide the host user's home (keys, configs) but keep the interpreter if it lives there."""
    home = Path.home().resolve()
    if home == Path("/"):
        return []
    argv = ["--tmpfs", str(home)]
    keep: set[Path] = set()
    for entry in [sys.prefix, sys.base_prefix, sys.exec_prefix, *sys.path]:
        if not entry:
            continue
        path = Path(entry).resolve()
        if path.is_dir() and path.is_relative_to(home) and path != home:
            keep.add(path)
    # Bind parents before children so a child bind is not hidden by its parent's.
    for path in sorted(keep, key=lambda p: len(p.parts)):
        if any(path.is_relative_to(k) and path != k for k in keep):
            continue
        argv += ["--ro-bind", str(path), str(path)]
    return argv


def wrap(mode: str, argv: list[str], *, workspace: Path, private_dir: Path) -> list[str]:
    """Wrap the kernel command for ``mode``; workspace and private dir keep their host paths."""
    if mode == "rlimits":
        return argv
    if mode == "unshare":
        return ["unshare", "--user", "--map-root-user", "--net", "--", *argv]
    if mode == "bubblewrap":
        user_ns = _bwrap_user_ns()
        if user_ns is None:
            raise RuntimeError("bubblewrap is not available")
        outer = _bwrap_base(user_ns) + _home_hidden_binds()
        for path in (workspace, private_dir):
            outer += ["--bind", str(path), str(path)]
        outer += ["--chdir", str(workspace), "--"]
        return outer + argv
    raise ValueError(f"unknown isolation mode {mode!r}")


def clean_env(private_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """An allow-listed environment: nothing of the host's (API keys, tokens) reaches the kernel."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "LC_ALL": os.environ.get("LC_ALL", "C.UTF-8"),
        "TZ": os.environ.get("TZ", "UTC"),
        "HOME": str(private_dir / "home"),
        "TMPDIR": "/tmp",
        "IPYTHONDIR": str(private_dir / "ipython"),
        "MPLCONFIGDIR": str(private_dir / "mpl"),
        "MPLBACKEND": "Agg",
        "JUPYTER_RUNTIME_DIR": str(private_dir),
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        # Two cores are shared by many kernels: one BLAS/OpenMP thread each.
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_NUM_THREADS": "1",
        # jemalloc/mimalloc reserve large virtual ranges that RLIMIT_AS counts.
        "ARROW_DEFAULT_MEMORY_POOL": "system",
    }
    for key in ("VIRTUAL_ENV", "PYENV_VERSION"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra or {})
    return env
