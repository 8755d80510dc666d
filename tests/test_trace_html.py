"""The HTML run report: complete (every admitted gist, every model call, every cell), safe
(everything escaped, nothing fetched), and built from what a real run leaves behind."""

from __future__ import annotations

import html
import os
import re
from pathlib import Path

import pytest

from delm_rlm.gists import GistKind, GistStatus
from delm_rlm.state.sqlite import RunStore
from delm_rlm.trace import Trace
from delm_rlm.trace_html import RunFiles, RunNotFound, RunReport, write_html
from scripted_models import FRUIT_QUESTION, build_run


@pytest.fixture(scope="module")
def real_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import asyncio

    run_dir = tmp_path_factory.mktemp("run")
    asyncio.run(build_run(run_dir))
    return run_dir


def test_report_holds_every_admitted_gist_model_call_and_code_cell(real_run: Path, tmp_path: Path) -> None:
    out = write_html(real_run, tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    events = Trace.load(real_run / "trace.jsonl")
    calls = [e for e in events if e.kind == "model_call"]
    cells = [e for e in events if e.kind == "code_cell"]
    admitted = [e for e in events if e.kind == "gist_admitted"]
    rejected = [e for e in events if e.kind == "gist_rejected"]
    assert calls and cells and admitted and rejected  # the run exercised every part
    assert {e.agent for e in calls} == {"a1", "a2"}
    for e in calls:
        assert f'id="ev-{e.seq}"' in page
        assert html.escape(e.data["response"]) in page
    for e in cells:
        assert html.escape(e.data["code"]) in page
        assert html.escape(e.data["stdout"]) in page
    proposed = {e.data["gist"]["id"]: e.data["gist"] for e in events if e.kind == "gist_proposed"}
    for e in admitted:
        gid = e.data["gist_id"]
        card = _card(page, gid)
        assert html.escape(proposed[gid]["text"]) in card and "admitted" in card
        assert html.escape(e.data["note"]) in card
    for e in rejected:
        card = _card(page, e.data["gist_id"])
        assert html.escape(e.data["reason"]) in card and "rejected" in card
    # The question, the answer and usage from the trace, not re-computed elsewhere.
    assert html.escape(FRUIT_QUESTION) in page
    answer = [e for e in events if e.kind == "run_finished"][-1].data["answer"]
    assert f'id="answer">{html.escape(answer)}<' in page
    tokens_in = sum(e.data["input_tokens"] for e in calls)
    assert f"<td>{tokens_in:,}</td>" in page


def test_gists_from_the_store_show_evidence_and_the_failure_record(real_run: Path) -> None:
    page = RunReport.load(real_run / "store.sqlite").to_html()
    # Two agents race for the first gist id, so the gists are found by task, not by id.
    gists = RunStore(real_run / "store.sqlite").list_gists()
    counted = next(g for g in gists if g.provenance.task_id == "t1" and g.status == GistStatus.ADMITTED
                   and g.kind == GistKind.PARTIAL)
    false = next(g for g in gists if g.provenance.task_id == "t2" and g.status == GistStatus.REJECTED)
    (failure,) = [g for g in gists if g.kind == GistKind.FAILURE]
    card = _card(page, counted.id)
    assert "re-run by the verifier" in card and '<pre class="out">2\n' in card  # doc 0 has 2 apple lines
    # The rejection left a FAILURE gist in the store (no trace event of its own): it is shown
    # right after the rejected proposal, which links to it.
    card = _card(page, false.id)
    assert "rejected" in card and f'href="#gist-{failure.id}"' in card
    card = _card(page, failure.id)
    assert "FAILURE" in card and "claimed value 2 but the check printed" in card
    shown = re.findall(r'<article class="gist[^"]*" id="gist-(g\d+)"', page)
    assert shown[shown.index(false.id) + 1] == failure.id
    # Tasks from the store: t2 needed two attempts, and says why.
    tasks = page[page.index('<section id="tasks">'):page.index('<section id="timeline">')]
    assert "<th>t2</th>" in tasks and "claimed value 2 but the check printed" in tasks
    # The answer names the gists it rests on, linked: both tasks' admitted partials.
    rests_on = page[page.index("Rests on: "):].split("\n", 1)[0]
    partials = [g.id for g in gists if g.status == GistStatus.ADMITTED and g.kind == GistKind.PARTIAL]
    assert counted.id in partials and len(partials) == 2
    assert all(f'<a class="gref" href="#gist-{gid}">{gid}</a>' in rests_on for gid in partials)


def test_everything_from_a_run_is_escaped(real_run: Path) -> None:
    page = RunReport.load(real_run).to_html()
    # The corpus holds `</script><script>alert('x')</script>` and `<b>`; the prompts carried it.
    assert "alert(" in page  # it is in the report...
    assert "<script>alert" not in page and "<b>fresh</b>" not in page  # ...only as text
    assert page.count("<script>") == 1  # our own inline script, nothing else
    # Nothing fetched: no external URL in any src/href, and a CSP that forbids it.
    assert not re.search(r'(src|href)="(https?:)?//', page)
    assert "default-src 'none'" in page


def test_report_from_events_alone_with_hostile_strings(tmp_path: Path) -> None:
    trace = Trace(tmp_path / "trace.jsonl")
    trace.emit("run_started", question='What is "<img src=x onerror=alert(1)>"?', method="hybrid", corpus="c")
    trace.emit("task_created", task="t1", goal="look <here>", deps=[])
    trace.emit("task_claimed", agent="a1", task="t1", attempt=1, lease_s=60)
    trace.emit("gist_proposed", agent="a1", task="t1", gist={"id": "g1", "kind": "fact", "text": "x < y && y > z"})
    trace.emit("gist_admitted", agent="a1", task="t1", gist_id="g1", note="judge: fine", checks=["form", "judge"])
    trace.emit("task_done", agent="a1", task="t1", gist_ids=["g1"])
    trace.emit("finalize", agent="a1", answer="see g1 and g9", gist_ids=["g1"])
    trace.close()
    page = RunReport.load(tmp_path).to_html()
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert "x &lt; y &amp;&amp; y &gt; z" in page
    # Mentions of known gists link to them; unknown ids stay plain text.
    assert 'see <a class="gref" href="#gist-g1">g1</a> and g9' in page
    assert "look &lt;here&gt;" in page  # the task table from queue events
    assert "unfinished (no run_finished event)" in page


def test_locating_a_run(real_run: Path, tmp_path: Path) -> None:
    by_dir = RunFiles.locate(real_run)
    assert by_dir.trace == real_run / "trace.jsonl" and by_dir.store == real_run / "store.sqlite"
    assert RunFiles.locate(real_run / "trace.jsonl").store == real_run / "store.sqlite"
    assert RunFiles.locate(real_run / "store.sqlite").trace == real_run / "trace.jsonl"
    with pytest.raises(RunNotFound, match="no such file"):
        RunFiles.locate(tmp_path / "missing")
    with pytest.raises(RunNotFound, match="is it a run directory"):
        RunFiles.locate(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(RunNotFound, match="not a trace"):
        RunFiles.locate(tmp_path / "notes.txt")


def test_writing_a_report_never_changes_the_run(real_run: Path, tmp_path: Path) -> None:
    def files() -> dict[str, tuple[int, int]]:
        # The WAL index (-shm) is shared memory that every reader maps; data files must not move.
        return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in real_run.iterdir() if not p.name.endswith("-shm")}

    before = files()
    write_html(real_run / "store.sqlite", tmp_path / "r.html")
    assert files() == before


def _card(page: str, gist_id: str) -> str:
    start = page.index(f'id="gist-{gist_id}"')
    return page[start: page.index("</article>", start)]


if os.environ.get("DELM_RLM_KEEP_REPORT"):  # a person can look at the page: writes it beside the tests
    def test_keep_report(real_run: Path) -> None:
        write_html(real_run, Path(os.environ["DELM_RLM_KEEP_REPORT"]))


def test_tasks_name_their_agents_and_the_report_draws_the_timeline_and_the_answer_graph(real_run: Path) -> None:
    report = RunReport.load(real_run)
    page = report.to_html()
    events = Trace.load(real_run / "trace.jsonl")
    claimers = {e.task: e.agent for e in events if e.kind == "task_claimed"}
    tasks = page[page.index('<section id="tasks">'):page.index('<section id="timeline">')]
    for row in report.tasks():
        assert row["agents"], row  # the store's lease holder is empty once a task is done
        assert claimers[row["id"]] in row["agents"]
    assert "<td>a1</td>" in tasks or "<td>a2</td>" in tasks or "<td>a2, a1</td>" in tasks or "<td>a1, a2</td>" in tasks
    assert "chunk 1/2: doc 0" in tasks and "chunk 2/2: doc 1" in tasks  # labels, the full goal folded below
    # The Gantt chart: a row per agent, a bar per claim (t2's rejected first try is one), ticks for calls.
    gantt = page[page.index('<svg class="gantt"'):page.index("</svg>", page.index('<svg class="gantt"'))]
    assert ">a1</text>" in gantt and ">a2</text>" in gantt
    assert gantt.count('<g class="bar done">') == 2 and gantt.count('<g class="bar requeued">') == 1
    assert gantt.count('class="tick"') == len([e for e in events if e.kind == "model_call"])
    # The answer graph: the gists it rests on, their values, the answer, and the finalizer's totals.
    graph = page[page.index('<section id="answer-graph">'):page.index('<section id="usage">')]
    for gid in report.answer_gist_ids:
        assert f'href="#gist-{gid}"' in graph and f">{gid} PARTIAL = " in graph
    assert ">Answer: 3</text>" in graph and "the finalizer's totals" in graph
    assert report.finalizer_totals() and html.escape(report.finalizer_totals()) in graph


def test_unknown_costs_say_unknown_and_quotes_name_their_files(tmp_path: Path) -> None:
    import json

    (tmp_path / "corpus.json").write_text(json.dumps({"kind": "documents", "names": ["notes/a.txt", "notes/b.md"],
                                                       "value": ["x", "y"], "source": "notes"}))
    trace = Trace(tmp_path / "trace.jsonl")
    trace.emit("run_started", question="q", method="hybrid", corpus="c")
    trace.emit("task_created", task="t1", goal="Work on chunk 1 of 1: doc 1, characters 0-1 (1 lines) for the team", deps=[])
    trace.emit("task_claimed", agent="a1", task="t1", attempt=1, lease_s=60)
    trace.emit("model_call", agent="a1", task="t1", role="root", model="mystery", input_tokens=9, output_tokens=1,
               seconds=0.1, cached=True, cost_usd=None, prompt="p", response="r")
    trace.emit("gist_proposed", agent="a1", task="t1", gist={"id": "g1", "kind": "fact", "text": "y is there",
                                                              "evidence": [{"type": "quote", "doc": 1, "start": 0, "end": 1, "quote": "y"}]})
    trace.emit("run_finished", status="answered", answer="yes", usage={"calls": 1, "cached_calls": 1, "cost_usd": None})
    trace.close()
    page = RunReport.load(tmp_path).to_html()
    assert "$?" not in page and "cost unknown" in page and "<td>unknown</td>" in page
    assert "quote, doc 1 (notes/b.md) [0:1]" in page
    assert "chunk 1/1: notes/b.md" in page
    assert "<td>1</td><td>1</td>" in page  # one call, one of them cached
