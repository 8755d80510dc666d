"""Gold answers as the benchmarks publish them, parsed into values.

Loaders check a row's gold here (a row whose gold cannot be read is a bad row) and the
official scorers in `evals.scoring` grade against the same value, so the parsing rule lives
once, below both.
"""

from __future__ import annotations

import ast
from datetime import datetime

from delm_rlm.errors import ScoringError

__all__ = ["ScoringError", "oolong_synth_gold"]


def oolong_synth_gold(answer: str) -> object:
    """Gold value of a synth row's ``answer`` string, exactly as the official scorer reads it.

    ``"['human being']"`` -> ``'human being'``; ``"[28]"`` -> ``28``; a date answer
    ``"[datetime.date(2023, 5, 1)]"`` -> ``datetime(2023, 5, 1, 0, 0)`` (the official code uses
    ``datetime.strptime``, so the gold is a datetime and its ``str`` ends in ``00:00:00``).
    """
    text = str(answer)
    try:
        if "datetime" in text:
            return datetime.strptime(text, "[datetime.date(%Y, %m, %d)]")
        value = ast.literal_eval(text)
        return value[0]
    except (ValueError, SyntaxError, TypeError, IndexError, KeyError) as exc:
        raise ScoringError(
            f"cannot parse OOLONG gold answer {text!r}: expected a Python list string such as "
            f"\"['human being']\", \"[28]\" or \"[datetime.date(2023, 5, 1)]\" ({exc})"
        ) from exc
