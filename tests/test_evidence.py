"""The benchmark's evidence measure (evals/evidence.py): did an answer to a reading question
rest on text the method read? Real runs (ScriptedLM, real kernels for RLM), judged from their
traces against the documents, not from the run's own verdicts."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

from delm_rlm import ScriptedLM, Team
from delm_rlm.rlm import RLM
from evals.evidence import MIN_PRINTED_CHARS, answer_evidence, backfill
from test_reading import DOCS, QUESTION, DelmReaders


def repl(code: str) -> str:
    return f"```repl\n{textwrap.dedent(code).strip()}\n```"


async def test_a_team_answer_from_a_gist_quoting_the_documents_rested_on_read_evidence(tmp_path: Path) -> None:
    result = await Team(ScriptedLM(DelmReaders()), agents=2, mode="delm", run_dir=tmp_path).run(QUESTION, DOCS)
    assert result.status == "answered", result.error
    evidence = answer_evidence("delm", result.trace, DOCS)
    assert evidence is not None and evidence["read"] is True
    assert evidence["gist_ids"] and set(evidence["gist_ids"]) <= set(result.gist_ids)

    # The measure re-checks the quotes against the documents: the same trace, judged against
    # documents that do not hold those quotes, is not read evidence.
    other = ["An unrelated memo about parking permits and office hours."] * len(DOCS)
    assert answer_evidence("delm", result.trace, other)["read"] is False
    # ... and neither is a trace whose finalizer named no answer, nor one that never got there.
    unanswered = [e for e in result.trace if e.kind != "finalize"]
    assert answer_evidence("delm", unanswered, DOCS) == {
        "read": False, "how": "its finalizer gave no answer", "gist_ids": []}
    unfinished = [e for e in unanswered
                  if not (e.kind == "agent_step" and str(e.data.get("action", "")).startswith("finalizing"))]
    assert answer_evidence("delm", unfinished, DOCS) == {
        "read": False, "how": "the run never reached its finalizer", "gist_ids": []}


async def test_an_rlm_that_printed_a_passage_read_and_one_that_only_counted_did_not() -> None:
    finish = repl('answer["content"] = "The correct answer is (B)"\nanswer["ready"] = True')
    show = repl("""
        text = context if isinstance(context, str) else "\\n".join(map(str, context))
        print(next(line for line in text.splitlines() if "monthly rent is 1,520" in line))
    """)
    reading = await RLM(ScriptedLM([show, finish])).run(QUESTION, DOCS)
    counting = await RLM(ScriptedLM([repl("print(len(context))"), finish])).run(QUESTION, DOCS)
    assert read_line_is_long_enough()
    read = answer_evidence("rlm", reading.trace, DOCS)
    assert read == {"read": True, "how": "1 printed corpus line(s)", "gist_ids": []}
    assert answer_evidence("rlm", counting.trace, DOCS)["read"] is False
    assert answer_evidence("direct", counting.trace, DOCS) is None  # the text was its prompt: not judged


def read_line_is_long_enough() -> bool:
    return len(next(x for x in DOCS[1].splitlines() if "monthly rent is 1,520" in x)) >= MIN_PRINTED_CHARS


async def test_backfill_fills_rows_from_their_run_traces_and_leaves_the_rest(tmp_path: Path, longbench_sample: Path) -> None:
    from tasks.longbench import load

    task = load(longbench_sample)[0]
    run_dir = tmp_path / "run"
    finish = repl('answer["content"] = "The correct answer is (A)"\nanswer["ready"] = True')
    line = next(s for s in task.get_context().splitlines() if len(s) >= MIN_PRINTED_CHARS)
    code = f"print(next(s for s in context.splitlines() if s == {line!r}))"
    from delm_rlm.trace import Trace

    with Trace(run_dir / "trace.jsonl") as trace:
        await RLM(ScriptedLM([repl(code), finish]), trace=trace).run(task.question, task.get_context())
    rows = [
        {"bench": "longbench", "task_id": task.id, "method": "rlm", "detail": {"run_dir": str(run_dir)}},
        {"bench": "longbench", "task_id": task.id, "method": "direct", "detail": {"run_dir": str(run_dir)}},
        {"bench": "longbench", "task_id": task.id, "method": "hybrid", "detail": {"run_dir": str(tmp_path / "gone")}},
        {"bench": "oolong", "task_id": "x", "method": "rlm", "detail": {}},
    ]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert backfill(results, longbench_sample) == 1
    after = [json.loads(x) for x in results.read_text().splitlines()]
    assert after[0]["detail"]["evidence"]["read"] is True
    assert after[0]["detail"]["evidence"]["measured"] == "afterwards, from the run's trace"
    assert after[1:] == rows[1:]
