"""Model prices and context windows: what a call costs and how much a model can read.

Prices are US dollars per million tokens, as published by the providers when this table was
written; they change, so users override them per LM (`LM(prices={...})`), for the LM's own
model through `DELM_RLM_PRICE="IN,OUT"` (the command line's `--price IN,OUT`, read by
`parse_price`), or process-wide (`register_price`). A model missing from all of these still
works: its tokens are counted and its cost is reported as unknown (None), never guessed; only
a dollar budget needs the price, and asking for one without it is an error up front.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Mapping

from pydantic import BaseModel, Field

from delm_rlm.errors import ConfigError


class Price(BaseModel):
    """US dollars per million input (prompt) and output (completion) tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input_per_mtok + output_tokens * self.output_per_mtok) / 1e6


PriceLike = Price | tuple[float, float] | Mapping[str, float]

# Local and scripted models cost nothing; the rest are OpenAI's list prices (standard tier).
_PRICES: dict[str, Price] = {
    "local": Price(input_per_mtok=0, output_per_mtok=0),
    "local-1.5b": Price(input_per_mtok=0, output_per_mtok=0),
    "local-0.5b": Price(input_per_mtok=0, output_per_mtok=0),
    "scripted": Price(input_per_mtok=0, output_per_mtok=0),
    "gpt-4o": Price(input_per_mtok=2.50, output_per_mtok=10.00),
    "gpt-4o-mini": Price(input_per_mtok=0.15, output_per_mtok=0.60),
    "gpt-4.1": Price(input_per_mtok=2.00, output_per_mtok=8.00),
    "gpt-4.1-mini": Price(input_per_mtok=0.40, output_per_mtok=1.60),
    "gpt-4.1-nano": Price(input_per_mtok=0.10, output_per_mtok=0.40),
    "gpt-5": Price(input_per_mtok=1.25, output_per_mtok=10.00),
    "gpt-5-mini": Price(input_per_mtok=0.25, output_per_mtok=2.00),
    "gpt-5-nano": Price(input_per_mtok=0.05, output_per_mtok=0.40),
    "o3": Price(input_per_mtok=2.00, output_per_mtok=8.00),
    "o3-mini": Price(input_per_mtok=1.10, output_per_mtok=4.40),
    "o4-mini": Price(input_per_mtok=1.10, output_per_mtok=4.40),
}

# Tokens a model can attend to (prompt + completion). The local models' window is the n_ctx
# their server is started with, so the gateway asks delm_rlm.llm.local for it, not this table.
_CONTEXT_WINDOWS: dict[str, int] = {
    "gpt-4o": 128_000,
    "gpt-4o-mini": 128_000,
    "gpt-4.1": 1_047_576,
    "gpt-4.1-mini": 1_047_576,
    "gpt-4.1-nano": 1_047_576,
    "gpt-5": 400_000,
    "gpt-5-mini": 400_000,
    "gpt-5-nano": 400_000,
    "o3": 200_000,
    "o3-mini": 200_000,
    "o4-mini": 200_000,
    "scripted": 128_000,
}

_lock = threading.Lock()


def as_price(value: PriceLike) -> Price:
    """Accept a Price, an (input, output) pair, or {"input_per_mtok":..., "output_per_mtok":...}."""
    if isinstance(value, Price):
        return value
    if isinstance(value, tuple | list) and len(value) == 2:
        return Price(input_per_mtok=value[0], output_per_mtok=value[1])
    if isinstance(value, Mapping):
        return Price.model_validate(dict(value))
    raise TypeError(
        f"a price must be Price(...), (input_per_mtok, output_per_mtok) or a dict with those keys, "
        f"got {value!r}"
    )


PRICE_ENV = "DELM_RLM_PRICE"


def parse_price(text: str, *, source: str = "a price") -> Price:
    """A price written "IN,OUT": US dollars per million input and output tokens, e.g.
    "0.15,0.60" (what `--price` and `DELM_RLM_PRICE` take). `source` names where the text
    came from in the error message."""
    parts = [p.strip() for p in str(text).split(",")]
    try:
        if len(parts) != 2:
            raise ValueError("needs two numbers")
        values = [float(p) for p in parts]
    except ValueError:
        values = []
    if len(values) != 2 or not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(
            f"{source} {text!r} is not a price: write IN,OUT in US dollars per million input and output "
            "tokens, two numbers >= 0, e.g. 0.15,0.60"
        )
    return Price(input_per_mtok=values[0], output_per_mtok=values[1])


def price_from_env() -> Price | None:
    """The price `$DELM_RLM_PRICE` gives ("IN,OUT" per million tokens), or None when unset."""
    raw = os.environ.get(PRICE_ENV, "").strip()
    return parse_price(raw, source=PRICE_ENV) if raw else None


def register_price(model: str, input_per_mtok: float, output_per_mtok: float) -> None:
    """Set the process-wide price of `model` (USD per million tokens). Also matches its dated
    variants: registering "my-model" prices "my-model-2025-01-01" unless that has its own."""
    price = Price(input_per_mtok=input_per_mtok, output_per_mtok=output_per_mtok)
    with _lock:
        _PRICES[model] = price


def register_context_window(model: str, tokens: int) -> None:
    """Set the process-wide context window (tokens) of `model`."""
    if tokens <= 0:
        raise ConfigError(f"context window must be a positive number of tokens, got {tokens}")
    with _lock:
        _CONTEXT_WINDOWS[model] = tokens


def _lookup(table: Mapping[str, object], model: str) -> object | None:
    """Exact name first, then the longest table entry that `model` extends at a '-', ':' or
    '@' boundary, with any "provider/" prefix removed ("openai/gpt-4o-2024-08-06" -> gpt-4o)."""
    for name in (model, model.rsplit("/", 1)[-1]):
        if name in table:
            return table[name]
        best = None
        for key in table:
            if name.startswith(key) and name[len(key)] in "-:@" and (best is None or len(key) > len(best)):
                best = key
        if best is not None:
            return table[best]
    return None


def price_for(model: str, overrides: Mapping[str, PriceLike] | None = None) -> Price | None:
    """The price of `model`: per-LM overrides first, then the process-wide table; None if unknown."""
    if overrides:
        found = _lookup({k: as_price(v) for k, v in overrides.items()}, model)
        if found is not None:
            return found  # type: ignore[return-value]
    with _lock:
        return _lookup(_PRICES, model)  # type: ignore[return-value]


def context_window_for(model: str) -> int | None:
    with _lock:
        return _lookup(_CONTEXT_WINDOWS, model)  # type: ignore[return-value]
