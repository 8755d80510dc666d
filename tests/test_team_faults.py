"""Faults: an agent dies mid-task, a kernel dies mid-task, the whole run is killed and resumed.

ScriptedLM agents, real kernels, real SQLite files, a real SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from delm_rlm import RunStore, ScriptedLM, Team, Trace
from delm_rlm.gists import GistStatus
from delm_rlm.state.queue import TaskQueue, TaskState

# The scripted model, as source: the killed subprocess and the resuming test use the same one.
SCRIPT_SRC = '''
import re

COUNT = 'sum(1 for line in chunk.splitlines() if line.startswith("spam"))'
SLEEP = 0.0

def script(messages, role):
    if role == "finalizer":
        return (
            "```repl\\n"
            "answer['content'] = str(sum(g['value'] for g in gists(kind='partial')))\\n"
            "answer['ready'] = True\\n```"
        )
    if role == "verifier":
        return "REJECT: not expected"
    first = messages[1]["content"]
    later = " ".join(m["content"] for m in messages[2:])
    if "Your task t2:" in first and CRASH_T2 and "crashed" not in later:
        return "```repl\\nimport os; os._exit(1)\\n```"
    return (
        "```repl\\n"
        f"n = {COUNT}\\n"
        f"print(propose('partial', f'{{n}} spam lines', value=n, check='print({COUNT})'))\\n"
        f"import time; time.sleep({SLEEP})\\n"
        "answer['content'] = str(n)\\n"
        "answer['ready'] = True\\n```"
    )
'''

DOCS = [
    "spam: a\nham: b\n",
    "spam: c\nspam: d\n",
    "ham: e\n",
    "spam: f\nham: g\nspam: h\nspam: i\n",
    "ham: j\nspam: k\n",
    "spam: l\n",
]
QUESTION = "How many lines are spam?"
TRUE_COUNT = sum(line.startswith("spam") for d in DOCS for line in d.splitlines())


def _script(sleep: float = 0.0, crash_t2: bool = False):
    namespace: dict = {"CRASH_T2": crash_t2}
    exec(SCRIPT_SRC, namespace)
    namespace["SLEEP"] = sleep
    return namespace["script"]


async def test_a_dead_agent_s_task_is_finished_by_another_agent(tmp_path: Path) -> None:
    team = Team(ScriptedLM(_script()), agents=2, lease_s=1.0, plan="split", run_dir=tmp_path)
    killed: list[str] = []
    cancelled: list[str] = []  # the asyncio task cancelled, by name

    def kill_first_claimer_of_t1(event) -> None:
        # The agent dies right after claiming t1: no release, no renewal, its kernel goes.
        # Subscribers are called synchronously in the emitting code: the claim runs in the
        # claiming agent's own asyncio task, so the current task is that agent.
        if event.kind == "task_claimed" and event.task == "t1" and not killed:
            killed.append(event.agent)
            agent = asyncio.current_task()
            if agent is not None:  # (an error here would be swallowed by the trace)
                cancelled.append(agent.get_name())
                agent.cancel()

    team.trace_subscribers.append(kill_first_claimer_of_t1)
    started = time.monotonic()
    result = await team.run(QUESTION, DOCS)
    assert cancelled == [f"delm-agent-{killed[0]}"]  # the claimer itself was cancelled
    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    t1 = TaskQueue(RunStore(result.store_path)).get("t1")
    assert t1.state == TaskState.DONE and t1.attempts == 2
    assert any("expired" in e for e in t1.errors)
    claims = [e for e in result.trace if e.kind == "task_claimed" and e.task == "t1"]
    assert [e.agent for e in claims][0] == killed[0]
    assert claims[-1].agent != killed[0]
    done_by = [e.agent for e in result.trace if e.kind == "task_done" and e.task == "t1"]
    assert done_by == [claims[-1].agent]
    assert time.monotonic() - started >= 1.0  # it waited for the lease to expire


async def test_a_crashed_kernel_is_restarted_and_the_task_completes(tmp_path: Path) -> None:
    result = await Team(ScriptedLM(_script(crash_t2=True)), agents=2, plan="split", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    cells = [e for e in result.trace if e.kind == "code_cell" and e.task == "t2"]
    assert "os._exit(1)" in cells[0].data["code"] and cells[0].data["error"]
    # After the restart, the task's `chunk` was there again for the next cell.
    assert not cells[-1].data["error"]
    store = RunStore(result.store_path)
    t2 = TaskQueue(store).get("t2")
    assert t2.state == TaskState.DONE and t2.attempts == 1
    assert store.get_gist(t2.gist_ids[0]).value == 2


RUNNER = '''
import asyncio, sys
{script}
from delm_rlm import ScriptedLM, Team
SLEEP = 0.4
CRASH_T2 = False
docs = {docs!r}
asyncio.run(Team(ScriptedLM(script), agents=2, lease_s=2.0, plan="split", run_dir=sys.argv[1]).run({question!r}, docs))
'''


async def test_a_killed_run_resumes_without_losing_or_repeating_work(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER.format(script=textwrap.dedent(SCRIPT_SRC), docs=DOCS, question=QUESTION))
    proc = subprocess.Popen(
        [sys.executable, str(runner), str(run_dir)],
        cwd=tmp_path, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    trace_path = run_dir / "trace.jsonl"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if trace_path.exists() and trace_path.read_text().count('"kind":"gist_admitted"') >= 3:
                break
            if proc.poll() is not None:
                raise AssertionError(f"the run ended before it was killed: {proc.stderr.read().decode()[-2000:]}")
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("no admissions within 60 s")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL

    store = RunStore(run_dir / "store.sqlite")
    before_admitted = {g.id: g.value for g in store.list_gists(status=GistStatus.ADMITTED)}
    before_done = {t.id for t in TaskQueue(store).all() if t.state == TaskState.DONE}
    assert before_admitted and store.meta().status == "running"
    assert len(before_done) < len(DOCS)

    result = await Team.resume(run_dir, lm=ScriptedLM(_script()))
    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    # Every gist admitted before the kill is still admitted, unchanged.
    after = {g.id: g for g in store.list_gists(status=GistStatus.ADMITTED)}
    assert all(gid in after and after[gid].value == value for gid, value in before_admitted.items())
    # No task done twice; tasks done before the kill were not even claimed again.
    events = Trace.load(trace_path)
    resumed_at = max(e.seq for e in events if e.kind == "run_started")
    done_counts: dict[str, int] = {}
    for e in events:
        if e.kind == "task_done":
            done_counts[e.task] = done_counts.get(e.task, 0) + 1
    assert done_counts == {f"t{i}": 1 for i in range(1, len(DOCS) + 1)}
    reclaimed = {e.task for e in events if e.kind == "task_claimed" and e.seq > resumed_at}
    assert not reclaimed & before_done
    # One verified partial per document: a redone task's proposal merged into its old gist.
    partials = store.list_gists(status=GistStatus.ADMITTED, kinds="partial")
    assert len(partials) == len(DOCS)
    assert store.meta().status == "answered"
    # The result's usage covers the whole run: the killed session's calls count too.
    calls = [e for e in events if e.kind == "model_call"]
    killed_calls = [e for e in calls if e.seq < resumed_at]
    assert killed_calls, "the killed session made model calls before it was killed"
    assert result.usage.calls == len(calls)
    assert result.usage.input_tokens == sum(e.data["input_tokens"] for e in calls)
    assert sum(u.calls for u in result.usage_by_role.values()) == len(calls)


async def test_a_cancelled_team_run_cancels_the_model_calls_its_cells_wait_on(tmp_path: Path) -> None:
    # A benchmark's timeout cancels the run: the llm_query an agent's cell is blocked on must
    # be cancelled with it, not run on (minutes of a local model's time) after the run is gone.
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def script(messages: list[dict], role: str) -> str:
        if role == "sub":
            started.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise
        return "```repl\nprint(llm_query('What does this chunk say? ' + chunk[:40]))\n```"

    lm = ScriptedLM(script)
    run = asyncio.create_task(Team(lm, agents=2, plan="split", run_dir=tmp_path).run(QUESTION, DOCS))
    await asyncio.wait_for(started.wait(), 60)
    run.cancel()
    try:
        await asyncio.wait_for(run, 60)
    except asyncio.CancelledError:
        pass
    assert cancelled.is_set()
    assert lm.in_flight == 0  # nothing of the run is still calling the model
