"""The run directory: its file names, where new ones go, the corpus kept for a resume, the
pid lock, and the usage of earlier sessions read back from the trace.

    <runs dir>/<run id>/
        store.sqlite                 gists, tasks, meta (`RunStore`)
        store.url                    instead, when they live in PostgreSQL: its URL, no password
        trace.jsonl                  the event stream (`Trace`)
        corpus.json [corpus.parquet] the context, so the run can be resumed
        run.pid                      which process is working on it
        run.lock                     held (flock) by that process, from before anything is written
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from delm_rlm.corpus import SAVED_CORPUS_FILE, SAVED_TABLE_FILE, SAVED_TABLE_JSON_FILE, Corpus
from delm_rlm.errors import NotFound, RunStateError
from delm_rlm.llm import Usage
from delm_rlm.runs import default_runs_dir, new_run_id
from delm_rlm.state.protocol import RunState
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import TraceEvent

STORE_FILE = "store.sqlite"
STORE_URL_FILE = "store.url"
CORPUS_FILES = (SAVED_CORPUS_FILE, SAVED_TABLE_FILE, SAVED_TABLE_JSON_FILE)  # what Corpus.save writes
CORPUS_BLOB_PREFIX = "corpus/"  # their blob names in a PostgreSQL run's store
TRACE_FILE = "trace.jsonl"
PID_FILE = "run.pid"
LOCK_FILE = "run.lock"


def stored_question(store_path: Path) -> str | None:
    """The question of the run a store holds, None when it holds no started run."""
    with RunStore(store_path) as store:
        return store.meta().question


# -- the pid lock --------------------------------------------------------------------------


def check_not_running(run_dir: Path) -> None:
    """Raise RunStateError when another live process is working on `run_dir`."""
    pid_file = run_dir / PID_FILE
    if not pid_file.exists():
        return
    try:
        pid = int(pid_file.read_text().strip())
    except ValueError:
        return
    if pid == os.getpid():
        return
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    except PermissionError:
        pass
    raise RunStateError(
        f"process {pid} is still working on {run_dir}; stop it first (or delete {pid_file} "
        "if you are sure it is not a delm-rlm run)"
    )


@contextmanager
def holding_run(run_dir: Path) -> Iterator[None]:
    """Hold `run_dir` for this process for the duration of the block: an exclusive lock taken
    before anything of the run is written, so of two processes starting or resuming the same
    run at once one refuses, whatever the timing. The kernel releases the lock when the
    process dies (even by SIGKILL); `run.pid` says which process holds it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = (run_dir / PID_FILE).read_text().strip() if (run_dir / PID_FILE).exists() else "another process"
        raise RunStateError(
            f"{run_dir} is being worked on by process {holder}; wait for it to stop (or stop it) "
            "before starting or resuming this run"
        ) from None
    pid_file = run_dir / PID_FILE
    try:
        check_not_running(run_dir)  # a pid file left by a live process of an older version
        pid_file.write_text(str(os.getpid()))
        yield
    finally:
        try:
            pid_file.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# -- the corpus ----------------------------------------------------------------------------


def save_corpus(run_dir: Path, corpus: Corpus, store: RunState | None = None) -> None:
    """Keep the context beside the store: a resumed run must see the very same corpus. With
    `store` (a run whose state is in PostgreSQL) its files also go into the store as blobs,
    checked by SHA-256, so a process on another machine gets it from there, not from a disk."""
    corpus.save(run_dir)
    if store is not None:
        for name in CORPUS_FILES:
            if (run_dir / name).is_file():
                store.put_blob(CORPUS_BLOB_PREFIX + name, (run_dir / name).read_bytes())


def load_corpus(run_dir: Path, store: RunState | None = None) -> Corpus:
    """The corpus `save_corpus` kept in `run_dir` (run directories of earlier versions too);
    where the directory lacks it (a fresh directory on another machine), the files are
    fetched from `store`'s blobs into it first."""
    if store is not None and not (run_dir / SAVED_CORPUS_FILE).exists():
        for name in CORPUS_FILES:
            try:
                data = store.get_blob(CORPUS_BLOB_PREFIX + name)
            except NotFound:
                continue
            (run_dir / name).write_bytes(data)
    return Corpus.load(run_dir)


# -- earlier sessions ----------------------------------------------------------------------


def usage_from_trace(events: Sequence[TraceEvent]) -> tuple[Usage, dict[str, Usage]]:
    """What the model calls recorded in trace events used, in all and by role: how a resumed
    run counts the sessions before it (the trace is flushed per event, so even a killed
    session's calls are there)."""
    total = Usage()
    by_role: dict[str, Usage] = {}
    for event in events:
        d = event.data
        if event.kind == "model_call":
            cost = d.get("cost_usd")
            used = Usage(
                calls=1, cached_calls=int(bool(d.get("cached"))),
                input_tokens=int(d.get("input_tokens") or 0), output_tokens=int(d.get("output_tokens") or 0),
                seconds=float(d.get("seconds") or 0.0), cost_usd=None if cost is None else float(cost),
            )
        elif event.kind == "model_call_failed":
            used = Usage(failed_calls=1)
        else:
            continue
        role = str(d.get("role") or "?")
        total = total + used
        by_role[role] = by_role.get(role, Usage()) + used
    return total, by_role
