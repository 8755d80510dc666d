"""A run's directory is held by one process from before anything is written, and a run leaves
no sandbox folders behind (ScriptedLM, real kernels, real SQLite)."""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path

import pytest

from delm_rlm import RunStore, ScriptedLM, Team
from delm_rlm.errors import ConfigError, RunStateError
from delm_rlm.team.rundir import holding_run

DOCS = ["spam: a\nham: b\nspam: c\n", "ham: d\nspam: e\n"]
COUNT = 'sum(1 for line in chunk.splitlines() if line.startswith("spam"))'
AGENT = f"""```repl
n = {COUNT}
print(propose("partial", f"{{n}} spam lines", value=n, check='print({COUNT})'))
answer["content"] = str(n)
answer["ready"] = True
```"""
FINAL = """```repl
answer["content"] = str(sum(g["value"] for g in gists(kind="partial")))
answer["ready"] = True
```"""


def script(messages: list[dict], role: str) -> str:
    return FINAL if role == "finalizer" else AGENT


def sandbox_folders(tmp: Path) -> set[str]:
    return {p.name for p in tmp.iterdir() if p.name.startswith(("delm-sb-", "delm-ws-"))}


async def test_a_held_run_directory_refuses_a_second_start(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with holding_run(run_dir):
        with pytest.raises(RunStateError, match="being worked on"):
            await Team(ScriptedLM(script), agents=1, plan="split", run_dir=run_dir).run("How many spam?", DOCS)
    # Nothing was written by the refused start.
    assert not (run_dir / "store.sqlite").exists()


def test_two_simultaneous_starts_on_one_directory_never_both_run(tmp_path: Path) -> None:
    for attempt in range(3):
        run_dir = tmp_path / f"run{attempt}"
        outcomes: list[object] = []
        barrier = threading.Barrier(2)

        def start() -> None:
            team = Team(ScriptedLM(script), agents=1, plan="split", run_dir=run_dir)
            barrier.wait()
            try:
                outcomes.append(asyncio.run(team.run("How many spam?", DOCS)))
            except (RunStateError, ConfigError) as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=start) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=240)
        results = [o for o in outcomes if not isinstance(o, Exception)]
        refusals = [o for o in outcomes if isinstance(o, Exception)]
        assert len(results) == 1 and len(refusals) == 1, outcomes
        assert results[0].answer == "3"
        with RunStore(run_dir / "store.sqlite") as store:
            with store.reading() as tx:
                assert len(tx.list_tasks()) == 2  # one task per document, not two runs' worth


async def test_a_run_leaves_no_sandbox_folders_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A private temp dir: other processes' sandboxes must not count.
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    result = await Team(ScriptedLM(script), agents=3, plan="split", run_dir=tmp_path / "run").run(
        "How many spam?", DOCS
    )
    assert result.answer == "3"
    assert sandbox_folders(private_tmp) == set()
    # The trace (and so the run report) says which isolation really ran, not only "auto".
    ran = {e.data.get("isolation") for e in result.trace if e.kind == "agent_step" and e.data.get("isolation")}
    assert ran and ran <= {"bubblewrap", "unshare", "none"}
