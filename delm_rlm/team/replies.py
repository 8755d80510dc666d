"""What a model's or an agent's reply means: a JSON reply parsed (leniently, with one repair
request) into a model, a plain answer turned into a value, a validation error said in one
line an agent can act on."""

from __future__ import annotations

import ast
import json
import math
import re
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import BaseModel, ValidationError

from delm_rlm import prompts

if TYPE_CHECKING:
    from delm_rlm.llm import LM

ReplyModel = TypeVar("ReplyModel", bound=BaseModel)


def parse_json_reply(text: str, model: type[ReplyModel]) -> tuple[ReplyModel | None, str | None]:
    """The first JSON object in `text` (code fences allowed around it), validated by `model`:
    (parsed, None), or (None, what was wrong). Parsed leniently (`load_json_object`)."""
    obj, error = load_json_object(text)
    if obj is None:
        return None, error
    try:
        return model.model_validate(obj), None
    except ValidationError as exc:
        return None, validation_message(exc)


def load_json_object(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """The first JSON object in `text`: (object, None) or (None, the strict parser's error).

    Small models wrap JSON in fences and prose, leave trailing commas, write Python dicts
    (single quotes, True/None) and raw newlines inside strings; each of these is repaired
    here, in that order, before a reply counts as invalid. What is cut off (no closing brace)
    is not guessed at."""
    s = text.strip()
    fence = re.search(r"```(?:json)?\s*(.*?)```", s, re.DOTALL)
    if fence:
        s = fence.group(1).strip()
    start = s.find("{")
    if start < 0:
        return None, "no JSON object found"
    try:
        obj, _ = json.JSONDecoder(strict=False).raw_decode(s[start:])
    except json.JSONDecodeError as exc:
        obj = _repaired(s[start:])
        if obj is None:
            return None, f"{exc.msg} at character {exc.pos}"
    if not isinstance(obj, dict):
        return None, "the JSON is not an object"
    return obj, None


_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_JSON_WORDS = {"true": "True", "false": "False", "null": "None"}
_CURLY = str.maketrans({"\u201c": '"', "\u201d": '"'})


def _balanced(s: str) -> str | None:
    """`s` up to the brace closing its first one (quotes of either kind respected)."""
    depth, quote, escaped = 0, "", False
    for i, ch in enumerate(s):
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
            if depth == 0:
                return s[: i + 1]
    return None


def _repaired(s: str) -> Any:
    body = _balanced(s.translate(_CURLY))
    if body is None:
        return None
    body = _TRAILING_COMMA.sub(r"\1", body)
    attempts = (
        lambda: json.loads(body, strict=False),
        lambda: ast.literal_eval(body),
        lambda: ast.literal_eval(re.sub(r"\b(true|false|null)\b", lambda m: _JSON_WORDS[m.group(1)], body)),
    )
    for attempt in attempts:
        try:
            return attempt()
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


async def ask_json(lm: LM, messages: list[dict[str, str]], model: type[ReplyModel], *, role: str,
                   tags: dict[str, Any], example: str) -> tuple[ReplyModel | None, str | None]:
    """One call, its reply parsed leniently; when that fails, one repair request showing the
    parse error and `example`. (parsed, None) or (None, the last error)."""
    completion = await lm.complete(messages, role=role, tags=tags)
    parsed, error = parse_json_reply(completion.text, model)
    if parsed is not None:
        return parsed, None
    retry = messages + [
        {"role": "assistant", "content": completion.text},
        {"role": "user", "content": prompts.DELM_BAD_JSON.format(error=error, example=example)},
    ]
    completion = await lm.complete(retry, role=role, tags={**tags, "retry": True})
    return parse_json_reply(completion.text, model)


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
