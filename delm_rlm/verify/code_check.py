"""The code stage: a gist's `check` (and any code it gives as evidence) runs in the
verifier's own sandbox, in a fresh interpreter, and must print the claimed value, and only it.

That sandbox holds the corpus and nothing of the proposer. Every check runs in a child
process forked from the warm verifier kernel (`verify.check_process`), with `context`,
`docs`, `df`, the task's slice (`chunk`, `chunk_doc`, `chunk_start`, `chunk_end` when the
team passes them) and the replayed host tools: whatever a check changes dies with its
child, so no check can see or change what another left. Checks take turns on the kernel.

What a check must do to pass (each rule is a rejection the agent can act on):

- finish within the timeout, print at most `MAX_CHECK_OUTPUT` characters, not crash;
- print exactly the value: the WHOLE printed output must state it (`values.compare_printed`);
  progress lines before the value are rejected with that reason;
- depend on the data it claims about: the same code is also run on the counterfactual
  input, the corpus emptied (`chunk`, `context` = "", `docs` = [], `df` with no rows, the
  slice at 0). Its output must change there (an error there counts as a change), unless the
  value itself says "nothing found" (0, {}, [], "", a dict of zeros, ...: `values.is_nothing`),
  the one value a check that reads its data shares with the empty input. So `print(42)`, a
  typed-in answer and a value left by an earlier check are rejected, while an honest count
  of 0 is not. What this cannot catch: code written to recognise the real input and print a
  chosen value on it (`print(42 if chunk else 0)`); a code check proves that the code prints
  the value from the data, not that it asks the right question.

Numbers compare by the verifier's rule, never the proposer's: ints exactly, floats within
`float_tolerance` relative. The team's replay of an agent's cells (`answer_replay_check`)
has the agent's own prints discarded, so the whole output is the answer it set.

A verifier kernel that dies, or a cell that does not come back, costs the verifier its
sandbox: a new one is built for the next check (a new workspace too, so nothing a check
wrote there is read by a restarted kernel).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.chunking import CHUNK_SETUP_CODE
from delm_rlm.errors import ConfigError, SandboxError
from delm_rlm.gists import CodeEvidence, Gist
from delm_rlm.values import (
    collapse_whitespace,
    compare_printed,
    is_nothing,
    parse_printed,
    states_value,
)
from delm_rlm.verify.check_process import MARKER, install_code
from delm_rlm.literals import literal_hints
from delm_rlm.verify.verdict import Rejection, VerificationStats

if TYPE_CHECKING:
    from sandbox import Sandbox

CHECK_TIMEOUT_SECONDS = 30.0
FLOAT_TOLERANCE = 1e-6  # relative, for floats only; ints compare exactly
MAX_CHECK_OUTPUT = 200_000  # characters a check may print; a value is at most 20,000 of JSON
CELL_MARGIN_SECONDS = 15.0  # the kernel's own work around a check's two runs

# The team's replay of an agent's cells: this first and this last line around the cells.
ANSWER_REPLAY_HEAD = 'answer = {"content": None, "ready": False}'
ANSWER_REPLAY_TAIL = 'print(answer["content"])'


def answer_replay_check(cells: Sequence[str]) -> str:
    """A check that replays an agent's `cells` and prints the answer they set. The cells'
    own prints are discarded when it runs, so its whole output is the answer."""
    return "\n".join([ANSWER_REPLAY_HEAD, *cells, ANSWER_REPLAY_TAIL])


def check_parts(check: str) -> list[str]:
    """The check as the kernel runs it: one part, or (head, cells, tail) for an answer
    replay, whose middle part runs with its prints discarded."""
    lines = check.strip("\n").split("\n")
    if len(lines) >= 3 and lines[0] == ANSWER_REPLAY_HEAD and lines[-1] == ANSWER_REPLAY_TAIL:
        return [lines[0], "\n".join(lines[1:-1]), lines[-1]]
    return [check]


def last_error_line(error: str) -> str:
    """The first line of an error ("Type: message", which names the cause), collapsed."""
    lines = [line for line in error.strip().splitlines() if line.strip()]
    return collapse_whitespace(lines[0] if lines else error)[:240]


@dataclass(frozen=True)
class CheckRun:
    """How one run of a check's code ended, as its forked interpreter reported it."""

    output: str
    error: str | None = None  # "Type: message" raised by the code
    line: int | None = None  # where, in the code
    timed_out: bool = False
    too_long: bool = False
    ended: str | None = None  # the interpreter ended without a result ("exit code 1", ...)

    @property
    def ok(self) -> bool:
        return not (self.error or self.timed_out or self.too_long or self.ended)

    @classmethod
    def from_report(cls, report: Any) -> CheckRun:
        if not isinstance(report, dict) or not isinstance(report.get("out"), str):
            raise ValueError(f"malformed check report: {str(report)[:200]}")
        return cls(
            output=report["out"],
            error=report.get("error") if isinstance(report.get("error"), str) else None,
            line=report.get("line") if isinstance(report.get("line"), int) else None,
            timed_out=report.get("timed_out") is True,
            too_long=report.get("too_long") is True,
            ended=report.get("ended") if isinstance(report.get("ended"), str) else None,
        )


