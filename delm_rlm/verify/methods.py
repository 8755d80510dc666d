"""Methods: code that computes a chunk's partial from `chunk` alone, shared by the team.

An agent that solved its chunk in code proposes that code as a METHOD. `MethodGate` admits it
only after running it in its own sandbox (the corpus and nothing of the proposer; a fresh
namespace per run, with the run's chunk variables and no host tools) on the proposer's chunk
and on at least one other chunk. Applying an admitted method to a chunk runs it the same way,
with no model call: the result is admitted as that chunk's PARTIAL, or the failure is
recorded as a FAILURE gist naming the method and the caller sends the chunk to an agent.

Rules (deterministic):
  M1 the code is not empty, at most MAX_CHECK_CHARS, valid Python, prints the chunk's value,
     and calls no model or team tool (classify, llm_query, propose, ...): a method needs no
     model, so it cannot be verified on a chunk the proposer never saw otherwise;
  M2 on its home chunk it prints the value the proposer claimed there (when one was claimed);
  M3 on the home chunk and on every trial chunk (the next chunk after home; for an amended
     method also a chunk the method it amends served) its value is not empty, has one shape
     across the runs, and agrees (verify.agreement: schema S1-S4 against the admitted
     partials, coverage C1 against that chunk's records);
  applying it, M3 holds for the target chunk (the shape is the method's) or it failed there.
Versions: an admitted method's version is one more than the highest admitted before it; an
amended method names the one it amends (`amends`); the old one stays admitted, and every
failure is a FAILURE gist naming it. The same code proposed again merges into the admitted
method. `combine` says how the finalizer combines the partials it produces: "sum" (counts key
by key, numbers), "concat" (lists), "max" or "min"; by default sum for counts and numbers,
concat for lists.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from delm_rlm import prompts
from delm_rlm.chunking import Chunk
from delm_rlm.errors import ConfigError
from delm_rlm.gists import CodeEvidence, Gist, GistKind, Provenance
from delm_rlm.state.context import SharedContext
from delm_rlm.trace import Trace
from delm_rlm.values import collapse_whitespace, parse_printed, values_equal
from delm_rlm.verify.agreement import AgreementRules, count_shape, describe_shape
from delm_rlm.verify.code_check import CHECK_TIMEOUT_SECONDS, CheckRun, CheckRunner, last_error_line
from delm_rlm.verify.empty_result import matched_nothing
from delm_rlm.literals import literal_hints
from delm_rlm.verify.form import MAX_CHECK_CHARS
from delm_rlm.verify.gate import MAX_OUTPUT_KEPT, failure_gist
from delm_rlm.verify.replay import AGENT_ONLY_NAMES
from delm_rlm.verify.verdict import Rejection, Verdict

if TYPE_CHECKING:
    from sandbox import Sandbox

COMBINE_STEPS = ("sum", "concat", "max", "min")
# Names a method may not call: they need the model or the proposer's REPL.
MODEL_TOOLS = AGENT_ONLY_NAMES | {"classify"}
TRIALS = 2  # other chunks a new method is run on before admission (at least one)


class MethodValue(BaseModel):
    """What a METHOD gist's value holds."""

    code: str
    combine: str | None = None
    version: int = Field(ge=1)
    shape: str | None = None  # "counts", "number", "list" or "text": what its runs print
    home: str  # the task whose chunk it was proposed on
    trials: list[str] = Field(default_factory=list)  # the other tasks it was run on
    amends: str | None = None  # the method gist it replaces


@dataclass(frozen=True)
class ChunkTarget:
    """A chunk task a method runs on: its id and its slice of the corpus."""

    task_id: str
    chunk: Chunk

    def check_vars(self) -> dict[str, Any]:
        return self.chunk.repl_variables()


def value_shape(value: Any) -> str:
    """A method result's shape: a count shape, else "list" or "text"."""
    return count_shape(value) or ("list" if isinstance(value, list) else "text")


def default_combine(shape: str) -> str | None:
    return {"counts": "sum", "number": "sum", "list": "concat"}.get(shape)


