"""Stateful Python REPLs behind one protocol: a local isolated kernel and an E2B cloud sandbox.

``make_sandbox("local")`` -> ``KernelSandbox`` (default), ``make_sandbox("e2b")`` -> ``E2BSandbox``.
Whatever takes a sandbox setting (an agent, a team, a method) accepts a `SandboxSpec`: a kind
from `SANDBOX_KINDS` or a zero-argument factory; `check_sandbox_spec` checks one and
`sandbox_factory` turns one into a factory, so the rule and its messages live here only.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from delm_rlm.errors import ConfigError
from sandbox.base import ExecResult, Sandbox, SandboxError
from sandbox.bridge import BridgeError
from sandbox.e2b import E2BSandbox
from sandbox.kernel import KernelSandbox

__all__ = [
    "KINDS",
    "SANDBOX_KINDS",
    "BridgeError",
    "E2BSandbox",
    "ExecResult",
    "KernelSandbox",
    "Sandbox",
    "SandboxError",
    "SandboxFactory",
    "SandboxSpec",
    "check_kind",
    "check_sandbox_spec",
    "make_sandbox",
    "sandbox_factory",
]

SANDBOX_KINDS: tuple[str, ...] = ("local", "e2b")
KINDS = SANDBOX_KINDS  # the name this tuple had first

SandboxFactory = Callable[[], Sandbox]
SandboxSpec = str | SandboxFactory


def check_kind(kind: str) -> str:
    """``kind`` when it names a sandbox backend; else a ConfigError naming the kinds."""
    if kind not in SANDBOX_KINDS:
        raise ConfigError(f"unknown sandbox kind {kind!r}; use one of {', '.join(SANDBOX_KINDS)}")
    return kind


def check_sandbox_spec(spec: object) -> SandboxSpec:
    """``spec`` when it is a sandbox kind or a zero-argument factory. An unknown kind is a
    ConfigError (a ValueError); anything else neither a str nor callable is a TypeError."""
    kinds = ", ".join(repr(k) for k in SANDBOX_KINDS)
    if isinstance(spec, str):
        if spec not in SANDBOX_KINDS:
            raise ConfigError(f"sandbox must be {kinds} or a zero-argument factory returning a Sandbox; got {spec!r}")
        return spec
    if not callable(spec):
        raise TypeError(f"sandbox must be {kinds} or a zero-argument factory returning a Sandbox; got {type(spec).__name__}")
    return spec  # type: ignore[return-value]


def make_sandbox(kind: str = "local", **kwargs: Any) -> Sandbox:
    """A sandbox of ``kind`` ("local" or "e2b"), not yet started; kwargs go to its constructor."""
    if check_kind(kind) == "e2b":
        return E2BSandbox(**kwargs)
    return KernelSandbox(**kwargs)


def sandbox_factory(spec: SandboxSpec, *, isolation: str | None = None) -> SandboxFactory:
    """A zero-argument callable giving a new, unstarted sandbox per call: the factory itself,
    or `make_sandbox(kind)` for a kind. `isolation` (auto, bubblewrap, unshare, none) applies
    to the local kernel; a factory decides its own."""
    checked = check_sandbox_spec(spec)
    if isinstance(checked, str):
        if checked == "local" and isolation is not None:
            return partial(make_sandbox, checked, isolation=isolation)
        return partial(make_sandbox, checked)
    return checked
