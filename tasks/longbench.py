"""LongBench-v2: load official rows as Tasks, build the official zero-shot prompt, and
middle-truncate an over-long prompt the way the official runner does (`truncate_middle`,
the library's token-counting cut `delm_rlm.prompts.truncate_middle_tokens`)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from delm_rlm.errors import ConfigError
from delm_rlm.prompts import truncate_middle_tokens as truncate_middle
from tasks.model import DatasetError, Task
from tasks.rows import read_rows, require

__all__ = [
    "CHOICES",
    "FIELDS",
    "OFFICIAL_MAX_TOKENS",
    "PROMPT_TEMPLATE",
    "build_prompt",
    "direct_prompt",
    "filter_tasks",
    "load",
    "question_block",
    "row_to_task",
    "truncate_middle",
]

FIELDS: tuple[str, ...] = (
    "_id", "domain", "sub_domain", "difficulty", "length", "question",
    "choice_A", "choice_B", "choice_C", "choice_D", "answer", "context",
)  # fmt: skip
CHOICES: tuple[str, ...] = ("A", "B", "C", "D")
DIFFICULTIES: tuple[str, ...] = ("easy", "hard")
LENGTHS: tuple[str, ...] = ("short", "medium", "long")
OFFICIAL_MAX_TOKENS = 120_000  # the official runner's middle-truncation length

# prompts/0shot.txt of THUDM/LongBench, exactly (no trailing newline).
PROMPT_TEMPLATE = (
    "Please read the following text and answer the question below.\n\n<text>\n$DOC$\n</text>\n\n"
    "What is the correct answer to this question: $Q$\nChoices:\n(A) $C_A$\n(B) $C_B$\n(C) $C_C$\n(D) $C_D$\n\n"
    'Format your response as follows: "The correct answer is (insert answer here)".'
)
_QUESTION_PART = PROMPT_TEMPLATE[PROMPT_TEMPLATE.index("What is the correct answer") :]


def _fill(template: str, doc: str | None, row: dict[str, Any]) -> str:
    # The official chain of str.replace calls, in its order, each field stripped.
    text = template if doc is None else template.replace("$DOC$", doc.strip())
    return (
        text.replace("$Q$", row["question"].strip())
        .replace("$C_A$", row["choice_A"].strip())
        .replace("$C_B$", row["choice_B"].strip())
        .replace("$C_C$", row["choice_C"].strip())
        .replace("$C_D$", row["choice_D"].strip())
    )


def _row_of(item: Task | dict[str, Any]) -> dict[str, Any]:
    if isinstance(item, Task):
        if item.raw is None:
            raise ConfigError(f"task {item.id} has no LongBench-v2 row (build it with tasks.longbench.load)")
        return item.raw
    return item


def build_prompt(item: Task | dict[str, Any], context: str | None = None) -> str:
    """The official zero-shot prompt for a row or a loaded Task (``context`` overrides the
    row's, e.g. an already-shortened one). Not truncated: see :func:`truncate_middle`."""
    row = _row_of(item)
    return _fill(PROMPT_TEMPLATE, row["context"] if context is None else context, row)


def direct_prompt(task: Task, context: str) -> str:
    """The one prompt the `direct` method sends for a LongBench-v2 task over ``context`` (the
    task's text, perhaps middle-truncated): the official template for a loaded row; for a task
    built by hand, whose question is the official question block already, the template's
    head, the text and that block."""
    if task.raw is not None:
        return build_prompt(task, context=context)
    head = PROMPT_TEMPLATE[: PROMPT_TEMPLATE.index("$DOC$")]
    return f"{head}{context.strip()}\n</text>\n\n{task.question}"


def question_block(item: Task | dict[str, Any]) -> str:
    """The prompt's part after the text: the question, the four choices and the answer format."""
    return _fill(_QUESTION_PART, None, _row_of(item))


def row_to_task(row: dict[str, Any], *, file: str | Path | None = None, rowno: int | None = None) -> Task:
    """One official LongBench-v2 row -> Task (scorer ``longbench``). ``question`` is the
    official question block (question, choices, answer format) so any method can answer it;
    the raw row stays reachable as ``task.raw`` for :func:`build_prompt`."""
    values = {f: require(row, f, str, file, rowno) for f in FIELDS}
    if values["answer"] not in CHOICES:
        raise DatasetError(file, rowno, "answer", f"expected one of A, B, C, D, got {values['answer']!r}")
    if values["difficulty"] not in DIFFICULTIES:
        raise DatasetError(file, rowno, "difficulty", f"expected easy or hard, got {values['difficulty']!r}")
    if values["length"] not in LENGTHS:
        raise DatasetError(file, rowno, "length", f"expected short, medium or long, got {values['length']!r}")
    return Task(
        id=values["_id"],
        question=question_block(row),
        context=values["context"],
        answer=values["answer"],
        answer_type="CHOICE",
        scorer="longbench",
        metadata={
            "dataset": "longbench_v2",
            "benchmark": "longbench",
            "domain": values["domain"],
            "sub_domain": values["sub_domain"],
            "difficulty": values["difficulty"],
            "length": values["length"],
            "context_len": None,
            "context_words": len(values["context"].split()),
            "task_group": values["domain"],
            "choices": {c: values[f"choice_{c}"] for c in CHOICES},
            "raw_question": values["question"],
        },
    ).with_raw(row)


def _as_set(value: str | Iterable[str] | None) -> set[str] | None:
    if value is None:
        return None
    return {value} if isinstance(value, str) else set(value)


def filter_tasks(
    tasks: Iterable[Task],
    *,
    domains: str | Iterable[str] | None = None,
    difficulties: str | Iterable[str] | None = None,
    lengths: str | Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Keep tasks whose domain, difficulty and length are in the given sets (None = any)."""
    dom, dif, lng = _as_set(domains), _as_set(difficulties), _as_set(lengths)
    out = [
        t
        for t in tasks
        if (dom is None or t.metadata["domain"] in dom)
        and (dif is None or t.metadata["difficulty"] in dif)
        and (lng is None or t.metadata["length"] in lng)
    ]
    return out[:limit] if limit is not None else out


def load(
    source: str | Path | Sequence[dict[str, Any]],
    *,
    domains: str | Iterable[str] | None = None,
    difficulties: str | Iterable[str] | None = None,
    lengths: str | Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Tasks from a LongBench-v2 JSON list or JSONL file (or row dicts), every row checked
    (DatasetError names file, row and field), then filtered."""
    if isinstance(source, (str, Path)):
        items = read_rows(source)
    else:
        items = [("<rows>", i + 1, row) for i, row in enumerate(source)]
    tasks = [row_to_task(row, file=f, rowno=n) for f, n, row in items]
    return filter_tasks(tasks, domains=domains, difficulties=difficulties, lengths=lengths, limit=limit)
