"""Label audits: what a run's classify() calls said about each item, against a window's true
labels (evals.labels), and the classification log that keeps the items to make that possible."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from delm_rlm.classify import ClassificationLog
from delm_rlm.llm.scripted import ScriptedLM
from delm_rlm.methods import stored_classifications
from delm_rlm.state.protocol import ClassificationRecord
from delm_rlm.state.sqlite import RunStore
from evals.labels import WindowLabels, label_accuracy, task_label_accuracy
from evals.methods import run_method
from tasks import oolong
from tasks.model import Task

LABELS = ["entity", "numeric value", "abbreviation", "human being", "description and abstract concept", "location"]


@pytest.fixture(scope="module")
def window(trec_pool: Path) -> Task:
    rows = oolong.generate(trec_pool, 1024, seed=5, windows=1)
    return oolong.load([r for r in rows if r["task"] == "TASK_TYPE.MOST_FREQ"][:1])[0]


def _truth(task: Task) -> WindowLabels:
    assert task.raw is not None
    return WindowLabels(task.raw["context_window_text_with_labels"])


def test_window_lines_are_found_by_whole_line_by_question_and_by_containing_text(window: Task) -> None:
    truth = _truth(window)
    data_lines = [line for line in window.get_context().splitlines() if "|| Instance:" in line]
    assert len(truth.lines) == len(data_lines) > 10
    for i, line in enumerate(data_lines):
        question = line.split("Instance:", 1)[1].strip()
        assert truth.line_of(line) == i
        assert truth.line_of(question) == i
        assert truth.line_of(f"Q: {question} (asked on a Monday)") == i
    assert truth.line_of("a text that is no line of the window") is None


def test_final_labelling_is_scored_per_line_with_later_calls_winning(window: Task) -> None:
    truth = _truth(window)
    lines = [line for line, _, _ in truth.lines]
    gold = [label for _, _, label in truth.lines]
    wrong = [next(lab for lab in LABELS if lab != g) for g in gold]
    half = len(lines) // 2
    first = ClassificationRecord(  # whole lines, the first two labelled wrong, one left out
        key="a", labels=LABELS, instruction="", items=lines[:half] + ["not in the window"],
        result=wrong[:2] + gold[2:half - 1] + [None, "entity"],
    )
    second = ClassificationRecord(  # questions only, all right; relabels line 0 rightly
        key="b", labels=LABELS, instruction="", items=[q for _, q, _ in truth.lines[half:]] + [truth.lines[0][1]],
        result=gold[half:] + [gold[0]],
    )
    old = ClassificationRecord(key="c", labels=LABELS, instruction="", result=["entity"])  # no items kept
    measured = label_accuracy(truth, [old, first, second])
    assert measured is not None
    assert (measured.lines, measured.calls, measured.unmatched_items) == (len(lines), 2, 1)
    assert measured.labelled == len(lines) - 1  # the line answered None stays unlabelled
    assert measured.correct == measured.labelled - 1  # line 1 wrong; line 0 fixed by the later call
    assert measured.accuracy == pytest.approx((len(lines) - 2) / (len(lines) - 1))
    assert label_accuracy(truth, [old]) is None  # nothing to measure is not a zero


def test_a_team_store_hands_back_its_classifications_with_items(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "run.sqlite")
    ClassificationLog(store).record(["Where is Rome ?"], LABELS, "", ["location"])
    store.close()
    assert [(r.items, r.result) for r in stored_classifications(str(tmp_path / "run.sqlite"))] == [
        (["Where is Rome ?"], ["location"])
    ]
    assert stored_classifications(None) == []


RLM_CODE = (
    "```repl\n"
    "qs = [line.split('Instance:', 1)[1].strip() for line in context.splitlines() if '|| Instance:' in line]\n"
    f"labels = classify(qs, {LABELS!r})\n"
    "from collections import Counter\n"
    "answer['content'] = 'Label: ' + Counter(labels).most_common(1)[0][0]\n"
    "answer['ready'] = True\n"
    "```"
)


def _everything_is_a_location(messages: list[dict], role: str) -> str:
    if role == "sub":  # classify's batch prompt numbers its items; one reply line each
        numbers = re.findall(r"^(\d+)\. ", messages[-1]["content"], re.MULTILINE)
        return "\n".join(f"{n}: location" for n in numbers) or "location"
    return RLM_CODE


async def test_an_rlm_row_reports_how_right_its_classify_labels_were(window: Task) -> None:
    result = await run_method("rlm", window, ScriptedLM(_everything_is_a_location), timeout_s=120)
    assert result.status == "answered", result.error
    truth = _truth(window)
    locations = sum(1 for _, _, label in truth.lines if label == "location")
    labels = result.detail["labels"]
    assert (labels["lines"], labels["labelled"], labels["calls"]) == (len(truth.lines), len(truth.lines), 1)
    assert labels["correct"] == locations and labels["coverage"] == 1.0
    assert labels["accuracy"] == pytest.approx(locations / len(truth.lines))
    assert task_label_accuracy(window, []) is None


async def test_a_team_row_cut_off_by_its_timeout_still_reports_its_labels(window: Task) -> None:
    # The issue-14 benchmark's hybrid rows timed out after labelling for minutes: the row
    # keeps the run directory and measures the labels from the team's stored log.
    hang = "wait for the slow part"
    code = ("```repl\nlabels = classify(chunk.splitlines(), " + repr(LABELS) + ")\n"
            f"print(llm_query({hang!r}))\n```")

    async def script(messages: list[dict], role: str) -> str:
        if role == "sub" and hang in messages[-1]["content"]:
            await asyncio.Event().wait()
        return _everything_is_a_location(messages, role) if role == "sub" else code

    result = await run_method("hybrid", window, ScriptedLM(script), timeout_s=20)
    assert result.status == "error" and result.error == "timed out after 20 s"
    assert Path(result.detail["run_dir"]).is_dir()
    labels = result.detail["labels"]
    truth = _truth(window)
    assert labels["calls"] >= 1 and labels["labelled"] == len(truth.lines)
    assert labels["correct"] == sum(1 for _, _, label in truth.lines if label == "location")
