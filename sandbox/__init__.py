"""Stateful Python REPLs behind one protocol: a local isolated kernel and an E2B cloud sandbox.

``make_sandbox("local")`` -> ``KernelSandbox`` (default), ``make_sandbox("e2b")`` -> ``E2BSandbox``.
"""

from __future__ import annotations

from typing import Any

from sandbox.base import ExecResult, Sandbox, SandboxError
from sandbox.bridge import BridgeError
from sandbox.e2b import E2BSandbox
from sandbox.kernel import KernelSandbox

__all__ = [
    "BridgeError",
    "E2BSandbox",
    "ExecResult",
    "KernelSandbox",
    "Sandbox",
    "SandboxError",
    "make_sandbox",
]

KINDS = ("local", "e2b")


def make_sandbox(kind: str = "local", **kwargs: Any) -> Sandbox:
    """A sandbox of ``kind`` ("local" or "e2b"), not yet started; kwargs go to its constructor."""
    if kind == "local":
        return KernelSandbox(**kwargs)
    if kind == "e2b":
        return E2BSandbox(**kwargs)
    raise ValueError(f"unknown sandbox kind {kind!r}; use one of {', '.join(KINDS)}")
