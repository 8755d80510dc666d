"""The roles a model call can be made in: an open registry.

A role names who is asking ("root" agent, "sub" call, "verifier" judge, "finalizer"); usage
is counted per role, and `LM(routes={role: ...})` sends a role to another model. A new
kind of caller registers its role once (`register_role("planner", "plans the tasks")`) and
can then be routed and counted like the built-in ones; the gateway needs no edit.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from delm_rlm.errors import ConfigError, LMError


@dataclass(frozen=True)
class Role:
    name: str
    description: str = ""


_lock = threading.Lock()
_roles: dict[str, Role] = {}


def register_role(name: str, description: str = "") -> Role:
    """Make `name` a role for `LM.complete(role=...)` and `LM(routes=...)`, process-wide.
    Registering a name again keeps it (and takes the new description when one is given)."""
    if not isinstance(name, str) or not name.strip() or name != name.strip():
        raise ConfigError(f"a role name must be a non-empty string without surrounding spaces, got {name!r}")
    with _lock:
        known = _roles.get(name)
        if known is None or (description and description != known.description):
            known = _roles[name] = Role(name, description)
        return known


def role_names() -> tuple[str, ...]:
    """Every registered role, built-in ones first, in the order they were registered."""
    with _lock:
        return tuple(_roles)


def is_role(name: str) -> bool:
    with _lock:
        return name in _roles


def check_role(name: str, where: str = "") -> None:
    """Raise LMError naming the registered roles unless `name` is one of them."""
    if not is_role(name):
        raise LMError(
            f"{where}unknown role {name!r}; roles are {', '.join(role_names())} "
            "(register a new one with delm_rlm.llm.register_role)"
        )


register_role("root", "the agent answering the question (an RLM's or a team agent's own turns)")
register_role("sub", "sub-calls an agent makes from its REPL (llm_query, classify)")
register_role("verifier", "the model judge admitting claims no code can check")
register_role("finalizer", "the agent combining verified values into the answer")

BUILTIN_ROLES: tuple[str, ...] = ("root", "sub", "verifier", "finalizer")

__all__ = ["BUILTIN_ROLES", "Role", "check_role", "is_role", "register_role", "role_names"]
