"""The team end to end (ScriptedLM, real kernels, real SQLite), both modes, and chunking.

The scripted agents do what a competent model would (count with code, propose with a check,
sum verified partials in the finalizer's REPL); the tests check the framework's mechanics:
claims, proposals, verification, finalization, budgets, stored state.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delm_rlm import Budget, RunStore, ScriptedLM, Team, Trace
from delm_rlm.chunking import DEFAULT_CHUNK_CHARS, split_corpus
from delm_rlm.errors import ConfigError, RunStateError
from delm_rlm.team import TeamConfig
from delm_rlm.state.queue import TaskQueue, TaskState
from scripted_models import counts_finalizer

DOCS = [
    "spam: win money\nham: lunch?\nspam: pills\n",
    "ham: report attached\nham: see you\n",
    "spam: free cruise\n",
    "ham: notes\nspam: crypto\nspam: prize\nspam: loans\n",
]
QUESTION = "How many lines are spam?"
TRUE_COUNT = sum(line.startswith("spam") for d in DOCS for line in d.splitlines())

COUNT = 'sum(1 for line in chunk.splitlines() if line.startswith("spam"))'
AGENT_CODE = f"""```repl
n = {COUNT}
print(propose("partial", f"{{n + 1}} spam lines", value=n + 1, check='print({COUNT})'))
print(propose("partial", f"{{n}} spam lines", value=n, check='print({COUNT})'))
answer["content"] = str(n)
answer["ready"] = True
```"""
FINAL_CODE = """```repl
parts = gists(kind="partial")
answer["content"] = str(sum(g["value"] for g in parts))
answer["ready"] = True
```"""


def hybrid_script(messages: list[dict], role: str) -> str:
    if role == "finalizer":
        return FINAL_CODE
    if role == "verifier":
        return "REJECT: nothing here should need the judge"
    return AGENT_CODE


async def test_hybrid_team_end_to_end(tmp_path: Path) -> None:
    lm = ScriptedLM(hybrid_script)
    team = Team(lm, agents=2, plan="split", run_dir=tmp_path / "run")
    result = await team.run(QUESTION, DOCS)

    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    store = RunStore(result.store_path)
    partials = store.list_gists(status="admitted", kinds="partial")
    # One verified partial per document, each with its check output kept as evidence.
    assert sorted(g.value for g in partials) == sorted(
        sum(line.startswith("spam") for line in d.splitlines()) for d in DOCS
    )
    assert all(g.evidence and g.evidence[-1].type == "code" for g in partials)
    assert sorted(result.gist_ids) == sorted(g.id for g in partials)
    # Every wrong first proposal was rejected and recorded as a FAILURE gist.
    failures = store.list_gists(status="admitted", kinds="failure")
    assert len(failures) == len(DOCS)
    # Each task claimed once, done once, by the agent that claimed it.
    tasks = TaskQueue(store).all()
    assert [t.state for t in tasks] == [TaskState.DONE] * len(DOCS)
    assert all(t.attempts == 1 for t in tasks)
    events = Trace.load(result.trace_path)
    done = [e.task for e in events if e.kind == "task_done"]
    assert sorted(done) == sorted(t.id for t in tasks)
    assert [e.data["answer"] for e in events if e.kind == "finalize"] == [str(TRUE_COUNT)]
    assert {e.agent for e in events if e.kind == "task_claimed"} <= {"a1", "a2"}
    # Usage by role: agents and the finalizer; code checks needed no judge.
    assert set(result.usage_by_role) == {"root", "finalizer"}
    assert result.usage_by_role["root"].calls == len(DOCS)
    assert store.meta().status == "answered" and store.meta().answer == str(TRUE_COUNT)
    assert store.get_meta("verification")["checks_run"]["code"] == 2 * len(DOCS)

    # The directory holds a finished run: a resume returns it, a new run refuses it.
    again = await Team.resume(tmp_path / "run", lm=ScriptedLM([]))
    assert again.answer == str(TRUE_COUNT) and again.gist_ids == result.gist_ids
    with pytest.raises(ValueError, match="already holds a run"):
        await Team(lm, agents=1, run_dir=tmp_path / "run").run(QUESTION, DOCS)


async def test_hybrid_agent_prompt_shows_its_own_chunk_lines(tmp_path: Path) -> None:
    """Each agent sees sample lines of its own chunk (to copy their exact wording into
    code), never another chunk's; the finalizer is told to use the question's answer form."""
    seen: dict[str, str] = {}

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            seen["final"] = messages[1]["content"]
            return FINAL_CODE
        first = messages[1]["content"]
        lines = first.split("Some of its lines:\n", 1)[1].split("Verified gists", 1)[0]
        seen[re.search(r"Your task (t\d+)", first).group(1)] = lines
        seen["prompt"] = first
        return AGENT_CODE

    result = await Team(ScriptedLM(script), agents=1, plan="split", run_dir=tmp_path / "run").run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert "  ham: report attached" in seen["t2"] and "spam: free cruise" not in seen["t2"]
    assert "  spam: free cruise" in seen["t3"] and "ham: report attached" not in seen["t3"]
    assert "in the exact form the question asks for" in seen["final"]
    # The lines state what is counted: the example splits a field, and labels nothing.
    assert 'field = "status: "' in seen["prompt"] and "classify(records" not in seen["prompt"]


async def test_an_answer_set_without_propose_is_verified_by_replaying_the_agents_code(tmp_path: Path) -> None:
    """Small models often set the answer and skip propose(). The team replays the agent's
    own cells in the verifier's fresh REPL: a dict of counts computed in code is admitted
    with code evidence (no judge), while code that used a sub-model call cannot be replayed
    and goes to the judge, which here rejects it."""
    counts_code = """```repl
from collections import Counter
counts = Counter(line.split(":")[0] for line in chunk.splitlines() if ":" in line)
print(dict(counts))
answer["content"] = str(dict(counts))
answer["ready"] = True
```"""
    sub_model_code = """```repl
n = int(llm_query("how many spam lines? " + chunk) or 0)
answer["content"] = str(n)
answer["ready"] = True
```"""
    final_code = counts_finalizer("Answer: {total['spam']}")
    judged: list[str] = []

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return final_code
        if role == "verifier":
            judged.append(messages[-1]["content"])
            return "REJECT: the data does not show the count"
        if role == "sub":
            return "2"
        return counts_code

    result = await Team(ScriptedLM(script), agents=2, plan="split", run_dir=tmp_path / "run").run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {TRUE_COUNT}"
    partials = RunStore(result.store_path).list_gists(status="admitted", kinds="partial")
    expected = [
        dict(Counter(line.split(":")[0] for line in d.splitlines())) for d in DOCS
    ]
    assert sorted(map(json.dumps, (g.value for g in partials))) == sorted(map(json.dumps, expected))
    assert all(g.evidence and g.evidence[-1].type == "code" for g in partials)
    assert judged == []

    def sub_script(messages: list[dict], role: str) -> str:
        return script(messages, role) if role in {"verifier", "finalizer"} else (
            "2" if role != "root" else sub_model_code)

    team = Team(ScriptedLM(sub_script), agents=1, max_attempts=1, plan="split", run_dir=tmp_path / "sub")
    result = await team.run(QUESTION, DOCS[:1])
    assert judged, "an answer computed with a sub-model call must go to the judge"
    assert RunStore(result.store_path).list_gists(status="admitted", kinds="partial") == []


async def test_an_empty_partial_is_sent_back_once_with_a_hint(tmp_path: Path) -> None:
    """Small models copy the worked example's field ("Label: ") into lines that have no such
    field, and the check faithfully prints {}. The first such proposal is rejected with a
    hint and recorded as a FAILURE gist; the agent that reads the hint counts what the lines
    hold. An agent that insists gets its empty result in on the task's retry: a chunk may
    truly hold nothing."""
    def counting(label_of: str, marker: str) -> str:
        return f'''```repl
check = """
from collections import Counter
counts = Counter({label_of} for line in chunk.splitlines() if {marker!r} in line)
print(dict(counts))
"""
exec(check)
print(propose("partial", f"counts {{dict(counts)}}", value=dict(counts), check=check))
```'''

    by_missing_field = counting('line.split("Label: ")[-1]', "Label: ")  # the example's field
    by_prefix = counting('line.split(":")[0]', ":")  # what these lines hold
    finish = 'Done.\n```repl\nanswer["content"] = "proposed"\nanswer["ready"] = True\n```'

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return counts_finalizer("Answer: {total['spam']}")
        if role == "verifier":
            return "REJECT: no judge needed"
        last = messages[-1]["content"]
        if "classify(" in last and "result is empty" in last:
            if last.startswith("REPL output"):  # the verdict itself, not a task prompt citing the failure
                hints.append(last)
            return by_prefix  # read the hint
        if "REPL output" in last:
            return finish
        return by_missing_field

    hints: list[str] = []
    # The corpus opens by naming its categories (as OOLONG windows do): the hint's classify
    # example uses them, not made-up labels a small model would run as they are.
    docs = ["Each line is one of 2 categories: 'spam', 'ham'.\n" + DOCS[0], *DOCS[1:]]
    result = await Team(ScriptedLM(script), agents=2, plan="split", run_dir=tmp_path / "run").run(QUESTION, docs)
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {TRUE_COUNT}"
    assert hints and all("classify(chunk.splitlines(), [\"spam\", \"ham\"])" in h for h in hints), hints
    store = RunStore(result.store_path)
    failures = store.list_gists(status="admitted", kinds="failure")
    assert failures and all("result is empty" in g.text for g in failures)
    assert all(t.attempts == 1 for t in TaskQueue(store).all())  # fixed within the attempt

    def stubborn(messages: list[dict], role: str) -> str:
        if role in {"finalizer", "verifier"}:
            return script(messages, role)
        return finish if "REPL output" in messages[-1]["content"] else by_missing_field

    result = await Team(ScriptedLM(stubborn), agents=1, plan="split", run_dir=tmp_path / "stubborn").run(QUESTION, DOCS[:1])
    store = RunStore(result.store_path)
    (task,) = TaskQueue(store).all()
    assert task.state == TaskState.DONE and task.attempts == 2
    assert [g.value for g in store.list_gists(status="admitted", kinds="partial")] == [{}]


async def test_finalizer_add_up_adds_count_partials_and_skips_what_is_not_a_count(tmp_path: Path) -> None:
    """The finalizer's REPL has add_up(gists): dict values added key by key, numbers under
    "value", anything else skipped with a printed note (small models writing that loop
    themselves crash on the first str value)."""
    counts_code = """```repl
from collections import Counter
counts = Counter(line.split(":")[0] for line in chunk.splitlines() if ":" in line)
answer["content"] = "spam wins" if "cruise" in chunk else str(dict(counts))
answer["ready"] = True
```"""
    final_code = """```repl
total = add_up(gists(kind="partial"))
print(total.most_common())
answer["content"] = f"Answer: {total['spam']}"
answer["ready"] = True
```"""

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return final_code
        if role == "verifier":
            return "REJECT: not needed"
        return counts_code

    result = await Team(ScriptedLM(script), agents=2, plan="split", run_dir=tmp_path / "run").run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {TRUE_COUNT - 1}"  # the cruise chunk's one spam line is not a count
    cells = [e for e in Trace.load(result.trace_path) if e.kind == "code_cell" and e.task == "final"]
    assert "add_up: skipped" in cells[-1].data["stdout"] and "'spam wins' is not a count" in cells[-1].data["stdout"]


# -- delm mode (no REPL) -------------------------------------------------------------------


def _chunk_of(messages: list[dict]) -> str:
    return re.search(r"<chunk>\n(.*)\n</chunk>", messages[-1]["content"], re.DOTALL).group(1)


class DelmScript:
    """Agents read the chunk in the prompt; the first reply is broken JSON, and the first
    look at the 'free cruise' chunk invents a quote. The finalizer sums gist values."""

    def __init__(self, final_replies: list[str] | None = None) -> None:
        self.calls = 0
        self.invented = False
        self.final_replies = list(final_replies or [])
        self.prompts: list[str] = []

    def __call__(self, messages: list[dict], role: str) -> str:
        self.calls += 1
        self.prompts.append(messages[-1]["content"])
        if role == "verifier":
            return "ADMIT: the quotes show the lines"
        if role == "finalizer":
            if self.final_replies:
                return self.final_replies.pop(0)
            values = [int(v) for v in re.findall(r"\[g\d+ PARTIAL\][^\n]*\(value (\d+)\)", messages[-1]["content"])]
            return json.dumps({"answer": str(sum(values))})
        if "<chunk>" not in messages[-1]["content"] and "not valid JSON" in messages[-1]["content"]:
            messages = messages[:-2]  # the retry: answer the original question
        if self.calls == 1:
            return "Sure! {'answer': 2,"
        chunk = _chunk_of(messages)
        spam = [line for line in chunk.splitlines() if line.startswith("spam")]
        quotes = spam[:3]
        if "free cruise" in chunk and not self.invented:
            self.invented = True
            quotes = ["spam: free yacht"]
        return json.dumps({
            "answer": str(len(spam)),
            "gists": [{"kind": "partial", "text": f"{len(spam)} spam lines", "value": len(spam), "quotes": quotes}],
        })


async def test_delm_team_end_to_end(tmp_path: Path) -> None:
    script = DelmScript()
    result = await Team(ScriptedLM(script), agents=2, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)

    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    store = RunStore(result.store_path)
    partials = store.list_gists(status="admitted", kinds="partial")
    assert len(partials) == len(DOCS)
    for g in partials:  # quotes were located in the chunk and verified
        for ev in g.evidence:
            assert DOCS[ev.doc][ev.start : ev.end] == ev.quote
    # The invented quote was rejected, recorded, and its task redone.
    failures = store.list_gists(status="admitted", kinds="failure")
    assert any("free yacht" in f.text for f in failures)
    tasks = TaskQueue(store).all()
    assert all(t.state == TaskState.DONE for t in tasks)
    assert sorted(t.attempts for t in tasks) == [1, 1, 1, 2]
    # The broken first reply got one retry with the parse error.
    assert any("not valid JSON" in p for p in script.prompts)
    assert result.usage_by_role["verifier"].calls == len(DOCS)  # judge per admitted partial
    assert "finalizer" in result.usage_by_role
    # No REPL in this mode: no code ran.
    assert not [e for e in result.trace if e.kind == "code_cell"]


async def test_finalizer_adds_a_task_then_answers(tmp_path: Path) -> None:
    script = DelmScript(final_replies=[json.dumps({"tasks": ["Re-count spam lines in doc 3"]})])
    script.calls = 1  # no broken first reply in this test
    team = Team(ScriptedLM(script), agents=2, mode="delm", plan="split", run_dir=tmp_path)
    result = await team.run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    tasks = TaskQueue(RunStore(result.store_path)).all()
    added = [t for t in tasks if t.created_by in ("a1", "a2")]
    assert [t.goal for t in added] == ["Re-count spam lines in doc 3"]
    assert added[0].state == TaskState.DONE
    assert len([e for e in result.trace if e.kind == "finalize"]) == 1
    assert result.iterations == 2  # two finalize rounds


async def test_model_plan_creates_the_tasks(tmp_path: Path) -> None:
    def script(messages: list[dict], role: str) -> str:
        system = messages[0]["content"]
        if system.startswith("Split a question"):
            return "1. Count spam lines in docs 0 and 1.\n2. Count spam lines in docs 2 and 3.\nThanks!"
        if role == "verifier":
            return "ADMIT: ok"
        if role == "finalizer":
            return '{"answer": "done"}'
        return json.dumps({"answer": "1", "gists": []})

    result = await Team(ScriptedLM(script), agents=2, mode="delm", plan="model", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    goals = [t.goal for t in TaskQueue(RunStore(result.store_path)).all()]
    assert goals == ["Count spam lines in docs 0 and 1.", "Count spam lines in docs 2 and 3."]


async def test_budget_stops_the_team_with_status_budget(tmp_path: Path) -> None:
    script = DelmScript()
    script.calls = 1
    result = await Team(
        ScriptedLM(script), agents=1, mode="delm", budget=Budget(max_calls=3), run_dir=tmp_path
    ).run(QUESTION, DOCS)
    assert result.status == "budget"
    assert "calls" in result.error
    assert result.usage.calls <= 3
    assert result.answer is not None and "Verified so far" in result.answer
    assert RunStore(result.store_path).meta().status == "budget"


def test_team_rejects_bad_settings() -> None:
    lm = ScriptedLM([])
    with pytest.raises(ValueError, match="sandbox"):
        Team(lm, sandbox="docker")
    with pytest.raises(ValueError, match="agents"):
        Team(lm, agents=0)
    with pytest.raises(ValueError, match="mode"):
        Team(lm, mode="central")
    with pytest.raises(TypeError, match="lm must be"):
        Team("gpt-4o")  # type: ignore[arg-type]


def test_team_settings_errors_are_typed_and_say_the_fix() -> None:
    lm = ScriptedLM([])
    with pytest.raises(ConfigError, match="give a chunk size"):
        Team(lm, chunk_chars=None)
    with pytest.raises(ConfigError, match="bad Team settings"):
        Team(lm, lease_s=0)
    with pytest.raises(TypeError, match="chunk_size.*known: agents, mode"):
        Team(lm, chunk_size=100)
    with pytest.raises(TypeError, match="zero-argument factory"):
        Team(lm, sandbox=3)  # type: ignore[arg-type]
    with pytest.raises(RunStateError, match="inside a running event loop"):
        async def inside() -> None:
            Team(lm).run_sync(QUESTION, DOCS)
        asyncio.run(inside())
    assert issubclass(ConfigError, ValueError) and issubclass(RunStateError, RuntimeError)


def test_team_docstring_documents_every_setting_with_its_default() -> None:
    """TeamConfig declares the settings once; Team's docstring (IDE help) names each with
    the same default, and the chunk size default is chunking's."""
    documented = dict(re.findall(r"^    (\w+) \((.+?)\):", Team.__doc__ or "", re.MULTILINE))
    assert set(documented) == set(TeamConfig.model_fields)
    for name, field in TeamConfig.model_fields.items():
        assert ast.literal_eval(documented[name]) == field.default, name
    assert TeamConfig().chunk_chars == DEFAULT_CHUNK_CHARS
    team = Team(ScriptedLM([]), sandbox=lambda: None)  # type: ignore[arg-type, return-value]
    assert team.config.sandbox == "custom" and team.config == TeamConfig(sandbox="custom")


