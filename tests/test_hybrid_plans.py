"""Decompose only where it pays (issue 12): the scout's plan on real generated windows, a
whole plan that costs what RLM alone does, a split plan for an unlabelled window, and a whole
program that is not verified falling back to the split. ScriptedLM, real kernels."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pytest

from delm_rlm import RLM, Budget, RunStore, ScriptedLM, Team, Trace
from delm_rlm.corpus import Corpus
from delm_rlm.state.queue import TaskQueue, TaskState
from delm_rlm.team.scout import choose_plan, named_values, profile_records
from scripted_models import counts_finalizer
from tasks import oolong


@pytest.fixture(scope="module")
def window(trec_pool: Path) -> dict:
    """A 2K-token OOLONG-style window: its texts (labelled, unlabelled) and its questions."""
    rows = oolong.generate(trec_pool, 2048, seed=3, windows=1)
    return {"labelled": rows[0]["context_window_text_with_labels"], "plain": rows[0]["context_window_text"],
            "rows": rows}


def _question(rows: list[dict], task: str) -> dict:
    return next(r for r in rows if r["task"] == task and r["input_subset"] == "False")


def test_the_scout_picks_whole_for_a_labelled_window_and_split_for_an_unlabelled_one(window: dict) -> None:
    for row in window["rows"]:
        labelled = choose_plan(row["question"], Corpus(window["labelled"]))
        assert labelled.plan == "whole", (row["question"], labelled.reason)
    count = _question(window["rows"], "TASK_TYPE.NUMERIC_ONE_CLASS")
    label = re.search(r"label '([^']+)'", count["question"]).group(1)
    plain = choose_plan(count["question"], Corpus(window["plain"]))
    assert plain.plan == "split"
    assert f"no record states {label!r}" in plain.reason and "classify" in plain.reason
    assert plain.signals["fields"] == ["Date", "User", "Instance"]
    # The labels the corpus's header lists feed the empty-result hint (not the gate's guess).
    assert label in plain.labels and len(plain.labels) >= 2
    # A question about a field every record has is answered by one program, labelled or not.
    users = [r for r in window["rows"] if "which user is represented" in r["question"]]
    assert users
    for row in users:
        assert choose_plan(row["question"], Corpus(window["plain"])).plan == "whole"


def test_scout_signals_on_logs_csv_and_templates() -> None:
    logs = Corpus("".join(f"2024-05-0{i % 9 + 1} 10:00:{i:02d} {'ERROR' if i % 4 == 0 else 'INFO'} svc{i % 3}\n"
                          for i in range(40)))
    assert choose_plan("How many lines are 'ERROR'?", logs).plan == "whole"
    assert choose_plan("Which service has the most lines labelled urgent?", logs).plan == "split"
    table = Corpus(pd.DataFrame({"city": ["Oslo", "Rome", "Oslo"], "status": ["late", "ok", "late"]}))
    choice = choose_plan("How many orders from 'Oslo' are late? Answer in the form 'Answer: N'.", table)
    assert choice.plan == "whole" and choice.signals["stated"] == {"Oslo": 2}
    assert named_values("Is 'a' more common than 'b'? Give your final answer in the form 'Answer: a is [X] b', "
                        "where [X] is 'more common than' or 'less common than'.") == ["a", "b"]
    profile = profile_records(Corpus("name,score\nann,3\nbob,4\ncid,5\n"))  # CSV as text: its header names the fields
    assert profile.fields == ["name", "score"] and len(profile.records) == 3 and profile.stated_as_value("ann") == 1
    assert choose_plan("anything", Corpus("x"), runs_code=False).plan == "split"
    assert choose_plan("q", logs, needs_reading=lambda q, c: True).reading is True


def _counter_script(label: str):
    code = f"n = sum(1 for line in context.splitlines() if line.rstrip().endswith('|| Label: {label}'))"

    def script(messages: list[dict], role: str) -> str:
        return f"```repl\n{code}\nanswer['content'] = f'Answer: {{n}}'\nanswer['ready'] = True\n```"
    return script


async def test_a_whole_plan_answers_like_rlm_alone_and_costs_no_more(window: dict, tmp_path: Path) -> None:
    row = _question(window["rows"], "TASK_TYPE.NUMERIC_ONE_CLASS")
    label = re.search(r"label '([^']+)'", row["question"]).group(1)
    gold = int(row["answer"].strip("[]'\" "))
    team_lm = ScriptedLM(_counter_script(label))
    result = await Team(team_lm, agents=3, run_dir=tmp_path / "team").run(row["question"], window["labelled"])
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {gold}"
    (plan,) = [e for e in Trace.load(result.trace_path) if e.kind == "plan_chosen"]
    assert plan.data["plan"] == "whole" and "the records state what the question names" in plan.data["reason"]
    # One agent loop, one call, no finalizer; the answer verified by replaying its code.
    assert result.usage.calls == 1 and set(result.usage_by_role) == {"root"}
    store = RunStore(result.store_path)
    (gist,) = [store.get_gist(i) for i in result.gist_ids]
    assert gist.evidence[-1].type == "code" and "verified: code" in (gist.note or "")
    assert [t.state for t in TaskQueue(store).all()] == [TaskState.DONE]
    assert not [e for e in result.trace if e.kind == "task_claimed" and e.agent != "a1"]

    alone_lm = ScriptedLM(_counter_script(label))
    alone = await RLM(alone_lm, max_iterations=8).run(row["question"], window["labelled"])
    assert alone.answer == result.answer
    assert result.usage.calls == alone.usage.calls
    assert result.usage.input_tokens <= alone.usage.input_tokens  # the same prompts


async def test_an_unlabelled_window_is_split_and_the_trace_says_why(window: dict, tmp_path: Path) -> None:
    row = _question(window["rows"], "TASK_TYPE.NUMERIC_ONE_CLASS")
    result = await Team(ScriptedLM(["never used"]), agents=2, chunk_chars=2000, budget=Budget(max_calls=0),
                        run_dir=tmp_path / "run").run(row["question"], window["plain"])
    assert result.status == "budget"  # stopped at the first call: the plan is what is tested
    (plan,) = [e for e in Trace.load(result.trace_path) if e.kind == "plan_chosen"]
    assert plan.data["plan"] == "split" and "classify" in plan.data["reason"]
    tasks = TaskQueue(RunStore(result.store_path)).all()
    assert len(tasks) == plan.data["tasks"] > 1 and all(t.created_by == "split" for t in tasks)
    # No record states the labels: every chunk task is told to label with the corpus's labels.
    label = re.search(r"label '([^']+)'", row["question"]).group(1)
    assert all("labels = classify(records, [" in t.goal and repr(label) in t.goal for t in tasks)


def test_only_a_plan_that_needs_labels_asks_chunk_tasks_to_classify(window: dict) -> None:
    from delm_rlm.team.planner import labelling_step

    row = _question(window["rows"], "TASK_TYPE.NUMERIC_ONE_CLASS")
    assert choose_plan(row["question"], Corpus(window["plain"])).labelling
    labelled = choose_plan(row["question"], Corpus(window["labelled"]))
    assert not labelled.labelling and labelling_step(labelled) == ""
    logs = "\n".join(f"2024-05-0{i} 12:0{i} level=INFO msg=started job {i}" for i in range(1, 9))
    read = choose_plan("Which sentiment do most messages express?", Corpus(logs))
    assert read.plan == "split" and read.labelling and not read.labels
    assert "[every label the question names]" in labelling_step(read)


async def test_a_whole_program_that_is_not_verified_falls_back_to_the_split(tmp_path: Path) -> None:
    """The whole plan's answer came from a sub-model call (no replay): the judge rejects it,
    so the run splits the corpus after all, and the trace says both plans and why."""
    docs = ["ERROR a\nINFO b\nERROR c\n", "INFO d\nERROR e\n"]

    def script(messages: list[dict], role: str) -> str:
        if role == "verifier":
            return "REJECT: a sub-model's count is not shown"
        if role == "sub":
            return "3"
        if role == "finalizer":
            return '```repl\nanswer["content"] = str(add_up(gists(kind="partial"))["value"])\nanswer["ready"] = True\n```'
        if "Your task" not in messages[1]["content"]:
            return "```repl\nanswer['content'] = llm_query('count ERROR lines: ' + context)\nanswer['ready'] = True\n```"
        count = "sum(1 for line in chunk.splitlines() if line.startswith('ERROR'))"
        return (f"```repl\nn = {count}\nprint(propose('partial', f'{{n}} ERROR lines', value=n, check={'print(' + count + ')'!r}))\n"
                "answer['content'] = str(n)\nanswer['ready'] = True\n```")

    result = await Team(ScriptedLM(script), agents=2, max_attempts=1, max_iterations=1,
                        run_dir=tmp_path / "run").run("How many lines are 'ERROR'?", docs)
    assert result.status == "answered", result.error
    assert result.answer == "3"
    plans = [e.data for e in Trace.load(result.trace_path) if e.kind == "plan_chosen"]
    assert [p["plan"] for p in plans] == ["whole", "split"]
    assert "the whole-corpus program was not verified" in plans[1]["reason"]
    tasks = TaskQueue(RunStore(result.store_path)).all()
    assert tasks[0].state == TaskState.FAILED and [t.state for t in tasks[1:]] == [TaskState.DONE] * 2


async def test_under_a_labelling_plan_a_count_that_matched_nothing_is_never_admitted(window: dict,
                                                                                     tmp_path: Path) -> None:
    """Seen in the issue-12 benchmark: on an unlabelled window an agent split each line on a
    field the lines lack, got {None: 192}, and on the task's retry that count was admitted
    and answered `Label: None`. Where the scout found that no record states what is asked,
    every attempt is sent back, so the chunk fails instead of counting nothing."""
    row = _question(window["rows"], "TASK_TYPE.NUMERIC_ONE_CLASS")
    label = re.search(r"label '([^']+)'", row["question"]).group(1)
    stubborn = f'''```repl
check = """
from collections import Counter
field = "{label}: "
counts = Counter(line.split(field)[1] if field in line else None for line in chunk.splitlines() if line.strip())
print(dict(counts))
"""
exec(check)
print(propose("partial", f"counts {{dict(counts)}}", value=dict(counts), check=check))
answer["content"] = "proposed"
answer["ready"] = True
```'''

    prompts_seen: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if role in {"finalizer", "verifier"}:
            return counts_finalizer("Answer: {total.get('x', 0)}") if role == "finalizer" else "REJECT: unsupported"
        prompts_seen.append(messages[1]["content"])
        return stubborn

    result = await Team(ScriptedLM(script), agents=1, max_attempts=2, max_iterations=2,
                        run_dir=tmp_path / "run").run(row["question"], window["plain"])
    store = RunStore(result.store_path)
    assert store.get_meta("plan")["labelling"] is True
    assert store.list_gists(status="admitted", kinds="partial") == []
    tasks = TaskQueue(store).all()
    assert tasks and all(t.attempts == 2 and t.state == TaskState.FAILED for t in tasks)
    sent_back = [e.data["reason"] for e in Trace.load(result.trace_path)
                 if e.kind == "gist_rejected" and "every count is under" in e.data["reason"]]
    assert len(sent_back) == 2 * len(tasks)  # every attempt, not only the first
    assert all("classify(chunk.splitlines()" in reason and repr(label).replace("'", '"') in reason
               for reason in sent_back)
    # Its task prompt's example labels the records; no field-splitting example to copy.
    first = [p for p in prompts_seen if "Your task" in p]
    assert first and all("labels = classify(records, [" in p and 'field = "' not in p for p in first)
