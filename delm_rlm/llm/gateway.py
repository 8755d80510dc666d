"""The LM gateway: every model call in delm-rlm goes through an `LM`.

One object gives a run everything it needs from a model endpoint:

- any OpenAI-compatible chat endpoint through the `openai` client (OpenAI, vLLM, llama.cpp,
  Ollama, ...), or the offline local model with `LM("local")` (see delm_rlm.llm.local);
- bounded concurrency, and retries with exponential backoff on 408/409/429/5xx, timeouts and
  dropped connections (the openai client's own retry loop: it does exactly that, honouring
  Retry-After);
- usage per call, per role and per run (calls, tokens, seconds, dollars from delm_rlm.llm.prices);
- budgets (dollars, tokens, seconds, calls) checked before every call, raising the typed
  `BudgetExceeded`;
- an on-disk SQLite response cache keyed by the full request, on by default at temperature 0;
- routing by role (root, sub, verifier, finalizer may each use another model or LM);
- `session(budget)` views that share transport, cache and concurrency limit but keep their own
  ledger and budget, while also counting into their parents;
- observers (`on_call`) that see every completion, e.g. the run's trace.

Subclasses replace only `_transport` (ScriptedLM does), so accounting, budgets, cache and
observers are the same code for every model.
"""

from __future__ import annotations

from delm_rlm.errors import BudgetExceeded, LMError

import asyncio
import hashlib
import json
import os
import re
import sqlite3
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from delm_rlm.llm.prices import PriceLike, context_window_for, price_for

ROLES = ("root", "sub", "verifier", "finalizer")

DEFAULT_TIMEOUT_S = 120.0
CACHE_FILE_NAME = "responses.sqlite"


