"""The empty-result stage: a PARTIAL whose value is empty ({}, [], "") about a chunk that
has text, or whose counts are all under None (`{None: 192}`: no record had the field the code
split on), is sent back once, with a hint that shows how to label and count the lines.

A self-consistent check of an empty count proves only that the code matched nothing
(typically a field the lines do not have), so passing the check would admit nothing true.
The team asks for this stage on a task's first attempt, so a truly empty chunk still gets in
on the retry, and on every attempt when its plan says no record states what is asked (the
records must be labelled, so "nothing matched" is never the chunk's true result)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from delm_rlm import prompts
from delm_rlm.gists import Gist, GistKind
from delm_rlm.literals import literal_hints
from delm_rlm.verify.verdict import Rejection

# `for line in chunk` walks a str character by character, so no "line" holds a field: the
# most common cause of an empty count we saw from small models (benchmark, issue 4).
_ITERATES_CHARACTERS = re.compile(r"\bfor\s+\w+\s+in\s+chunk\b(?!\s*[.\[(])")


def is_empty_value(value: Any) -> bool:
    """An empty dict, list, tuple, or a str of only whitespace (not None, not 0)."""
    if isinstance(value, str):
        return not value.strip()
    return isinstance(value, (dict, list, tuple)) and not value


# How a count dict's "no value" key reads after a printout or JSON (see agreement.keys_of).
_NO_VALUE_KEYS = ("None", "null")


def counts_only_no_value(value: Any) -> bool:
    """A non-empty dict whose every key is None ("None", "null"): each record was counted as
    lacking the field, so the code found its field in no record. (A blank key is the
    agreement stage's rule S1.)"""
    return isinstance(value, dict) and bool(value) and all(k is None or k in _NO_VALUE_KEYS for k in value)


def matched_nothing(value: Any) -> bool:
    """An empty value, or counts all under None: a result that says the code matched nothing."""
    return is_empty_value(value) or counts_only_no_value(value)


def empty_result_reason(lines: int, labels: Sequence[str] = (), check: str | None = None,
                        what: str = prompts.VERIFY_EMPTY_WHAT) -> str:
    """Why an empty partial is sent back, with a classify example over `labels` (the ones
    the question or the corpus names; the team's scout finds them) or, when there are none,
    over a placeholder to fill in. A `check`
    that loops over the chunk's characters is told so first."""
    code = (
        f"labels = classify(chunk.splitlines(), {json.dumps(list(labels), ensure_ascii=False)})\n"
        if len(labels) >= 2 else prompts.VERIFY_LABELS_PLACEHOLDER
    )
    cause = prompts.VERIFY_ITERATES_CHARACTERS if check and _ITERATES_CHARACTERS.search(check) else ""
    return cause + prompts.VERIFY_EMPTY_RESULT.format(what=what, lines=lines, labels_code=code)


def check_empty_result(gist: Gist, source: str | None, labels: Sequence[str]) -> None:
    """Raise a `Rejection` (recorded as a FAILURE gist, so no agent repeats it) when `gist`
    is a PARTIAL that matched nothing (`matched_nothing`) about a `source` that has non-empty
    lines."""
    if gist.kind != GistKind.PARTIAL or not matched_nothing(gist.value) or not source:
        return
    lines = sum(1 for line in source.splitlines() if line.strip())
    if lines:
        what = prompts.VERIFY_EMPTY_WHAT
        if counts_only_no_value(gist.value):
            what = prompts.VERIFY_NO_VALUE_WHAT.format(key=next(iter(gist.value)))
        hints = literal_hints(gist.check, source, labels)
        reason = empty_result_reason(lines, labels, gist.check, what)
        raise Rejection("empty", f"{hints} {reason}" if hints else reason)
