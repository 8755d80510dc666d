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
never reported. A name bound to one string (`field = "label: "`) is read as that string.

The same reading serves a cell that failed in an agent's REPL (`cell_error_hint`): an
IndexError after `line.split(sep)[1]` is told how many lines lack `sep` (a header, an intro
line), a KeyError how the text spells the key. The verifier's stages (`verify.code_check`,
`verify.empty_result`, `verify.methods`) and the agent loop (`rlm`) use it; nothing here
runs an agent's code or pattern."""

from __future__ import annotations

import ast
import re
from collections.abc import Collection, Iterator
from typing import NamedTuple

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


def _constants(tree: ast.AST) -> dict[str, str]:
    """Names the code binds to one string, always the same (`field = "label: "`, as the
    team's own prompt example writes it), so `line.split(field)` is read as a literal."""
    bound: dict[str, str | None] = {}
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign, ast.For, ast.NamedExpr)) else [])
        for target in targets:
            for name in (n.id for n in ast.walk(target) if isinstance(n, ast.Name)):
                value = getattr(node, "value", None)
                text = value.value if (
                    isinstance(node, ast.Assign) and isinstance(target, ast.Name)
                    and isinstance(value, ast.Constant) and isinstance(value.value, str)) else None
                bound[name] = text if bound.get(name, text) == text else None
    return {name: text for name, text in bound.items() if text is not None}


