"""The transport protocol: what the gateway sends to a model endpoint and what it gets back.

The gateway (`delm_rlm.llm.gateway.LM`) does the accounting, budgets, cache, routing and
observers; a transport only carries one chat request to an endpoint and brings the reply
back. Each transport lives in its own file: `openai_compat.py` (any OpenAI-compatible
endpoint), `local.py` (the offline llama.cpp model), `scripted.py` (a deterministic model for
tests). A new endpoint kind is a new file with a class that fits `Transport`, handed to
`LM(model, transport=...)`; the gateway is never subclassed for it.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from delm_rlm.errors import ConfigError

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class ChatRequest:
    """What reaches the transport. `role` is not part of the cache key: the same prompt to the
    same model gets the same answer whichever role asks."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float
    max_tokens: int
    stop: tuple[str, ...] | None
    role: str


@dataclass(frozen=True)
class ChatReply:
    """What the endpoint answered: the text, the tokens it counted, and why it stopped
    ("stop", "length" when it hit max_tokens, ...)."""

    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None


class Slots:
    """A concurrency limit that holds across event loops and threads: the sandbox bridge may
    run calls on its own loop, and they must share the limit with the run's loop."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ConfigError(f"a concurrency limit must be >= 1 slot, got {n}")
        self._free = n
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()

    async def __aenter__(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._free -= 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                    owned = False
                except ValueError:  # already handed a slot
                    owned = fut.done() and not fut.cancelled()
            if owned:
                self._release()
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if loop.is_closed():
                    continue
                loop.call_soon_threadsafe(self._grant, fut)
                return
            self._free += 1

    def _grant(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # the waiter was cancelled meanwhile: pass the slot on
            self._release()
        else:
            fut.set_result(None)


@runtime_checkable
class Transport(Protocol):
    """One kind of model endpoint, as the gateway sees it.

    endpoint_id: identifies the endpoint in response-cache keys, stable across processes (the
        same answers must come back from it for the same request).
    base_url: the endpoint's URL when it is fixed at construction; None for api.openai.com's
        default, for the local model (its port is chosen when its server starts) and for
        endpoints that are not HTTP.
    timeout: seconds one attempt may take as a whole (connecting, waiting, reading the body),
        not per read. The gateway bounds the whole `send`, retries included, by the seconds
        budget's deadline when there is one.
    slots: a concurrency limit the endpoint itself imposes on every LM that uses it (the local
        server answers one request at a time), or None: then the LM's `max_concurrency` holds.

    Optional: `async def wait_idle(self) -> None`, returning once the endpoint has finished
    requests whose callers were cancelled (`LM.settle` uses it; the local server has one).
    """

    @property
    def endpoint_id(self) -> str: ...

    @property
    def base_url(self) -> str | None: ...

    @property
    def timeout(self) -> float: ...

    @property
    def slots(self) -> Slots | None: ...

    async def prepare(self) -> None:
        """Get the endpoint ready before the call is timed (the local model starts its server)."""
        ...

    async def send(self, request: ChatRequest) -> ChatReply:
        """One chat completion. Raises LMError when it fails for good (retries are the
        transport's business), also when the endpoint answers something that is not a chat
        completion. The gateway may cancel it when a seconds budget runs out."""
        ...

    async def aclose(self) -> None:
        """Release what the running event loop holds (HTTP clients); the transport stays
        usable and reopens on demand."""
        ...


__all__ = ["DEFAULT_TIMEOUT_S", "ChatReply", "ChatRequest", "Slots", "Transport"]
