"""ScriptedLM: a deterministic model for testing mechanics (ours and our users').

It answers from a list (in order) or from a function `(messages, role) -> str` (sync or
async). `ScriptedTransport` is the transport that does it; `ScriptedLM` is an `LM` holding
one, so usage, budgets, sessions, routing, cache and observers run through exactly the same
code as for a real endpoint. A test that uses it tests the framework's mechanics, never a
model's intelligence.

Token counts are approximate, from delm_rlm.llm.tokens.approx_tokens (no tokenizer): the
prompt is the sum over messages of the content's approximate tokens plus 4 per message (role
markers) plus 3 (assistant header); the completion is the approximate tokens of the answer.
Counts are deterministic, so token budgets stop at the same call every run.

The price is 0 unless given: `ScriptedLM([...], prices={"scripted": (1.0, 2.0)})`.

This is the one transport module that imports the gateway, because ScriptedLM is an LM; the
gateway never imports it, so there is no circle.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import threading
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from delm_rlm.errors import LMError
from delm_rlm.llm.gateway import LM
from delm_rlm.llm.tokens import approx_message_tokens, approx_tokens
from delm_rlm.llm.transport import DEFAULT_TIMEOUT_S, ChatReply, ChatRequest, Slots

ScriptFunction = Callable[[list[dict[str, Any]], str], "str | Awaitable[str]"]
Script = Sequence[str] | ScriptFunction

SCRIPTED_ENV = "DELM_RLM_SCRIPTED"


class _ScriptState:
    """The script's position, shared by every session view of one ScriptedLM."""

    def __init__(self, script: Script) -> None:
        self._lock = threading.Lock()
        if callable(script):
            self.function: ScriptFunction | None = script
            self.answers: list[str] = []
        elif isinstance(script, Sequence) and not isinstance(script, str | bytes):
            bad = [i for i, a in enumerate(script) if not isinstance(a, str)]
            if bad:
                raise LMError(f"ScriptedLM: script answers must be strings; item {bad[0]} is {type(script[bad[0]]).__name__}")
            self.function = None
            self.answers = list(script)
        else:
            raise LMError(
                "ScriptedLM needs a list of answers or a function (messages, role) -> str, "
                f"got {type(script).__name__}"
            )
        self.position = 0

    def next_answer(self) -> str:
        with self._lock:
            if self.position >= len(self.answers):
                raise LMError(
                    f"ScriptedLM: script exhausted: all {len(self.answers)} answers were used and call "
                    f"{self.position + 1} asked for another; add answers or pass a function (messages, role) -> str"
                )
            self.position += 1
            return self.answers[self.position - 1]


class ScriptedTransport:
    """A transport answering from a script. No network.

    script: answers in order (LMError when exhausted, saying so), or a function
    `(messages, role) -> str` (may be async; an exception it raises becomes an LMError).
    delay: seconds each call takes (to test concurrency and time budgets). Stop strings and
    max_tokens shape the reply as a real endpoint would.
    """

    def __init__(self, script: Script, *, delay: float = 0.0, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        if delay < 0:
            raise LMError(f"ScriptedLM: delay must be >= 0 seconds, got {delay}")
        self.delay = float(delay)
        self._timeout = float(timeout)
        self._state = _ScriptState(script)
        # Every request received (cached calls never get here), in order.
        self.received: list[tuple[list[dict[str, Any]], str]] = []

    @property
    def endpoint_id(self) -> str:
        return "ScriptedLM"  # what cache keys have always named it

    @property
    def base_url(self) -> str | None:
        return None

    @property
    def timeout(self) -> float:
        return self._timeout

    @property
    def slots(self) -> Slots | None:
        return None  # the LM's max_concurrency holds

    async def prepare(self) -> None:
        return None

    async def aclose(self) -> None:
        return None

    async def send(self, request: ChatRequest) -> ChatReply:
        self.received.append((request.messages, request.role))
        if self.delay:
            await asyncio.sleep(self.delay)
        state = self._state
        if state.function is None:
            text = state.next_answer()
        else:
            try:
                out = state.function(request.messages, request.role)
                text = await out if inspect.isawaitable(out) else out
            except LMError:
                raise
            except Exception as e:
                raise LMError(f"ScriptedLM: the script function raised {type(e).__name__}: {e}") from e
            if not isinstance(text, str):
                raise LMError(f"ScriptedLM: the script function must return a str, got {type(text).__name__}")
        prompt_tokens = approx_message_tokens(request.messages)
        if request.stop:
            cut = [i for i in (text.find(s) for s in request.stop) if i >= 0]
            if cut:  # like a real endpoint: the stop string and what follows are not returned
                kept = text[: min(cut)]
                return ChatReply(kept, prompt_tokens, approx_tokens(kept), "stop")
        tokens = approx_tokens(text)
        if tokens > request.max_tokens:
            return ChatReply(_truncate_to_tokens(text, request.max_tokens), prompt_tokens, request.max_tokens, "length")
        return ChatReply(text, prompt_tokens, tokens, "stop")


class ScriptedLM(LM):
    """An LM whose transport is a `ScriptedTransport` (see there for `script` and `delay`).
    The response cache is off unless `cache=` is given; the other LM settings apply as usual."""

    def __init__(
        self, script: Script, *, model: str = "scripted", delay: float = 0.0, timeout: float | None = None,
        **lm_kwargs: Any,
    ) -> None:
        lm_kwargs.setdefault("cache", False)
        transport = ScriptedTransport(script, delay=delay, timeout=DEFAULT_TIMEOUT_S if timeout is None else timeout)
        super().__init__(model, transport=transport, **lm_kwargs)
        self._script_transport = transport

    @property
    def delay(self) -> float:
        return self._script_transport.delay

    @property
    def received(self) -> list[tuple[list[dict[str, Any]], str]]:
        """Every request the transport received (cached calls never get there), shared by sessions."""
        return self._script_transport.received

    @property
    def transport_calls(self) -> int:
        return len(self._script_transport.received)


def _truncate_to_tokens(text: str, max_tokens: int) -> str:
    """The longest prefix of `text` whose approximate token count is within `max_tokens`."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if approx_tokens(text[:mid]) <= max_tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def load_script(spec: str) -> Script:
    """Load a script named "package.module:attribute": a list of answers or a function
    (messages, role) -> str."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise LMError(f"a script is named 'module:attribute' (e.g. 'tests.scripts:answer'), got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise LMError(f"cannot import script module {module_name!r} from {spec!r}: {e}") from e
    try:
        script = getattr(module, attr)
    except AttributeError as e:
        raise LMError(f"module {module_name!r} has no attribute {attr!r} (from {spec!r})") from e
    if not callable(script) and not isinstance(script, list | tuple):
        raise LMError(f"{spec!r} must be a list of answers or a function (messages, role) -> str, got {type(script).__name__}")
    return script


def scripted_from_env(**lm_kwargs: Any) -> ScriptedLM | None:
    """The ScriptedLM named by $DELM_RLM_SCRIPTED ("module:attribute"), or None when unset.
    A test hook: lets a test drive the CLI or a subprocess with a scripted model."""
    spec = os.environ.get(SCRIPTED_ENV)
    if not spec:
        return None
    return ScriptedLM(load_script(spec), **lm_kwargs)


__all__ = ["SCRIPTED_ENV", "Script", "ScriptFunction", "ScriptedLM", "ScriptedTransport", "load_script", "scripted_from_env"]