def cache_dir() -> Path:
    """Where delm-rlm keeps its caches (responses, the assembled local model, server logs):
    `$DELM_RLM_CACHE_DIR`, else `~/.cache/delm-rlm`."""
    env = os.environ.get("DELM_RLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "delm-rlm"


def default_model() -> str:
    """The model a user gets without naming one: `$DELM_RLM_MODEL`, else "local"."""
    return os.environ.get("DELM_RLM_MODEL") or "local"


# --------------------------------------------------------------------------- data


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


# --------------------------------------------------------------------------- internals


@dataclass(frozen=True)
class _Request:
    """What reaches the transport. `role` is not part of the cache key: the same prompt to the
    same model gets the same answer whichever role asks."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float
    max_tokens: int
    stop: tuple[str, ...] | None
    role: str


@dataclass(frozen=True)
class _Reply:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str | None = None


@dataclass
class _Attempt:
    """Whether a call got as far as the transport (only then does a failure count)."""

    reached_transport: bool = False


class _Slots:
    """A concurrency limit that holds across event loops and threads: the sandbox bridge may
    run calls on its own loop, and they must share the limit with the run's loop."""

    def __init__(self, n: int) -> None:
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


class ResponseCache:
    """On-disk response cache: one SQLite file, WAL mode, safe for concurrent processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL,"
                    " text TEXT NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
                    " finish_reason TEXT, created_at REAL NOT NULL)"
                )
            except sqlite3.Error as e:
                raise LMError(
                    f"cannot open the response cache {self.path}: {e}; pass cache=False or set "
                    "DELM_RLM_CACHE_DIR to a writable directory"
                ) from e
            self._conn = conn
        return self._conn

    @staticmethod
    def key(request: _Request, endpoint: str) -> str:
        payload = {
            "v": 1,
            "endpoint": endpoint,
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> _Reply | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT text, input_tokens, output_tokens, finish_reason FROM responses WHERE key = ?", (key,)
            ).fetchone()
        return None if row is None else _Reply(text=row[0], input_tokens=row[1], output_tokens=row[2], finish_reason=row[3])

    def put(self, key: str, model: str, reply: _Reply) -> None:
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, reply.text, reply.input_tokens, reply.output_tokens, reply.finish_reason, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


_RESERVE_LOCK = threading.Lock()

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


def _normalize_messages(messages: str | list[dict[str, Any]]) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list) or not messages:
        raise LMError(
            "messages must be a prompt string or a non-empty list of {'role': ..., 'content': ...} dicts, "
            f"got {type(messages).__name__}"
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping) or "role" not in m or "content" not in m:
            raise LMError(f"message {i} must be a dict with 'role' and 'content', got {m!r:.200}")
        out.append(dict(m))
    return out


# --------------------------------------------------------------------------- the gateway


class LM:
    """A model endpoint with accounting, budgets, cache, routing and sessions.

    `LM("local")` is the offline local model (Qwen2.5-Coder-1.5B, served by llama.cpp on
    127.0.0.1; see delm_rlm.llm.local), whatever OPENAI_BASE_URL says. Any other name is a
    model at `base_url` (default `$OPENAI_BASE_URL`, else api.openai.com) with `api_key`
    (default `$OPENAI_API_KEY`).

    cache: None = on when temperature == 0; True/False force it; a path puts the SQLite file
    there (a directory, or a file ending in .sqlite/.db).
    prices: {model: (input_usd_per_mtok, output_usd_per_mtok)} overriding delm_rlm.llm.prices.
    routes: {role: model name or LM}; a name is another model at the same endpoint ("local" names
    are the local model); a routed LM serves as transport only: usage and budget are counted here.
    timeout: seconds per request attempt (default 120; 600 for the local model, whose requests
    queue behind each other on two cores).
    """

    def __init__(
        self,
        model: str = "local",
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 1024,
        timeout: float | None = None,
        max_concurrency: int = 4,
        max_retries: int = 4,
        cache: bool | str | Path | None = None,
        budget: Budget | None = None,
        routes: dict[str, str | LM] | None = None,
        prices: Mapping[str, PriceLike] | None = None,
        context_window: int | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise LMError(f"model must be a non-empty model name, got {model!r}")
        if temperature < 0:
            raise LMError(f"temperature must be >= 0, got {temperature}")
        if max_tokens < 1:
            raise LMError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_concurrency < 1:
            raise LMError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if max_retries < 0:
            raise LMError(f"max_retries must be >= 0, got {max_retries}")
        if context_window is not None and context_window < 1:
            raise LMError(f"context_window must be a positive number of tokens, got {context_window}")
        for role, target in (routes or {}).items():
            if role not in ROLES:
                raise LMError(f"routes: unknown role {role!r}; roles are {', '.join(ROLES)}")
            if not isinstance(target, str | LM):
                raise LMError(f"routes[{role!r}] must be a model name or an LM, got {type(target).__name__}")

        from delm_rlm.llm import local as local_model  # lazy: local_model imports this module

        self.model = model
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_retries = int(max_retries)
        self._local = local_model.spec_for(model) if self._uses_transport_of_openai() else None
        if self._local is not None and base_url is not None:
            raise LMError(
                f"model {model!r} is the offline local model; to use an endpoint at {base_url}, "
                "pass that endpoint's model name, e.g. LM('gpt-4o-mini', base_url=...)"
            )
        self.base_url = None if self._local else (base_url or os.environ.get("OPENAI_BASE_URL") or None)
        self._api_key = api_key
        self.timeout = float(timeout) if timeout is not None else (600.0 if self._local else DEFAULT_TIMEOUT_S)
        self._prices = dict(prices or {})
        self._routes: dict[str, str | LM] = {
            # A local model name is another endpoint (its own server), not a model name here.
            role: LM(target, temperature=temperature, max_tokens=max_tokens, cache=cache, prices=prices)
            if isinstance(target, str) and local_model.spec_for(target) is not None
            else target
            for role, target in (routes or {}).items()
        }
        self._context_window = context_window
        self._slots = local_model.shared_slots(self._local.name) if self._local else _Slots(max_concurrency)
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        self._clients_lock = threading.Lock()

        use_cache = (self.temperature == 0) if cache is None else bool(cache) if isinstance(cache, bool) else True
        if not use_cache:
            self._cache: ResponseCache | None = None
        elif isinstance(cache, str | Path):
            p = Path(cache).expanduser()
            self._cache = ResponseCache(p if p.suffix in (".sqlite", ".sqlite3", ".db") else p / CACHE_FILE_NAME)
        else:
            self._cache = ResponseCache(cache_dir() / CACHE_FILE_NAME)

        # per-view state (replaced in session())
        self._parent: LM | None = None
        self._budget = budget or Budget()
        self._ledger = UsageLedger()
        self._observers: list[Callable[[Completion, dict], None]] = []
        self._failure_observers: list[Callable[[CallFailure, dict], None]] = []
        self._started = time.monotonic()
        self._pending = 0  # calls of this view (and its sessions) in flight

    def _uses_transport_of_openai(self) -> bool:
        """Whether this class talks to an endpoint (ScriptedLM does not)."""
        return type(self)._transport is LM._transport

    # ------------------------------------------------------------------ views

    def session(self, budget: Budget | None = None) -> LM:
        """A view sharing transport, cache and concurrency limit, with its own ledger, budget,
        observers and clock; its usage also counts in this LM (and its parents)."""
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)
        child._parent = self
        child._budget = budget or Budget()
        child._ledger = UsageLedger()
        child._observers = []
        child._failure_observers = []
        child._started = time.monotonic()
        child._pending = 0
        return child

    def _chain(self) -> list[LM]:
        views: list[LM] = []
        view: LM | None = self
        while view is not None:
            views.append(view)
            view = view._parent
        return views

    @property
    def usage(self) -> UsageLedger:
        return self._ledger

    @property
    def budget(self) -> Budget:
        return self._budget

    def on_call(self, callback: Callable[[Completion, dict], None]) -> None:
        """Call `callback(completion, tags)` after every answered call of this view and of the
        sessions made from it."""
        self._observers.append(callback)

    def on_failure(self, callback: Callable[[CallFailure, dict], None]) -> None:
        """Call `callback(failure, tags)` after every call of this view and of its sessions
        that reached the endpoint and failed for good. An observer that raises is ignored:
        the caller must see the call's own error."""
        self._failure_observers.append(callback)

    def remaining(self) -> Budget:
        """What is left of this view's budget, also bounded by what its parents have left
        (None = unlimited); the budget to hand down to a sub-call."""
        left: dict[str, float | int | None] = {"max_usd": None, "max_tokens": None, "max_seconds": None, "max_calls": None}
        for view in self._chain():
            b, u = view._budget, view._ledger.total
            cands = {
                "max_usd": None if b.max_usd is None else max(0.0, b.max_usd - (u.cost_usd or 0.0)),
                "max_tokens": None if b.max_tokens is None else max(0, b.max_tokens - u.total_tokens),
                "max_seconds": None if b.max_seconds is None else max(0.0, b.max_seconds - view._elapsed()),
                "max_calls": None if b.max_calls is None else max(0, b.max_calls - u.calls - u.failed_calls),
            }
            for k, v in cands.items():
                if v is not None and (left[k] is None or v < left[k]):  # type: ignore[operator]
                    left[k] = v
        return Budget(**left)  # type: ignore[arg-type]

    def _elapsed(self) -> float:
        return time.monotonic() - self._started

    # ------------------------------------------------------------------ model facts

    def model_for(self, role: str) -> str:
        target = self._routes.get(role)
        if target is None:
            return self.model
        return target if isinstance(target, str) else target.model_for(role)

    @property
    def context_window(self) -> int:
        return self.context_window_for("root")

    def context_window_for(self, role: str) -> int:
        """Tokens the model serving `role` can attend to (prompt + completion). Unknown API
        models get a conservative 8192; pass context_window= to state the real one."""
        target = self._routes.get(role)
        if isinstance(target, LM):
            return target.context_window
        if self._context_window is not None:
            return self._context_window
        model = target or self.model
        from delm_rlm.llm import local as local_model

        spec = local_model.spec_for(model)
        if spec is not None:
            return local_model.n_ctx()
        return context_window_for(model) or 8192

    def count_tokens(self, text: str) -> int:
        """Approximate tokens in `text` (see approx_tokens); for budgeting prompts, not billing."""
        return approx_tokens(text)

    def price(self, model: str | None = None) -> Any:
        return price_for(model or self.model, self._prices)

    # ------------------------------------------------------------------ the call

    async def complete(
        self,
        messages: str | list[dict[str, Any]],
        *,
        role: str = "root",
        max_tokens: int | None = None,
        stop: list[str] | None = None,
        tags: dict[str, Any] | None = None,
    ) -> Completion:
        """Ask the model serving `role`. Raises BudgetExceeded before a call the budget no
        longer allows, LMError when the call fails for good."""
        if role not in ROLES:
            raise LMError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
        if max_tokens is not None and max_tokens < 1:
            raise LMError(f"max_tokens must be >= 1, got {max_tokens}")
        msgs = _normalize_messages(messages)

        route = self._routes.get(role)
        transport: LM = route if isinstance(route, LM) else self
        model = transport.model if isinstance(route, LM) else (route or self.model)
        request = _Request(
            model=model,
            messages=msgs,
            temperature=transport.temperature,
            max_tokens=int(max_tokens or transport.max_tokens),
            stop=tuple(stop) if stop else None,
            role=role,
        )
        price = transport.price(model)
        chain = self._chain()
        # Check and reserve under one lock, so concurrent calls (llm_query_batched) cannot all
        # pass a call budget that has room for only some of them.
        with _RESERVE_LOCK:
            self._check_budget(price_known=price is not None, model=model, reserved=0)
            for view in chain:
                view._pending += 1
        attempt = _Attempt()
        completion: Completion | None = None
        started = time.monotonic()
        tag_dict = dict(tags or {})
        failed: BaseException | None = None
        try:
            completion = await self._call(transport, request, price, attempt)
        except BaseException as exc:
            failed = exc
            raise
        finally:
            # Recording and releasing the reservation together keep every view's count exact.
            with _RESERVE_LOCK:
                for view in chain:
                    if completion is not None:
                        view._ledger.record(completion)
                    elif attempt.reached_transport:
                        view._ledger.record_failure(role, model)
                    view._pending -= 1
            if completion is None and attempt.reached_transport and isinstance(failed, Exception):
                failure = CallFailure(role=role, model=model, error=f"{type(failed).__name__}: {failed}",
                                      seconds=round(time.monotonic() - started, 3))
                for view in chain:
                    for failure_observer in list(view._failure_observers):
                        try:
                            failure_observer(failure, tag_dict)
                        except Exception:  # noqa: S112 - an observer must not replace the call's error
                            continue
        assert completion is not None
        for view in chain:
            for observer in list(view._observers):
                observer(completion, tag_dict)
        return completion

    async def _call(self, transport: LM, request: _Request, price: Any, attempt: _Attempt) -> Completion:
        """Serve `request` from the cache or the transport."""
        model, role = request.model, request.role
        reply: _Reply | None = None
        key = None
        if transport._cache is not None:
            key = ResponseCache.key(request, transport._endpoint_id())
            reply = transport._cache.get(key)
        if reply is not None:
            completion = Completion(
                text=reply.text, model=model, role=role, input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens, seconds=0.0, cost_usd=0.0, cached=True,
                finish_reason=reply.finish_reason,
            )
        else:
            try:
                await transport._prepare()
            except BaseException:
                attempt.reached_transport = True  # e.g. the local server failed to start
                raise
            async with transport._slots:
                # Re-check after waiting for a slot: the clock and sibling calls moved on.
                seconds_left = self._check_budget(price_known=price is not None, model=model, reserved=1)
                t0 = time.monotonic()
                attempt.reached_transport = True
                if seconds_left is not None and seconds_left < transport.timeout:
                    try:
                        reply = await asyncio.wait_for(transport._transport(request), seconds_left)
                    except TimeoutError:
                        raise self._seconds_exceeded() from None
                else:
                    reply = await transport._transport(request)
                seconds = time.monotonic() - t0
            if key is not None and transport._cache is not None:
                transport._cache.put(key, model, reply)
            completion = Completion(
                text=reply.text, model=model, role=role, input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens, seconds=seconds,
                cost_usd=None if price is None else price.cost(reply.input_tokens, reply.output_tokens),
                cached=False, finish_reason=reply.finish_reason,
            )
        return completion

    def _seconds_exceeded(self) -> BudgetExceeded:
        """The seconds limit that ran out while a call was in flight (the tightest one)."""
        views = [v for v in self._chain() if v._budget.max_seconds is not None]
        view = min(views, key=lambda v: v._budget.max_seconds - v._elapsed())  # type: ignore[operator]
        return BudgetExceeded("seconds", round(view._elapsed(), 3), view._budget.max_seconds)  # type: ignore[arg-type]

    def _check_budget(self, *, price_known: bool, model: str, reserved: int) -> float | None:
        """Raise BudgetExceeded if any view in the chain has no room for one more call (calls in
        flight count, less the `reserved` one of the caller itself); return the seconds left
        (the tightest view), or None when no view limits time."""
        seconds_left: float | None = None
        for view in self._chain():
            b, u = view._budget, view._ledger.total
            if b.max_calls is not None:
                used = u.calls + u.failed_calls
                if used + view._pending - reserved >= b.max_calls:
                    raise BudgetExceeded("calls", used, b.max_calls)
            if b.max_tokens is not None and u.total_tokens >= b.max_tokens:
                raise BudgetExceeded("tokens", u.total_tokens, b.max_tokens)
            if b.max_usd is not None:
                if not price_known or u.cost_usd is None:
                    raise LMError(
                        f"cannot enforce a dollar budget: the price of model {model!r} is unknown; "
                        f"pass LM(..., prices={{{model!r}: (input_usd_per_mtok, output_usd_per_mtok)}}) "
                        "or call delm_rlm.llm.prices.register_price, or budget tokens instead"
                    )
                if u.cost_usd >= b.max_usd:
                    raise BudgetExceeded("usd", round(u.cost_usd, 6), b.max_usd)
            if b.max_seconds is not None:
                left = b.max_seconds - view._elapsed()
                if left <= 0:
                    raise BudgetExceeded("seconds", round(view._elapsed(), 3), b.max_seconds)
                seconds_left = left if seconds_left is None else min(seconds_left, left)
        return seconds_left

    # ------------------------------------------------------------------ transport

    def _endpoint_id(self) -> str:
        """Identifies the endpoint in cache keys. The local model's port changes per process,
        so it is identified by its file's checksum instead."""
        if self._local is not None:
            return f"local-gguf:{self._local.sha256}"
        if not self._uses_transport_of_openai():
            return type(self).__name__
        return self.base_url or "https://api.openai.com/v1"

    async def _prepare(self) -> None:
        """Get the endpoint ready before the call is timed (starts the local server once)."""
        if self._local is not None:
            from delm_rlm.llm import local as local_model

            await asyncio.to_thread(local_model.ensure_server, self._local.name)

    def _client(self) -> tuple[str, Any]:
        """The AsyncOpenAI client for the running loop (httpx connection pools are bound to
        the loop that opened them)."""
        import openai

        loop = asyncio.get_running_loop()
        if self._local is not None:
            from delm_rlm.llm import local as local_model

            url = local_model.ensure_server(self._local.name).base_url
            key = "sk-no-key-needed"
        else:
            url = self.base_url or "https://api.openai.com/v1"
            key = self._api_key or os.environ.get("OPENAI_API_KEY")
            if not key:
                if self.base_url is None:
                    raise LMError(
                        f"no API key for model {self.model!r} at api.openai.com: set OPENAI_API_KEY or pass "
                        "api_key=...; or set OPENAI_BASE_URL / base_url= for another endpoint; or use "
                        "LM('local') for the offline local model"
                    )
                key = "sk-no-key-needed"  # vLLM, llama.cpp, Ollama accept any key
        with self._clients_lock:
            held = self._clients.get(loop)
            if held is not None and held[0] == url:
                return held
            client = openai.AsyncOpenAI(api_key=key, base_url=url, timeout=self.timeout, max_retries=self.max_retries)
            self._clients[loop] = (url, client)
            return url, client

    async def _transport(self, request: _Request) -> _Reply:
        """One chat completion over HTTP; the openai client retries transient failures."""
        import openai

        url, client = self._client()
        kwargs: dict[str, Any] = {
            "model": self._local.alias if self._local is not None else request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
        }
        if request.stop:
            kwargs["stop"] = list(request.stop)
        tries = f"after {self.max_retries} retries" if self.max_retries else "(retries off)"
        try:
            response = await client.chat.completions.create(**kwargs)
        except openai.AuthenticationError as e:
            raise LMError(
                f"{url} rejected the API key (401): set OPENAI_API_KEY or pass api_key=... with a valid key",
                status_code=401,
            ) from e
        except openai.PermissionDeniedError as e:
            raise LMError(f"{url} refused access to model {request.model!r} (403): {_detail(e)}", status_code=403) from e
        except openai.NotFoundError as e:
            raise LMError(
                f"{url} has no model {request.model!r} or no chat endpoint (404): check the model name and "
                f"that base_url ends in /v1. {_detail(e)}",
                status_code=404,
            ) from e
        except openai.RateLimitError as e:
            raise LMError(
                f"{url} kept rate-limiting (429) {tries}: lower max_concurrency or raise max_retries. {_detail(e)}",
                status_code=429,
            ) from e
        except openai.APITimeoutError as e:
            raise LMError(
                f"{url} did not answer within {self.timeout:g}s {tries}: raise timeout=... or shorten the prompt"
            ) from e
        except openai.APIConnectionError as e:
            raise LMError(
                f"cannot reach {url}: is the server running? set OPENAI_BASE_URL or pass base_url=... "
                f"(or use LM('local') for the offline local model). ({e.__cause__ or e})"
            ) from e
        except openai.APIStatusError as e:
            what = f"failed with {e.status_code} {tries}" if e.status_code >= 500 else f"rejected the request ({e.status_code})"
            raise LMError(f"{url} {what}: {_detail(e)}", status_code=e.status_code) from e
        except openai.OpenAIError as e:
            raise LMError(f"call to {url} failed: {e}") from e

        if not response.choices:
            raise LMError(f"{url} returned no choices for model {request.model!r}")
        choice = response.choices[0]
        text = choice.message.content or ""
        usage = response.usage
        input_tokens = usage.prompt_tokens if usage and usage.prompt_tokens is not None else approx_message_tokens(request.messages)
        output_tokens = usage.completion_tokens if usage and usage.completion_tokens is not None else approx_tokens(text)
        return _Reply(text=text, input_tokens=input_tokens, output_tokens=output_tokens, finish_reason=choice.finish_reason)

    async def aclose(self) -> None:
        """Close this loop's HTTP client and the cache connection; clients opened on other
        (possibly closed) loops are dropped. The LM stays usable: both reopen on demand."""
        loop = asyncio.get_running_loop()
        with self._clients_lock:
            held = self._clients.pop(loop, None)
            self._clients.clear()
        if held is not None:
            await held[1].close()
        if self._cache is not None:
            self._cache.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, endpoint={self._endpoint_id()!r})"


def _detail(e: Exception) -> str:
    """The server's own error message when it sent one."""
    body = getattr(e, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, Mapping) else body.get("message")
        if msg:
            return str(msg)[:500]
    return str(e)[:500]


__all__ = [
    "ROLES",
    "Budget",
    "BudgetExceeded",
    "Completion",
    "LM",
    "LMError",
    "ResponseCache",
    "Usage",
    "UsageLedger",
    "approx_tokens",
    "cache_dir",
    "default_model",
]
