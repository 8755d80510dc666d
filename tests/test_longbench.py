"""LongBench-v2 loader, official prompt and middle truncation, on the real dev sample."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from evals.scoring import score
from tasks import DatasetError, Task
from tasks import longbench

ROW = {
    "_id": "x1",
    "domain": "Single-Document QA",
    "sub_domain": "Legal",
    "difficulty": "easy",
    "length": "short",
    "question": "  Who signed?\n",
    "choice_A": " Ann ",
    "choice_B": "Bob",
    "choice_C": "Cid",
    "choice_D": "Dee\n",
    "answer": "B",
    "context": "\n\nThe contract was signed by Bob.\n",
}

EXPECTED_PROMPT = """Please read the following text and answer the question below.

<text>
The contract was signed by Bob.
</text>

What is the correct answer to this question: Who signed?
Choices:
(A) Ann
(B) Bob
(C) Cid
(D) Dee

Format your response as follows: "The correct answer is (insert answer here)"."""


def test_real_sample_loads(longbench_sample: Path) -> None:
    tasks = longbench.load(longbench_sample)
    assert len(tasks) == 12
    assert len({t.id for t in tasks}) == 12
    assert all(t.scorer == "longbench" and t.answer in "ABCD" for t in tasks)
    assert {t.metadata["domain"] for t in tasks} == {"Multi-Document QA"}
    assert {t.metadata["length"] for t in tasks} == {"short"}
    assert all(t.context and len(t.context) > 40_000 for t in tasks)
    first = tasks[0]
    assert first.id == "66f599ef821e116aacb34099"
    assert first.metadata["sub_domain"] == "Academic" and first.metadata["difficulty"] == "hard"
    assert first.question.startswith("What is the correct answer to this question: Which of the following")
    assert first.question.endswith('"The correct answer is (insert answer here)".')
    assert first.raw is not None and first.raw["_id"] == first.id
    # the gold letter, answered in the official form, scores 1; another letter 0
    assert score(first, f"The correct answer is ({first.answer})") == 1.0
    assert score(first, "The correct answer is (A)") == 0.0


def test_filters_on_real_sample(longbench_sample: Path) -> None:
    tasks = longbench.load(longbench_sample)
    easy = longbench.filter_tasks(tasks, difficulties="easy")
    hard = longbench.filter_tasks(tasks, difficulties=["hard"])
    assert len(easy) + len(hard) == 12 and easy and hard
    assert all(t.metadata["difficulty"] == "easy" for t in easy)
    assert longbench.load(longbench_sample, lengths="long") == []
    assert len(longbench.load(longbench_sample, domains="Multi-Document QA", lengths=["short", "medium"])) == 12
    assert len(longbench.load(longbench_sample, limit=3)) == 3


def test_official_prompt_exact() -> None:
    prompt = longbench.build_prompt(ROW)
    assert prompt == EXPECTED_PROMPT
    assert not prompt.endswith("\n")
    assert prompt.endswith(longbench.question_block(ROW))
    task = longbench.row_to_task(ROW)
    assert longbench.build_prompt(task) == EXPECTED_PROMPT
    assert longbench.build_prompt(task, context="short") == EXPECTED_PROMPT.replace(
        "The contract was signed by Bob.", "short"
    )


def test_prompt_keeps_official_replace_chain() -> None:
    # The official code fills $DOC$ first, then $Q$...: a "$Q$" inside the document is replaced too.
    row = dict(ROW, context="see $Q$ here")
    assert "see Who signed? here" in longbench.build_prompt(row)


def test_truncate_middle_keeps_head_and_tail() -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    assert longbench.truncate_middle(text, 200, len) == text
    cut = longbench.truncate_middle(text, 10, len)
    assert cut == text[:5] + text[-5:]
    odd = longbench.truncate_middle(text, 11, len)  # ids[:n//2] + ids[-n//2:]: the tail gets the extra one
    assert odd == text[:5] + text[-6:]
    words = " ".join(f"w{i}" for i in range(1000))
    short = longbench.truncate_middle(words, 100, lambda s: len(s.split()))
    assert short.startswith("w0 w1 ") and short.endswith(" w998 w999")
    assert len(short.split()) <= 101  # each half within its share; a word may be cut at the seam
    with pytest.raises(ValueError, match="positive"):
        longbench.truncate_middle(text, 0, len)


@given(st.text(min_size=0, max_size=400), st.integers(1, 300))
def test_truncate_middle_property(text: str, max_tokens: int) -> None:
    out = longbench.truncate_middle(text, max_tokens, len)
    assert len(out) == min(len(text), max_tokens)
    head = max_tokens // 2
    if len(text) > max_tokens:
        assert out == text[:head] + text[len(text) - (max_tokens - head) :]


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"context": None}, "context", "missing"),
        ({"answer": "E"}, "answer", "A, B, C, D"),
        ({"difficulty": "medium"}, "difficulty", "easy or hard"),
        ({"length": 3}, "length", "expected str"),
    ],
)
def test_bad_rows_name_file_row_field(tmp_path: Path, change: dict, field: str, message: str) -> None:
    bad = {k: v for k, v in dict(ROW, **change).items() if v is not None}
    path = _write_jsonl(tmp_path / "lb.jsonl", [ROW, dict(ROW, _id="x2"), bad])
    with pytest.raises(DatasetError) as err:
        longbench.load(path)
    assert err.value.file == str(path) and err.value.row == 3 and err.value.field == field
    assert str(path) in str(err.value) and "row 3" in str(err.value) and message in str(err.value)


def test_json_list_and_broken_json(tmp_path: Path) -> None:
    listed = tmp_path / "lb.json"
    listed.write_text(json.dumps([ROW, dict(ROW, _id="x2", difficulty="hard")]), encoding="utf-8")
    assert [t.id for t in longbench.load(listed, difficulties="hard")] == ["x2"]
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(ROW) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"row 2: not valid JSON"):
        longbench.load(broken)
    with pytest.raises(DatasetError, match="does not exist"):
        longbench.load(tmp_path / "missing.jsonl")


def test_direct_prompt_is_the_official_one_for_loaded_rows_and_hand_built_tasks() -> None:
    loaded = longbench.row_to_task(ROW)
    assert longbench.direct_prompt(loaded, "short text") == longbench.build_prompt(ROW, context="short text")
    by_hand = Task(id="h1", question=longbench.question_block(ROW), context="unused", answer="B", scorer="longbench")
    # Same prompt either way: the template's head, the (stripped) text, the question block.
    assert longbench.direct_prompt(by_hand, "\nshort text\n") == longbench.build_prompt(ROW, context="short text")
