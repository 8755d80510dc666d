"""The code stage: a gist's `check` runs in the verifier's own sandbox and must print the
claimed value.

That sandbox holds the corpus and nothing of the proposer. Each check runs in a fresh
namespace (`context`, a fresh list `docs`, a copy of `df`, a fresh builtins dict, plus the
task's slice variables (`chunk`, `chunk_doc`, ... `chunk_df`, rebuilt by chunking's
CHUNK_SETUP_CODE) when the team passes them, and the replayed host tools), so checks cannot
see each other's variables; a check that errors, times out or crashes the kernel gets the kernel restarted before the next one
(its state may be half-changed). Reusing one kernel between checks keeps a check at a few
milliseconds instead of ~0.5 s. Checks take turns on that kernel.

The printed output must state the claimed value (`delm_rlm.values.compare_printed`)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.chunking import CHUNK_SETUP_CODE
from delm_rlm.errors import ConfigError
from delm_rlm.gists import Gist
from delm_rlm.values import collapse_whitespace, compare_printed
from delm_rlm.verify.verdict import Rejection, VerificationStats

if TYPE_CHECKING:
    from sandbox import Sandbox

CHECK_TIMEOUT_SECONDS = 30.0

# Sent to the verifier kernel with every check, so a restart never loses it. The check gets
# copies of the corpus containers and its own builtins dict: a check cannot leave state for
# the next one through its globals, `docs.append(...)`, `df.drop(..., inplace=True)` or
# `__builtins__`.
CHECK_RUNNER = f"__delm_chunk_setup = {CHUNK_SETUP_CODE!r}\n" + '''
def __delm_check(__code, __vars):
    import builtins as __b
    __ns = {"__name__": "__check__", "__builtins__": dict(__b.__dict__)}
    __g = globals()
    if "context" in __g: __ns["context"] = __g["context"]
    if "docs" in __g: __ns["docs"] = list(__g["docs"])
    if "df" in __g: __ns["df"] = __g["df"].copy()
    for __t in __vars.pop("__replay_tools", []):
        if __t in __g: __ns[__t] = __g[__t]
    if "chunk_doc" in __vars:
        __ns.update({"chunk_doc_end": __vars["chunk_doc"], "chunk_rows": False, **__vars})
        exec(__delm_chunk_setup, __ns)
    elif "context" in __ns:
        __ns["chunk"] = __ns["context"]
    __ns.update(__vars)
    exec(compile(__code, "<check>", "exec"), __ns)
'''


def check_cell(check: str, check_vars: Mapping[str, Any], replay_tools: list[str]) -> str:
    """The cell that runs `check` in a fresh namespace holding `check_vars` (JSON values)
    and the replayed host tools named in `replay_tools`."""
    variables = {**check_vars, "__replay_tools": replay_tools}
    return f"{CHECK_RUNNER}\n__delm_check({check!r}, __import__('json').loads({json.dumps(variables)!r}))"


def last_error_line(error: str) -> str:
    """The first line of a kernel error ("Type: message", which names the cause), collapsed."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return collapse_whitespace(lines[0] if lines else error)[:240]


class CheckRunner:
    """The verifier's own sandbox, started on the first check, and the checks run in it.

    `sandbox_factory` builds the sandbox (None: every check is rejected, unrecorded, with a
    hint to use quotes); `corpus_value` is what it loads (the value the agents' sandboxes
    load, so `context`, `docs` and `df` mean the same in a check as in the agent's REPL);
    `replay_tools` are host functions a check may call, answering from what the agents'
    calls recorded (e.g. classify -> ClassificationLog.replay): deterministic, no model
    calls. Kernel restarts are counted in `stats`."""

    def __init__(
        self,
        sandbox_factory: Callable[[], Sandbox] | None,
        corpus_value: Any,
        *,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        replay_tools: Mapping[str, Callable[..., Any]] | None = None,
        stats: VerificationStats | None = None,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"check_timeout must be > 0 seconds, got {timeout!r}")
        self.sandbox_factory = sandbox_factory
        self.corpus_value = corpus_value
        self.timeout = timeout
        self.replay_tools = dict(replay_tools or {})
        self.stats = stats if stats is not None else VerificationStats()
        self._sandbox: Sandbox | None = None
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        if self._sandbox is not None:
            sb, self._sandbox = self._sandbox, None
            await sb.close()

    async def _ensure_sandbox(self) -> Sandbox:
        if self._sandbox is None:
            if self.sandbox_factory is None:
                raise Rejection(
                    "code",
                    "this verifier has no sandbox for code checks; propose the claim "
                    "with quotes instead",
                    record=False,
                )
            sb = self.sandbox_factory()
            for name, fn in self.replay_tools.items():
                sb.register(name, fn)
            await sb.start()
            await sb.load_context(self.corpus_value)
            self._sandbox = sb
        return self._sandbox

    async def run(self, gist: Gist, check_vars: Mapping[str, Any]) -> str:
        """Run `gist.check` and return what it printed; raise a `Rejection` when it fails,
        times out, crashes the kernel, prints nothing or prints something other than
        `gist.value` (within `gist.tolerance`)."""
        if gist.check is None:
            raise ConfigError(f"gist {gist.id} has no check to run: only a gist with a check has a code stage")
        code = check_cell(gist.check, check_vars, sorted(self.replay_tools))
        async with self._lock:
            try:
                sb = await self._ensure_sandbox()
                result = await sb.execute(code, timeout=self.timeout)
                if not result.ok or result.restarted:
                    # State may be half-changed (or the kernel is new): start the next check clean.
                    if not result.restarted:
                        await sb.restart()
                    self.stats.kernel_restarts += 1
            except Rejection:
                raise
            except Exception as exc:
                # The verifier's own sandbox failed: not the claim's fault, so no FAILURE gist;
                # drop the sandbox so the next check starts a new one.
                broken, self._sandbox = self._sandbox, None
                if broken is not None:
                    try:
                        await broken.close()
                    except Exception:
                        pass
                raise Rejection(
                    "code", f"the verifier's sandbox failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "propose again later", record=False,
                ) from exc
        output = result.stdout
        if result.timed_out:
            raise Rejection("code", f"check timed out after {self.timeout:g} s: make it faster", output=output)
        if result.restarted:
            raise Rejection("code", "check crashed the verifier's REPL", output=output)
        if result.error:
            hint = ""
            if result.error.startswith("NameError"):
                replayed = "".join(f", {name}" for name in sorted(self.replay_tools))
                hint = f" ({prompts.VERIFY_FRESH_REPL.format(replayed=replayed)})"
            raise Rejection("code", f"check failed: {last_error_line(result.error)}{hint}", output=output)
        if not output.strip():
            raise Rejection("code", "check printed nothing: end it with print(value)", output=output)
        match, _ = compare_printed(gist.value, output, gist.tolerance)
        if not match:
            tol = f" (tolerance {gist.tolerance:g})" if gist.tolerance else ""
            raise Rejection(
                "code",
                f"claimed value {gist.value!r} but the check printed {collapse_whitespace(output)[:120]!r}{tol}",
                output=output,
            )
        return output
