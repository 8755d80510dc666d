"""OOLONG generator invariants (gold recomputed from the labelled text), loader round trips
through parquet and JSONL, and bad-row errors."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from evals.scoring import oolong_synth_gold, score
from tasks import DatasetError, Task, oolong
from tasks.pool import TREC_LABELS, read_pool

TREC_NAMES = list(TREC_LABELS.values())
LINE = re.compile(r"^Date: ([A-Z][a-z]{2} \d{2}, \d{4}) \|\| User: (\d{5}) \|\| Instance: (.+) \|\| Label: (.+)$")
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
          "October", "November", "December"]  # fmt: skip
USER_SUBSET = re.compile(
    r"^For the following question, only consider the subset of instances that are associated with user IDs "
    r"([\d, ]+)\. Among instances associated with these users, (.*)$",
    re.S,
)
MONTH_SUBSET = re.compile(
    r"^For the following question, only consider the subset of instances that occur in (\w+) of any year\. "
    r"Among instances occuring in \1, (.*)$",
    re.S,
)

Rec = tuple[dt.date, int, str]  # (date, user, label)


def parse_window(row: dict[str, Any]) -> list[Rec]:
    """Read the labelled window back; check the unlabelled one is the same lines minus labels."""
    labelled = row["context_window_text_with_labels"].split("\n")
    plain = row["context_window_text"].split("\n")
    recs: list[Rec] = []
    for line_l, line_p in zip(labelled, plain):
        m = LINE.match(line_l)
        if m is None:
            assert line_l == line_p  # intro/outro lines are identical in both texts
            continue
        assert line_p == line_l.rsplit(" || Label: ", 1)[0]
        recs.append((dt.datetime.strptime(m.group(1), "%b %d, %Y").date(), int(m.group(2)), m.group(4)))
    assert len(labelled) == len(plain)
    return recs


def _unique_top(counter: Counter[Any]) -> tuple[Any, list[tuple[Any, int]]]:
    ranked = counter.most_common()
    return ranked[0][0], ranked


def expected_answer(question: str, recs: list[Rec]) -> list[Any]:
    """The gold, recomputed from the question text and the parsed lines, independently of the generator."""
    m = USER_SUBSET.match(question)
    if m:
        ids = {int(x) for x in m.group(1).split(", ")}
        return core_answer(m.group(2), [r for r in recs if r[1] in ids])
    m = MONTH_SUBSET.match(question)
    if m:
        month = MONTHS.index(m.group(1)) + 1
        return core_answer(m.group(2), [r for r in recs if r[0].month == month])
    m = re.match(r"^For how many months does the label '(.+?)' occur more frequently than the label '(.+?)'\?", question)
    if m:
        per: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
        for d, _, lab in recs:
            per[(d.year, d.month)][lab] += 1
        return [sum(1 for c in per.values() if c[m.group(1)] > c[m.group(2)])]
    m = re.match(r"^In which month did the label '(.+?) first occur more often than the label '(.+?)'\?", question)
    if m:
        per = defaultdict(Counter)
        for d, _, lab in recs:
            per[(d.year, d.month)][lab] += 1
        year, month = min(k for k, c in per.items() if c[m.group(1)] > c[m.group(2)])
        return [f"{MONTHS[month - 1]} {year}"]
    assert question.startswith("In the above data, "), question
    return core_answer(question[len("In the above data, ") :], recs)


def core_answer(q: str, recs: list[Rec]) -> list[Any]:
    labels = Counter(r[2] for r in recs)
    total = sum(labels.values())
    if q.startswith("which of the labels is the most common?"):
        top, ranked = _unique_top(labels)
        assert len(ranked) == 1 or (ranked[0][1] - ranked[1][1]) / total > 0.02  # asked only when clear
        listed = q.split("one of the labels: ", 1)[1].rstrip(".").split(", ")
        assert sorted(listed) == sorted(labels)
        return [top]
    if q.startswith("which of the labels is the least common?"):
        ranked = labels.most_common()
        assert ranked[-1][1] < ranked[-2][1]
        return [ranked[-1][0]]
    m = re.match(r"is label '(.+?)' more common, less common, or the same frequency as label '(.+?)'\?", q)
    if m:
        a, b = labels[m.group(1)], labels[m.group(2)]
        assert a == b or abs(a - b) / total > 0.02
        return ["more common than" if a > b else "less common than" if a < b else "same frequency as"]
    m = re.match(r"how many data points should be classified as label '(.+?)'\?", q)
    if m:
        return [labels[m.group(1)]]
    users = Counter(r[1] for r in recs)
    if q.startswith("which user is represented most often?"):
        ranked = users.most_common()
        assert ranked[0][1] > ranked[1][1]
        return [ranked[0][0]]
    if q.startswith("which user is represented the second most often?"):
        ranked = users.most_common()
        assert ranked[0][1] > ranked[1][1] > (ranked[2][1] if len(ranked) > 2 else -1)
        return [ranked[1][0]]
    m = re.match(r"which user has the most instances with the label (.+?)\? Give", q)
    if m:
        ranked = Counter(r[1] for r in recs if r[2] == m.group(1)).most_common()
        assert ranked[0][1] > ranked[1][1]
        return [ranked[0][0]]
    dates = Counter(r[0] for r in recs)
    if q.startswith("which date is represented most often?"):
        ranked = dates.most_common()
        assert len(ranked) == 1 or ranked[0][1] > ranked[1][1]
        return [ranked[0][0]]
    if q.startswith("which date is represented the second most often?"):
        ranked = dates.most_common()
        assert ranked[0][1] > ranked[1][1] > ranked[2][1]
        return [ranked[1][0]]
    m = re.match(r"how many dates are represented exactly (\d+) times\?", q)
    if m:
        n = int(m.group(1))
        assert sorted(dates.values(), reverse=True)[3] == n  # n is the 4th most common date's count
        return [sum(1 for c in dates.values() if c == n)]
    raise AssertionError(f"unrecognised question: {q[:120]}")


@pytest.fixture(scope="module")
def rows_8k(trec_pool: Path) -> list[dict[str, Any]]:
    return oolong.generate(trec_pool, 8192, seed=7, windows=3)


@pytest.mark.parametrize(("context_len", "seed"), [(1024, 1), (4096, 2), (8192, 3), (32768, 4), (131072, 5)])
def test_gold_recomputed_from_labelled_text(trec_pool: Path, context_len: int, seed: int) -> None:
    rows = oolong.generate(trec_pool, context_len, seed=seed)
    assert len(rows) == 25
    recs = parse_window(rows[0])
    for row in rows:
        expected = expected_answer(row["question"], recs)
        assert row["answer"] == repr(expected), row["question"]


def test_every_question_family_appears(rows_8k: list[dict[str, Any]]) -> None:
    kinds = {(r["task_group"], r["task"], r["answer_type"], r["input_subset"]) for r in rows_8k}
    for kind in [
        ("counting", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.LABEL", "False"),
        ("counting", "TASK_TYPE.LEAST_FREQ", "ANSWER_TYPE.LABEL", "False"),
        ("counting", "TASK_TYPE.RELATIVE_FREQ", "ANSWER_TYPE.COMPARISON", "False"),
        ("counting", "TASK_TYPE.NUMERIC_ONE_CLASS", "ANSWER_TYPE.NUMERIC", "False"),
        ("user", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.USER", "False"),
        ("user", "TASK_TYPE.SECOND_MOST_FREQ", "ANSWER_TYPE.USER", "False"),
        ("user", "TASK_TYPE.NUMERIC_ONE_CLASS", "ANSWER_TYPE.NUMERIC", "True"),
        ("user", "TASK_TYPE.RELATIVE_FREQ", "ANSWER_TYPE.COMPARISON", "True"),
        ("timeline", "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.DATE", "False"),
        ("timeline", "TASK_TYPE.REPRESENTED_N_TIMES", "ANSWER_TYPE.NUMERIC", "False"),
        ("timeline", "TASK_TYPE.RELATIVE_FREQ", "ANSWER_TYPE.NUMERIC", "False"),
        ("timeline", "TASK_TYPE.RELATIVE_FREQ", "ANSWER_TYPE.MONTH_YEAR", "False"),
        ("timeline", "TASK_TYPE.NUMERIC_ONE_CLASS", "ANSWER_TYPE.NUMERIC", "True"),
    ]:
        assert kind in kinds, kind
    questions = " ".join(r["question"] for r in rows_8k)
    for phrase in ["user has the most instances with the label", "which user is represented the second most often"]:
        assert phrase in questions
    # every row's gold is right, across windows too
    by_window: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows_8k:
        by_window[r["context_window_id"]].append(r)
    assert len(by_window) == 3 and all(len(v) == 25 for v in by_window.values())
    for window_rows in by_window.values():
        recs = parse_window(window_rows[0])
        for r in window_rows:
            assert r["answer"] == repr(expected_answer(r["question"], recs))


def test_published_layout(rows_8k: list[dict[str, Any]]) -> None:
    row = rows_8k[0]
    assert tuple(row) == oolong.SYNTH_COLUMNS
    assert row["dataset"] == "trec_coarse" and row["num_labels"] == 6 and row["context_len"] == 8192
    text = row["context_window_text"]
    n = oolong.expected_lines(8192)
    assert n == int((0.95 * 8192 - 168 - 250) // 39) == 188
    assert text.startswith(f"The following lines contain {n} general-knowledge questions, one per line. Each question "
                           "has an answer that can be described as one of 6 categories: '")  # fmt: skip
    assert f"Recall: the preceding lines contain {n} general-knowledge questions" in text
    assert text.endswith("Calculate the exact answer given these datapoints.\n\n")
    assert all(f"'{name}'" in text.split("\n")[0] for name in TREC_NAMES)
    lines = [ln for ln in text.split("\n") if ln.startswith("Date: ")]
    assert len(lines) == n
    assert re.fullmatch(r"Date: [A-Z][a-z]{2} \d{2}, \d{4} \|\| User: \d{5} \|\| Instance: .+", lines[0])
    recs = parse_window(row)
    assert all(dt.date(2022, 2, 16) <= d <= dt.date(2025, 6, 21) for d, _, _ in recs)
    assert {lab for _, _, lab in recs} <= set(TREC_NAMES)
    forms = {
        "ANSWER_TYPE.LABEL": r"\['[a-z ]+'\]",
        "ANSWER_TYPE.COMPARISON": r"\['(more common than|less common than|same frequency as)'\]",
        "ANSWER_TYPE.NUMERIC": r"\[\d+\]",
        "ANSWER_TYPE.USER": r"\[\d{5}\]",
        "ANSWER_TYPE.DATE": r"\[datetime\.date\(20\d\d, \d{1,2}, \d{1,2}\)\]",
        "ANSWER_TYPE.MONTH_YEAR": r"\['[A-Z][a-z]+ 20\d\d'\]",
    }
    for r in rows_8k:
        assert re.fullmatch(forms[r["answer_type"]], r["answer"]), r["answer"]
        assert r["task"] in oolong.TASK_TYPES and r["task_group"] in oolong.TASK_GROUPS
    assert len({r["id"] for r in rows_8k}) == len(rows_8k)


def test_distributions_are_skewed(trec_pool: Path) -> None:
    rows = oolong.generate(trec_pool, 131072, seed=11, windows=2)
    for w in {r["context_window_id"] for r in rows}:
        recs = parse_window(next(r for r in rows if r["context_window_id"] == w))
        users = Counter(u for _, u, _ in recs)
        # common ids recur (~16 lines each here), rare ones mostly appear once or twice
        common_share = sum(c for c in users.values() if c >= 6) / len(recs)
        assert 0.7 < common_share < 0.9  # the common ids take ~80% of the lines
        assert sum(1 for c in users.values() if c >= 6) < 0.35 * len(users)
        labels = Counter(lab for _, _, lab in recs).most_common()
        assert labels[0][1] > 1.5 * labels[-1][1]  # a skewed label mix, not uniform


@pytest.mark.parametrize("context_len", [1024, 2048, 16384, 65536, 262144])
def test_line_counts_follow_formula(trec_pool: Path, context_len: int) -> None:
    row = oolong.generate(trec_pool, context_len)[0]
    n = oolong.expected_lines(context_len)
    assert sum(1 for ln in row["context_window_text"].split("\n") if ln.startswith("Date: ")) == n
    # rough size check: ~4 characters per token, the window fills most of its nominal size
    assert 0.35 < len(row["context_window_text"]) / 4 / context_len < 1.1


def test_four_million_tokens_is_feasible(trec_pool: Path) -> None:
    start = time.perf_counter()
    rows = oolong.generate(trec_pool, 2**22, seed=1)
    elapsed = time.perf_counter() - start
    n = oolong.expected_lines(2**22)
    assert n > 100_000 > len(read_pool(trec_pool))  # drawn with replacement from a 5,452-line pool
    assert rows[0]["context_window_text"].count("\nDate: ") == n
    assert len(rows) == 25 and elapsed < 10


def test_reproducible_by_seed(trec_pool: Path) -> None:
    a = oolong.generate(trec_pool, 4096, seed=5, windows=2)
    assert a == oolong.generate(trec_pool, 4096, seed=5, windows=2)
    b = oolong.generate(trec_pool, 4096, seed=6, windows=2)
    assert a[0]["context_window_text"] != b[0]["context_window_text"]
    assert {r["id"] for r in a}.isdisjoint(r["id"] for r in b)
    # window w does not depend on how many windows were asked for
    assert oolong.generate(trec_pool, 4096, seed=5, windows=1) == a[:25]
    assert a[0]["context_window_text"] != a[25]["context_window_text"]


def test_pool_forms(tmp_path: Path) -> None:
    pairs = [(f"text number {i} ?", "HUM" if i % 3 else "LOC") for i in range(60)]
    from_pairs = oolong.generate(pairs, 2048, seed=0)
    assert from_pairs[0]["dataset"] == "trec_coarse"  # TREC codes map to OOLONG names
    assert "Label: human being" in from_pairs[0]["context_window_text_with_labels"]
    tab = tmp_path / "pool.tsv"
    tab.write_text("".join(f"{'spam' if i % 4 == 0 else 'ham'}\tmessage {i}\n" for i in range(40)), encoding="utf-8")
    rows = oolong.generate(tab, 2048, seed=0, dataset="sms")
    assert rows[0]["dataset"] == "sms" and rows[0]["num_labels"] == 2
    assert "categories: 'ham', 'spam'." in rows[0]["context_window_text"] or "'spam', 'ham'" in rows[0][
        "context_window_text"
    ]
    recs = parse_window(rows[0])
    for r in rows:
        assert r["answer"] == repr(expected_answer(r["question"], recs))
    jsonl = tmp_path / "pool.jsonl"
    jsonl.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n" for i in range(20)), encoding="utf-8")
    assert oolong.generate(jsonl, 1024)[0]["dataset"] == "custom"


def test_pool_errors_name_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.label"
    bad.write_text("HUM:ind Who is it ?\nLOC:city Where is it ?\nthis line is not TREC\n", encoding="utf-8")
    with pytest.raises(DatasetError, match=r"bad\.label: row 3: expected a TREC line"):
        oolong.generate(bad, 2048)
    with pytest.raises(DatasetError, match="two distinct labels"):
        oolong.generate([("a", "x"), ("b", "x")], 2048)
    with pytest.raises(DatasetError, match=r"<pool>: row 2"):
        oolong.generate([("a", "x"), ("b",)], 2048)  # type: ignore[list-item]
    with pytest.raises(ValueError, match="outside"):
        oolong.generate([("a", "x"), ("b", "y")], 512)


# ---------------------------------------------------------------- loader


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_loader_round_trip(tmp_path: Path, rows_8k: list[dict[str, Any]], suffix: str) -> None:
    path = oolong.write_rows(rows_8k, tmp_path / f"synth{suffix}")
    tasks = oolong.load(path)
    assert [t.id for t in tasks] == [str(r["id"]) for r in rows_8k]
    for task, row in zip(tasks, rows_8k):
        assert task.raw == row  # the published columns, unchanged
        assert task.scorer == "oolong_synth" and task.answer == row["answer"]
        assert task.context == row["context_window_text"] and task.question == row["question"]
        assert task.metadata["task_group"] == row["task_group"] and task.metadata["context_len"] == 8192
        assert task.metadata["input_subset"] == (row["input_subset"] == "True")
        gold = oolong_synth_gold(row["answer"])
        ideal = f"{gold:%m/%d/%Y}" if isinstance(gold, dt.datetime) else str(gold)
        assert score(task, f"Answer: {ideal}") == 1.0
    # the 25 rows of a window share one copy of its text
    assert tasks[0].context is tasks[1].context
    labelled = oolong.load(path, labels=True, task_groups="user")
    assert labelled and all(t.id.endswith("-labels") and " || Label: " in t.get_context() for t in labelled)
    assert {t.metadata["task_group"] for t in labelled} == {"user"}
    assert oolong.load(path, context_lens=[1024]) == []
    assert len(oolong.load(path, datasets="trec_coarse", context_lens=8192, limit=4)) == 4


def test_loader_reads_rows_directly_and_folders(tmp_path: Path, rows_8k: list[dict[str, Any]]) -> None:
    assert [t.id for t in oolong.load(rows_8k[:3])] == [str(r["id"]) for r in rows_8k[:3]]
    oolong.write_rows(rows_8k[:25], tmp_path / "d" / "a.parquet")
    oolong.write_rows(rows_8k[25:], tmp_path / "d" / "b.jsonl")
    assert len(oolong.load(tmp_path / "d")) == len(rows_8k)


_BAD_VALUES = [
    ({"answer": None}, "answer", "missing"),
    ({"answer": "human being"}, "answer", "cannot parse OOLONG gold"),
    ({"answer_type": "ANSWER_TYPE.FOO"}, "answer_type", "is not one of"),
    ({"task_group": "misc"}, "task_group", "is not one of"),
    ({"input_subset": "yes"}, "input_subset", "'True' or 'False'"),
]
# A parquet column has one type, so a single wrong-typed cell exists only in JSONL files.
_BAD_TYPES = [
    ({"context_len": "8192"}, "context_len", "expected int"),
    ({"num_labels": True}, "num_labels", "expected int"),
]


@pytest.mark.parametrize(
    ("change", "field", "message", "suffix"),
    [(*case, suffix) for case in _BAD_VALUES for suffix in (".parquet", ".jsonl")]
    + [(*case, ".jsonl") for case in _BAD_TYPES],
)
def test_bad_rows_name_file_row_field(
    tmp_path: Path, rows_8k: list[dict[str, Any]], change: dict, field: str, message: str, suffix: str
) -> None:
    good = [dict(r, context_window_text="t", context_window_text_with_labels="t") for r in rows_8k[:4]]
    bad = {k: v for k, v in dict(good[2], **change).items() if not (k == "answer" and v is None)}
    rows = [*good[:2], bad, good[3]]
    path = oolong.write_rows(rows, tmp_path / f"bad{suffix}")
    with pytest.raises(DatasetError) as err:
        oolong.load(path)
    assert (err.value.file, err.value.row, err.value.field) == (str(path), 3, field)
    assert f"{path}: row 3: field '{field}'" in str(err.value) and message in str(err.value)


def test_real_rows(tmp_path: Path) -> None:
    rows = [
        {"id": 1, "context_window_id": 9, "context_window_text": "[START OF EPISODE] ... [END OF EPISODE]",
         "question": "How many rolls?", "answer": "12", "question_type": "singledoc_rolls",
         "episodes": [1], "campaign": "c1"},
        {"id": 2, "context_window_id": 9, "context_window_text": "[START OF EPISODE] ... [END OF EPISODE]",
         "question": "Which spells?", "answer": "Fireball, Shield", "question_type": "multidoc_spells",
         "episodes": [1, 2], "campaign": "c1"},
    ]  # fmt: skip
    path = oolong.write_rows(rows, tmp_path / "real.jsonl")
    tasks = oolong.load(path)
    assert [t.scorer for t in tasks] == ["oolong_real", "oolong_real"]
    assert score(tasks[0], r"\boxed{11}") == pytest.approx(0.75)
    assert score(tasks[1], r"\boxed{\text{Shield, Fireball}}") == 1.0
    assert [t.id for t in oolong.load(path, task_groups="multidoc_spells")] == ["2"]
    with pytest.raises(DatasetError, match="labels=True needs OOLONG-synth"):
        oolong.load(path, labels=True)
    broken = oolong.write_rows([rows[0], {k: v for k, v in rows[1].items() if k != "question"}], tmp_path / "r.jsonl")
    with pytest.raises(DatasetError, match=r"r\.jsonl: row 2: field 'question': missing"):
        oolong.load(broken)


def test_hf_path_without_datasets_says_how_to_fix() -> None:
    try:
        import datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DatasetError, match="pip install datasets"):
            oolong.load_hf("synth")
    else:
        pytest.skip("datasets is installed; the cached path needs the published files")


def test_task_context_pointer(tmp_path: Path) -> None:
    text = tmp_path / "ctx.txt"
    text.write_text("Date: Jun 16, 2024 || User: 98779 || Instance: Where is Glasgow ?", encoding="utf-8")
    task = Task(id="p1", question="q", context_file=str(text), answer="[1]", answer_type="ANSWER_TYPE.NUMERIC",
                scorer="oolong_synth")  # fmt: skip
    assert task.get_context().endswith("Glasgow ?") and task.raw is None
    assert "raw" not in task.model_dump() and Task.model_validate(task.model_dump()) == task
    with pytest.raises(ValueError, match="either context"):
        Task(id="p2", question="q", answer="[1]", scorer="oolong_synth")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Task(id="p3", question="q", context_file=str(tmp_path / "nope"), answer="A", scorer="longbench").get_context()
