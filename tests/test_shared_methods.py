"""Verified methods (issue 12): an agent's chunk code, admitted after it ran on other
chunks, computes the remaining chunks with no model call; a method that fails on one chunk
sends only that chunk to an agent, whose fix becomes the method's next version. A log file
and a CSV file go through the same machinery. ScriptedLM, real kernels, real SQLite."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from delm_rlm import RunStore, ScriptedLM, Team, Trace
from delm_rlm.chunking import split_corpus
from delm_rlm.corpus import Corpus
from delm_rlm.gists import GistKind
from delm_rlm.state.queue import TaskQueue, TaskState

LEVELS = ["ERROR", "INFO", "INFO", "WARN", "INFO", "ERROR"]


def _log_lines(n: int, start: int = 0) -> list[str]:
    return [f"2024-05-01 10:{(start + i) // 60:02d}:{(start + i) % 60:02d} {LEVELS[(start + i) % 6]:<5} svc{(start + i) % 3}\n"
            for i in range(n)]


QUESTION = "How many lines are 'ERROR'?"
LEVEL_OF = "line.split()[2]"
METHOD_V1 = f"from collections import Counter\nprint(dict(Counter({LEVEL_OF} for line in chunk.splitlines() if line.strip())))"
# The fix for lines like "ERROR: disk full" (no timestamp): the level is the first word.
METHOD_V2 = ("from collections import Counter\n"
             "print(dict(Counter((line.split()[2] if line[:1].isdigit() else line.split(':')[0]) "
             "for line in chunk.splitlines() if line.strip())))")
FINAL = '```repl\ntotal = combine(gists(kind="partial"))\nanswer["content"] = f"Answer: {total[\'ERROR\']}"\nanswer["ready"] = True\n```'


def _agent(code: str) -> str:
    return (f"```repl\nexec({code!r})\nfrom collections import Counter\n"
            f"c = eval({code.splitlines()[-1].removeprefix('print(')[:-1]!r})\n"
            f"print(propose('partial', f'levels {{c}}', value=c, check={code!r}, method=True))\n"
            "answer['content'] = str(c)\nanswer['ready'] = True\n```")


class MethodScript:
    """Agents share their counting code as a method; on a chunk the method failed on, the
    agent (told why in its prompt) shares the fixed code. Records every agent prompt."""

    def __init__(self) -> None:
        self.task_prompts: dict[str, str] = {}

    def __call__(self, messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return FINAL
        first = messages[1]["content"]
        task = first.split("Your task ", 1)[1].split(":", 1)[0]
        self.task_prompts[task] = first
        return _agent(METHOD_V2 if "failed on yours" in first else METHOD_V1)


def _truth(text: str) -> int:
    return sum(1 for line in text.splitlines() if line.split()[2:3] == ["ERROR"] or line.startswith("ERROR:"))


async def test_an_admitted_method_computes_the_other_chunks_with_no_model_call(tmp_path: Path) -> None:
    log = tmp_path / "service.log"
    log.write_text("".join(_log_lines(24)))
    corpus = Corpus.from_paths([log])
    chunks = split_corpus(corpus.docs, size=200)
    assert len(chunks) == 4
    script = MethodScript()
    result = await Team(ScriptedLM(script), agents=1, plan="split", chunk_chars=200,
                        run_dir=tmp_path / "run").run(QUESTION, corpus)
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {_truth(log.read_text())}"
    # One agent loop (t1) and one finalizer call: t2-t4 were computed by the method.
    assert result.usage_by_role["root"].calls == 1 and result.usage_by_role["finalizer"].calls == 1
    assert list(script.task_prompts) == ["t1"]
    events = Trace.load(result.trace_path)
    applied = [e for e in events if e.kind == "method_applied"]
    assert [e.task for e in applied] == ["t2", "t3", "t4"] and {e.data["version"] for e in applied} == {1}
    store = RunStore(result.store_path)
    (method,) = store.list_gists(status="admitted", kinds="method")
    assert method.value["version"] == 1 and method.value["home"] == "t1" and method.value["trials"] == ["t2", "t3"]
    assert method.value["combine"] == "sum" and len(method.evidence) == 3  # home and two trials
    partials = {g.provenance.task_id: g for g in store.list_gists(status="admitted", kinds="partial")}
    for i, chunk in enumerate(chunks):
        text = chunk.text(corpus.docs)
        assert partials[f"t{i + 1}"].value == dict(Counter(line.split()[2] for line in text.splitlines()))
    assert all(f"method {method.id} v1" in (partials[t].note or "") for t in ("t2", "t3", "t4"))
    assert all(t.state == TaskState.DONE and t.attempts == 1 for t in TaskQueue(store).all())
    assert method.id in result.gist_ids  # combine() read the method: the answer rests on it


async def test_a_method_failing_on_one_chunk_sends_only_that_chunk_to_an_agent(tmp_path: Path) -> None:
    lines = _log_lines(24)
    # The last chunk's lines have no timestamp: the method's trials (t2, t3) never see them.
    lines[18:24] = ["ERROR: disk full\n", "INFO: ok\n", "ERROR: disk full\n", "WARN: slow\n", "INFO: ok\n", "INFO: ok\n"]
    text = "".join(lines)
    chunks = split_corpus([text], size=200)
    assert [c.text([text]).startswith("ERROR: disk") for c in chunks] == [False, False, False, True]
    script = MethodScript()
    result = await Team(ScriptedLM(script), agents=1, plan="split", chunk_chars=200,
                        run_dir=tmp_path / "run").run(QUESTION, text)
    assert result.status == "answered", result.error
    assert result.answer == f"Answer: {_truth(text)}"
    # Agents worked t1 (the first method) and t4 (where it failed): nothing else.
    assert list(script.task_prompts) == ["t1", "t4"] and result.usage_by_role["root"].calls == 2
    assert "failed on yours" in script.task_prompts["t4"] and "IndexError" in script.task_prompts["t4"]
    assert METHOD_V1.splitlines()[-1] in script.task_prompts["t4"]  # the failed code is shown
    events = Trace.load(result.trace_path)
    failed = [e for e in events if e.kind == "method_failed"]
    assert [(e.task, e.data["version"]) for e in failed] == [("t4", 1)]
    assert [(e.task, e.data["version"]) for e in events if e.kind == "method_applied"] == [("t2", 1), ("t3", 1)]
    store = RunStore(result.store_path)
    methods = sorted(store.list_gists(status="admitted", kinds="method"), key=lambda g: g.value["version"])
    v1, v2 = methods
    assert (v1.value["version"], v2.value["version"]) == (1, 2)
    # v2 was tried where v1 worked (t1, its home) before admission; v1 stays, its failure recorded.
    assert v2.value["amends"] == v1.id and v2.value["home"] == "t4" and "t1" in v2.value["trials"]
    failure = store.get_gist(failed[0].data["failure_gist_id"])
    assert failure.kind == GistKind.FAILURE and f"method {v1.id} (v1) failed on t4's chunk" in failure.text
    assert v2.text.startswith("method v2 (from t4): ")


@pytest.mark.parametrize("kind", ["log", "csv"])
async def test_a_log_file_and_a_csv_file_are_answered_through_the_same_machinery(kind: str, tmp_path: Path) -> None:
    """Each corpus twice: the scout's plan (one verified program: the fields are in the
    text) and the split, where the first chunk's code becomes the method for the rest."""
    rows = [{"ts": f"2024-05-01 10:00:{i:02d}", "level": LEVELS[i % 6], "service": f"svc{i % 3}"} for i in range(12)]
    path = tmp_path / ("app.log" if kind == "log" else "app.csv")
    if kind == "log":
        path.write_text("".join(f"{r['ts']} {r['level']} {r['service']}\n" for r in rows))
    else:
        pd.DataFrame(rows).to_csv(path, index=False)
    corpus = Corpus.from_paths([path])
    truth = sum(r["level"] == "ERROR" for r in rows)
    # A log line's level is its third word; a table row's text is "ts: ... | level: X | ...".
    level = "(line.split('level: ')[1].split(' |')[0] if 'level: ' in line else line.split()[2])"
    method = f"from collections import Counter\nprint(dict(Counter({level} for line in chunk.splitlines() if line.strip())))"
    whole = ("```repl\nn = int((df['level'] == 'ERROR').sum()) if 'level' in df.columns else "
             "sum(1 for line in context.splitlines() if line.split()[2:3] == ['ERROR'])\n"
             "answer['content'] = f'Answer: {n}'\nanswer['ready'] = True\n```")

    def script(messages: list[dict], role: str) -> str:
        if role == "finalizer":
            return FINAL
        return _agent(method) if "Your task" in messages[1]["content"] else whole

    auto = await Team(ScriptedLM(script), agents=2, run_dir=tmp_path / "auto").run(QUESTION, corpus)
    assert auto.status == "answered", auto.error
    assert auto.answer == f"Answer: {truth}" and auto.usage.calls == 1
    assert [e.data["plan"] for e in auto.trace if e.kind == "plan_chosen"] == ["whole"]

    split = await Team(ScriptedLM(script), agents=1, plan="split", chunk_chars=120,
                       run_dir=tmp_path / "split").run(QUESTION, corpus)
    assert split.status == "answered", split.error
    assert split.answer == f"Answer: {truth}"
    tasks = TaskQueue(RunStore(split.store_path)).all()
    served = [e.task for e in split.trace if e.kind == "method_applied"]
    assert len(tasks) >= 3 and served == [t.id for t in tasks[1:]]
    assert split.usage_by_role["root"].calls == 1
