"""The live view: what a person (or a CI log) sees while a run goes."""

from __future__ import annotations

from io import StringIO

from rich.console import Console

from delm_rlm.live import LiveView, ProgressLines
from delm_rlm.llm import Budget
from delm_rlm.trace import Trace


def _team_like_run(trace: Trace) -> None:
    """A small team run's events, emitted through the real Trace API in the order a team emits them."""
    trace.emit("run_started", question="How many lines say 'location'?", method="hybrid", corpus="2 documents")
    trace.emit("task_created", task="t1", goal="count 'location' lines in doc 0", deps=[])
    trace.emit("task_created", task="t2", goal="count 'location' lines in doc 1", deps=[])
    trace.emit("task_created", task="t3", goal="sum the counts", deps=["t1", "t2"])
    trace.emit("task_claimed", agent="a1", task="t1", attempt=1, lease_s=120)
    trace.emit("task_claimed", agent="a2", task="t2", attempt=1, lease_s=120)
    trace.emit("model_call", agent="a1", task="t1", role="root", model="scripted", input_tokens=900,
               output_tokens=60, seconds=0.5, cached=False, cost_usd=0.001, prompt="...", response="```repl ...")
    trace.emit("code_cell", agent="a1", task="t1", iteration=1, code="n = context.count('location')\nprint(n)",
               stdout="7\n", stderr="", error=None, timed_out=False, duration_s=0.01)
    trace.emit("agent_step", agent="a1", task="t1", iteration=1, action="counted 7 location lines")
    trace.emit("gist_proposed", agent="a1", task="t1",
               gist={"id": "g1", "kind": "partial", "text": "doc 0 has 7 'location' lines", "value": 7})
    trace.emit("gist_admitted", agent="verifier", task="t1", gist_id="g1", note="check printed 7", checks=["form", "code"])
    trace.emit("task_done", agent="a1", task="t1", gist_ids=["g1"])
    trace.emit("model_call", agent="a2", task="t2", role="root", model="scripted", input_tokens=800,
               output_tokens=40, seconds=0.4, cached=False, cost_usd=0.002, prompt="...", response="...")
    trace.emit("gist_proposed", agent="a2", task="t2",
               gist={"id": "g2", "kind": "partial", "text": "doc 1 has 99 'location' lines", "value": 99})
    trace.emit("gist_rejected", agent="verifier", task="t2", gist_id="g2",
               reason="check printed 4, claimed 99", failure_gist_id="g3")
    trace.emit("task_requeued", agent="a2", task="t2", reason="check printed 4, claimed 99")


def test_plain_lines_when_not_a_terminal() -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=False, width=100)
    trace = Trace()
    with LiveView(console, budget=Budget(max_tokens=10_000, max_usd=1.0)).attach(trace) as view:
        assert not view.interactive
        _team_like_run(trace)
        trace.emit("finalize", agent="a1", task="t3", answer="11", gist_ids=["g1"])
        trace.emit("run_finished", status="answered", answer="11", usage={"calls": 2})
    text = out.getvalue()
    lines = text.splitlines()
    # One readable line per notable event, no terminal control codes.
    assert "\x1b[" not in text
    assert all(line.startswith("[") and "s] " in line for line in lines)
    assert any("run started (hybrid): How many lines say 'location'?" in line for line in lines)
    assert any("a1 t1 claimed (attempt 1): count 'location' lines in doc 0" in line for line in lines)
    assert any("a1 t1 turn 1: counted 7 location lines" in line for line in lines)
    assert any("g1 admitted [PARTIAL] doc 0 has 7 'location' lines (checks: form, code)" in line for line in lines)
    assert any("g2 rejected: check printed 4, claimed 99" in line for line in lines)
    assert any("a1 t1 done -> g1 | calls 1, tokens 960 / 10,000, $0.0010 / $1.00" in line for line in lines)
    assert lines[-1].endswith("run finished (answered): 11 | calls 2, tokens 1,800 / 10,000, $0.0030 / $1.00, "
                              f"{trace.events[-1].t:.0f}s")
    # Unsubscribed on exit: later events print nothing.
    trace.emit("error", message="after the view closed")
    assert out.getvalue() == text


