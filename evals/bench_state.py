"""Claims and admissions per second on one run's state: PostgreSQL versus SQLite, with 1, 4,
16 and 64 worker processes (a benchmark, not a test).

Each cell is one fresh run and N spawned worker processes, each with its own store (its own
connection or file handle), as workers on many machines would have. No model runs (the
cost measured is the state's alone, what a ScriptedLM run adds on top). Two phases, each a
fixed window of `--seconds` started by a barrier:

  claims       every worker loops `TaskQueue.claim` (the lease-expiry scan, then one claim)
               over a pool of READY tasks; afterwards the store must hold exactly as many
               CLAIMED tasks as claims were counted, each claimed once (else: double claims)
  admissions   every worker loops `SharedContext.add_pending` (a new gist) + `admit`

Reported per cell: operations per second, latency p50/p99, the workers' CPU seconds, and the
machine's CPU busy share over the window (from /proc/stat; other programs count too).

    python -m evals.bench_state                               # SQLite, and PostgreSQL when
                                                              # DELM_RLM_TEST_POSTGRES_URL is set
    python -m evals.bench_state --postgres-url postgresql://me@db/bench --workers 1 4 16 64 \\
        --seconds 3 --json bench_state.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from delm_rlm.errors import RunStateError
from delm_rlm.gists import Gist, Provenance
from delm_rlm.state.context import SharedContext
from delm_rlm.state.protocol import RunState, TaskState
from delm_rlm.state.queue import TaskQueue
from delm_rlm.state.sqlite import RunStore

PHASES = ("claims", "admissions")
_BARRIER_TIMEOUT_S = 300.0  # 64 spawned processes import the library on 2 cores: be patient


class CellRow(BaseModel):
    backend: str
    workers: int
    phase: str
    ops: int
    seconds: float
    ops_per_s: float
    p50_ms: float
    p99_ms: float
    worker_cpu_s: float
    machine_busy: float | None  # share of all cores busy during the window, 0..1
    double_claims: int | None = None
    pool_drained: bool | None = None


class WorkerPhase(BaseModel):
    ops: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    latencies: list[float] = []
    claimed: list[str] = []
    drained: bool = False


def _cpu_ticks() -> tuple[int, int] | None:
    """(busy, total) jiffies of the whole machine, or None off Linux."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return sum(fields) - idle, sum(fields)


def _claims(store: RunState, name: str, deadline: float, log: WorkerPhase) -> None:
    queue = TaskQueue(store, lease_s=3600.0)
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        task = queue.claim(name)
        log.latencies.append(time.perf_counter() - started)
        if task is None:
            log.drained = True
            return
        log.claimed.append(task.id)
        log.ops += 1


def _admissions(store: RunState, name: str, deadline: float, log: WorkerPhase) -> None:
    context = SharedContext(store)
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        proposed = context.add_pending(Gist(
            kind="partial", text=f"chunk {log.ops} of {name} has 1 error", value=1,
            provenance=Provenance(agent_id=name),
        ))
        context.admit(proposed.id, note="bench: admitted without checks")
        log.latencies.append(time.perf_counter() - started)
        log.ops += 1


def _worker(opener: Callable[[], RunState], name: str, seconds: float, barrier: Any, out: Any) -> None:
    store = opener()
    results: dict[str, dict[str, Any]] = {}
    for phase, work in (("claims", _claims), ("admissions", _admissions)):
        barrier.wait(timeout=_BARRIER_TIMEOUT_S)
        log = WorkerPhase()
        started, cpu = time.perf_counter(), time.process_time()
        work(store, name, started + seconds, log)
        log.seconds, log.cpu_s = time.perf_counter() - started, time.process_time() - cpu
        results[phase] = log.model_dump()
        barrier.wait(timeout=_BARRIER_TIMEOUT_S)  # the window closes for everyone together
    store.close()
    out.put((name, results))


