"""The OpenAI-compatible transport: any chat endpoint the `openai` client speaks to (OpenAI,
vLLM, llama.cpp, Ollama, ...).

The openai client sends each request; the retry loop is this module's own, so that
`timeout` bounds a whole attempt (connecting, waiting and reading the body: a server that
dribbles a byte a second cannot hold it open) and so the reply's body is read here: a 200
whose body is not a chat completion (an HTML page, broken JSON) is an LMError naming the URL
and what came back. Retries follow the openai client's rules: 408/409/429/5xx, timeouts and
dropped connections, exponential backoff with jitter, honouring Retry-After (up to 60 s) and
x-should-retry. What still fails is an LMError whose message says what to change.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import os
import random
import threading
import time
import urllib.error
import urllib.request
import weakref
from collections.abc import Mapping
from typing import Any

from delm_rlm.errors import LMError
from delm_rlm.llm.tokens import approx_message_tokens, approx_tokens
from delm_rlm.llm.transport import DEFAULT_TIMEOUT_S, ChatReply, ChatRequest, Slots

OPENAI_URL = "https://api.openai.com/v1"
ANY_KEY = "sk-no-key-needed"  # vLLM, llama.cpp, Ollama accept any key

# The openai client's backoff: 0.5 s doubling up to 8 s, less up to 25 % jitter.
INITIAL_RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 8.0
MAX_RETRY_AFTER_S = 60.0  # a longer Retry-After is ignored (as the openai client does)
RETRYABLE_STATUS = frozenset({408, 409, 429})
EXCERPT_CHARS = 200


class OpenAIClients:
    """AsyncOpenAI clients, one for each event loop (httpx connection pools are bound to the
    loop that opened them), remade when the endpoint's URL changes."""

    def __init__(self, *, timeout: float, max_retries: int) -> None:
        self.timeout = float(timeout)
        self.max_retries = int(max_retries)
        self._lock = threading.Lock()
        self._clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[str, Any]] = (
            weakref.WeakKeyDictionary()
        )

    def for_running_loop(self, url: str, api_key: str) -> Any:
        import openai  # a heavy import, paid only once a call is made

        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._clients.get(loop)
            if held is not None and held[0] == url:
                return held[1]
            # Retries are chat_completion's (max_retries=0 here): it bounds each attempt whole.
            client = openai.AsyncOpenAI(api_key=api_key, base_url=url, timeout=self.timeout, max_retries=0)
            self._clients[loop] = (url, client)
            return client

    async def aclose(self) -> None:
        """Close this loop's client; clients opened on other (possibly closed) loops are dropped."""
        loop = asyncio.get_running_loop()
        with self._lock:
            held = self._clients.pop(loop, None)
            self._clients.clear()
        if held is not None:
            await held[1].close()


async def chat_completion(
    client: Any, url: str, request: ChatRequest, *, served_model: str, timeout: float, max_retries: int
) -> ChatReply:
    """One chat completion through `client`, retrying transient failures up to `max_retries`
    times; each attempt, the body read included, is bounded by `timeout` seconds.
    `served_model` is the name the endpoint knows the model by."""
    import openai

    kwargs: dict[str, Any] = {
        "model": served_model,
        "messages": request.messages,
        "temperature": request.temperature,
        "max_tokens": request.max_tokens,
    }
    if request.stop:
        kwargs["stop"] = list(request.stop)
    tries = f"after {max_retries} retries" if max_retries else "(retries off)"
    retry = 0
    while True:
        headers: Mapping[str, str] = {}
        try:
            async with asyncio.timeout(timeout):
                raw = await client.chat.completions.with_raw_response.create(**kwargs)
                response = raw.http_response
                body = await response.aread()  # already read for a plain request; never unbounded
        except (TimeoutError, openai.APITimeoutError) as e:
            cause: Exception = e
            failure = LMError(f"{url} did not answer within {timeout:g}s {tries}: raise timeout=... or shorten the prompt")
        except openai.APIConnectionError as e:
            cause = e
            failure = LMError(
                f"cannot reach {url}: is the server running? set OPENAI_BASE_URL or pass base_url=... "
                f"(or use LM('local') for the offline local model). ({e.__cause__ or e})"
            )
        except openai.APIStatusError as e:
            cause = e
            failure = _status_error(url, request, e, tries)
            if not _should_retry(e):
                raise failure from e
            headers = e.response.headers
        except openai.OpenAIError as e:
            raise LMError(f"call to {url} failed: {e}") from e
        else:
            return reply_from_body(url, request, response.status_code, response.headers.get("content-type", ""), body)
        if retry >= max_retries:
            raise failure from cause
        await asyncio.sleep(retry_delay(headers, retry))
        retry += 1


