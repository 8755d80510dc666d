"""A `delm` that works with small models (issue 15): lenient JSON with one repair request,
near-copy quotes mapped to the span they copy (or rejected showing it), and finalizer-added
tasks that carry goals, never a bare id. ScriptedLM, real SQLite; no REPL in this mode."""

from __future__ import annotations

import json
import re
from pathlib import Path

from delm_rlm import RunStore, ScriptedLM, Team
from delm_rlm.state.queue import TaskQueue, TaskState
from delm_rlm.team.replies import load_json_object
from delm_rlm.verify.fuzzy import FUZZY_QUOTE_THRESHOLD, closest_span, map_quote

DOCS = [
    "spam: win money now\nham: lunch at noon?\nspam: cheap pills\n",
    "ham: report attached\nham: see you soon\n",
    "spam: free cruise to the islands\nham: notes from the call\n",
]
QUESTION = "How many lines are spam?"


def _chunk(messages: list[dict]) -> str:
    return re.search(r"<chunk>\n(.*)\n</chunk>", messages[-1]["content"], re.DOTALL).group(1)


def _count_reply(chunk: str, quotes: list[str] | None = None) -> dict:
    spam = [line for line in chunk.splitlines() if line.startswith("spam")]
    return {"answer": str(len(spam)),
            "gists": [{"kind": "partial", "text": f"{len(spam)} spam lines", "value": len(spam),
                       "quotes": spam[:2] if quotes is None else quotes}]}


def test_json_replies_are_parsed_leniently() -> None:
    fenced = '```json\n{"answer": "2", "gists": [{"text": "2 spam lines", "quotes": ["spam: a",],},],}\n```'
    assert load_json_object(fenced)[0] == {"answer": "2", "gists": [{"text": "2 spam lines", "quotes": ["spam: a"]}]}
    assert load_json_object("Sure: {'answer': 'the court\\'s view', 'ok': True, 'x': None}")[0] == {
        "answer": "the court's view", "ok": True, "x": None}
    assert load_json_object('{"a": "line one\nline two", "b": null,} trailing prose')[0] == {"a": "line one\nline two", "b": None}
    assert load_json_object("{\u201canswer\u201d: 3}")[0] == {"answer": 3}  # curly quotes
    obj, error = load_json_object("Sure! {'answer': 2,")
    assert obj is None and error == "Expecting property name enclosed in double quotes at character 1"
    assert load_json_object("no json here") == (None, "no JSON object found")


async def test_delm_recovers_from_one_invalid_json_reply(tmp_path: Path) -> None:
    """The first agent reply cannot be repaired (cut off): one repair request shows the parse
    error, and the next reply is used. A fenced reply with trailing commas and single quotes
    needs no repair request at all."""
    calls = {"root": 0}
    repairs: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if role == "verifier":
            return "ADMIT: the quotes show the lines"
        if role == "finalizer":
            values = re.findall(r"\(value (\d+)\)", messages[-1]["content"])
            return json.dumps({"answer": str(sum(map(int, values)))})
        calls["root"] += 1
        if "not valid JSON" in messages[-1]["content"]:
            repairs.append(messages[-1]["content"])
            messages = messages[:-2]
        elif calls["root"] == 1:
            return '{"answer": "2", "gists": [{"kind": "partial", "text": "2 spam'
        reply = _count_reply(_chunk(messages))
        if "free cruise" in _chunk(messages):  # a Python dict in fences, trailing commas
            return "```json\n" + repr(reply).replace("]}", ",]},") + "\n```"
        return json.dumps(reply)

    result = await Team(ScriptedLM(script), agents=1, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == "3"
    assert len(repairs) == 1 and "Unterminated string" in repairs[0]
    assert calls["root"] == len(DOCS) + 1  # one repair request, for the broken reply only
    tasks = TaskQueue(RunStore(result.store_path)).all()
    assert [t.attempts for t in tasks] == [1, 1, 1] and all(t.state == TaskState.DONE for t in tasks)


def test_a_near_copy_maps_to_its_span_and_a_far_one_shows_the_closest_text() -> None:
    text = "spam: win money now\nham: lunch at noon?\nspam: cheap pills\n"
    near = map_quote(text, "Spam: win  the money now")
    assert near is not None and text[near.start:near.end] == "spam: win money now"
    assert near.similarity >= FUZZY_QUOTE_THRESHOLD
    assert map_quote(text, "spam: free yacht") is None
    far = closest_span(text, "spam: cheap yacht pills for sale")
    assert far is not None and text[far.start:far.end].startswith("spam: cheap pills")


async def test_delm_quotes_close_but_not_exact_are_mapped_or_rejected_with_the_span(tmp_path: Path) -> None:
    def script(messages: list[dict], role: str) -> str:
        if role == "verifier":
            return "ADMIT: the quotes show the lines"
        if role == "finalizer":
            return json.dumps({"answer": "done"})
        chunk = _chunk(messages)
        if "win money" in chunk:
            return json.dumps(_count_reply(chunk, ["Spam: win the money now", "spam: cheap pills"]))
        if "free cruise" in chunk:
            return json.dumps(_count_reply(chunk, ["spam: a yacht for free"]))
        return json.dumps(_count_reply(chunk))

    result = await Team(ScriptedLM(script), agents=1, mode="delm", max_attempts=1, run_dir=tmp_path).run(QUESTION, DOCS)
    store = RunStore(result.store_path)
    first = next(g for g in store.list_gists(status="admitted", kinds="partial") if g.provenance.task_id == "t1")
    assert [ev.quote for ev in first.evidence] == ["spam: win money now", "spam: cheap pills"]
    failure = next(g for g in store.list_gists(status="admitted", kinds="failure"))
    assert "'spam: a yacht for free' does not occur in doc 2; the closest text is [" in failure.summary
    assert "[0:10] 'spam: free' (similarity 0.62)" in failure.summary


async def test_finalizer_added_tasks_carry_goals_never_a_bare_id(tmp_path: Path) -> None:
    finals = [json.dumps({"tasks": ["t1", "t99", "Re-check t3 for spam lines"]})]
    prompts_by_task: dict[str, str] = {}

    def script(messages: list[dict], role: str) -> str:
        if role == "verifier":
            return "ADMIT: ok"
        if role == "finalizer":
            return finals.pop(0) if finals else json.dumps({"answer": "3"})
        task = re.search(r"Your task (t\d+): ", messages[-1]["content"]).group(1)
        prompts_by_task[task] = messages[-1]["content"]
        return json.dumps(_count_reply(_chunk(messages)))

    result = await Team(ScriptedLM(script), agents=2, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    tasks = {t.id: t for t in TaskQueue(RunStore(result.store_path)).all()}
    added = [t for t in tasks.values() if t.created_by in ("a1", "a2")]
    assert len(added) == 2  # "t99" names no task: nothing added for it
    redo, recheck = sorted(added, key=lambda t: int(t.id[1:]))
    assert redo.goal.startswith(f"For the team question ({QUESTION}): redo task t1; that task's goal was: Work on chunk 1")
    assert recheck.goal == "Re-check t3 for spam lines"
    assert all(re.fullmatch(r"\W*[tg]\d+\W*", t.goal) is None for t in tasks.values())
    # Each added task reads the chunk of the task it names.
    assert "<chunk>\n" + DOCS[0].rstrip("\n") in prompts_by_task[redo.id]
    assert "<chunk>\n" + DOCS[2].rstrip("\n") in prompts_by_task[recheck.id]
    assert redo.state == recheck.state == TaskState.DONE
