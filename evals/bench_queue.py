"""Claim throughput and contention of the task queue (a benchmark, not a test).

Each agent loops claim -> complete until the queue is empty, over one run store file, with
no simulated work: the worst case for contention. Modes:

  asyncio   N asyncio tasks in one event loop sharing one RunStore (how a Team runs agents)
  threads   N threads sharing one RunStore (one connection, the store's lock serializes)
  conns     N threads each with its own RunStore on the same file: SQLite's file lock and
            busy handler arbitrate, as they do between processes
  procs     N processes (spawn) each with its own RunStore (opt-in: --procs)

Reported per mode and agent count: cycles/s (one cycle = one claim + one complete), claim
latency p50/p99, seconds spent waiting for the write lock, lost races, double claims.
A lost race is a claim that came back empty while the queue still had READY tasks; a double
claim is a task id handed to two agents. Both must be 0: claims are one BEGIN IMMEDIATE
transaction each.

    python -m evals.bench_queue                  # 1, 8, 32 agents; 2000 tasks per config
    python -m evals.bench_queue --agents 1 8 32 --tasks 4000 --procs --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from rich.console import Console
from rich.table import Table

from delm_rlm.errors import ConfigError, RunStateError
from delm_rlm.state.queue import TaskQueue, TaskState
from delm_rlm.state.sqlite import RunStore


class BenchRow(BaseModel):
    mode: str
    agents: int
    tasks: int
    seconds: float
    cycles_per_s: float
    claim_p50_ms: float
    claim_p99_ms: float
    lock_wait_s: float
    lost_races: int
    double_claims: int
    agents_that_claimed: int


class AgentLog(BaseModel):
    claimed: list[str] = []
    latencies: list[float] = []
    lost_races: int = 0
    lock_wait_s: float = 0.0


def _fresh_queue(directory: Path, tasks: int) -> Path:
    path = directory / f"bench-{time.monotonic_ns()}.sqlite"
    store = RunStore(path)
    queue = TaskQueue(store, lease_s=600.0)
    with store.transaction():  # one transaction: setup time is not what we measure
        for i in range(tasks):
            queue.add(f"task {i}")
    store.close()
    return path


def _agent_step(queue: TaskQueue, agent: str, log: AgentLog) -> bool:
    t0 = time.perf_counter()
    task = queue.claim(agent)
    log.latencies.append(time.perf_counter() - t0)
    if task is None:
        if queue.counts()[TaskState.READY] > 0:
            log.lost_races += 1
            return True
        return False
    log.claimed.append(task.id)
    queue.complete(task.id, agent, [])
    return True


def _agent_loop(queue: TaskQueue, agent: str, log: AgentLog, start: Any) -> None:
    start.wait()
    while _agent_step(queue, agent, log):
        pass


def _proc_agent(path: str, agent: str, start: Any, out: Any) -> None:
    store = RunStore(path)
    log = AgentLog()
    _agent_loop(TaskQueue(store, lease_s=600.0), agent, log, start)
    log.lock_wait_s = store.stats["lock_wait_s"]
    out.put((agent, log.model_dump()))


def run_mode(mode: str, agents: int, tasks: int, directory: Path) -> BenchRow:
    path = _fresh_queue(directory, tasks)
    logs = {f"a{i}": AgentLog() for i in range(agents)}
    stores: list[RunStore] = []
    if mode == "asyncio":
        store = RunStore(path)
        stores.append(store)
        queue = TaskQueue(store, lease_s=600.0)

        async def agent(name: str) -> None:
            while _agent_step(queue, name, logs[name]):
                await asyncio.sleep(0)  # let the other agents in, as real agents do

        async def main() -> None:
            await asyncio.gather(*(agent(name) for name in logs))

        t0 = time.perf_counter()
        asyncio.run(main())
        seconds = time.perf_counter() - t0
    elif mode in ("threads", "conns"):
        shared = RunStore(path)
        stores.append(shared)
        barrier = threading.Barrier(agents + 1)
        threads = []
        for name in logs:
            store = shared
            if mode == "conns":
                store = RunStore(path)
                stores.append(store)
            queue = TaskQueue(store, lease_s=600.0)
            threads.append(threading.Thread(target=_agent_loop, args=(queue, name, logs[name], barrier)))
        for t in threads:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        seconds = time.perf_counter() - t0
    elif mode == "procs":
        ctx = mp.get_context("spawn")
        barrier, out = ctx.Barrier(agents + 1), ctx.Queue()
        procs = [ctx.Process(target=_proc_agent, args=(str(path), name, barrier, out)) for name in logs]
        for p in procs:
            p.start()
        barrier.wait()
        t0 = time.perf_counter()
        for _ in procs:
            name, data = out.get()
            logs[name] = AgentLog.model_validate(data)
        seconds = time.perf_counter() - t0
        for p in procs:
            p.join()
    else:
        raise ConfigError(f"unknown mode {mode!r}; use asyncio, threads, conns or procs")

    claimed = Counter(tid for log in logs.values() for tid in log.claimed)
    check = TaskQueue(RunStore(path))
    missing = tasks - len(claimed)
    if missing or not check.drained():
        raise RunStateError(f"{mode}/{agents}: {missing} tasks never claimed; the queue is broken")
    latencies = sorted(x for log in logs.values() for x in log.latencies)
    lock_wait = sum(s.stats["lock_wait_s"] for s in stores) + sum(l.lock_wait_s for l in logs.values())
    for s in stores:
        s.close()
    check.store.close()
    return BenchRow(
        mode=mode,
        agents=agents,
        tasks=tasks,
        seconds=round(seconds, 3),
        cycles_per_s=round(tasks / seconds, 1),
        claim_p50_ms=round(statistics.median(latencies) * 1000, 3),
        claim_p99_ms=round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1000, 3),
        lock_wait_s=round(lock_wait, 3),
        lost_races=sum(log.lost_races for log in logs.values()),
        double_claims=sum(n - 1 for n in claimed.values() if n > 1),
        agents_that_claimed=sum(1 for log in logs.values() if log.claimed),
    )


def main(argv: list[str] | None = None) -> list[BenchRow]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per configuration")
    parser.add_argument("--modes", nargs="+", default=["asyncio", "threads", "conns"],
                        choices=["asyncio", "threads", "conns", "procs"])
    parser.add_argument("--procs", action="store_true", help="also run the multi-process mode")
    parser.add_argument("--json", type=Path, help="write the rows here as JSON")
    args = parser.parse_args(argv)
    modes = list(args.modes) + (["procs"] if args.procs and "procs" not in args.modes else [])

    console = Console(width=max(Console().width, 120))  # the table must not wrap in logs
    rows: list[BenchRow] = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in modes:
            for n in args.agents:
                with console.status(f"{mode}, {n} agents, {args.tasks} tasks..."):
                    rows.append(run_mode(mode, n, args.tasks, Path(tmp)))
    table = Table(title=f"TaskQueue claim throughput (claim + complete per cycle, {args.tasks} tasks)")
    for col in ("mode", "agents", "cycles/s", "claim p50 ms", "claim p99 ms", "lock wait s",
                "lost races", "double claims", "agents claimed"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(r.mode, str(r.agents), f"{r.cycles_per_s:,.0f}", f"{r.claim_p50_ms:.3f}",
                      f"{r.claim_p99_ms:.3f}", f"{r.lock_wait_s:.2f}", str(r.lost_races),
                      str(r.double_claims), str(r.agents_that_claimed))
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps([r.model_dump() for r in rows], indent=2))
        console.print(f"rows written to {args.json}")
    return rows


if __name__ == "__main__":
    main()
