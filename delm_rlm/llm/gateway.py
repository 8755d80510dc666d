"""The LM gateway: every model call in delm-rlm goes through an `LM`.

One object gives a run everything it needs from a model endpoint:

- a transport that carries the calls (delm_rlm.llm.transport): any OpenAI-compatible chat
  endpoint (openai_compat.py), the offline local model with `LM("local")` (local.py), or
  any object fitting `Transport` passed as `LM(model, transport=...)` (ScriptedLM does);
- bounded concurrency (`max_concurrency`, or the limit the endpoint imposes);
- usage per call, per role and per run (calls, tokens, seconds, dollars from delm_rlm.llm.prices);
- budgets (dollars, tokens, seconds, calls) checked before every call, raising the typed
  `BudgetExceeded`; the seconds budget is a deadline that bounds a whole call, its retries
  included; a dollar budget for a model without a known price is refused when the LM or the
  session is made (`check_budget`);
- a stop for an endpoint that keeps failing (delm_rlm.llm.health): past
  `max_consecutive_failures` failed calls in a row, calls fail at once with `EndpointFailing`;
- an on-disk SQLite response cache keyed by the full request (delm_rlm.llm.cache), on by
  default at temperature 0;
- routing by role (roles are an open registry, delm_rlm.llm.roles: root, sub, verifier,
  finalizer and any registered one may each use another model or LM);
- `session(budget)` views that share transport, cache and concurrency limit but keep their own
  ledger and budget, while also counting into their parents;
- observers (`on_call`, `on_failure`) that see every call, e.g. the run's trace.

Accounting, budgets, cache and observers are this module's code for every transport.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delm_rlm.errors import BudgetExceeded, ConfigError, LMError, PriceUnknown
from delm_rlm.llm import local as local_model
from delm_rlm.llm.cache import ResponseCache, open_cache
from delm_rlm.llm.health import DEFAULT_MAX_CONSECUTIVE_FAILURES, EndpointHealth
from delm_rlm.llm.openai_compat import OpenAICompatTransport, served_models
from delm_rlm.llm.prices import PRICE_ENV, PriceLike, context_window_for, price_for, price_from_env
from delm_rlm.llm.roles import check_role
from delm_rlm.llm.tokens import approx_tokens
from delm_rlm.llm.transport import DEFAULT_TIMEOUT_S, ChatReply, ChatRequest, Slots, Transport
from delm_rlm.llm.usage import Budget, CallFailure, Completion, UsageLedger

logger = logging.getLogger(__name__)


def default_model() -> str:
    """The model a user gets without naming one: `$DELM_RLM_MODEL`; else, when
    `$OPENAI_BASE_URL` is set, the model that endpoint serves (its /v1/models list: the only
    one, or a ConfigError listing them when it serves several); else "local", the offline
    model. An endpoint that is set but cannot be asked is an LMError, never a silent switch to
    the local model."""
    named = os.environ.get("DELM_RLM_MODEL", "").strip()
    if named:
        return named
    base_url = os.environ.get("OPENAI_BASE_URL", "").strip()
    if not base_url:
        return "local"
    models = served_models(base_url, os.environ.get("OPENAI_API_KEY"))
    if len(models) == 1:
        return models[0]
    if not models:
        raise ConfigError(
            f"OPENAI_BASE_URL={base_url} serves no models (its /models list is empty): name one with "
            "--model NAME or DELM_RLM_MODEL=NAME, or unset OPENAI_BASE_URL to use the offline local model"
        )
    shown = ", ".join(models[:20]) + (f" and {len(models) - 20} more" if len(models) > 20 else "")
    raise ConfigError(
        f"OPENAI_BASE_URL={base_url} serves {len(models)} models ({shown}): name one with --model NAME "
        "or DELM_RLM_MODEL=NAME"
    )


@dataclass
class _Attempt:
    """Whether a call got as far as the transport (only then does a failure count)."""

    reached_transport: bool = False


# Held while a call checks the budgets and reserves its place, and while it records its usage.
_RESERVE_LOCK = threading.Lock()


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


class LM:
    """A model endpoint with accounting, budgets, cache, routing and sessions.

    `LM("local")` is the offline local model (Qwen2.5-Coder-1.5B, served by llama.cpp on
    127.0.0.1; see delm_rlm.llm.local), whatever OPENAI_BASE_URL says. Any other name is a
    model at `base_url` (default `$OPENAI_BASE_URL`, else api.openai.com) with `api_key`
    (default `$OPENAI_API_KEY`).

    transport: any object fitting delm_rlm.llm.Transport to carry the calls instead; then
    base_url, api_key, timeout and max_retries (settings of the transports the LM makes
    itself) are not used.
    cache: None = on when temperature == 0; True/False force it; a path puts the SQLite file
    there (a directory, or a file ending in .sqlite/.db).
    prices: {model: (input_usd_per_mtok, output_usd_per_mtok)} overriding delm_rlm.llm.prices;
    `$DELM_RLM_PRICE="IN,OUT"` prices this LM's own model when `prices` does not (not the
    offline local model, which is free). A `budget` with max_usd needs the price of every
    model the LM routes to: without one the LM is refused here (PriceUnknown).
    routes: {role: model name or LM}; a name is another model at the same endpoint ("local" names
    are the local model); a routed LM serves as transport only: usage and budget are counted here.
    timeout: seconds one request attempt may take as a whole, connecting and reading included
    (default 120; 600 for the local model, whose requests queue behind each other on two
    cores). A seconds budget bounds the whole call, retries and backoff included.
    max_consecutive_failures: calls that fail for good in a row (after their retries) before
    this LM and its sessions stop calling the endpoint and fail at once with EndpointFailing
    (default 8; None never stops; calls are let through again after 60 s).
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
        transport: Transport | None = None,
        max_consecutive_failures: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES,
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
            check_role(role, where="routes: ")
            if not isinstance(target, str | LM):
                raise LMError(f"routes[{role!r}] must be a model name or an LM, got {type(target).__name__}")
        if transport is not None and not isinstance(transport, Transport):
            raise ConfigError(
                f"transport must fit delm_rlm.llm.Transport (endpoint_id, base_url, timeout, slots, prepare, "
                f"send, aclose), got {type(transport).__name__}"
            )

        self.model = model
        self.temperature = float(temperature)
        self.max_tokens = int(max_tokens)
        self.max_retries = int(max_retries)
        if transport is None:
            transport = self._transport_for(model, base_url, api_key, timeout)
        self._transport: Transport = transport
        self._prices = dict(prices or {})
        env_price = price_from_env()
        if env_price is not None and local_model.spec_for(model) is None and model not in self._prices:
            self._prices[model] = env_price
        self._health = EndpointHealth(max_consecutive_failures)  # shared by sessions
        self._routes: dict[str, str | LM] = {
            # A local model name is another endpoint (its own server), not a model name here.
            role: LM(target, temperature=temperature, max_tokens=max_tokens, cache=cache, prices=prices,
                     max_consecutive_failures=max_consecutive_failures)
            if isinstance(target, str) and local_model.spec_for(target) is not None
            else target
            for role, target in (routes or {}).items()
        }
        self._context_window = context_window
        own_limit = transport.slots
        self._slots: Slots = own_limit if own_limit is not None else Slots(max_concurrency)
        self._cache: ResponseCache | None = open_cache(cache, self.temperature)

        # per-view state (replaced in session())
        self._parent: LM | None = None
        self._budget = budget or Budget()
        self._ledger = UsageLedger()
        self._observers: list[Callable[[Completion, dict], None]] = []
        self._failure_observers: list[Callable[[CallFailure, dict], None]] = []
        self._started = time.monotonic()
        self._pending = 0  # calls of this view (and its sessions) in flight
        self.check_budget(self._budget)

    def _transport_for(self, model: str, base_url: str | None, api_key: str | None, timeout: float | None) -> Transport:
        """The transport a model name means: the local model's server, else an
        OpenAI-compatible endpoint."""
        spec = local_model.spec_for(model)
        if spec is None:
            return OpenAICompatTransport(
                base_url=base_url, api_key=api_key, max_retries=self.max_retries,
                timeout=DEFAULT_TIMEOUT_S if timeout is None else float(timeout),
            )
        if base_url is not None:
            raise LMError(
                f"model {model!r} is the offline local model; to use an endpoint at {base_url}, "
                "pass that endpoint's model name, e.g. LM('gpt-4o-mini', base_url=...)"
            )
        return local_model.LocalTransport(spec, timeout=None if timeout is None else float(timeout), max_retries=self.max_retries)

    @property
    def transport(self) -> Transport:
        """What carries this LM's calls (shared by its sessions)."""
        return self._transport

    @property
    def in_flight(self) -> int:
        """Calls of this LM (and of its sessions) sent and not yet returned."""
        return self._pending

    async def settle(self, timeout: float, poll_s: float = 0.5) -> float:
        """Wait until no call of this LM is in flight, at most `timeout` seconds; returns the
        seconds waited. A run cancelled mid-call may leave calls going (an agent's kernel
        still running `llm_query` through the bridge): whoever times the next run waits here
        first, so that run does not queue behind the abandoned one's work."""
        started = time.monotonic()
        while self._pending > 0 and time.monotonic() - started < timeout:
            await asyncio.sleep(poll_s)
        # An endpoint that keeps computing a cancelled request (the local server) is waited
        # for too: `wait_idle` is an optional transport method.
        wait_idle = getattr(self._transport, "wait_idle", None)
        if wait_idle is not None and self._pending == 0:
            left = timeout - (time.monotonic() - started)
            try:
                await asyncio.wait_for(wait_idle(), max(left, 1.0))
            except Exception as exc:  # settling is best effort: the next run still runs
                logger.warning("could not wait for %s to go idle: %s", self._transport, exc)
        return time.monotonic() - started

    @property
    def base_url(self) -> str | None:
        return self._transport.base_url

    @property
    def timeout(self) -> float:
        return self._transport.timeout

    # ------------------------------------------------------------------ views

    def session(self, budget: Budget | None = None, *, cache_path: str | Path | None = None) -> LM:
        """A view sharing transport, cache and concurrency limit, with its own ledger, budget,
        observers and clock; its usage also counts in this LM (and its parents). A budget with
        max_usd for a model without a known price is refused here (see check_budget).

        `cache_path`: this view (and its own sessions) read and write the response cache at
        that path instead of the shared one, e.g. a fresh cache per method in a benchmark, so
        that no method is served replies another one paid for. Calls routed to another LM
        keep that LM's cache. Close it with `close_cache()`."""
        self.check_budget(budget)
        child = object.__new__(type(self))
        child.__dict__.update(self.__dict__)
        if cache_path is not None:
            child._cache = open_cache(cache_path, 0.0)
        child._parent = self
        child._budget = budget or Budget()
        child._ledger = UsageLedger()
        child._observers = []
        child._failure_observers = []
        child._started = time.monotonic()
        child._pending = 0
        return child

    def close_cache(self) -> None:
        """Close the connection of this view's response cache (one `session(cache_path=...)`
        opened); the LM's own cache closes with `aclose`."""
        if self._cache is not None and (self._parent is None or self._cache is not self._parent._cache):
            self._cache.close()

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
    def response_cache(self) -> ResponseCache | None:
        """The on-disk response cache this LM's calls use (None: off); shared by its sessions."""
        return self._cache

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
        if local_model.spec_for(model) is not None:
            return local_model.n_ctx()
        return context_window_for(model) or 8192

    def count_tokens(self, text: str) -> int:
        """Approximate tokens in `text` (see approx_tokens); for budgeting prompts, not billing."""
        return approx_tokens(text)

    def price(self, model: str | None = None) -> Any:
        return price_for(model or self.model, self._prices)

    def models_and_prices(self) -> dict[str, Any]:
        """Every model this LM's calls can reach (its own and each route's) with its price
        (None when unknown)."""
        found: dict[str, Any] = {self.model: self.price()}
        for target in self._routes.values():
            if isinstance(target, LM):
                found.setdefault(target.model, target.price())
            else:
                found.setdefault(target, self.price(target))
        return found

    def check_budget(self, budget: Budget | None) -> None:
        """Raise PriceUnknown (an LMError and a ConfigError) when `budget` limits dollars and a
        model this LM can call has no known price: such a budget cannot be enforced, and the
        place to say so is before a run starts. A budget without max_usd always passes."""
        if budget is None or budget.max_usd is None:
            return
        unknown = [m for m, price in self.models_and_prices().items() if price is None]
        if unknown:
            raise PriceUnknown(_unknown_price_message(unknown, f"a dollar budget (max_usd={budget.max_usd:g})"))

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
        check_role(role)
        if max_tokens is not None and max_tokens < 1:
            raise LMError(f"max_tokens must be >= 1, got {max_tokens}")
        msgs = _normalize_messages(messages)

        route = self._routes.get(role)
        target: LM = route if isinstance(route, LM) else self
        model = target.model if isinstance(route, LM) else (route or self.model)
        request = ChatRequest(
            model=model,
            messages=msgs,
            temperature=target.temperature,
            max_tokens=int(max_tokens or target.max_tokens),
            stop=tuple(stop) if stop else None,
            role=role,
        )
        price = target.price(model)
        health = target._health
        health.admit(target._transport.base_url or target._transport.endpoint_id)
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
            completion = await self._call(target, request, price, attempt)
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
            if completion is not None and not completion.cached:
                health.succeeded()
            elif attempt.reached_transport and isinstance(failed, LMError):
                health.failed(str(failed))
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

    async def _call(self, target: LM, request: ChatRequest, price: Any, attempt: _Attempt) -> Completion:
        """Serve `request` from the cache or the transport of `target` (this LM or the one its
        role is routed to)."""
        model, role = request.model, request.role
        transport = target._transport
        reply: ChatReply | None = None
        key = ResponseCache.key(request, transport.endpoint_id)
        if target._cache is not None:
            reply = target._cache.get(key)
        if reply is not None:
            completion = Completion(
                text=reply.text, model=model, role=role, input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens, seconds=0.0, cost_usd=0.0, cached=True,
                finish_reason=reply.finish_reason, request_key=key,
            )
        else:
            try:
                await transport.prepare()
            except BaseException:
                attempt.reached_transport = True  # e.g. the local server failed to start
                raise
            # A seconds budget is a deadline for the whole call: waiting for a slot, every
            # attempt the transport makes and the backoff between them.
            deadline = asyncio.timeout(self._seconds_left())
            try:
                async with deadline, target._slots:
                    # Re-check after waiting for a slot: the clock and sibling calls moved on.
                    self._check_budget(price_known=price is not None, model=model, reserved=1)
                    t0 = time.monotonic()
                    attempt.reached_transport = True
                    reply = await transport.send(request)
                    seconds = time.monotonic() - t0
            except TimeoutError:
                if not deadline.expired():
                    raise
                raise self._seconds_exceeded() from None
            if target._cache is not None:
                target._cache.put(key, model, reply)
            completion = Completion(
                text=reply.text, model=model, role=role, input_tokens=reply.input_tokens,
                output_tokens=reply.output_tokens, seconds=seconds,
                cost_usd=None if price is None else price.cost(reply.input_tokens, reply.output_tokens),
                cached=False, finish_reason=reply.finish_reason, request_key=key,
            )
        return completion

    def _seconds_left(self) -> float | None:
        """Seconds until the tightest seconds budget in the chain runs out (None: no limit)."""
        left = [v._budget.max_seconds - v._elapsed() for v in self._chain() if v._budget.max_seconds is not None]
        return min(left) if left else None

    def _seconds_exceeded(self) -> BudgetExceeded:
        """The seconds limit that ran out while a call was in flight (the tightest one)."""
        views = [v for v in self._chain() if v._budget.max_seconds is not None]
        view = min(views, key=lambda v: v._budget.max_seconds - v._elapsed())  # type: ignore[operator]
        return BudgetExceeded("seconds", round(view._elapsed(), 3), view._budget.max_seconds)  # type: ignore[arg-type]

    def _check_budget(self, *, price_known: bool, model: str, reserved: int) -> None:
        """Raise BudgetExceeded if any view in the chain has no room for one more call (calls in
        flight count, less the `reserved` one of the caller itself)."""
        for view in self._chain():
            b, u = view._budget, view._ledger.total
            if b.max_calls is not None:
                used = u.calls + u.failed_calls
                if used + view._pending - reserved >= b.max_calls:
                    raise BudgetExceeded("calls", used, b.max_calls)
            if b.max_tokens is not None and u.total_tokens >= b.max_tokens:
                raise BudgetExceeded("tokens", u.total_tokens, b.max_tokens)
            if b.max_usd is not None:
                if not price_known or u.cost_usd is None:  # check_budget refuses this up front
                    raise PriceUnknown(_unknown_price_message([model], "a dollar budget"))
                if u.cost_usd >= b.max_usd:
                    raise BudgetExceeded("usd", round(u.cost_usd, 6), b.max_usd)
            if b.max_seconds is not None:
                if b.max_seconds - view._elapsed() <= 0:
                    raise BudgetExceeded("seconds", round(view._elapsed(), 3), b.max_seconds)

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Close this loop's HTTP client and the cache connection; clients opened on other
        (possibly closed) loops are dropped. The LM stays usable: both reopen on demand."""
        await self._transport.aclose()
        if self._cache is not None:
            self._cache.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r}, endpoint={self._transport.endpoint_id!r})"


def _unknown_price_message(models: list[str], what: str) -> str:
    names = ", ".join(repr(m) for m in models)
    first = models[0]
    whose = f"the price of model {names} is" if len(models) == 1 else f"the prices of models {names} are"
    return (
        f"cannot enforce {what}: {whose} unknown; give {'it' if len(models) == 1 else 'each'} per million "
        f"tokens: LM(..., prices={{{first!r}: (input_usd_per_mtok, output_usd_per_mtok)}}), or for the LM's own "
        f"model {PRICE_ENV}='IN,OUT' (--price IN,OUT on the command line), or delm_rlm.llm.prices.register_price; "
        "or budget tokens instead (max_tokens)"
    )


__all__ = ["LM", "default_model"]