def _status_error(url: str, request: ChatRequest, e: Any, tries: str) -> LMError:
    """What an HTTP error status means for the user, as an LMError carrying the status."""
    status = int(e.status_code)
    if status == 401:
        return LMError(f"{url} rejected the API key (401): set OPENAI_API_KEY or pass api_key=... with a valid key", status_code=401)
    if status == 403:
        return LMError(f"{url} refused access to model {request.model!r} (403): {_detail(e)}", status_code=403)
    if status == 404:
        return LMError(
            f"{url} has no model {request.model!r} or no chat endpoint (404): check the model name and "
            f"that base_url ends in /v1. {_detail(e)}",
            status_code=404,
        )
    if status == 429:
        return LMError(
            f"{url} kept rate-limiting (429) {tries}: lower max_concurrency or raise max_retries. {_detail(e)}",
            status_code=429,
        )
    what = f"failed with {status} {tries}" if status >= 500 else f"rejected the request ({status})"
    return LMError(f"{url} {what}: {_detail(e)}", status_code=status)


def _should_retry(e: Any) -> bool:
    """The openai client's rule: the server's x-should-retry first, then the status."""
    hint = e.response.headers.get("x-should-retry")
    if hint in ("true", "false"):
        return hint == "true"
    return e.status_code in RETRYABLE_STATUS or e.status_code >= 500


def retry_delay(headers: Mapping[str, str], retry: int) -> float:
    """Seconds to wait before retry number `retry` (0-based): the server's Retry-After
    (retry-after-ms, or retry-after in seconds or as a date) when it is within 60 s, else
    exponential backoff with jitter."""
    asked: float | None = None
    try:
        if headers.get("retry-after-ms"):
            asked = float(headers["retry-after-ms"]) / 1000
        elif headers.get("retry-after"):
            value = headers["retry-after"]
            try:
                asked = float(value)
            except ValueError:
                when = email.utils.parsedate_to_datetime(value)
                asked = when.timestamp() - time.time()
    except (TypeError, ValueError, OverflowError):
        asked = None
    if asked is not None and 0 < asked <= MAX_RETRY_AFTER_S:
        return asked
    return min(INITIAL_RETRY_DELAY_S * 2.0**retry, MAX_RETRY_DELAY_S) * (1 - 0.25 * random.random())  # noqa: S311


def excerpt(body: bytes, limit: int = EXCERPT_CHARS) -> str:
    """A short, one-line view of a reply's body for an error message."""
    if not body.strip():
        return "an empty body"
    text = " ".join(body[: limit * 4].decode("utf-8", errors="replace").split())
    cut = text[:limit] + ("..." if len(text) > limit or len(body) > limit * 4 else "")
    return f"{cut!r} ({len(body):,} bytes)"


def reply_from_body(url: str, request: ChatRequest, status: int, content_type: str, body: bytes) -> ChatReply:
    """The ChatReply in a successful response's body; an LMError naming the URL and showing
    what came back when the body is not a chat completion."""

    def not_a_completion(what: str) -> LMError:
        return LMError(
            f"{url} answered {status} with {what} instead of a chat completion: {excerpt(body)}; check that "
            "base_url is the API's /v1 address (not a web page or a proxy) and that the server speaks the "
            "OpenAI chat API",
            status_code=status,
        )

    try:
        data = json.loads(body)
    except ValueError:  # JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise not_a_completion(f"a body that is not JSON ({content_type or 'no Content-Type'})") from None
    if not isinstance(data, dict):
        raise not_a_completion(f"JSON {type(data).__name__}")
    choices = data.get("choices")
    if choices is None and isinstance(data.get("error"), Mapping | str):
        inner = data["error"]
        message = inner.get("message") if isinstance(inner, Mapping) else inner
        raise LMError(f"{url} answered {status} with an error: {str(message)[:500]}", status_code=status)
    if not isinstance(choices, list):
        raise not_a_completion("JSON without a 'choices' list")
    if not choices:
        raise LMError(f"{url} returned no choices for model {request.model!r}")
    choice = choices[0]
    message = choice.get("message") if isinstance(choice, Mapping) else None
    if not isinstance(message, Mapping):
        raise not_a_completion("a choice without a 'message' object")
    text = message.get("content")
    if text is not None and not isinstance(text, str):
        raise not_a_completion("a message whose content is not text")
    text = text or ""
    usage = data.get("usage")
    usage = usage if isinstance(usage, Mapping) else {}
    input_tokens = _count(usage.get("prompt_tokens"))
    output_tokens = _count(usage.get("completion_tokens"))
    finish = choice.get("finish_reason")
    return ChatReply(
        text=text,
        input_tokens=approx_message_tokens(request.messages) if input_tokens is None else input_tokens,
        output_tokens=approx_tokens(text) if output_tokens is None else output_tokens,
        finish_reason=finish if isinstance(finish, str) else None,
    )


