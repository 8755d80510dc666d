"""What calls used and what a run may use: `Usage`, `Completion`, `CallFailure`, the
thread-safe `UsageLedger`, and `Budget` (the limits the gateway checks before every call)."""

from __future__ import annotations

import threading

from pydantic import BaseModel, Field


class Usage(BaseModel):
    """What a set of calls used. `calls` counts answered calls, cached ones included
    (`cached_calls` of them); failed calls are counted apart."""

    calls: int = 0
    cached_calls: int = 0
    failed_calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    seconds: float = 0.0
    cost_usd: float | None = 0.0  # None once any counted call had no known price

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens

    def __add__(self, other: Usage) -> Usage:
        if not isinstance(other, Usage):
            return NotImplemented
        cost = None if self.cost_usd is None or other.cost_usd is None else self.cost_usd + other.cost_usd
        return Usage(
            calls=self.calls + other.calls,
            cached_calls=self.cached_calls + other.cached_calls,
            failed_calls=self.failed_calls + other.failed_calls,
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            seconds=self.seconds + other.seconds,
            cost_usd=cost,
        )


class CallFailure(BaseModel):
    """One call that reached the model's endpoint and failed for good (after retries):
    what `on_failure` observers get, so traces show failed calls too."""

    role: str
    model: str
    error: str
    seconds: float = 0.0


class Completion(BaseModel):
    """One answered call. Cached completions report the original token counts, zero seconds
    and zero cost."""

    text: str
    model: str
    role: str
    input_tokens: int
    output_tokens: int
    seconds: float
    cost_usd: float | None
    cached: bool
    finish_reason: str | None = None  # "stop", "length" (hit max_tokens), ...
    # The request's content hash (model, messages, sampling): the same step retried, in this
    # process or on another machine, has the same key, so the trace shows the retry.
    request_key: str | None = None

    def usage(self) -> Usage:
        return Usage(
            calls=1,
            cached_calls=int(self.cached),
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            seconds=self.seconds,
            cost_usd=self.cost_usd,
        )


class UsageLedger:
    """Running usage of one LM view: total, by role and by model. Thread-safe (the sandbox
    bridge may call the gateway from its own thread)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._total = Usage()
        self._by_role: dict[str, Usage] = {}
        self._by_model: dict[str, Usage] = {}

    def record(self, completion: Completion) -> None:
        u = completion.usage()
        with self._lock:
            self._total = self._total + u
            self._by_role[completion.role] = self._by_role.get(completion.role, Usage()) + u
            self._by_model[completion.model] = self._by_model.get(completion.model, Usage()) + u

    def record_failure(self, role: str, model: str) -> None:
        u = Usage(failed_calls=1)
        with self._lock:
            self._total = self._total + u
            self._by_role[role] = self._by_role.get(role, Usage()) + u
            self._by_model[model] = self._by_model.get(model, Usage()) + u

    @property
    def total(self) -> Usage:
        with self._lock:
            return self._total.model_copy()

    @property
    def by_role(self) -> dict[str, Usage]:
        with self._lock:
            return {k: v.model_copy() for k, v in self._by_role.items()}

    @property
    def by_model(self) -> dict[str, Usage]:
        with self._lock:
            return {k: v.model_copy() for k, v in self._by_model.items()}

    def __repr__(self) -> str:
        return f"UsageLedger(total={self.total!r})"


class Budget(BaseModel):
    """Limits for a run (None = unlimited). `max_calls` counts every attempted call: answered,
    cached and failed. `max_seconds` is wall-clock time since the view (session) was made."""

    max_usd: float | None = Field(default=None, ge=0)
    max_tokens: int | None = Field(default=None, ge=0)
    max_seconds: float | None = Field(default=None, ge=0)
    max_calls: int | None = Field(default=None, ge=0)

    @property
    def unlimited(self) -> bool:
        return all(v is None for v in (self.max_usd, self.max_tokens, self.max_seconds, self.max_calls))


__all__ = ["Budget", "CallFailure", "Completion", "Usage", "UsageLedger"]