def printed_value(output: str) -> Any:
    """The value a method printed: the whole output as data, else its last non-empty line."""
    value = parse_printed(output)
    lines = [line for line in output.strip().splitlines() if line.strip()]
    if isinstance(value, str) and len(lines) > 1:
        return parse_printed(lines[-1])
    return value


def code_problem(code: str) -> str | None:
    """Why `code` cannot be a method (rule M1), or None."""
    if not code.strip():
        return "the method's code is empty"
    if len(code) > MAX_CHECK_CHARS:
        return f"the method's code is {len(code)} chars; the limit is {MAX_CHECK_CHARS}"
    try:
        tree = ast.parse(code)
    except SyntaxError as exc:
        return f"the method's code does not parse: {exc.msg} (line {exc.lineno})"
    used = sorted({n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in MODEL_TOOLS})
    if used:
        return prompts.METHOD_NEEDS_MODEL.format(names=", ".join(used))
    if not any(isinstance(n, ast.Name) and n.id == "print" for n in ast.walk(tree)):
        return "the method prints nothing: end it with print(value)"
    return None


class MethodRunner:
    """Methods run the way checks do (verify.code_check): each run in a fresh forked
    interpreter of a verifier sandbox that holds the corpus, so no run can see or change
    what another left. Runs take turns."""

    def __init__(self, sandbox_factory: Callable[[], Sandbox] | None, corpus_value: Any,
                 *, timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        if not timeout > 0:
            raise ConfigError(f"a method's timeout must be > 0 seconds, got {timeout!r}")
        self.timeout = timeout
        self.runs = 0
        self.checks = CheckRunner(sandbox_factory, corpus_value, timeout=timeout) if sandbox_factory else None

    async def close(self) -> None:
        if self.checks is not None:
            await self.checks.close()

    async def run(self, code: str, target: ChunkTarget) -> CheckRun:
        """Run `code` on `target`'s chunk; the sandbox's own failure raises a `Rejection`
        that records nothing (it says nothing about the method)."""
        if self.checks is None:
            raise Rejection("method", "this team has no sandbox to run methods in", record=False)
        try:
            real, _ = await self.checks.execute(code, target.check_vars(), counterfactual=False)
        except Rejection as exc:
            raise Rejection("method", exc.reason, record=exc.record) from exc
        self.runs += 1
        return real


class MethodGate:
    """Admits methods (M1-M3) and applies admitted ones to chunks (see the module doc)."""

    def __init__(self, context: SharedContext, docs: Sequence[str], *,
                 sandbox_factory: Callable[[], Sandbox] | None, corpus_value: Any = None,
                 agreement: AgreementRules | None = None, trace: Trace | None = None,
                 timeout: float = CHECK_TIMEOUT_SECONDS) -> None:
        self.context = context
        self.docs = list(docs)
        self.agreement = agreement
        self.trace = trace
        self.runner = MethodRunner(sandbox_factory, corpus_value if corpus_value is not None else self.docs,
                                   timeout=timeout)
        self.lock = asyncio.Lock()  # one admission at a time: versions stay unique

    async def close(self) -> None:
        await self.runner.close()

    def admitted(self) -> list[Gist]:
        """Admitted methods, newest version first."""
        found = self.context.admitted(kinds=GistKind.METHOD)
        return sorted(found, key=lambda g: (-int((g.value or {}).get("version", 0)), -int(str(g.id)[1:])))

    def latest(self) -> Gist | None:
        found = self.admitted()
        return found[0] if found else None

    # -- running ------------------------------------------------------------------------

    async def result_on(self, code: str, target: ChunkTarget, shape: str | None) -> tuple[Any, str]:
        """The value `code` prints on `target`'s chunk and the output; a `Rejection` saying
        why when it fails there (M3): an error, a timeout, no output, an empty value, another
        shape than `shape`, a value that does not agree."""
        result = await self.runner.run(code, target)
        output = result.output
        where = f"on {target.task_id}'s chunk:"
        if result.timed_out:
            raise Rejection("method", f"{where} it timed out after {self.runner.timeout:g} s", output=output)
        if result.ended or result.too_long:
            raise Rejection("method", f"{where} it {result.ended or 'printed too much'}", output=output)
        if result.error:
            raise Rejection("method", f"{where} it raised {last_error_line(result.error)}", output=output)
        if not output.strip():
            raise Rejection("method", f"{where} it printed nothing", output=output)
        value = printed_value(output)
        if matched_nothing(value):
            hints = literal_hints(code, target.chunk.text(self.docs))
            raise Rejection("method", f"{where} its result is {value!r}: it matched nothing there"
                            + (f". {hints}" if hints else ""), output=output)
        if shape is not None and value_shape(value) != shape:
            got = describe_shape(value) if count_shape(value) else f"a {value_shape(value)}"
            raise Rejection("method", f"{where} it gave {got}, not the {shape} it gives elsewhere", output=output)
        if self.agreement is not None:
            problem = self.agreement.problem(value, target.chunk.text(self.docs))
            if problem is not None:
                raise Rejection("method", f"{where} {problem}", output=output)
        return value, output

    # -- admission ----------------------------------------------------------------------

    async def propose(self, *, code: str, text: str, agent: str | None, home: ChunkTarget,
                      trials: Sequence[ChunkTarget], claimed: Any = None, combine: str | None = None,
                      amends: str | None = None) -> Verdict:
        """Admit `code` as a method after M1-M3, or reject it (a FAILURE gist records why)."""
        problem = code_problem(code)
        if problem is None and combine is not None and combine not in COMBINE_STEPS:
            problem = f"unknown combine step {combine!r}: use one of {', '.join(COMBINE_STEPS)}"
        trials = [t for t in trials if t.task_id != home.task_id]
        if problem is None and not trials:
            problem = "a method needs another chunk to be tried on, and this run has one chunk"
        provenance = Provenance(task_id=home.task_id, agent_id=agent, model=None)
        if problem is not None:
            self._emit("gist_rejected", agent, home.task_id, gist_id=None, reason=problem, failure_gist_id=None)
            return Verdict(status="rejected", reason=problem, stage="method", checks=["method"])
        async with self.lock:
            methods = self.admitted()
            same = next((g for g in methods
                         if collapse_whitespace(str((g.value or {}).get("code", ""))) == collapse_whitespace(code)), None)
            version = 1 + max((int((g.value or {}).get("version", 0)) for g in methods), default=0)
            evidence: list[CodeEvidence] = []
            shape: str | None = None
            failed: Rejection | None = None
            if same is None:
                try:
                    for target in [home, *trials]:
                        value, output = await self.result_on(code, target, shape)
                        if target is home and claimed is not None and not values_equal(value, claimed):
                            raise Rejection("method", prompts.METHOD_NOT_CLAIMED.format(
                                task=home.task_id, printed=collapse_whitespace(repr(value))[:120],
                                claimed=collapse_whitespace(repr(claimed))[:120]), output=output)
                        shape = shape or value_shape(value)
                        evidence.append(CodeEvidence(code=code, output=f"[{target.task_id}] {output}"[:MAX_OUTPUT_KEPT]))
                except Rejection as rej:
                    failed = rej
            summary = collapse_whitespace(text)[:160] or "computes a chunk's partial from chunk"
            spec = MethodValue(code=code, combine=combine or default_combine(shape or "text"), version=version,
                               shape=shape, home=home.task_id, trials=[t.task_id for t in trials], amends=amends)
            pending = self.context.add_pending(Gist(
                kind=GistKind.METHOD, text=f"method v{version} (from {home.task_id}): {summary}",
                value=spec.model_dump(), provenance=provenance,
            ))
            self._emit("gist_proposed", agent, home.task_id, gist=pending)
            if same is not None and same.id is not None:
                self.context.merge(str(pending.id), same.id)
                self._emit("gist_merged", agent, home.task_id, gist_id=pending.id, into=same.id)
                return Verdict(status="merged", id=pending.id, admitted_id=same.id,
                               reason=f"same code as {same.id}", checks=["method"])
            if failed is not None:
                return self._reject(pending, failed)
            ran = ", ".join([home.task_id, *spec.trials])
            note = f"method verified: run by the verifier on the chunks of {ran} (no model)"
            admitted = self.context.admit(str(pending.id), note=note, evidence=evidence)
        self._emit("gist_admitted", agent, home.task_id, gist_id=admitted.id, note=note, checks=["method"])
        return Verdict(status="admitted", id=admitted.id, admitted_id=admitted.id, reason=note, checks=["method"])

    def _reject(self, pending: Gist, rej: Rejection) -> Verdict:
        agent, task = pending.provenance.agent_id, pending.provenance.task_id
        failure = failure_gist(pending, rej) if rej.record else None
        _, recorded = self.context.reject(str(pending.id), rej.reason, failure=failure)
        failure_id = recorded.id if recorded is not None else None
        self._emit("gist_rejected", agent, task, gist_id=pending.id, reason=rej.reason, failure_gist_id=failure_id)
        return Verdict(status="rejected", id=pending.id, reason=rej.reason, stage="method", checks=["method"],
                       output=rej.output, failure_gist_id=failure_id)

    # -- application --------------------------------------------------------------------

    async def apply(self, method: Gist, target: ChunkTarget, agent: str | None) -> Verdict:
        """Run the admitted `method` on `target`'s chunk (no model): admit the value as the
        chunk's PARTIAL, or record the failure (a FAILURE gist naming the method)."""
        spec = MethodValue.model_validate(method.value)
        task = target.task_id
        try:
            value, output = await self.result_on(spec.code, target, spec.shape)
        except Rejection as rej:
            failure_id: str | None = None
            if rej.record:
                text = f"method {method.id} (v{spec.version}) failed {rej.reason}"
                recorded = self.context.record(Gist(
                    kind=GistKind.FAILURE, text=text[:300],
                    summary=f"{text}\nMethod code:\n{spec.code}"[:4000],
                    evidence=[CodeEvidence(code=spec.code, output=(rej.output or "")[:MAX_OUTPUT_KEPT])],
                    provenance=Provenance(task_id=task, agent_id="verifier"),
                ), note=f"failure of {method.id}")
                failure_id = recorded.id
            self._emit("method_failed", agent, task, method_id=method.id, version=spec.version, reason=rej.reason,
                       failure_gist_id=failure_id)
            return Verdict(status="rejected", reason=rej.reason, stage="method", checks=["method"],
                           output=rej.output, failure_gist_id=failure_id)
        shown = collapse_whitespace(repr(value))
        shown = shown if len(shown) <= 200 else shown[:197] + "..."
        pending = self.context.add_pending(Gist(
            kind=GistKind.PARTIAL, text=f"{task}: {shown} (method {method.id} v{spec.version})",
            value=value, check=spec.code, provenance=Provenance(task_id=task, agent_id=agent, model=None),
        ))
        self._emit("gist_proposed", agent, task, gist=pending)
        duplicate = self.context.find_duplicate(pending)
        if duplicate is not None and duplicate.id is not None:
            self.context.merge(str(pending.id), duplicate.id)
            self._emit("gist_merged", agent, task, gist_id=pending.id, into=duplicate.id)
            admitted_id = duplicate.id
        else:
            note = f"computed by method {method.id} v{spec.version}, run by the verifier on {task}'s chunk (no model)"
            admitted = self.context.admit(str(pending.id), note=note,
                                          evidence=[CodeEvidence(code=spec.code, output=output[:MAX_OUTPUT_KEPT])])
            admitted_id = str(admitted.id)
            self._emit("gist_admitted", agent, task, gist_id=admitted_id, note=note, checks=["method"])
        self._emit("method_applied", agent, task, method_id=method.id, version=spec.version, gist_id=admitted_id)
        return Verdict(status="admitted", id=pending.id, admitted_id=admitted_id,
                       reason=f"method {method.id} v{spec.version}", checks=["method"], output=output)

    def _emit(self, kind: str, agent: str | None, task: str | None, **data: Any) -> None:
        if self.trace is not None:
            self.trace.emit(kind, agent=agent, task=task, **data)
