"""The OpenAI-compatible transport: any chat endpoint the `openai` client speaks to (OpenAI,
vLLM, llama.cpp, Ollama, ...).

Retries with exponential backoff on 408/409/429/5xx, timeouts and dropped connections are the
openai client's own retry loop (it does exactly that, honouring Retry-After); this module
turns what still fails into an LMError whose message says what to change.
"""

from __future__ import annotations

import asyncio
import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from delm_rlm.errors import LMError
from delm_rlm.llm.tokens import approx_message_tokens, approx_tokens
from delm_rlm.llm.transport import DEFAULT_TIMEOUT_S, ChatReply, ChatRequest, Slots

OPENAI_URL = "https://api.openai.com/v1"
ANY_KEY = "sk-no-key-needed"  # vLLM, llama.cpp, Ollama accept any key


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
            client = openai.AsyncOpenAI(api_key=api_key, base_url=url, timeout=self.timeout, max_retries=self.max_retries)
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
    """One chat completion through `client` (the openai client retries transient failures);
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
            f"{url} did not answer within {timeout:g}s {tries}: raise timeout=... or shorten the prompt"
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
    return ChatReply(text=text, input_tokens=input_tokens, output_tokens=output_tokens, finish_reason=choice.finish_reason)


def _detail(e: Exception) -> str:
    """The server's own error message when it sent one."""
    body = getattr(e, "body", None)
    if isinstance(body, Mapping):
        inner = body.get("error")
        msg = inner.get("message") if isinstance(inner, Mapping) else body.get("message")
        if msg:
            return str(msg)[:500]
    return str(e)[:500]


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


__all__ = ["ANY_KEY", "OPENAI_URL", "OpenAIClients", "OpenAICompatTransport", "chat_completion"]
