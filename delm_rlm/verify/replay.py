"""Code replay: an agent's own cells as the check of the answer they set.

An agent that sets its answer in code without proposing it leaves that code behind; when the
code needs nothing that exists only in the agent's REPL, the verifier can run it again in a
fresh REPL and the same answer must come out.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING

from delm_rlm.verify.code_check import answer_replay_check

if TYPE_CHECKING:
    from delm_rlm.rlm import Cell

# Names that exist only in an agent's REPL (the team's tools and the free-form sub-model
# calls): code using them cannot be replayed in the verifier's fresh REPL. `classify` can:
# the verifier answers it from the run's ClassificationLog.
AGENT_ONLY_NAMES = frozenset(
    {"propose", "add_task", "gists", "unfold", "llm_query", "llm_query_batched", "rlm_query"}
)


def _replayable(code: str) -> ast.Module | None:
    try:
        return ast.parse(code)
    except SyntaxError:
        return None


def replay_check(cells: Sequence[Cell]) -> str | None:
    """A check that replays an agent's cells and prints the answer they set, or None when
    the cells cannot run without the agent's REPL (a team tool or a sub-model call, a clean
    cell that is not plain Python, or no cell ran cleanly).

    A cell that raised is replayed too, inside `try`, so it stops at its error as it did in
    the REPL and keeps what it set before it: agents define a list in a cell that then
    fails and use it in the next (issue-12 benchmark: `user_ids` from a failed cell, a
    NameError in the replay that left it out). A cell that did not parse changed nothing
    and is left out; a timed-out one cannot be replayed in a check's time and is left out."""
    codes: list[str] = []
    for cell in cells:
        if cell.timed_out or not cell.code.strip():
            continue
        tree = _replayable(cell.code)
        if tree is None:
            if cell.error is None:
                return None  # it ran (IPython syntax?) but a plain interpreter cannot run it
            continue
        if any(isinstance(n, ast.Name) and n.id in AGENT_ONLY_NAMES for n in ast.walk(tree)):
            return None
        if cell.error is None:
            codes.append(cell.code)
        else:
            # exec, not an indented copy: indenting would change a multi-line string in it
            codes.append(f"try:\n    exec({cell.code!r})\nexcept Exception:\n    pass")
    if not any(cell.error is None and not cell.timed_out and cell.code.strip() for cell in cells):
        return None
    return answer_replay_check(codes)