def test_state_tracks_agents_queue_gists_and_usage() -> None:
    trace = Trace()
    view = LiveView(Console(file=StringIO(), force_terminal=False)).attach(trace)
    _team_like_run(trace)
    s = view.state
    assert s.queue_counts() == {"pending": 1, "ready": 1, "claimed": 0, "done": 1, "failed": 0}
    assert s.agents["a1"].task == "t1" and s.agents["a1"].turn == 1
    assert s.agents["a1"].action == "task done"
    assert [g.gist_id for g in s.admitted] == ["g1"]
    assert s.rejected[0].reason == "check printed 4, claimed 99"
    assert s.rejected[0].text == "doc 1 has 99 'location' lines"
    assert (s.usage.calls, s.usage.tokens) == (2, 1800)
    # Dependencies released: once t2 is done, t3 becomes ready.
    trace.emit("task_claimed", agent="a2", task="t2", attempt=2, lease_s=120)
    trace.emit("task_done", agent="a2", task="t2", gist_ids=[])
    assert s.queue_counts()["ready"] == 1 and s.tasks["t3"]["state"] == "ready"


def test_terminal_rendering_shows_every_panel() -> None:
    out = StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    trace = Trace()
    view = LiveView(console, budget=Budget(max_usd=2.0)).attach(trace)
    _team_like_run(trace)
    console.print(view.render())
    screen = out.getvalue()
    for expected in ("hybrid", "a1", "a2", "t1: count 'location' lines", "queue  pending 1  ready 1  claimed 0  done 1  failed 0",
                     "g1", "admitted", "doc 0 has 7 'location' lines", "rejected", "check printed 4, claimed 99",
                     "$0.0030 / $2.00"):
        assert expected in screen, expected


def test_unknown_price_shows_as_unknown_cost() -> None:
    trace = Trace()
    view = LiveView(Console(file=StringIO(), force_terminal=False)).attach(trace)
    trace.emit("model_call", agent="a1", role="root", model="x", input_tokens=5, output_tokens=5, seconds=0.1,
               cached=False, cost_usd=None, prompt="", response="")
    trace.emit("model_call", agent="a1", role="root", model="x", input_tokens=5, output_tokens=5, seconds=0.1,
               cached=False, cost_usd=0.5, prompt="", response="")
    assert "$?" in view.state.usage_line()


def test_progress_lines_for_the_python_api_name_files_and_count_cached_calls() -> None:
    lines: list[str] = []
    progress = ProgressLines(lines.append, names=["notes/a.txt", "notes/b.md"])
    trace = Trace(subscribers=[progress])
    trace.emit("run_started", question="How many apples?", method="hybrid", corpus="2 documents")
    trace.emit("task_created", task="t1", goal="Work on chunk 1 of 2: doc 0, characters 0-33 (3 lines) for the team question; ...")
    trace.emit("task_claimed", agent="a1", task="t1", attempt=1, lease_s=60)
    trace.emit("model_call", agent="a1", task="t1", role="root", model="m", input_tokens=5, output_tokens=5, seconds=0.1,
               cached=True, cost_usd=0.0, prompt="", response="")
    assert lines[0].endswith("run started (hybrid): How many apples?")
    assert lines[1].endswith("t1 created: chunk 1/2: notes/a.txt")
    assert lines[2].endswith("a1 t1 claimed (attempt 1): chunk 1/2: notes/a.txt")
    assert lines[3].endswith("(cached)")
    view = LiveView(Console(file=StringIO(), force_terminal=True, width=140, color_system=None), names=["notes/a.txt"])
    trace.subscribe(view)
    trace.emit("task_created", task="t1", goal="Work on chunk 1 of 2: doc 0, characters 0-33 (3 lines) for the team question")
    trace.emit("task_claimed", agent="a1", task="t1", attempt=2, lease_s=60)
    screen = StringIO()
    Console(file=screen, force_terminal=True, width=140, color_system=None).print(view.render())
    assert "t1: chunk 1/2: notes/a.txt" in screen.getvalue() and "characte..." not in screen.getvalue()
    assert progress.state.usage_line().startswith("calls 1 (1 cached), tokens 10, $0.0000")
    trace.emit("model_call", agent="a1", task="t1", role="root", model="m", input_tokens=5, output_tokens=5, seconds=0.1,
               cached=False, cost_usd=None, prompt="", response="")
    assert progress.state.usage_line().startswith("calls 2 (1 cached), tokens 20, $? (cost unknown)")


def test_a_broken_subscriber_is_logged_once_and_never_breaks_the_run(caplog) -> None:  # type: ignore[no-untyped-def]
    def broken(event: object) -> None:
        raise RuntimeError("viewer bug")

    trace = Trace(subscribers=[broken])
    with caplog.at_level("WARNING", logger="delm_rlm"):
        trace.emit("run_started", question="q", method="rlm", corpus="c")
        trace.emit("error", message="later")
    assert len(trace.events) == 2
    assert [r.getMessage() for r in caplog.records].count(
        f"trace subscriber {broken!r} failed on a run_started event (its later failures are not logged)") == 1
    assert len(caplog.records) == 1
