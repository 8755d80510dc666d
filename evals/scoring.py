"""Official scorers for OOLONG-synth, OOLONG-real and LongBench-v2, quirks included.

Each official function reproduces the benchmark's own grading code rule for rule (see
shared/benchmarks.md), so our numbers are comparable with the published tables. Do not
"fix" the quirks here: e.g. ``"**Label:** entity"`` officially parses to ``" entity"`` and
scores 0. The lenient synth mode (``lenient=True``) exists to show how much of a method's
loss is formatting; it is reported *beside* the official score, never instead of it.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import dateutil.parser

from delm_rlm.errors import ScoringError
from tasks.answers import oolong_synth_gold  # the gold rule the loaders check rows with

if TYPE_CHECKING:
    from tasks.model import Task

__all__ = [
    "COMPARISON_PHRASES",
    "ScoringError",
    "longbench_extract",
    "longbench_score",
    "oolong_real_parse",
    "oolong_real_parse_answer",
    "oolong_real_score",
    "oolong_synth_gold",
    "oolong_synth_parse",
    "oolong_synth_score",
    "score",
    "score_lenient",
]

# The three phrases the synth parser collapses long comparison answers to.
COMPARISON_PHRASES: tuple[str, ...] = ("more common", "less common", "same frequency")


# ---------------------------------------------------------------------------------------
# OOLONG-synth
# ---------------------------------------------------------------------------------------


def oolong_synth_parse(output: str) -> str:
    """The official answer extraction for synth rows (``synth_attempt_answer_parse``).

    No ``:`` -> the whole output if shorter than 20 characters, else its last
    whitespace-separated token. Otherwise the text after the last ``:``, stripped, *then*
    with every ``*``, ``[`` and ``]`` deleted; if that is 20+ characters and contains a
    comparison phrase, it collapses to the phrase.
    """
    if ":" not in output:
        if len(output) < 20:
            return output
        tokens = output.split()
        # The official code raises IndexError on a long all-whitespace output; we score it 0.
        return tokens[-1] if tokens else ""
    candidate = output.split(":")[-1].strip()
    candidate = candidate.replace("*", "").replace("[", "").replace("]", "")
    if len(candidate) >= 20:
        for phrase in COMPARISON_PHRASES:
            if phrase in candidate:
                return phrase
    return candidate


def _synth_grade(gold: object, parsed: str, answer_type: str) -> float:
    if parsed == str(gold):
        return 1.0
    if parsed in COMPARISON_PHRASES:
        return 1.0 if parsed in str(gold) else 0.0
    if answer_type == "ANSWER_TYPE.NUMERIC":
        try:
            return float(0.75 ** abs(int(gold) - int(parsed)))  # type: ignore[call-overload]
        except Exception:  # the official code catches everything here too
            return 0.0
    if answer_type == "ANSWER_TYPE.DATE":
        try:
            return 1.0 if dateutil.parser.parse(parsed) == gold else 0.0
        except Exception:  # dateutil raises ParserError, OverflowError, ...
            return 0.0
    return 0.0


def _lenient_clean(output: str) -> str:
    # Bold/italic markers anywhere (so "**Label:** entity" reads "Label: entity"), then
    # whitespace runs collapsed and the ends stripped.
    text = output.replace("**", "").replace("__", "").replace("*", "")
    return " ".join(text.split())


def oolong_synth_score(answer: str, answer_type: str, output: str, *, lenient: bool = False) -> float:
    """Score one OOLONG-synth output against the row's ``answer`` and ``answer_type``.

    Official (default): 1 for an exact string match with ``str(gold)``; 1 when the parsed text
    is a comparison phrase contained in the gold; for NUMERIC ``0.75 ** |gold - pred|`` (0 when
    either is not an int); for DATE 1 when dateutil parses the text to the gold date; else 0.

    ``lenient=True``: the same rules after deleting bold markup (``*``, ``__``) from the whole
    output and collapsing whitespace (in the output and in the parsed answer); the result is
    never below the official score. Report it beside the official score, never instead.
    """
    gold = oolong_synth_gold(answer)
    official = _synth_grade(gold, oolong_synth_parse(output), answer_type)
    if not lenient:
        return official
    parsed = " ".join(oolong_synth_parse(_lenient_clean(output)).split())
    return max(official, _synth_grade(gold, parsed, answer_type))


def score_lenient(answer: str, answer_type: str, output: str) -> float:
    """Shorthand for ``oolong_synth_score(..., lenient=True)``."""
    return oolong_synth_score(answer, answer_type, output, lenient=True)


# ---------------------------------------------------------------------------------------
# OOLONG-real (D&D)
# ---------------------------------------------------------------------------------------

_BOXED_TEXT = re.compile(r"\\boxed\{\\text\{([^}]*)\}\}")
_BOXED = re.compile(r"\\boxed[\{]+([^}]*)[\}]+")


def oolong_real_parse_answer(text: str) -> int | str | list[str]:
    """An int if ``int()`` accepts it, else a list of stripped non-empty items if it has a
    comma, else the string unchanged (the official ``dnd_parse_answer``)."""
    try:
        return int(text)
    except ValueError:
        pass
    if "," in text:
        return [item.strip() for item in text.split(",") if item.strip()]
    return text


def oolong_real_parse(output: str) -> int | str | list[str]:
    """The inside of the first ``\\boxed{\\text{...}}``, else of the first ``\\boxed{...}``,
    parsed; with no ``\\boxed`` the whole raw output, as an unparsed string."""
    match = _BOXED_TEXT.search(output) or _BOXED.search(output)
    if match is None:
        return output
    return oolong_real_parse_answer(match.group(1))


def oolong_real_score(answer: str, output: str) -> float:
    """int vs int ``0.75 ** |gold - pred|``; str vs str case-insensitive equality after
    strip; list vs list ``|set(gold) & set(pred)| / len(gold)``; mixed types 0."""
    gold = oolong_real_parse_answer(str(answer))
    pred = oolong_real_parse(output)
    if isinstance(gold, int) and isinstance(pred, int):
        return float(0.75 ** abs(gold - pred))
    if isinstance(gold, str) and isinstance(pred, str):
        return float(gold.strip().lower() == pred.strip().lower())
    if isinstance(gold, list) and isinstance(pred, list):
        return len(set(gold) & set(pred)) / len(gold) if gold else 0.0
    return 0.0


# ---------------------------------------------------------------------------------------
# LongBench-v2
# ---------------------------------------------------------------------------------------

_LB_PAREN = re.compile(r"The correct answer is \(([A-D])\)")
_LB_BARE = re.compile(r"The correct answer is ([A-D])")


def longbench_extract(output: str) -> str | None:
    """The official extraction: delete every ``*``, then the first
    ``The correct answer is (X)``, else ``The correct answer is X``; else None."""
    text = output.replace("*", "")
    match = _LB_PAREN.search(text) or _LB_BARE.search(text)
    return match.group(1) if match else None


def longbench_score(answer: str, output: str) -> float:
    """1.0 when the extracted letter equals the gold letter; no extraction counts wrong."""
    return 1.0 if longbench_extract(output) == answer else 0.0


# ---------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------


def score(task: Task, output: str | None, *, lenient: bool = False) -> float:
    """Official score of ``output`` for ``task``, by ``task.scorer``. ``None`` output scores 0.
    ``lenient`` only changes ``oolong_synth`` (the other scorers have no lenient mode)."""
    if output is None:
        return 0.0
    if task.scorer == "oolong_synth":
        if task.answer_type is None:
            raise ScoringError(f"task {task.id}: oolong_synth needs an answer_type")
        return oolong_synth_score(task.answer, task.answer_type, output, lenient=lenient)
    if task.scorer == "oolong_real":
        return oolong_real_score(task.answer, output)
    if task.scorer == "longbench":
        return longbench_score(task.answer, output)
    raise ScoringError(
        f"task {task.id}: unknown scorer {task.scorer!r} (use oolong_synth, oolong_real or longbench)"
    )