# -- chunking ------------------------------------------------------------------------------

docs_strategy = st.lists(st.text(alphabet="ab \n", max_size=80), min_size=1, max_size=4).filter(
    lambda ds: any(ds)
)


@settings(max_examples=150, deadline=None)
@given(docs_strategy, st.integers(1, 30), st.sampled_from(["auto", "lines", "documents"]),
       st.sampled_from(["chars", "tokens"]))
def test_chunks_cover_every_document_exactly_and_respect_the_size(docs, size, by, unit) -> None:
    chunks = split_corpus(docs, size=size, by=by, unit=unit)
    assert chunks == split_corpus(docs, size=size, by=by, unit=unit)  # deterministic
    assert [c.index for c in chunks] == list(range(len(chunks)))
    for d, text in enumerate(docs):
        mine = [c for c in chunks if c.doc == d]
        assert "".join(c.text(docs) for c in mine) == text
        if by != "documents":
            measure = len if unit == "chars" else (lambda s: (len(s) + 3) // 4)
            if by == "lines" or measure(text) > size:
                assert all(measure(c.text(docs)) <= size for c in mine)
        if unit == "chars":  # line-aligned, unless a single line is longer than the size
            for c in mine[:-1]:
                piece = c.text(docs)
                assert piece.endswith("\n") or len(piece) == size


def test_chunking_modes() -> None:
    docs = ["a\nb\nc\n", "d\n"]
    assert [(c.doc, c.start, c.end) for c in split_corpus(docs, size=100)] == [(0, 0, 6), (1, 0, 2)]
    assert [(c.doc, c.start, c.end) for c in split_corpus(docs, size=4)] == [(0, 0, 4), (0, 4, 6), (1, 0, 2)]
    assert len(split_corpus(docs, size=1, by="documents")) == 2
    with pytest.raises(ValueError, match="empty"):
        split_corpus(["", ""])
    with pytest.raises(ValueError, match="positive"):
        split_corpus(docs, size=0)
    with pytest.raises(TypeError, match="list of documents"):
        split_corpus("one text")  # type: ignore[arg-type]


def failing_on_the_cruise_chunk(failures: int):
    """Agents that work, except on the chunk holding "free cruise", whose first `failures`
    replies break (an attempt is two: its step, and the final answer asked for when out of
    steps; None: every reply)."""
    left = {"n": failures}

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return FINAL_CODE
        if role == "verifier":
            return "REJECT: nothing here should need the judge"
        own_lines = messages[1]["content"].split("Some of its lines:\n", 1)[-1].split("Verified gists", 1)[0]
        if "free cruise" in own_lines and (left["n"] is None or left["n"] > 0):
            if left["n"] is not None:
                left["n"] -= 1
            return "```repl\nraise RuntimeError('this agent broke')\n```"
        return AGENT_CODE

    return script


async def test_an_answer_leaving_out_a_failed_chunk_is_refused_and_the_chunk_redone(tmp_path: Path) -> None:
    # Seen in the issue-14 benchmark: the only chunk task failed and the finalizer's
    # add_up([]) answered "Answer: 0". A total must cover every chunk.
    team = Team(ScriptedLM(failing_on_the_cruise_chunk(2)), agents=1, plan="split", max_attempts=1,
                max_iterations=1, run_dir=tmp_path / "run")
    result = await team.run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    assert result.answer == str(TRUE_COUNT)
    refused = [e.data["action"] for e in result.trace if e.kind == "agent_step" and "answer refused" in e.data["action"]]
    assert len(refused) == 1 and "no verified partial covers the chunks of t3" in refused[0]
    tasks = TaskQueue(RunStore(result.store_path)).all()
    redo = [t for t in tasks if t.created_by == "a1"]
    assert len(redo) == 1 and redo[0].state == TaskState.DONE
    assert "again" in redo[0].goal and "Its last attempt failed: rejected on attempt 1/1" in redo[0].goal


async def test_a_chunk_that_never_gets_a_partial_ends_the_run_without_an_answer(tmp_path: Path) -> None:
    team = Team(ScriptedLM(failing_on_the_cruise_chunk(None)), agents=1, plan="split", max_attempts=1,
                max_iterations=1, max_finalize_rounds=2, run_dir=tmp_path / "run")
    result = await team.run(QUESTION, DOCS)
    assert result.status == "error" and result.answer is None
    assert "no verified partial covers the chunks of t3" in (result.error or "")