def _text_of(node: ast.AST, names: dict[str, str]) -> str | None:
    """The non-blank string `node` is: a literal, or a name bound to one."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        text: str | None = node.value
    elif isinstance(node, ast.Name):
        text = names.get(node.id)
    else:
        return None
    return text if text and text.strip() else None


class _Literal(NamedTuple):
    at: tuple[int, int]  # (line, column) in the code
    text: str
    is_pattern: bool
    ignores_case: bool  # the code lowers (or uppers) what it matches, or passes re.I


_CASE_METHODS = frozenset({"lower", "upper", "casefold", "title", "capitalize", "swapcase"})


def _ignores_case(*nodes: ast.AST) -> bool:
    """Whether any of `nodes` changes case (`line.lower()`) or asks for it to be ignored
    (`re.I`, `re.IGNORECASE`, pandas' `case=False`)."""
    for node in nodes:
        for sub in ast.walk(node):
            if isinstance(sub, ast.Attribute) and sub.attr in _CASE_METHODS | {"I", "IGNORECASE"}:
                return True
            if (isinstance(sub, ast.keyword) and sub.arg == "case"
                    and isinstance(sub.value, ast.Constant) and sub.value.value is False):
                return True
    return False


def _literal(node: ast.AST, text: str, is_pattern: bool, *context: ast.AST) -> _Literal:
    return _Literal((node.lineno, node.col_offset), text, is_pattern,  # type: ignore[attr-defined]
                    _ignores_case(*context))


def _literals(tree: ast.AST) -> Iterator[_Literal]:
    """Each string the code matches against text."""
    names = _constants(tree)
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
            first = node.args[0]
            text = _text_of(first, names)
            if text is None:
                continue
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id == "re" and node.func.attr in _PATTERN_FUNCTIONS:
                yield _literal(first, text, True, *node.args[1:], *node.keywords)
            elif node.func.attr in _MATCHING_METHODS:
                yield _literal(first, text, False, owner, *node.keywords)
        elif isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            for op, left, right in zip(node.ops, sides, sides[1:]):
                if isinstance(op, (ast.In, ast.NotIn)):
                    text = _text_of(left, names)
                    if text is not None:
                        yield _literal(left, text, False, right)
                elif isinstance(op, (ast.Eq, ast.NotEq)):
                    for side, other in ((left, right), (right, left)):
                        # only literals here: a name compared is as likely a value read from the data
                        if isinstance(side, ast.Constant) and (text := _text_of(side, names)) is not None:
                            yield _literal(side, text, False, other)


def _shown(text: str) -> str:
    return repr(text if len(text) <= _SHOWN_CHARS else text[: _SHOWN_CHARS - 3] + "...")


_QUANTIFIERS = frozenset("*+?{")


def _skip_class(pattern: str, i: int) -> int:
    """The index after the character class opening at `pattern[i]` ('[')."""
    j = i + 1
    if j < len(pattern) and pattern[j] == "^":
        j += 1
    if j < len(pattern) and pattern[j] == "]":
        j += 1  # a ']' first in a class is a member
    while j < len(pattern) and pattern[j] != "]":
        j += 2 if pattern[j] == "\\" else 1
    return j + 1


def pattern_text(pattern: str) -> str:
    """The longest run of plain text every match of a regular expression contains, read
    without compiling it: an agent's pattern is never run on the host (one like `(a+)+$`
    could take hours on a long corpus). A class (`\\w`, `[...]`), a group, an anchor or a
    quantified character breaks a run; a pattern with an alternation or inline flags gives
    "" (no text every match must contain can be read off it this simply)."""
    if "|" in pattern or "(?" in pattern:
        return ""
    runs: list[str] = [""]
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "[":
            i, piece = _skip_class(pattern, i), None
        elif ch == "{":
            close = pattern.find("}", i)
            i, piece = (len(pattern) if close < 0 else close + 1), None
        elif ch == "\\" and i + 1 < len(pattern):
            nxt = pattern[i + 1]
            i, piece = i + 2, (None if nxt.isalnum() else nxt)
        elif ch in ".^$()*+?":
            i, piece = i + 1, None
        else:
            i, piece = i + 1, ch
        if piece is not None and i < len(pattern) and pattern[i] in _QUANTIFIERS:
            piece = None  # this character may repeat or be absent
        if piece is None:
            runs.append("")
        else:
            runs[-1] += piece
    return max(runs, key=len)


def _pattern_hint(pattern: str, text: str, ignores_case: bool) -> str | None:
    """About the pattern's plain text (`pattern_text`), when the data lacks it."""
    plain = pattern_text(pattern)
    if len(plain.strip()) < 2 or plain in text:
        return None  # nothing the data must contain, or it does: the rest cannot be told safely
    hint = _text_hint(plain, text, ignores_case)
    return None if hint is None else prompts.LITERAL_IN_PATTERN.format(pattern=_shown(pattern), hint=hint)


def _text_hint(literal: str, text: str, ignores_case: bool) -> str | None:
    if literal in text:
        return None
    other_case = re.compile(re.escape(literal), re.IGNORECASE)
    found = other_case.search(text)
    if found and ignores_case:
        return None  # the code matches it in any case, and the data has it
    if found:
        times = sum(1 for _ in other_case.finditer(text))
        return prompts.LITERAL_OTHER_CASE.format(
            literal=_shown(literal), found=_shown(found.group(0)),
            times="once" if times == 1 else f"{times:,} times")
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
    for found in sorted(_literals(tree), key=lambda item: item.at):
        key = (found.text, found.is_pattern)
        if key in seen or found.text in labels:
            continue
        seen.add(key)
        hint = (_pattern_hint if found.is_pattern else _text_hint)(found.text, text, found.ignores_case)
        if hint is not None:
            hints.append(hint)
        if len(hints) == MAX_HINTS:
            break
    return hints


def literal_hints(code: str | None, text: str | None, labels: Collection[str] = ()) -> str:
    """One sentence on what the code looks for that `text` lacks ("" when nothing)."""
    hints = unmatched_literals(code, text, labels)
    return f"{prompts.LITERAL_HINTS_HEAD} {'; '.join(hints)}." if hints else ""


# -- a cell that failed in an agent's REPL ---------------------------------------------

_KEY_ERROR = re.compile(r"""^KeyError: (['"])(.+?)\1""")
_SPLITTERS = frozenset({"split", "rsplit", "partition", "rpartition"})


def _pieces_taken(tree: ast.AST) -> Iterator[tuple[tuple[int, int], str]]:
    """Separators the code splits on and then takes a piece of (`line.split(sep)[1]`)."""
    names = _constants(tree)
    for node in ast.walk(tree):
        if not isinstance(node, ast.Subscript):
            continue
        call = node.value
        if (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
                and call.func.attr in _SPLITTERS and call.args):
            sep = _text_of(call.args[0], names)
            if sep is not None:
                yield (call.lineno, call.col_offset), sep


def cell_error_hint(code: str | None, error: str | None, text: str | None) -> str:
    """What the data says about a cell's error ("" when it says nothing): an IndexError
    after `split(sep)[k]` names how many of the text's non-empty lines lack `sep`, with one
    (a header or an intro line, typically); a KeyError names the key as the text spells it.
    Read from the code and the text only: nothing of the agent's is run."""
    if not code or not error or not text:
        return ""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ""
    first = error.strip().splitlines()[0] if error.strip() else ""
    hints: list[str] = []
    if first.startswith("IndexError"):
        lines = [line for line in text.splitlines() if line.strip()]
        for _, sep in sorted(set(_pieces_taken(tree))):
            lacking = [line for line in lines if sep not in line]
            if not lacking:
                continue
            if len(lacking) == len(lines):
                hint = _text_hint(sep, text, False)
                if hint is not None:
                    hints.append(hint)
            else:
                hints.append(prompts.CELL_LINES_LACK.format(
                    lacking=f"{len(lacking):,}", total=f"{len(lines):,}", sep=_shown(sep),
                    example=_shown(lacking[0].strip())))
            if len(hints) == MAX_HINTS:
                break
    elif (key := _KEY_ERROR.match(first)) is not None:
        hint = _text_hint(key.group(2), text, False)
        if hint is not None:
            hints.append(prompts.CELL_KEY_MISSING.format(key=_shown(key.group(2)), hint=hint))
    return f"{prompts.CELL_HINTS_HEAD} {'; '.join(dict.fromkeys(hints))}." if hints else ""
