"""How right the model's labels were: a run's `classify` calls against a window's true labels.

OOLONG-synth windows come with a labelled twin (`context_window_text_with_labels`: each line
ends `|| Label: x`), so every line of an unlabelled window has a known label. A run's
classification log says what label each item got (`ClassificationRecord.items` beside
`result`); an item is matched to the window line it is (the whole line), or the line's
question (the text after `Instance:`), or the one line whose question it contains. The final
labelling keeps, per line, the label of the last call that labelled it. Accuracy is over the
lines labelled; coverage is the share of the window's lines that were.

This measures the labels, not the answer: a method that labels with `llm_query` (no
`classify`) has no log to measure, and its row says so (None).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

if TYPE_CHECKING:
    from delm_rlm.state.protocol import ClassificationRecord
    from tasks.model import Task

_LABELLED_LINE = re.compile(r"^(?P<line>.*\|\|\s*Instance:\s*(?P<instance>.*?))\s*\|\|\s*Label:\s*(?P<label>.+?)\s*$")


class LabelAccuracy(BaseModel):
    """The final labelling of a run against the window's true labels."""

    lines: int  # lines of the window that carry a true label
    labelled: int  # of those, lines some classify call labelled (with an allowed label)
    correct: int
    calls: int  # classify calls in the log (records with items)
    unmatched_items: int  # items labelled that are no line of the window (e.g. a fragment)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled else None

    @property
    def coverage(self) -> float:
        return self.labelled / self.lines if self.lines else 0.0

    def summary(self) -> dict[str, Any]:
        """What a results row keeps."""
        return {**self.model_dump(), "accuracy": self.accuracy, "coverage": round(self.coverage, 4)}


class WindowLabels:
    """The true label of every line of one labelled window text, findable by the forms an
    agent passes to `classify`."""

    def __init__(self, labelled_text: str) -> None:
        self.lines: list[tuple[str, str, str]] = []  # (line without label, question, label)
        for raw in labelled_text.splitlines():
            found = _LABELLED_LINE.match(raw.strip())
            if found:
                self.lines.append((found["line"].strip(), found["instance"].strip(), found["label"].strip()))
        self._by_line = _unique_index(line for line, _, _ in self.lines)
        self._by_question = _unique_index(question for _, question, _ in self.lines)

    def line_of(self, item: str) -> int | None:
        """The index of the window line `item` is, or None when it matches no single line."""
        text = item.strip()
        for index in (self._by_line, self._by_question):
            if text in index:
                return index[text]
        inside = [i for i, (_, question, _) in enumerate(self.lines) if question and question in text]
        return inside[0] if len(inside) == 1 else None

    def label(self, index: int) -> str:
        return self.lines[index][2]


def _unique_index(keys: Any) -> dict[str, int]:
    """Key -> its line's index, dropping keys that name two lines (no guess between them)."""
    index: dict[str, int] = {}
    seen_twice: set[str] = set()
    for i, key in enumerate(keys):
        if key in index:
            seen_twice.add(key)
        index.setdefault(key, i)
    return {k: i for k, i in index.items() if k not in seen_twice}


def label_accuracy(truth: WindowLabels, records: Sequence[ClassificationRecord]) -> LabelAccuracy | None:
    """The final labelling in `records` against `truth`; None when no record has items."""
    final: dict[int, str] = {}
    calls = unmatched = 0
    for record in records:
        if record.items is None:
            continue
        calls += 1
        for item, given in zip(record.items, record.result):
            line = truth.line_of(item)
            if line is None:
                unmatched += 1
            elif given is not None:
                final[line] = given
    if not calls:
        return None
    correct = sum(1 for line, given in final.items() if _same(given, truth.label(line)))
    return LabelAccuracy(lines=len(truth.lines), labelled=len(final), correct=correct, calls=calls,
                         unmatched_items=unmatched)


def _same(a: str, b: str) -> bool:
    return a.strip().casefold() == b.strip().casefold()


def task_label_accuracy(task: Task, records: Sequence[ClassificationRecord]) -> dict[str, Any] | None:
    """For an OOLONG-synth task: the summary of `label_accuracy` against its window's true
    labels; None for other tasks, or when the run made no classify call."""
    raw: Mapping[str, Any] = task.raw or {}
    labelled_text = raw.get("context_window_text_with_labels")
    if not isinstance(labelled_text, str) or not records:
        return None
    measured = label_accuracy(WindowLabels(labelled_text), records)
    return None if measured is None else measured.summary()
