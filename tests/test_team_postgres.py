"""A team whose run state lives in PostgreSQL (`Team(store=URL)`), against the private test
server: ScriptedLM agents, real kernels; the gists, tasks and meta are read back from the
database, and the run directory keeps only the trace, the corpus and the store's URL."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from delm_rlm import ScriptedLM, Team
from delm_rlm.errors import ConfigError
from delm_rlm.state.opener import open_state
from delm_rlm.state.postgres import delete_run
from delm_rlm.state.postgres_conn import parse_postgres_url
from delm_rlm.state.queue import TaskQueue, TaskState
from delm_rlm.team.rundir import load_corpus
from scripted_models import team_counter

DOCS = ["apple pie\nbanana bread\napple tart\n", "cherry jam\nApple juice\nplum\n"]
QUESTION = "How many lines mention 'apple'?"


def server_connections(url: str) -> int:
    """Client connections to the test database, not counting the one asking."""
    import psycopg

    with psycopg.connect(parse_postgres_url(url).conninfo) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                           "AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


async def test_a_team_keeps_its_state_in_postgres_and_resumes_from_the_recorded_url(
    tmp_path: Path, postgres_url: str
) -> None:
    run_dir = tmp_path / "run"
    gc.collect()  # stores other tests dropped close their connections now, not mid-measure
    before = server_connections(postgres_url)
    result = await Team(ScriptedLM(team_counter), agents=2, plan="split", run_dir=run_dir,
                        store=postgres_url).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert server_connections(postgres_url) == before  # the finished run let its connection go
    assert result.answer == "Answer: 3"

    recorded = (run_dir / "store.url").read_text().strip()
    run_id = parse_postgres_url(recorded).run_id
    assert run_id is not None and result.store_path == recorded
    assert recorded.startswith(parse_postgres_url(postgres_url).shown)  # printable: no password
    assert not (run_dir / "store.sqlite").exists()  # the state is in the database, not beside it
    try:
        store = open_state(postgres_url, run_id=run_id)
        partials = store.list_gists(status="admitted", kinds="partial")
        assert sorted(g.value for g in partials) == [1, 2]
        assert sorted(result.gist_ids) == sorted(g.id for g in partials)
        assert len(store.list_gists(status="admitted", kinds="failure")) == 1  # t2's false first claim
        assert {t.state for t in TaskQueue(store).all()} == {TaskState.DONE}
        assert store.meta().status == "answered" and store.meta().answer == "Answer: 3"
        # The corpus is in the database too: a fresh directory elsewhere gets the same one.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        assert load_corpus(elsewhere, store).docs == load_corpus(run_dir).docs
        assert (elsewhere / "corpus.json").read_bytes() == (run_dir / "corpus.json").read_bytes()
        store.close()

        # The directory names the run: a resume finds it in the database; a new run refuses it.
        again = await Team.resume(run_dir, lm=ScriptedLM([]), store=postgres_url)
        assert again.answer == "Answer: 3" and again.gist_ids == result.gist_ids
        assert server_connections(postgres_url) == before  # the answered resume let its connection go too
        with pytest.raises(ConfigError, match="already holds a run"):
            await Team(ScriptedLM([]), agents=1, run_dir=run_dir, store=postgres_url).run(QUESTION, DOCS)
        # A URL naming a started run is refused for a new run (it would mix two runs' gists).
        with pytest.raises(ConfigError, match="already holds a started run"):
            await Team(ScriptedLM([]), agents=1, run_dir=tmp_path / "other",
                       store=f"{postgres_url}{'&' if '?' in postgres_url else '?'}run={run_id}").run(QUESTION, DOCS)
    finally:
        delete_run(postgres_url, run_id)


def test_store_takes_only_a_postgres_url(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="store= takes a PostgreSQL URL"):
        Team(ScriptedLM([]), run_dir=tmp_path / "r", store=str(tmp_path / "x.sqlite"))


def test_ask_with_store_runs_in_postgres_and_prints_the_gists_it_rests_on(tmp_path: Path, postgres_url: str) -> None:
    from test_cli import delm

    notes = tmp_path / "notes"
    notes.mkdir()
    for i, doc in enumerate(DOCS):
        (notes / f"{i}.txt").write_text(doc)
    proc = delm("ask", QUESTION, "--context", str(notes), "--agents", "2", "--plan", "split", "--out", "run",
                "--store", postgres_url, "--quiet", cwd=tmp_path, script="team_counter")
    assert proc.returncode == 0, proc.stderr
    recorded = (tmp_path / "run" / "store.url").read_text().strip()
    run_id = parse_postgres_url(recorded).run_id
    assert run_id is not None
    try:
        assert "Answer: 3" in proc.stdout and "the answer rests on" in proc.stdout
        assert proc.stdout.count("PARTIAL") == 2  # kinds read back from the database, not "?"
        assert not (tmp_path / "run" / "store.sqlite").exists()
        again = delm("resume", "run", "--quiet", cwd=tmp_path, script="team_counter")
        assert again.returncode == 0, again.stderr
        assert "Answer: 3" in again.stdout
        refused = delm("ask", QUESTION, "--context", str(notes), "--method", "rlm", "--store", postgres_url,
                       cwd=tmp_path, script="team_counter")
        assert refused.returncode == 2 and "--store keeps a team's state" in refused.stderr
    finally:
        delete_run(postgres_url, run_id)
