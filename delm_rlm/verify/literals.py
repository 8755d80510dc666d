"""Text a program looks for that its data does not contain.

A count of 0, an empty result, or an output that stays the same on an emptied corpus most
often means the code matched text the corpus spells otherwise: another case (`'label: '`
where the lines say `'Label: '`), other spacing, a field or word that is not there at all.
Reading the code's string literals where they are matched against text (parsed with `ast`,
never run) and looking each one up in the data turns "your output does not come from the
data" into what to change. The rule serves any corpus: a log's level, a CSV header, a JSON
key, a phrase in a document.

Only literals in matching positions count: the separator of `split`/`partition`, the
argument of `startswith`/`find`/`count`/`replace`/`str.contains`, the left side of `in`, a
side of `==`, and regular expressions given to `re` (searched as patterns, not as text). An
f-string's text, a dict key or an answer template is not matched against the data, so it is
never reported."""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator

from delm_rlm import prompts

# str and pandas .str methods whose first argument is text looked for in the data
_MATCHING_METHODS = frozenset({
    "split", "rsplit", "partition", "rpartition", "startswith", "endswith", "find", "rfind",
    "index", "rindex", "count", "replace", "removeprefix", "removesuffix", "contains",
})
# re functions whose first argument is a pattern searched in the data
_PATTERN_FUNCTIONS = frozenset({"search", "match", "fullmatch", "findall", "finditer", "split", "sub", "compile"})
MAX_HINTS = 4
_SHOWN_CHARS = 60


def _is_text(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(node.value.strip())


def _literals(tree: ast.AST) -> Iterator[tuple[tuple[int, int], str, bool]]:
    """((line, column), literal, is_pattern) for each string literal the code matches
    against text."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            if not _is_text(first):
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "re" and node.func.attr in _PATTERN_FUNCTIONS:
                yield (first.lineno, first.col_offset), first.value, True  # type: ignore[attr-defined]
            elif node.func.attr in _MATCHING_METHODS:
                yield (first.lineno, first.col_offset), first.value, False  # type: ignore[attr-defined]
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, sides, sides[1:]):
                if isinstance(op, (ast.In, ast.NotIn)) and _is_text(left):
                    yield (left.lineno, left.col_offset), left.value, False  # type: ignore[attr-defined]
                elif isinstance(op, (ast.Eq, ast.NotEq)):
                    for side in (left, right):
                        if _is_text(side):
                            yield (side.lineno, side.col_offset), side.value, False  # type: ignore[attr-defined]


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "...")


def _pattern_hint(pattern: str, text: str) -> str | None:
    try:
        compiled = re.compile(pattern)
    except re.error:
        return None  # the code fails on it itself, with Python's own message
    if compiled.search(text):
        return None
    loose = re.compile(pattern, re.IGNORECASE).search(text)
    if loose:
        return prompts.LITERAL_PATTERN_CASE.format(pattern=_shown(pattern), found=_shown(loose.group(0)))
    return prompts.LITERAL_PATTERN_NOWHERE.format(pattern=_shown(pattern))


def _text_hint(literal: str, text: str) -> str | None:
    if literal in text:
        return None
    other_case = re.compile(re.escape(literal), re.IGNORECASE)
    found = other_case.search(text)
    if found:
        times = sum(1 for _ in other_case.finditer(text))
        return prompts.LITERAL_OTHER_CASE.format(
            literal=_shown(literal), found=_shown(found.group(0)), times=f"{times:,}")
    stripped = " ".join(literal.split())
    if stripped != literal and stripped in text:
        return prompts.LITERAL_OTHER_SPACING.format(literal=_shown(literal), found=_shown(stripped))
    return prompts.LITERAL_NOWHERE.format(literal=_shown(literal))


def unmatched_literals(code: str | None, text: str | None, labels: Collection[str] = ()) -> list[str]:
    """One hint per literal `code` matches against `text` that `text` does not contain (at
    most `MAX_HINTS`, in the order the code names them): found in another case, with other
    spacing, or nowhere. `labels` are never reported: a label `classify` gives need not be
    written in the text. Code that does not parse, or no text, gives no hints."""
    if not code or not text:
        return []
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return []
    hints: list[str] = []
    seen: set[tuple[str, bool]] = set()
    for _, literal, is_pattern in sorted(_literals(tree), key=lambda item: item[0]):
        if (literal, is_pattern) in seen or literal in labels:
            continue
        seen.add((literal, is_pattern))
        hint = _pattern_hint(literal, text) if is_pattern else _text_hint(literal, text)
        if hint is not None:
            hints.append(hint)
        if len(hints) == MAX_HINTS:
            break
    return hints


def literal_hints(code: str | None, text: str | None, labels: Collection[str] = ()) -> str:
    """One sentence on what the code looks for that `text` lacks ("" when nothing)."""
    hints = unmatched_literals(code, text, labels)
    return f"{prompts.LITERAL_HINTS_HEAD} {'; '.join(hints)}." if hints else ""
