"""Every error the library raises, under one base: `except DelmError` catches them all.

Each class keeps the builtin it used to be as a second base (`CorpusError` is still a
`ValueError`), so code written against the builtin keeps working. Messages say what was
wrong and what to do about it. This module imports nothing of the library: every layer,
from the sandbox to the CLI, may raise these.
"""

from __future__ import annotations

from pathlib import Path


class DelmError(Exception):
    """Base of every delm-rlm error."""


class ConfigError(DelmError, ValueError):
    """A setting or argument a caller passed cannot be used; the message names the fix."""


class RunStateError(DelmError, RuntimeError):
    """An operation does not fit the state it was asked in (a run already held by another
    process, a sync call inside an event loop, a tool used after its round)."""


# -- model calls --------------------------------------------------------------------------


class BudgetExceeded(DelmError):
    """A budget no longer allows a call. Agents set `partial_answer` (their best answer so
    far) before re-raising or reporting."""

    def __init__(self, limit: str, used: float, allowed: float, partial_answer: str | None = None) -> None:
        self.limit = limit  # "usd" | "tokens" | "seconds" | "calls"
        self.used = used
        self.allowed = allowed
        self.partial_answer = partial_answer
        super().__init__(f"budget exceeded: {limit} used {used:g} of {allowed:g} allowed")


class LMError(DelmError):
    """A model call failed for good: endpoint unreachable, key rejected, bad request, retries
    exhausted. The message says what to do."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class LocalModelUnavailable(LMError, ImportError):
    """The local model cannot be used here (extra not installed, parts missing or corrupt)."""


class EndpointFailing(LMError):
    """An endpoint failed so many calls in a row that the gateway stopped sending it more
    (`LM(max_consecutive_failures=...)`); the message names the endpoint and its last error.
    A caller that retries failed calls should stop here: every further call fails the same."""


class PriceUnknown(LMError, ConfigError):
    """A dollar budget was asked for a model whose price is unknown; the message says how to
    give the price (per LM, `DELM_RLM_PRICE`, `--price`, or `register_price`)."""


# -- input --------------------------------------------------------------------------------


class CorpusError(DelmError, ValueError):
    """A user's input cannot become a corpus; the message says what to do instead."""


class DatasetError(DelmError, ValueError):
    """A bad row or file: says which file, which row (1-based) and which field, and the fix."""

    def __init__(self, file: str | Path | None, row: int | None, field: str | None, problem: str) -> None:
        self.file = str(file) if file is not None else None
        self.row = row
        self.field = field
        self.problem = problem
        where = [self.file or "<rows>"]
        if row is not None:
            where.append(f"row {row}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__(f"{': '.join(where)}: {problem}")


class ScoringError(DelmError, ValueError):
    """A gold answer that cannot be parsed (a data problem, not a model error)."""


# -- a run's state ------------------------------------------------------------------------


class StoreError(DelmError):
    """The store is not usable (wrong format, newer schema, locked too long, unreachable)."""


class NotFound(DelmError, LookupError):
    """No gist / task with that id in this run."""

    def __str__(self) -> str:  # LookupError would show the message in quotes
        return str(self.args[0]) if self.args else "not found"


class LeaseLost(DelmError):
    """The agent no longer holds the task's lease (reclaimed by another agent, or the task
    left CLAIMED). Drop the work on this task; do not retry the call."""

    def __init__(self, task_id: str, agent_id: str, detail: str) -> None:
        super().__init__(f"agent {agent_id} no longer holds task {task_id}: {detail}")
        self.task_id = task_id
        self.agent_id = agent_id


class RunNotFound(DelmError, FileNotFoundError):
    """The path names no run (no trace and no store); the message says what was looked for."""


# -- sandboxes ----------------------------------------------------------------------------


class SandboxError(DelmError, RuntimeError):
    """The sandbox itself failed (could not start, lost its kernel, misused)."""


class BridgeError(DelmError):
    """A host function called through the bridge failed, or the call was refused."""


# -- the command line ---------------------------------------------------------------------


class CLIError(DelmError):
    """An error a person can act on: printed as one line, exit code `code`."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code