class CheckRunner:
    """The verifier's own sandbox, started on the first check, and the checks run in it.

    `sandbox_factory` builds the sandbox (None: every check is rejected, unrecorded, with a
    hint to use quotes); `corpus_value` is what it loads (the value the agents' sandboxes
    load, so `context`, `docs` and `df` mean the same in a check as in the agent's REPL);
    `replay_tools` are host functions a check may call, answering from what the agents'
    calls recorded (e.g. classify -> ClassificationLog.replay): deterministic, no model
    calls; `float_tolerance` the relative slack for floats. `stats.kernel_restarts` counts
    check interpreters lost to a timeout or crash, and verifier sandboxes rebuilt."""

    def __init__(
        self,
        sandbox_factory: Callable[[], Sandbox] | None,
        corpus_value: Any,
        *,
        timeout: float = CHECK_TIMEOUT_SECONDS,
        replay_tools: Mapping[str, Callable[..., Any]] | None = None,
        stats: VerificationStats | None = None,
        float_tolerance: float = FLOAT_TOLERANCE,
    ) -> None:
        if not timeout > 0:
            raise ConfigError(f"check_timeout must be > 0 seconds, got {timeout!r}")
        if not 0 <= float_tolerance < 1:
            raise ConfigError(f"float_tolerance must be a relative slack in [0, 1), got {float_tolerance!r}")
        self.sandbox_factory = sandbox_factory
        self.corpus_value = corpus_value
        self.timeout = timeout
        self.float_tolerance = float(float_tolerance)
        self.replay_tools = dict(replay_tools or {})
        self.stats = stats if stats is not None else VerificationStats()
        self._sandbox: Sandbox | None = None
        self._lock = asyncio.Lock()

    @property
    def sandbox(self) -> Sandbox | None:
        """The running verifier sandbox, if one is started."""
        return self._sandbox

    async def close(self) -> None:
        if self._sandbox is not None:
            sb, self._sandbox = self._sandbox, None
            await sb.close()

    async def _discard(self) -> None:
        broken, self._sandbox = self._sandbox, None
        self.stats.kernel_restarts += 1
        if broken is not None:
            try:
                await broken.close()
            except Exception:
                pass

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
            try:
                await sb.start()
                await sb.load_context(self.corpus_value)
                installed = await sb.execute(install_code(), timeout=120.0)
                if not installed.ok:
                    raise SandboxError(f"the check runner did not install in the verifier's sandbox: {installed.error}")
            except BaseException:
                try:
                    await sb.close()
                except Exception:
                    pass
                raise
            self._sandbox = sb
        return self._sandbox

    # -- running code ---------------------------------------------------------------------

    async def execute(
        self, code: str, check_vars: Mapping[str, Any], *, counterfactual: bool = True
    ) -> tuple[CheckRun, CheckRun | None]:
        """Run `code` in a fresh interpreter, and (beside it, in another) on the
        counterfactual empty input; the second result comes back when the first run
        succeeded. Raises a `Rejection` when the check broke the verifier's kernel, or
        (unrecorded) when the verifier's sandbox failed."""
        request = json.dumps({
            "parts": check_parts(code), "vars": dict(check_vars), "tools": sorted(self.replay_tools),
            "timeout": self.timeout, "cap": MAX_CHECK_OUTPUT, "counterfactual": counterfactual,
            "chunk_setup": CHUNK_SETUP_CODE,
        })
        cell = f"__import__('_delm_checks').run({request!r})"
        async with self._lock:
            try:
                sb = await self._ensure_sandbox()
                result = await sb.execute(cell, timeout=2 * self.timeout + CELL_MARGIN_SECONDS)
            except Rejection:
                raise
            except Exception as exc:
                await self._discard()
                raise Rejection(
                    "code", f"the verifier's sandbox failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "propose again later", record=False,
                ) from exc
            if result.restarted or result.timed_out or not result.ok:
                # The kernel itself was hit (killed, stopped, signalled): only a check can do
                # that, and whatever it did there must not reach the next check.
                await self._discard()
                raise Rejection(
                    "code",
                    "the check broke the verifier's REPL (it killed, stopped or signalled the "
                    "process that runs checks): compute the value and print it, nothing else",
                )
            report = next(
                (line[len(MARKER):] for line in reversed(result.stdout.splitlines()) if line.startswith(MARKER)),
                None,
            )
            try:
                parsed = json.loads(report) if report is not None else None
                if isinstance(parsed, dict) and isinstance(parsed.get("failed"), str):
                    raise ValueError(parsed["failed"])
                real = CheckRun.from_report(parsed["real"] if isinstance(parsed, dict) else None)
                empty = None if parsed.get("empty") is None else CheckRun.from_report(parsed["empty"])
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                await self._discard()
                raise Rejection(
                    "code", f"the verifier's sandbox gave no check result ({exc}); propose again later",
                    record=False,
                ) from exc
        if real.timed_out or real.ended:
            self.stats.kernel_restarts += 1  # that check's interpreter was killed or lost
        return real, empty

    def _require_success(self, run: CheckRun, what: str) -> None:
        output = run.output
        if run.timed_out:
            raise Rejection("code", f"{what} timed out after {self.timeout:g} s: make it faster", output=output)
        if run.too_long:
            raise Rejection(
                "code", f"{what} printed more than {MAX_CHECK_OUTPUT:,} characters: print only the value",
                output=output[:2000],
            )
        if run.ended:
            raise Rejection("code", f"{what} crashed its interpreter ({run.ended}) before finishing", output=output)
        if run.error:
            hint = ""
            if run.error.startswith("NameError"):
                replayed = "".join(f", {name}" for name in sorted(self.replay_tools))
                hint = f" ({prompts.VERIFY_FRESH_REPL.format(replayed=replayed)})"
            where = f" (line {run.line})" if run.line else ""
            raise Rejection("code", f"{what} failed: {last_error_line(run.error)}{where}{hint}", output=output)
        if not output.strip():
            raise Rejection("code", f"{what} printed nothing: end it with print(value)", output=output)

    def _require_dependence(
        self, real: CheckRun, empty: CheckRun | None, what: str, code: str,
        source: str | None, labels: Collection[str],
    ) -> None:
        """The output must change on the empty counterfactual, unless it is a "nothing
        found" value (see the module docstring). The rejection names the text the code looks
        for that `source` lacks (`delm_rlm.literals`): the usual reason an output ignores the data."""
        if empty is None or not empty.ok:
            return  # it failed or stopped on the empty input: it reads the data
        same = collapse_whitespace(empty.output) == collapse_whitespace(real.output) or states_value(
            parse_printed(real.output), empty.output
        )
        if not same or is_nothing(parse_printed(real.output)):
            return
        shown = collapse_whitespace(real.output)[:80]
        hints = literal_hints(code, source, labels)
        raise Rejection(
            "code",
            f"{what} prints the same ({shown!r}) when chunk, docs, context and df are empty: its "
            "output does not come from the data. Compute the value from chunk (or docs, df) in "
            "the code and print it" + (f". {hints}" if hints else ""),
            output=real.output,
        )

    async def run(
        self, gist: Gist, check_vars: Mapping[str, Any], *, source: str | None = None,
        labels: Collection[str] = (),
    ) -> str:
        """Run `gist.check` and return what it printed; raise a `Rejection` when it fails,
        times out, crashes, prints nothing, prints something other than exactly
        `gist.value`, or prints the same on the empty counterfactual. `source` (the text the
        check reads) and `labels` (names `classify` gives) only shape that last reason."""
        if gist.check is None:
            raise ConfigError(f"gist {gist.id} has no check to run: only a gist with a check has a code stage")
        # A "nothing found" claim needs no counterfactual: the empty input gives it too.
        real, empty = await self.execute(gist.check, check_vars, counterfactual=not is_nothing(gist.value))
        self._require_success(real, "check")
        output = real.output
        match, _ = compare_printed(gist.value, output, 0.0, self.float_tolerance)
        if not match:
            lines = [line for line in output.splitlines() if line.strip()]
            if len(lines) > 1:
                reason = (
                    f"the check printed {len(lines)} lines ({collapse_whitespace(output)[:80]!r}): "
                    f"print exactly the value {gist.value!r}, once, and nothing else"
                )
            else:
                reason = f"claimed value {gist.value!r} but the check printed {collapse_whitespace(output)[:120]!r}"
            raise Rejection("code", reason, output=output)
        self._require_dependence(real, empty, "the check", gist.check, source, labels)
        return output

    async def rerun_evidence(self, evidence: CodeEvidence, check_vars: Mapping[str, Any]) -> CodeEvidence:
        """Run code given as evidence like a check; the evidence kept is the verifier's
        output, never the proposer's. Given output that differs is a rejection."""
        real, empty = await self.execute(evidence.code, check_vars)
        self._require_success(real, "evidence code")
        given = collapse_whitespace(evidence.output)
        if given and given != collapse_whitespace(real.output):
            raise Rejection(
                "code",
                f"evidence code printed {collapse_whitespace(real.output)[:80]!r}, not the output given "
                f"({given[:80]!r}): give the code, the verifier runs it and keeps what it prints",
                output=real.output,
            )
        self._require_dependence(real, empty, "evidence code", evidence.code, None, ())
        return CodeEvidence(code=evidence.code, output=real.output)
