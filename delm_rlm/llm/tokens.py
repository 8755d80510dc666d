"""Approximate token counts without a tokenizer: for budgeting prompts and for endpoints that
report no usage, never for billing."""

from __future__ import annotations

import re
from typing import Any

_TOKEN_PIECES = re.compile(r"\d|[^\W\d_]+|[^\w\s]|_+|\n")


def approx_tokens(text: str) -> int:
    """Approximate token count without a tokenizer, tuned on the Qwen2.5 BPE vocabulary:
    every digit is one token (Qwen splits numbers per digit), a run of letters is one token
    per 6 characters started, every punctuation mark and newline one token; spaces ride on
    the next word. Typically within ~15% of the real count on English prose and code."""
    n = 0
    for piece in _TOKEN_PIECES.findall(text):
        n += 1 + (len(piece) - 1) // 6 if piece[0].isalpha() else 1
    return n


def approx_message_tokens(messages: list[dict[str, Any]]) -> int:
    """Chat-format prompt size: content tokens plus ~4 per message for the role markers and
    separators of chat templates, plus 3 for the assistant header."""
    return sum(approx_tokens(str(m.get("content") or "")) + 4 for m in messages) + 3


__all__ = ["approx_message_tokens", "approx_tokens"]
