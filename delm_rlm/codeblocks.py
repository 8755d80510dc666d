"""Finding the code a model wrote in its reply: fenced ```repl / ```python blocks.

This reads code out of free text; it never decides whether a run is finished (that is the
`answer` dict inside the REPL). Rules, chosen for small models as much as large ones:

- A block opens with a fence of three backticks and a language tag, and closes with a line
  that is only a fence. Tags taken as code: ``repl``, ``python``, ``py``, ``python3``,
  ``ipython``. Other tags (``output``, ``text``, ``json``...) are skipped: models sometimes
  write what they imagine the output will be.
- Untagged fences (three backticks alone) count as code only when the reply has no tagged
  block and the block's text parses as Python.
- A reply with no fence at all counts as one block when the whole reply parses as Python
  and holds a call, an assignment or an import (small models sometimes drop the fence);
  prose does not parse, and a bare value like ``42`` is not taken as code.
- A tagged block that does not parse and whose first line reads as a sentence ("The correct
  answer is (B)") is prose in a fence, not code: `prose_in_blocks` gives its text, so the
  agent loop treats the reply as prose instead of running it into a SyntaxError.
- A closing fence glued to the last code line (``print(n)```) is accepted when no proper
  closing line follows; a block left open at the end of the reply (the model ran out of
  tokens) is taken to the end.
"""

from __future__ import annotations

import ast
import keyword
import textwrap

CODE_TAGS = frozenset({"repl", "python", "py", "python3", "ipython"})
FENCE = "```"


def _blocks(text: str) -> list[tuple[str, str, int, int]]:
    """All fenced blocks as (tag, code, start_offset, end_offset) in reading order."""
    blocks: list[tuple[str, str, int, int]] = []
    lines = text.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line))
    i = 0
    while i < len(lines):
        line = lines[i]
        at = line.find(FENCE)
        if at < 0:
            i += 1
            continue
        rest = line[at + len(FENCE) :].strip()
        if FENCE in rest:
            # A one-line span like ```x = 1``` is inline code, not a block.
            i += 1
            continue
        tag = rest.lower()
        start = offsets[i] + at
        body: list[str] = []
        j = i + 1
        closed_at: int | None = None
        while j < len(lines):
            if lines[j].strip() == FENCE:
                closed_at = j
                break
            body.append(lines[j])
            j += 1
        if closed_at is None:
            # No closing line: accept a fence glued to the end of a code line, else run to the end.
            glued = next((k for k, b in enumerate(body) if b.rstrip().endswith(FENCE)), None)
            if glued is not None:
                body = body[: glued + 1]
                body[-1] = body[-1].rstrip()[: -len(FENCE)] + "\n"
                end = offsets[i + 1 + glued + 1]
                next_i = i + 1 + glued + 1
            else:
                end = len(text)
                next_i = len(lines)
        else:
            end = offsets[closed_at + 1]
            next_i = closed_at + 1
        code = textwrap.dedent("".join(body)).strip("\n")
        blocks.append((tag, code, start, end))
        i = next_i
    return blocks


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):
        return False
    return True


def extract_code_blocks(text: str) -> list[str]:
    """The code blocks of a model reply, in order; empty when it wrote none (see module doc)."""
    blocks = _blocks(text)
    tagged = [code for tag, code, _, _ in blocks if tag in CODE_TAGS and code.strip()]
    if tagged:
        return tagged
    if not blocks:
        return [text.strip()] if _is_bare_code(text) else []
    return [code for tag, code, _, _ in blocks if tag == "" and code.strip() and _parses(code)]


def reads_as_prose(code: str) -> bool:
    """Whether a block is a sentence rather than Python: it does not parse, its first line
    starts with a word that is not a keyword, holds no `=`, brackets or braces, and is
    mostly words. A mistyped statement (`for x in y` without its colon) is still code."""
    if _parses(code):
        return False
    first = next((line.strip() for line in code.splitlines() if line.strip()), "")
    words = first.split()
    if len(words) < 3 or not words[0][0].isalpha() or keyword.iskeyword(words[0]):
        return False
    if any(ch in first for ch in "=[]{}") or "(" in words[0]:
        return False
    wordy = sum(1 for w in words if w.strip(".,;:!?()'\"").isalpha())
    return wordy >= 0.6 * len(words)


def prose_in_blocks(blocks: list[str]) -> str | None:
    """The text of `blocks` when every one reads as prose (see `reads_as_prose`), else None."""
    if not blocks or not all(reads_as_prose(b) for b in blocks):
        return None
    return "\n".join(b.strip() for b in blocks)


def _is_bare_code(text: str) -> bool:
    """Whole reply is Python that does something (see module doc)."""
    try:
        tree = ast.parse(text.strip())
    except (SyntaxError, ValueError):
        return False
    acting = (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.Import, ast.ImportFrom,
              ast.For, ast.If, ast.With, ast.FunctionDef)
    return any(
        isinstance(node, acting) or (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call))
        for node in tree.body
    )


def strip_code_blocks(text: str) -> str:
    """The reply with every fenced block removed (the prose around the code), stripped."""
    pieces: list[str] = []
    last = 0
    for _, _, start, end in _blocks(text):
        pieces.append(text[last:start])
        last = end
    pieces.append(text[last:])
    return "".join(pieces).strip()


def close_open_fence(text: str) -> str:
    """`text` with a closing fence added when its last block is left open (a reply cut by a
    stop sequence at the closing fence), so the history shows well-formed blocks."""
    blocks = _blocks(text)
    if blocks and blocks[-1][3] == len(text) and not text.rstrip().endswith(FENCE):
        return text.rstrip("\n") + "\n" + FENCE
    return text