def _fill_pool(store: RunState, tasks: int) -> None:
    now = time.time()
    with store.transaction() as tx:  # one transaction: setup time is not what we measure
        for i in range(tasks):
            task = tx.add_task(f"bench task {i}", [], 3, "bench", now)
            tx.update_task(task.id, state=TaskState.READY)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def run_cell(backend: str, opener: Callable[[], RunState], workers: int, seconds: float, tasks: int) -> list[CellRow]:
    coordinator = opener()
    _fill_pool(coordinator, tasks)
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(workers + 1), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(opener, f"w{i}", seconds, barrier, out)) for i in range(workers)]
    for p in procs:
        p.start()
    busy: dict[str, float | None] = {}
    for phase in PHASES:
        barrier.wait(timeout=_BARRIER_TIMEOUT_S)
        before = _cpu_ticks()
        barrier.wait(timeout=_BARRIER_TIMEOUT_S)
        after = _cpu_ticks()
        busy[phase] = (
            (after[0] - before[0]) / max(1, after[1] - before[1]) if before and after else None
        )
    logs = {name: {k: WorkerPhase.model_validate(v) for k, v in data.items()}
            for name, data in (out.get(timeout=_BARRIER_TIMEOUT_S) for _ in procs)}
    for p in procs:
        p.join(timeout=60)
        if p.exitcode != 0:
            raise RunStateError(f"{backend}/{workers}: a worker exited with {p.exitcode}")
    rows = []
    for phase in PHASES:
        parts = [log[phase] for log in logs.values()]
        ops = sum(p.ops for p in parts)
        window = max(p.seconds for p in parts)
        latencies = [x for p in parts for x in p.latencies]
        row = CellRow(
            backend=backend, workers=workers, phase=phase, ops=ops, seconds=round(window, 3),
            ops_per_s=round(ops / window, 1), p50_ms=round(_percentile(latencies, 0.5), 3),
            p99_ms=round(_percentile(latencies, 0.99), 3),
            worker_cpu_s=round(sum(p.cpu_s for p in parts), 2),
            machine_busy=None if busy[phase] is None else round(busy[phase], 3),
        )
        if phase == "claims":
            claimed = [tid for p in parts for tid in p.claimed]
            row.double_claims = len(claimed) - len(set(claimed))
            row.pool_drained = any(p.drained for p in parts)
            with coordinator.reading() as tx:
                in_store = {t.id: t.attempts for t in tx.list_tasks(states=[TaskState.CLAIMED])}
            if set(in_store) != set(claimed) or any(n != 1 for n in in_store.values()):
                raise RunStateError(
                    f"{backend}/{workers}: the store holds {len(in_store)} claimed tasks, the "
                    f"workers counted {len(set(claimed))} claims: the claims are broken"
                )
        rows.append(row)
    coordinator.close()
    return rows


def _postgres_opener(url: str) -> tuple[Callable[[], RunState], Callable[[], None]]:
    from delm_rlm.state.postgres import PostgresRunStore, delete_run

    made = PostgresRunStore(url)  # a new run for this cell
    made.close()
    return partial(PostgresRunStore, url, made.run_id), partial(delete_run, url, made.run_id)


def main(argv: list[str] | None = None) -> list[CellRow]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each phase's window")
    parser.add_argument("--tasks", type=int, default=12000, help="READY tasks in each cell's pool")
    parser.add_argument("--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"])
    parser.add_argument("--postgres-url", default=os.environ.get("DELM_RLM_TEST_POSTGRES_URL"),
                        help="a database to bench in (default: $DELM_RLM_TEST_POSTGRES_URL)")
    parser.add_argument("--json", type=Path, default=Path("bench_state.json"), help="write the rows here")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 130))  # the table must not wrap in logs
    backends = list(args.backends)
    if "postgres" in backends and not args.postgres_url:
        console.print("[yellow]no --postgres-url (or DELM_RLM_TEST_POSTGRES_URL): SQLite only[/]")
        backends.remove("postgres")
    rows: list[CellRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            for n in args.workers:
                if backend == "sqlite":
                    opener: Callable[[], RunState] = partial(RunStore, Path(tmp) / f"bench-{n}.sqlite")
                    cleanup: Callable[[], None] = lambda: None  # noqa: E731 (the folder goes)
                else:
                    opener, cleanup = _postgres_opener(args.postgres_url)
                with console.status(f"{backend}, {n} worker processes..."):
                    try:
                        rows += run_cell(backend, opener, n, args.seconds, args.tasks)
                    finally:
                        cleanup()
    table = Table(title=f"Run state throughput: worker processes on one run, {args.seconds:g}s windows, "
                        f"{os.cpu_count()} CPU cores")
    for col in ("backend", "workers", "phase", "ops/s", "p50 ms", "p99 ms", "worker CPU s",
                "machine busy", "double claims", "pool drained"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r.backend, str(r.workers), r.phase, f"{r.ops_per_s:,.0f}", f"{r.p50_ms:.2f}", f"{r.p99_ms:.2f}",
            f"{r.worker_cpu_s:.1f}", "-" if r.machine_busy is None else f"{r.machine_busy:.0%}",
            "-" if r.double_claims is None else str(r.double_claims),
            "-" if r.pool_drained is None else ("yes" if r.pool_drained else "no"),
        )
    console.print(table)
    args.json.write_text(json.dumps([r.model_dump() for r in rows], indent=2))
    console.print(f"rows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
