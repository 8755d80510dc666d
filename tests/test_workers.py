"""Several processes on one team run whose state is in PostgreSQL (`delm-rlm worker`,
`Team.join`), against the private test server: real processes, real kernels, ScriptedLM.

Fault tests: a worker SIGKILLed mid-task (its lease expires, another process finishes its
task; nothing is done or admitted twice), and the coordinating process SIGKILLed (a worker
takes the coordinator role over and finalizes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from delm_rlm import ScriptedLM, Team
from delm_rlm.errors import ConfigError
from delm_rlm.gists import GistKind
from delm_rlm.state.opener import open_state
from delm_rlm.state.postgres import delete_run
from delm_rlm.state.postgres_conn import parse_postgres_url
from delm_rlm.state.queue import TaskQueue, TaskState
from delm_rlm.team.coordination import EPOCH_COUNTER

TESTS = Path(__file__).resolve().parent
LINES = [["apple pie", "banana", "apple tart"], ["cherry", "Apple juice"], ["plum", "pear"],
         ["apple", "apple", "apple"], ["fig", "apple cake"], ["kiwi apple", "lime"]]
EXPECTED = sum(1 for doc in LINES for line in doc if "apple" in line.lower())


@pytest.fixture
def corpus_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "corpus"
    folder.mkdir()
    for i, doc in enumerate(LINES):
        (folder / f"doc{i}.txt").write_text("\n".join(doc) + "\n")
    return folder


def env_for(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DELM_TEST_")}
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra)
    return env


def start_coordinator(url: str, run_dir: Path, corpus: Path, **extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(TESTS / "team_process.py"), url, str(run_dir), str(corpus), "1"],
                            env=env_for(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def start_worker(url: str, run_id: str, out: Path, **extra: str) -> subprocess.Popen[str]:
    """`delm-rlm worker` in its own process."""
    command = [sys.executable, "-c", "import sys; from delm_rlm.cli import main; sys.exit(main())",
               "worker", "--store", url, "--run", run_id, "--agents", "1", "--out", str(out), "--json",
               "--model", "scripted:scripted_models:worker_counter", "--wait", "60"]
    return subprocess.Popen(command, env=env_for(**extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, timeout: float, procs: list[subprocess.Popen[str]]) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists():
        ended = [p for p in procs if p.poll() is not None]
        if ended:
            raise AssertionError(f"a process ended early (rc {ended[0].returncode}): {ended[0].stderr.read()[-2000:]}"
                                 if ended[0].stderr else "a process ended early")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} did not appear within {timeout} s")
        time.sleep(0.05)
    text = path.read_text().strip()
    while not text:  # written but not flushed yet
        time.sleep(0.05)
        text = path.read_text().strip()
    return text


def finished(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, dict]:
    out, err = proc.communicate(timeout=timeout)
    try:
        return proc.returncode, json.loads(out)
    except json.JSONDecodeError:
        raise AssertionError(f"rc {proc.returncode}, no JSON result; stderr: {err[-3000:]}") from None


def kill_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.communicate(timeout=30)


@contextmanager
def coordinated_run(url: str, tmp_path: Path, corpus: Path,
                    **env: str) -> Iterator[tuple[list[subprocess.Popen[str]], str]]:
    """A new run's coordinating process (steered by `env`): yields the test's processes (the
    coordinator first; the test adds its workers) and the run id; afterwards kills what is
    left and deletes the run."""
    run_dir = tmp_path / "run"
    procs = [start_coordinator(url, run_dir, corpus, **env)]
    run_id = None
    try:
        run_id = str(parse_postgres_url(wait_for(run_dir / "store.url", 60, procs)).run_id)
        yield procs, run_id
    finally:
        kill_all(procs)
        if run_id is not None:
            delete_run(url, run_id)


@contextmanager
def run_state(url: str, run_id: str) -> Iterator[Any]:
    store = open_state(url, run_id=run_id)
    try:
        yield store
    finally:
        store.close()


def check_exactly_once(store: object, run_id: str) -> dict[str, list[str]]:
    """Every task DONE, one admitted PARTIAL per chunk task, no gist admitted twice; returns
    each task's admitted partials' agents."""
    tasks = TaskQueue(store).all()  # type: ignore[arg-type]
    assert tasks and {t.state for t in tasks} == {TaskState.DONE}, [(t.id, t.state, t.last_error) for t in tasks]
    partials = store.list_gists(status="admitted", kinds=GistKind.PARTIAL)  # type: ignore[attr-defined]
    per_task = Counter(g.provenance.task_id for g in partials)
    assert set(per_task) == {t.id for t in tasks} and set(per_task.values()) == {1}, per_task
    assert sum(int(g.value) for g in partials) == EXPECTED
    ids = [g.id for g in store.list_gists()]  # type: ignore[attr-defined]
    assert len(ids) == len(set(ids))
    agents: dict[str, list[str]] = {}
    for g in partials:
        agents.setdefault(g.provenance.task_id, []).append(g.provenance.agent_id)
    return agents


def test_a_worker_killed_mid_task_loses_its_lease_and_another_process_finishes_its_task(
    tmp_path: Path, postgres_url: str, corpus_dir: Path
) -> None:
    stalled_mark = tmp_path / "stalled-task"
    with coordinated_run(postgres_url, tmp_path, corpus_dir, DELM_TEST_WAIT_FOR=str(stalled_mark)) as (procs, run_id):
        coordinator = procs[0]
        staller = start_worker(postgres_url, run_id, tmp_path / "w-stall", DELM_TEST_STALL_MARK=str(stalled_mark))
        procs.append(staller)
        others = [start_worker(postgres_url, run_id, tmp_path / f"w{i}", DELM_TEST_WAIT_FOR=str(stalled_mark))
                  for i in (2, 3)]
        procs += others
        stalled_task = wait_for(stalled_mark, 90, procs)
        os.kill(staller.pid, signal.SIGKILL)  # mid-task: claimed, its model call under way
        staller.wait(timeout=30)

        rc, result = finished(coordinator)
        assert rc == 0 and result["status"] == "answered", result
        assert result["answer"] == f"Answer: {EXPECTED}"
        for worker in others:
            rc, joined = finished(worker)
            assert rc == 0 and joined["answer"] == result["answer"], joined
        with run_state(postgres_url, run_id) as store:
            agents = check_exactly_once(store, run_id)
            task = TaskQueue(store).get(stalled_task)
            assert task.attempts >= 2  # the killed worker's claim, then the one that finished it
            killed_prefix = f"-{staller.pid}."
            assert not any(killed_prefix in a for a in agents[stalled_task])
            assert store.counter(EPOCH_COUNTER) == 1  # the coordinator never lost its role
            # Tasks were done by more than one process.
            assert len({a.rsplit(".", 1)[0] if "." in a else "coordinator" for a in sum(agents.values(), [])}) >= 2


def test_when_the_coordinator_is_killed_a_worker_takes_its_role_and_finalizes(
    tmp_path: Path, postgres_url: str, corpus_dir: Path
) -> None:
    stalled_mark = tmp_path / "stalled-task"
    with coordinated_run(postgres_url, tmp_path, corpus_dir, DELM_TEST_STALL_MARK=str(stalled_mark)) as (procs, run_id):
        coordinator = procs[0]
        workers = [start_worker(postgres_url, run_id, tmp_path / f"w{i}", DELM_TEST_WAIT_FOR=str(stalled_mark))
                   for i in (1, 2)]
        procs += workers
        wait_for(stalled_mark, 90, procs)
        os.kill(coordinator.pid, signal.SIGKILL)
        coordinator.wait(timeout=30)

        answers = [finished(w) for w in workers]
        assert all(rc == 0 and r["answer"] == f"Answer: {EXPECTED}" for rc, r in answers), answers
        with run_state(postgres_url, run_id) as store:
            check_exactly_once(store, run_id)
            meta = store.meta()
            assert meta.status == "answered" and meta.answer == f"Answer: {EXPECTED}"
            assert store.counter(EPOCH_COUNTER) == 2  # one takeover, by one of the two workers
            assert store.counter("finalize_rounds") == 1  # and one finalization
        takeovers = [line for w in (tmp_path / "w1", tmp_path / "w2") for line in (w / "trace.jsonl").read_text().splitlines()
                     if "stopped beating: this process finalizes" in line]
        assert len(takeovers) == 1


def test_a_server_restarted_mid_run_is_reconnected_to_and_the_run_finishes(
    tmp_path: Path, postgres_url: str, corpus_dir: Path, restart_server: Any
) -> None:
    gate = tmp_path / "go-on"
    with coordinated_run(postgres_url, tmp_path, corpus_dir, DELM_TEST_WAIT_FOR=str(gate)) as (procs, run_id):
        procs.append(start_worker(postgres_url, run_id, tmp_path / "w1", DELM_TEST_WAIT_FOR=str(gate)))
        with run_state(postgres_url, run_id) as store:
            deadline = time.monotonic() + 90
            while len({t.lease_holder for t in TaskQueue(store).all() if t.state == TaskState.CLAIMED}) < 2:
                assert time.monotonic() < deadline, "the two processes did not both claim a task"
                assert all(p.poll() is None for p in procs), "a process ended early"
                time.sleep(0.1)
        restart_server()  # both hold a claimed task mid-step; their connections are cut
        gate.write_text("go")

        rc, result = finished(procs[0])
        assert rc == 0 and result["answer"] == f"Answer: {EXPECTED}", result
        rc, joined = finished(procs[1])
        assert rc == 0 and joined["answer"] == result["answer"], joined
        with run_state(postgres_url, run_id) as store:
            check_exactly_once(store, run_id)


async def test_join_refuses_a_store_that_names_no_postgresql_run(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(ConfigError, match="RUN_ID"):
        await Team.join(postgres_url.split("?")[0], lm=ScriptedLM([]))
    with pytest.raises(ConfigError, match="PostgreSQL"):
        await Team.join(str(tmp_path / "store.sqlite"), lm=ScriptedLM([]))


def test_the_worker_command_refuses_a_store_that_is_not_a_postgresql_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from delm_rlm.cli import main

    code = main(["worker", "--store", str(tmp_path / "store.sqlite"), "--model", "scripted:scripted_models:worker_counter"])
    assert code == 2
    err = capsys.readouterr().err
    assert "PostgreSQL" in err and "RUN_ID" in err
