"""Code replay: an agent's own cells as the check of the answer they set.

An agent that sets its answer in code without proposing it leaves that code behind; when the
code needs nothing that exists only in the agent's REPL, the verifier can run it again in a
fresh REPL and the same answer must come out.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from delm_rlm.rlm import Cell

# Names that exist only in an agent's REPL (the team's tools and the free-form sub-model
# calls): code using them cannot be replayed in the verifier's fresh REPL. `classify` can:
# the verifier answers it from the run's ClassificationLog.
AGENT_ONLY_NAMES = frozenset(
    {"propose", "add_task", "gists", "unfold", "llm_query", "llm_query_batched", "rlm_query"}
)


def replay_check(cells: Sequence[Cell]) -> str | None:
    """A check that replays an agent's cells and prints the answer they set, or None when
    the cells cannot run without the agent's REPL (a team tool or a sub-model call, or no
    cell ran cleanly). Failed cells are left out: they changed nothing the answer used, or
    the answer would not have been set."""
    codes = [c.code for c in cells if c.error is None and not c.timed_out and c.code.strip()]
    if not codes:
        return None
    for code in codes:
        try:
            tree = ast.parse(code)
        except SyntaxError:
            return None
        if any(isinstance(n, ast.Name) and n.id in AGENT_ONLY_NAMES for n in ast.walk(tree)):
            return None
    return "\n".join(
        ['answer = {"content": None, "ready": False}', *codes, 'print(answer["content"])']
    )
