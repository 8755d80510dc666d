"""delm-rlm: teams of recursive language-model agents sharing only verified progress.

    from delm_rlm import LM, Team
    result = Team(LM("local"), agents=4).run_sync("How many ...?", docs)

Names are imported lazily (PEP 562): `import delm_rlm` stays cheap (no pandas, no kernel
client) until a name is used, which keeps the CLI's start fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS: dict[str, str] = {
    "LM": "delm_rlm.llm.gateway",
    "Budget": "delm_rlm.llm.usage",
    "BudgetExceeded": "delm_rlm.errors",
    "LMError": "delm_rlm.errors",
    "DelmError": "delm_rlm.errors",
    "Usage": "delm_rlm.llm.usage",
    "ScriptedLM": "delm_rlm.llm.scripted",
    "RLM": "delm_rlm.rlm",
    "Result": "delm_rlm.result",
    "Team": "delm_rlm.team",
    "Trace": "delm_rlm.trace",
    "Gist": "delm_rlm.gists",
    "GistKind": "delm_rlm.gists",
    "RunStore": "delm_rlm.state.sqlite",
    "TaskQueue": "delm_rlm.state.queue",
    "SharedContext": "delm_rlm.state.context",
    "Verifier": "delm_rlm.verify",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time names load on first use
    from delm_rlm.state.context import SharedContext
    from delm_rlm.gists import Gist, GistKind
    from delm_rlm.errors import BudgetExceeded, DelmError, LMError
    from delm_rlm.llm.gateway import LM
    from delm_rlm.llm.usage import Budget, Usage
    from delm_rlm.state.queue import TaskQueue
    from delm_rlm.result import Result
    from delm_rlm.rlm import RLM
    from delm_rlm.llm.scripted import ScriptedLM
    from delm_rlm.state.sqlite import RunStore
    from delm_rlm.team import Team
    from delm_rlm.trace import Trace
    from delm_rlm.verify import Verifier


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'delm_rlm' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
