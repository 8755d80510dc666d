"""What a model's or an agent's reply means: a JSON reply parsed into a model, a plain
answer turned into a value, a validation error said in one line an agent can act on."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ReplyModel = TypeVar("ReplyModel", bound=BaseModel)


def parse_json_reply(text: str, model: type[ReplyModel]) -> tuple[ReplyModel | None, str | None]:
    """The first JSON object in `text` (code fences allowed around it), validated by `model`:
    (parsed, None), or (None, what was wrong)."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.DOTALL)
    if fence:
        s = fence.group(1).strip()
    start = s.find("{")
    if start < 0:
        return None, "no JSON object found"
    try:
        obj, _ = json.JSONDecoder().raw_decode(s[start:])
    except json.JSONDecodeError as exc:
        return None, f"{exc.msg} at character {exc.pos}"
    if not isinstance(obj, dict):
        return None, "the JSON is not an object"
    try:
        return model.model_validate(obj), None
    except ValidationError as exc:
        return None, validation_message(exc)


def validation_message(exc: Exception) -> str:
    """A pydantic error's first three problems as `field: message`, else the error's text."""
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(x) for x in err.get("loc", ()))
            msg = str(err.get("msg", "")).removeprefix("Value error, ")
            parts.append(f"{where}: {msg}" if where else msg)
        return "; ".join(parts)
    return str(exc)


def answer_value(text: str) -> Any:
    """The value of a plain answer: a number when it is one ("12", "3.5"), a dict or list
    when it is one written as a literal ("{'spam': 3}"), else the text."""
    s = text.strip().rstrip(".")
    if s[:1] in "{[":
        try:
            parsed = ast.literal_eval(s)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            parsed = None
        if isinstance(parsed, (dict, list)):
            return parsed
    try:
        return int(s.replace(",", ""))
    except ValueError:
        pass
    try:
        number = float(s.replace(",", ""))
        return number if math.isfinite(number) else s
    except ValueError:
        return s
