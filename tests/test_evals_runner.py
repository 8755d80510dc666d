"""The evaluation runner and reports: resume, error rows, tables, Markdown and the plot."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from delm_rlm.errors import LMError
from delm_rlm.llm.scripted import ScriptedLM
from evals.report import render_report
from evals.runner import ResultRow, load_results, run_eval
from tasks import longbench, oolong
from tasks.model import Task


@pytest.fixture(scope="module")
def oolong_tasks(trec_pool: Path) -> list[Task]:
    return oolong.load(oolong.generate(trec_pool, 1024, seed=3, windows=1))[:3]


def answer_label(messages: list[dict], role: str) -> str:
    return "Label: entity"


def run(tasks: list[Task], out: Path, lm: ScriptedLM, methods: str = "direct", **kw) -> list[ResultRow]:
    run_eval("oolong", None, methods, model="scripted", out=out, lm=lm, tasks=tasks, progress=False, **kw)
    return load_results(out)


def test_rows_are_written_per_task_and_method_with_usage_and_metadata(oolong_tasks: list[Task], tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    rows = run(oolong_tasks, out, ScriptedLM(answer_label), methods="direct,orchestrator")
    assert len(rows) == 6
    assert {(r.task_id, r.method) for r in rows} == {(t.id, m) for t in oolong_tasks for m in ("direct", "orchestrator")}
    for row in rows:
        assert row.status == "answered" and row.answer == "Label: entity"
        assert row.calls >= 1 and row.input_tokens > 0 and row.output_tokens > 0
        assert row.dollars == 0.0 and row.context_len == 1024 and row.variant == "unlabelled"
        assert row.task_group in ("counting", "user", "timeline") and row.dataset == "trec_coarse"
        assert 0.0 <= row.score <= 1.0 and row.score_lenient is not None and row.score_lenient >= row.score
        # Which code produced the row: this checkout's commit (a results file can mix commits).
        assert row.code_version and row.code_version != "unknown"
    # The orchestrator's usage is its own session's: one worker per chunk plus the merge.
    orchestrated = [r for r in rows if r.method == "orchestrator"]
    assert all(r.calls == 2 and set(r.usage_by_role) == {"sub", "root"} for r in orchestrated)


def test_rerun_skips_rows_already_present(oolong_tasks: list[Task], tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    run(oolong_tasks, out, ScriptedLM(answer_label))
    again = ScriptedLM(answer_label)
    rows = run(oolong_tasks, out, again)
    assert again.transport_calls == 0
    assert len(out.read_text().splitlines()) == 3 and len(rows) == 3


def test_half_written_last_line_is_dropped_and_that_task_reruns(oolong_tasks: list[Task], tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    run(oolong_tasks, out, ScriptedLM(answer_label))
    text = out.read_text()
    last = text.splitlines()[-1]
    out.write_text(text[: len(text) - len(last) // 2 - 1])  # a killed run: no newline, half a row
    assert len(load_results(out)) == 2  # the reader ignores the cut line

    again = ScriptedLM(answer_label)
    rows = run(oolong_tasks, out, again)
    assert again.transport_calls == 1
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["task_id"] for line in lines)
    assert sorted(r.task_id for r in rows) == sorted(t.id for t in oolong_tasks)


def test_a_bad_line_in_the_middle_is_an_error_naming_it(oolong_tasks: list[Task], tmp_path: Path) -> None:
    out = tmp_path / "run.jsonl"
    run(oolong_tasks, out, ScriptedLM(answer_label))
    lines = out.read_text().splitlines()
    lines[1] = '{"not": "a row"}'
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"line 2 is not a result row"):
        load_results(out)


def test_failing_task_becomes_an_error_row_and_the_run_goes_on(oolong_tasks: list[Task], tmp_path: Path) -> None:
    bad = oolong_tasks[1].question

    def flaky(messages: list[dict], role: str) -> str:
        if bad in messages[-1]["content"]:
            raise RuntimeError("endpoint fell over")
        return "Label: entity"

    out = tmp_path / "run.jsonl"
    rows = {r.task_id: r for r in run(oolong_tasks, out, ScriptedLM(flaky, max_retries=0))}
    failed = rows[oolong_tasks[1].id]
    assert failed.status == "error" and failed.score == 0.0 and failed.answer is None
    assert "endpoint fell over" in (failed.error or "")
    assert all(rows[t.id].status == "answered" for t in (oolong_tasks[0], oolong_tasks[2]))

    # Error rows are kept on a plain rerun, and rerun (last row wins) with retry_errors.
    plain = ScriptedLM(answer_label)
    assert run(oolong_tasks, out, plain)[1].status == "error" and plain.transport_calls == 0
    retry = ScriptedLM(answer_label)
    rows = {r.task_id: r for r in run(oolong_tasks, out, retry, retry_errors=True)}
    assert retry.transport_calls == 1 and rows[oolong_tasks[1].id].status == "answered"


def test_method_that_cannot_run_gives_error_rows(oolong_tasks: list[Task], tmp_path: Path) -> None:
    # A window too small for the prompt: every direct run fails with a message, no crash.
    rows = run(oolong_tasks, tmp_path / "run.jsonl", ScriptedLM(answer_label, context_window=300))
    assert [r.status for r in rows] == ["error"] * 3
    assert all("context window" in (r.error or "") for r in rows)


def test_unknown_method_or_bench_fails_before_any_work(oolong_tasks: list[Task], tmp_path: Path) -> None:
    lm = ScriptedLM(answer_label)
    with pytest.raises(ValueError, match="unknown method 'telepathy'"):
        run(oolong_tasks, tmp_path / "run.jsonl", lm, methods="direct,telepathy")
    with pytest.raises(ValueError, match="unknown bench"):
        run_eval("oolong-synth", "x.jsonl", "direct", out=tmp_path / "r.jsonl", lm=lm, progress=False)
    assert lm.transport_calls == 0 and not (tmp_path / "run.jsonl").exists()


def test_direct_truncates_the_middle_to_the_window(oolong_tasks: list[Task], tmp_path: Path) -> None:
    task = oolong_tasks[0]
    lm = ScriptedLM(answer_label, context_window=700)
    rows = run([task], tmp_path / "run.jsonl", lm)
    assert rows[0].status == "answered"
    prompt = lm.received[0][0][-1]["content"]
    context = task.get_context()
    assert lm.count_tokens(prompt) + 256 <= 700  # 256: the room kept for the answer
    assert prompt.startswith(context[:100]) and context[-50:] in prompt and prompt.endswith(task.question)
    assert len(prompt) < len(context)


def test_longbench_direct_uses_the_official_prompt(longbench_sample: Path, tmp_path: Path) -> None:
    tasks = longbench.load(longbench_sample)[:1]
    lm = ScriptedLM(lambda m, r: "The correct answer is (B)", context_window=4000)
    out = tmp_path / "lb.jsonl"
    run_eval("longbench", None, "direct", model="scripted", out=out, lm=lm, tasks=tasks, progress=False)
    prompt = lm.received[0][0][-1]["content"]
    assert prompt.startswith("Please read the following text and answer the question below.\n\n<text>\n")
    assert prompt.endswith('Format your response as follows: "The correct answer is (insert answer here)".')
    assert tasks[0].question in prompt
    (row,) = load_results(out)
    assert row.score == (1.0 if tasks[0].answer == "B" else 0.0) and row.score_lenient is None
    assert row.difficulty == tasks[0].metadata["difficulty"] and row.length == "short"


# ------------------------------------------------------------------ report


def _row(**kw) -> str:
    base = dict(bench="oolong", task_id="t", method="direct", model="local", status="answered", answer="x")
    return ResultRow(**(base | kw)).model_dump_json()


def test_report_renders_tables_markdown_and_png(tmp_path: Path) -> None:
    results = tmp_path / "run.jsonl"
    lines = [
        _row(task_id="a", score=1.0, context_len=8192, task_group="counting", variant="unlabelled", dollars=0.0),
        _row(task_id="b", score=0.0, context_len=32768, task_group="user", variant="labelled", dollars=0.0),
        _row(task_id="a", method="rlm", score=0.5, context_len=8192, task_group="counting", variant="unlabelled", dollars=0.0,
             detail={"labels": {"lines": 40, "labelled": 40, "correct": 30, "calls": 2, "unmatched_items": 0,
                                "accuracy": 0.75, "coverage": 1.0}}),
        _row(task_id="b", method="rlm", score=1.0, context_len=32768, task_group="user", variant="labelled", dollars=0.0),
        _row(bench="longbench", task_id="q1", score=1.0, difficulty="easy", length="short", model="gpt-5", dollars=0.02),
        _row(bench="longbench", task_id="q2", score=0.0, difficulty="hard", length="long", model="gpt-5", dollars=0.02),
        _row(bench="longbench", task_id="q1", method="rlm", score=1.0, difficulty="easy", length="short", model="x", dollars=None,
             input_tokens=900, detail={"evidence": {"read": True, "how": "1 llm_query call(s)", "gist_ids": []}}),
        _row(bench="longbench", task_id="q2", method="rlm", score=0.0, difficulty="hard", length="long", model="x", dollars=None,
             input_tokens=100, detail={"evidence": {"read": False, "how": "no llm_query call", "gist_ids": []}}),
    ]
    results.write_text("\n".join(lines) + "\n")
    console = Console(record=True, width=200)
    report = render_report(results, markdown=tmp_path / "r.md", plot=tmp_path / "r.png", console=console)

    titles = [t.title for t in report.tables]
    assert titles == [
        "Summary per method",
        "OOLONG: score by context length",
        "OOLONG: score by task group",
        "OOLONG: score by window variant",
        "OOLONG: labels given by classify() against the window's true labels",
        "LongBench-v2: accuracy",
        "LongBench-v2: answers resting on read evidence, and cost",
    ]
    by_title = {t.title: t for t in report.tables}
    assert by_title["OOLONG: score by context length"].columns == ["method", "8K", "32K", "all"]
    assert by_title["OOLONG: score by context length"].rows[1] == ["rlm", "50.0 (1)", "100.0 (1)", "75.0 (2)"]
    labels = by_title["OOLONG: labels given by classify() against the window's true labels"]
    assert labels.rows == [["direct", "0 of 2", "-", "-", "-"], ["rlm", "1 of 2", "75.0", "100.0", "2.0"]]
    lb = by_title["LongBench-v2: accuracy"]
    assert lb.columns == ["method", "overall", "easy", "hard", "short", "medium", "long"]
    assert lb.rows[0] == ["direct", "50.0 (2)", "100.0 (1)", "0.0 (1)", "100.0 (1)", "-", "0.0 (1)"]
    evidence = by_title["LongBench-v2: answers resting on read evidence, and cost"]
    assert evidence.rows == [["direct", "2", "-", "-", "0", "0.0", "0.0"], ["rlm", "2", "1 of 2", "1 of 1", "500", "0.0", "0.0"]]
    summary = {(r[0], r[1]): r for r in by_title["Summary per method"].rows}
    assert summary[("direct", "oolong")][-2:] == ["free (local)", "free (local)"]  # never 1/0
    assert summary[("direct", "longbench")][-2:] == ["$0.0200", "2,500.0"]  # 50 points / $0.02
    assert summary[("rlm", "longbench")][-1].startswith("n/a")

    markdown = (tmp_path / "r.md").read_text()
    assert "| method | overall | easy | hard | short | medium | long |" in markdown
    assert "| direct | 50.0 (2) | 100.0 (1) | 0.0 (1) | 100.0 (1) | - | 0.0 (1) |" in markdown
    assert "free (local)" in console.export_text()
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_report_of_a_missing_or_empty_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="delm-rlm eval"):
        render_report(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(ValueError, match="no result rows"):
        render_report(tmp_path / "empty.jsonl")


def test_lm_errors_name_the_task(oolong_tasks: list[Task], tmp_path: Path) -> None:
    lm = ScriptedLM([])  # exhausted at once: every call fails with an LMError
    rows = run(oolong_tasks[:1], tmp_path / "run.jsonl", lm)
    assert rows[0].status == "error" and LMError.__name__ in (rows[0].error or "")


def test_every_row_records_its_run_directory(oolong_tasks: list[Task], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DELM_RLM_RUNS_DIR", str(tmp_path / "runs"))
    lm = ScriptedLM(lambda messages, role: "Answer: 1")
    (row,) = run(oolong_tasks[:1], tmp_path / "rows.jsonl", lm, methods="direct")
    run_dir = Path(row.detail["run_dir"])
    assert run_dir.parent == tmp_path / "runs" and (run_dir / "trace.jsonl").is_file()


def test_a_fresh_cache_dir_gives_each_method_its_own_empty_cache(oolong_tasks: list[Task], tmp_path: Path) -> None:
    """With the LM's own cache warm from an earlier run, a benchmark that passes an empty
    fresh_cache_dir pays for every call again (nothing served from the shared cache), and
    each method writes its own cache file there."""
    lm = ScriptedLM(answer_label, cache=tmp_path / "shared.sqlite")
    run(oolong_tasks, tmp_path / "warm.jsonl", lm, methods="direct,orchestrator")
    warm_calls = lm.transport_calls
    rows = run(oolong_tasks, tmp_path / "fresh.jsonl", lm, methods="direct,orchestrator",
               fresh_cache_dir=tmp_path / "fresh")
    assert lm.transport_calls == 2 * warm_calls
    assert len(rows) == 6 and all(r.status == "answered" for r in rows)
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir() if p.suffix == ".sqlite") == [
        "direct.sqlite", "orchestrator.sqlite"]
    # Without it the same run is served from the warm shared cache.
    run(oolong_tasks, tmp_path / "shared.jsonl", lm, methods="direct,orchestrator")
    assert lm.transport_calls == 2 * warm_calls
