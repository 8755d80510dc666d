"""Finishing by state: reading an RLM agent's `answer` from its REPL.

The REPL holds ``answer = {"content": None, "ready": False}``; after every cell a tiny probe
cell prints a plain-data summary of it (one JSON line), and `check_answer` applies the rules
the agent loop (`delm_rlm.rlm`, whose docstring states them) finishes by: any dict counts,
``ready`` may be True, 1 or "true"/"yes", a non-dict is a partial answer, never a finish.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, NamedTuple

from delm_rlm import prompts

if TYPE_CHECKING:
    from sandbox import Sandbox


class AnswerCheck(NamedTuple):
    ready: bool
    content: str | None  # set (possibly partial) answer text
    note: str | None  # what to tell the model, when the answer is set wrongly


_READY_WORDS = frozenset({"true", "yes", "1"})


def _is_ready(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return value == 1
    if isinstance(value, str):
        return value.strip().lower() in _READY_WORDS
    return False


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value)
    return text.strip() or None


# Reads `answer` inside the REPL and prints a plain-data summary (one JSON line): the value
# itself may hold numpy scalars or other objects that cannot (and need not) reach the host.
_PROBE = """\
def __delm_probe():
    g = globals()
    if "answer" not in g:
        return {"defined": False}
    a = g["answer"]
    def text(v):
        if v is None:
            return None
        try:
            return v if isinstance(v, str) else str(v)
        except Exception as e:
            return f"<unprintable {type(v).__name__}: {e}>"
    if isinstance(a, dict):
        r = a.get("ready")
        if not (r is None or isinstance(r, (bool, int, float, str))):
            r = text(r)
        return {"defined": True, "dict": True, "content": text(a.get("content")), "ready": r}
    return {"defined": True, "dict": False, "kind": type(a).__name__,
            "value": text(a) if isinstance(a, (str, int, float)) else None}
print(__import__("json").dumps(__delm_probe()))
del __delm_probe
"""


def check_answer(probe: dict[str, Any]) -> AnswerCheck:
    """Apply the finish rules (module doc) to the probe of the REPL's `answer`."""
    if not probe.get("defined"):
        return AnswerCheck(False, None, prompts.ANSWER_MISSING)
    if probe.get("dict"):
        content = _as_text(probe.get("content"))
        ready = _is_ready(probe.get("ready"))
        if ready and content is not None:
            return AnswerCheck(True, content, None)
        if ready:
            return AnswerCheck(False, None, prompts.ANSWER_EMPTY)
        return AnswerCheck(False, content, prompts.ANSWER_NOT_READY if content else None)
    note = prompts.ANSWER_REBOUND.format(kind=probe.get("kind", "value"))
    return AnswerCheck(False, _as_text(probe.get("value")), note)


async def read_answer(sb: Sandbox) -> AnswerCheck:
    """Run the probe in `sb` and check what it read; an unreadable probe is a note, not a finish."""
    result = await sb.execute(_PROBE, timeout=30)
    lines = result.stdout.strip().splitlines()
    try:
        probe = json.loads(lines[-1]) if result.ok and lines else None
    except ValueError:
        probe = None
    if not isinstance(probe, dict):
        reason = (result.error or "no reading").splitlines()[0][:200]
        return AnswerCheck(False, None, prompts.ANSWER_UNREADABLE.format(reason=reason))
    return check_answer(probe)
