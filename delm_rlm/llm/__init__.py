"""The model gateway: one `LM` for every model call, the transports it holds, the response
cache, usage and budgets, roles and prices.

    gateway.py        LM: routing, sessions, budgets, ledger, observers, cache use
    health.py         EndpointHealth: stop calling an endpoint that keeps failing
    transport.py      the Transport protocol: ChatRequest, ChatReply, Slots
    openai_compat.py  OpenAICompatTransport: any OpenAI-compatible chat endpoint
    local.py          the offline GGUF model (assembled, verified, served) and LocalTransport
    scripted.py       ScriptedLM / ScriptedTransport: a deterministic model for tests
    cache.py          ResponseCache (SQLite)       usage.py   Usage, Completion, Budget, ...
    roles.py          the open role registry       prices.py  prices and context windows
    tokens.py         approximate token counts

Names load on first use (PEP 562), so importing one module (the local server's entry point,
say) does not import the others.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "LM": "delm_rlm.llm.gateway",
    "default_model": "delm_rlm.llm.gateway",
    "ChatReply": "delm_rlm.llm.transport",
    "ChatRequest": "delm_rlm.llm.transport",
    "Slots": "delm_rlm.llm.transport",
    "Transport": "delm_rlm.llm.transport",
    "OpenAICompatTransport": "delm_rlm.llm.openai_compat",
    "served_models": "delm_rlm.llm.openai_compat",
    "EndpointHealth": "delm_rlm.llm.health",
    "LocalTransport": "delm_rlm.llm.local",
    "ScriptedLM": "delm_rlm.llm.scripted",
    "ScriptedTransport": "delm_rlm.llm.scripted",
    "load_script": "delm_rlm.llm.scripted",
    "ResponseCache": "delm_rlm.llm.cache",
    "cache_dir": "delm_rlm.llm.cache",
    "Budget": "delm_rlm.llm.usage",
    "CallFailure": "delm_rlm.llm.usage",
    "Completion": "delm_rlm.llm.usage",
    "Usage": "delm_rlm.llm.usage",
    "UsageLedger": "delm_rlm.llm.usage",
    "BUILTIN_ROLES": "delm_rlm.llm.roles",
    "Role": "delm_rlm.llm.roles",
    "register_role": "delm_rlm.llm.roles",
    "role_names": "delm_rlm.llm.roles",
    "Price": "delm_rlm.llm.prices",
    "parse_price": "delm_rlm.llm.prices",
    "price_from_env": "delm_rlm.llm.prices",
    "price_for": "delm_rlm.llm.prices",
    "register_context_window": "delm_rlm.llm.prices",
    "register_price": "delm_rlm.llm.prices",
    "approx_message_tokens": "delm_rlm.llm.tokens",
    "approx_tokens": "delm_rlm.llm.tokens",
    # the errors a model call raises, beside the gateway for its callers' convenience
    "BudgetExceeded": "delm_rlm.errors",
    "EndpointFailing": "delm_rlm.errors",
    "PriceUnknown": "delm_rlm.errors",
    "LMError": "delm_rlm.errors",
    "LocalModelUnavailable": "delm_rlm.errors",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from delm_rlm.errors import BudgetExceeded, EndpointFailing, LMError, LocalModelUnavailable, PriceUnknown
    from delm_rlm.llm.cache import ResponseCache, cache_dir
    from delm_rlm.llm.gateway import LM, default_model
    from delm_rlm.llm.health import EndpointHealth
    from delm_rlm.llm.local import LocalTransport
    from delm_rlm.llm.openai_compat import OpenAICompatTransport, served_models
    from delm_rlm.llm.prices import (
        Price, parse_price, price_for, price_from_env, register_context_window, register_price,
    )
    from delm_rlm.llm.roles import BUILTIN_ROLES, Role, register_role, role_names
    from delm_rlm.llm.scripted import ScriptedLM, ScriptedTransport, load_script
    from delm_rlm.llm.tokens import approx_message_tokens, approx_tokens
    from delm_rlm.llm.transport import ChatReply, ChatRequest, Slots, Transport
    from delm_rlm.llm.usage import Budget, CallFailure, Completion, Usage, UsageLedger


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'delm_rlm.llm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
