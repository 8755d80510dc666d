"""When two values are the same: one rule for duplicate merges and for code checks.

The shared context merges a proposal into an admitted gist only when their values are
equal (`values_equal`); the verifier admits a checked gist only when what its check printed
states the claimed value (`compare_printed`, which reads the printout into values and asks
`values_equal`). One rule for both, so a value that merges is a value that checks.

Printed output is text, and text cannot tell `print(12)` from `print("12")`: the printout
side is therefore read several ways (see `printed_readings`), while two values themselves
compare strictly ("12" is not 12).

A data-type module: it imports nothing of the library, so every layer may use it.
"""

from __future__ import annotations

import ast
import json
import math
from typing import Any

# Float results printed by a check differ from a claim in the last digits (0.1 + 0.2 is
# printed as 0.30000000000000004); this relative slack absorbs that, not real differences.
FLOAT_RELATIVE_SLACK = 1e-9


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def collapse_whitespace(text: str) -> str:
    """`text` with every run of whitespace made one space, stripped."""
    return " ".join(text.split())


def values_equal(a: Any, b: Any, tolerance: float = 0.0, relative: float = FLOAT_RELATIVE_SLACK) -> bool:
    """The one rule for two JSON values (Python literals read from a printout included):

    - bools equal only bools (True is not 1);
    - numbers (int, float) within `tolerance` absolute; when either is a float, also within
      `relative` (default 1e-9: float formatting); ints otherwise compare exactly; a
      non-finite number (inf, nan) equals nothing, itself included (an "inf" printout would
      otherwise be within any relative slack of every number);
    - strings equal after collapsing whitespace, case-sensitive; a string never equals a
      number ("12" is not 12);
    - lists and tuples element by element, in order;
    - dicts with the same keys, compared as strings (None, "None" and "null" alike), and
      equal values;
    - anything else by `==` (None equals only None).
    """
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return _numbers_close(a, b, tolerance, relative)
    if isinstance(a, str) and isinstance(b, str):
        return collapse_whitespace(a) == collapse_whitespace(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(values_equal(x, y, tolerance, relative) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        left, right = _by_key(a), _by_key(b)
        return left.keys() == right.keys() and all(
            values_equal(left[k], right[k], tolerance, relative) for k in left
        )
    return bool(a == b)


def _numbers_close(a: int | float, b: int | float, tolerance: float, relative: float) -> bool:
    if not (_finite(a) and _finite(b) and math.isfinite(tolerance) and math.isfinite(relative)):
        return False
    slack = float(tolerance)
    if isinstance(a, float) or isinstance(b, float):
        try:
            slack += relative * max(1.0, abs(a), abs(b))
        except OverflowError:  # an int too large for a float: only exact equality is sure
            return a == b
    return abs(a - b) <= slack


def _finite(number: int | float) -> bool:
    return not isinstance(number, float) or math.isfinite(number)


def non_finite_path(value: Any, path: str = "value") -> str | None:
    """Where in a JSON-like value a non-finite number (inf, -inf, nan) sits ("value['a'][2]"),
    or None when there is none. Such numbers have no JSON form: stored, they read back as
    null and break the gist that holds them."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = non_finite_path(item, f"{path}[{key!r}]")
            if found is not None:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = non_finite_path(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def is_nothing(value: Any) -> bool:
    """A value that says "nothing found": None, False, 0, a blank string, or a list, tuple or
    dict holding only such values ({}, [], {"spam": 0}). A check that reads its data
    legitimately prints such a value for an empty input too."""
    if value is None or value is False:
        return True
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, float)):
        return value == 0
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, dict):
        return all(is_nothing(item) for item in value.values())
    if isinstance(value, (list, tuple)):
        return all(is_nothing(item) for item in value)
    return False


def _by_key(mapping: dict[Any, Any]) -> dict[Any, Any]:
    """`mapping` keyed by its keys as strings. A None key (e.g. Counter(classify(...))
    counting unlabelled items) reaches a claim as "null" through JSON or "None" through
    pydantic, and a printout as None: all three are one key, unless the dict holds more than
    one of them (then each keeps its own key, as written)."""
    keyed = {"None" if key is None or key == "null" else str(key): value for key, value in mapping.items()}
    return keyed if len(keyed) == len(mapping) else dict(mapping)


def _number_in_text(text: str) -> int | float | None:
    """The number a text spells ("12", " 1,200 ", "0012", "3.5"), or None."""
    plain = text.strip().replace(",", "")
    try:
        return int(plain)
    except ValueError:
        pass
    try:
        number = float(plain)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def parse_printed(text: str) -> Any:
    """A printed value as data: JSON first, then a Python literal (`print([1, 'a'])`),
    else the whitespace-collapsed text itself."""
    stripped = text.strip()
    for parse in (_json_finite, ast.literal_eval):
        try:
            return parse(stripped)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return collapse_whitespace(stripped)


def _json_finite(text: str) -> Any:
    """JSON without its NaN / Infinity extensions: a printout "Infinity" is text, not a number."""
    return json.loads(text, parse_constant=_refuse_constant)


def printed_readings(text: str) -> list[Any]:
    """Every value a printout may state: first what it parses to (`parse_printed`); a parsed
    string also as the number it spells ("'12'", "0012") and as the bool a true/false word
    of any case names ("TRUE"); a parsed value other than a string or bool also as its JSON
    and its repr text (a claim may give "[1, 2]" as text)."""
    value = parse_printed(text)
    readings = [value]
    if isinstance(value, str):
        number = _number_in_text(value)
        if number is not None:
            readings.append(number)
        word = value.strip().lower()
        if word in ("true", "false"):
            readings.append(word == "true")
    elif not isinstance(value, bool):
        try:
            readings.append(json.dumps(value))
        except (TypeError, ValueError):  # a set, bytes, ...: it has only its repr
            pass
        readings.append(repr(value))
    return readings


def _claim_readings(claimed: Any) -> list[Any]:
    """A claim, and when it is numeric text ("12") also that number: the printout of 12.0
    states the claim "12"."""
    if isinstance(claimed, str):
        number = _number_in_text(claimed)
        if number is not None:
            return [claimed, number]
    return [claimed]


def states_value(
    claimed: Any, text: str, tolerance: float = 0.0, relative: float = FLOAT_RELATIVE_SLACK
) -> bool:
    """Does the printed `text` state `claimed`: is some reading of the claim equal, by
    `values_equal`, to some reading of the text?"""
    readings = printed_readings(text)
    return any(
        values_equal(claim, reading, tolerance, relative)
        for claim in _claim_readings(claimed)
        for reading in readings
    )


def compare_printed(
    claimed: Any, output: str, tolerance: float = 0.0, relative: float = FLOAT_RELATIVE_SLACK
) -> tuple[bool, Any]:
    """Does a check's printed `output` state `claimed`? The WHOLE output must state it: a
    check prints exactly the value. (Reading only the last line let `print(len(chunk));
    print(43)` state 43.) Returns (match, the value read from the output)."""
    return states_value(claimed, output, tolerance, relative), parse_printed(output)