def _count(value: object) -> int | None:
    """A token count the server reported, or None when it sent none (or nonsense)."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _detail(e: Exception) -> str:
    """The server's own error message when it sent one."""
    body = getattr(e, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, Mapping) else body.get("message")
        if msg:
            return str(msg)[:500]
    return str(e)[:500]


def served_models(base_url: str, api_key: str | None = None, *, timeout: float = 10.0) -> list[str]:
    """The model names an OpenAI-compatible endpoint serves (its /models list, in its order).
    Raises LMError naming the URL when it cannot be asked or answers something else."""
    url = base_url.rstrip("/") + "/models"
    fix = "name the model with --model NAME (or DELM_RLM_MODEL=NAME), or unset OPENAI_BASE_URL to use the offline local model"
    headers = {"Authorization": f"Bearer {api_key or ANY_KEY}", "Accept": "application/json"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (the user's own endpoint)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            body = response.read(4 << 20)
    except urllib.error.HTTPError as e:
        hint = ": set OPENAI_API_KEY to a valid key" if e.code in (401, 403) else ""
        raise LMError(f"{url} answered HTTP {e.code} when asked which models it serves{hint}; or {fix}", status_code=e.code) from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise LMError(f"cannot reach {url} to ask which model it serves ({reason}): is the server running? or {fix}") from e
    try:
        data = json.loads(body)
        entries = data["data"]
        names = [entry["id"] for entry in entries]
        if not all(isinstance(n, str) and n for n in names):
            raise TypeError("a model id is not a name")
    except (ValueError, KeyError, TypeError) as e:
        raise LMError(f"{url} did not answer with a model list (expected {{\"data\": [{{\"id\": ...}}]}}): {excerpt(body)}; {fix}") from e
    return names


class OpenAICompatTransport:
    """A model at an OpenAI-compatible endpoint: `base_url` (default `$OPENAI_BASE_URL`, else
    api.openai.com) with `api_key` (default `$OPENAI_API_KEY`, read at call time; endpoints
    other than api.openai.com get a placeholder key when none is set)."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_retries: int = 4,
    ) -> None:
        self._base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        self._api_key = api_key
        self._clients = OpenAIClients(timeout=timeout, max_retries=max_retries)

    @property
    def base_url(self) -> str | None:
        return self._base_url

    @property
    def endpoint_id(self) -> str:
        return self._base_url or OPENAI_URL

    @property
    def timeout(self) -> float:
        return self._clients.timeout

    @property
    def slots(self) -> Slots | None:
        return None  # the LM's max_concurrency holds

    async def prepare(self) -> None:
        return None

    def _key(self, model: str) -> str:
        key = self._api_key or os.environ.get("OPENAI_API_KEY")
        if key:
            return key
        if self._base_url is None:
            raise LMError(
                f"no API key for model {model!r} at api.openai.com: set OPENAI_API_KEY or pass "
                "api_key=...; or set OPENAI_BASE_URL / base_url= for another endpoint; or use "
                "LM('local') for the offline local model"
            )
        return ANY_KEY

    async def send(self, request: ChatRequest) -> ChatReply:
        url = self.endpoint_id
        client = self._clients.for_running_loop(url, self._key(request.model))
        return await chat_completion(
            client, url, request, served_model=request.model,
            timeout=self._clients.timeout, max_retries=self._clients.max_retries,
        )

    async def aclose(self) -> None:
        await self._clients.aclose()

    def __repr__(self) -> str:
        return f"OpenAICompatTransport(endpoint={self.endpoint_id!r})"


__all__ = [
    "ANY_KEY", "OPENAI_URL", "OpenAIClients", "OpenAICompatTransport", "chat_completion", "excerpt",
    "reply_from_body", "retry_delay", "served_models",
]
