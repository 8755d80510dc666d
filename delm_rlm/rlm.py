"""The RLM agent: a model answers a question over a long context by writing code in a REPL.

The context lives in a sandboxed Python REPL (`context`, `docs`, `df`); the model's prompt only
describes it. Each reply's ```repl blocks run in the sandbox and the model sees their output,
cut to head and tail. Inside the REPL the model can call `llm_query`, `llm_query_batched`,
`rlm_query` (a child RLM in its own sandbox) and `classify` (batched labelling, see
`delm_rlm.classify`), all through the one LM gateway so budgets and usage see every call.

Finishing is by state, never by parsing the reply: the REPL holds
``answer = {"content": None, "ready": False}`` and the run is done once code sets
``answer["ready"] = True`` with a non-empty ``answer["content"]``. Rules for a model that
rebinds `answer`:

- any dict counts (``answer = {}`` then setting the keys works); ``ready`` may be True, 1,
  or "true"/"yes"; a non-str ``content`` is turned into text with ``str()``.
- a non-dict (``answer = "42"``) is never a finish, because models also use `answer` as a
  scratch variable; the model is told how to finish, and the value counts as a partial answer.
- `answer` is read after every cell by a tiny probe cell that prints a plain-data summary
  (so numpy scalars, numpy bools and other non-picklable values work as content/ready).
- a reply with no code block counts as a failed step (for `max_consecutive_errors`) and gets
  the block format once more; a second such reply in a row is the answer (its text, through
  the `accept` gate), with status "answered" and ``finished_by="prose"``.
- out of steps, one last call asks for the best answer in plain text. If that reply holds code,
  it runs and a finish by state still wins; otherwise its text (code removed) is the answer,
  with status "answered" and ``finished_by="final_call"`` so callers can tell.
- a budget stop returns status "budget" with the partial answer: ``answer["content"]`` if
  set, else the last printed output (cut to `output_limit`).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from delm_rlm import prompts
from delm_rlm.classify import ClassificationLog
from delm_rlm.classify import classify as classify_items
from delm_rlm.codeblocks import close_open_fence, extract_code_blocks, prose_in_blocks, strip_code_blocks
from delm_rlm.errors import EndpointFailing
from delm_rlm.literals import cell_error_hint
from delm_rlm.rlm_answer import AnswerCheck, read_answer
from delm_rlm.llm import LM, Budget, BudgetExceeded, LMError
from delm_rlm.result import FinishedBy, Result
from delm_rlm.trace import Trace, observe_model_calls
from sandbox import SandboxError, SandboxSpec, check_sandbox_spec, sandbox_factory

if TYPE_CHECKING:

    from sandbox import ExecResult, Sandbox

# Trace events keep cell output up to this size (the model sees `output_limit`).
TRACE_OUTPUT_CHARS = 10_000
# With stop_after_block, generation stops at the first closing fence: the model cannot go on
# to imagine the cell's output, and a slow local model does not spend time on prose after it.
BLOCK_STOP = ["\n```\n"]
# Rough characters per token when sizing prompts without a tokenizer round trip.
CHARS_PER_TOKEN = 3


class Cell(BaseModel):
    """One code cell an agent ran: the code and what came back."""

    iteration: int
    code: str
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    timed_out: bool = False
    duration_s: float = 0.0


class LoopOutcome(BaseModel):
    """What one REPL loop produced (the team's agents read this per task)."""

    answer: str | None
    status: Literal["answered", "budget", "error"]
    iterations: int = 0
    error: str | None = None
    cells: list[Cell] = Field(default_factory=list)
    finished_by: FinishedBy | None = None
    _exceeded: BudgetExceeded | None = PrivateAttr(default=None)

    @property
    def exceeded(self) -> BudgetExceeded | None:
        """The budget error that stopped the loop, when status is "budget"."""
        return self._exceeded


# What RLM.loop asks before it finishes: None accepts the answer, a str is why not.
AnswerGate = Callable[[str, Sequence["Cell"]], Awaitable[str | None]]


@dataclass
class _LoopState:
    """Per-loop state shared with the REPL tools (they run on the host, in the bridge)."""

    exceeded: BudgetExceeded | None = None
    children: int = 0
    cells: list[Cell] = field(default_factory=list)


def _as_text_context(text: Any) -> str:
    if isinstance(text, str):
        return text
    if isinstance(text, list):
        return "\n\n".join(t if isinstance(t, str) else json.dumps(t) for t in text)
    return json.dumps(text)



def _context_text(context: Any) -> str | None:
    """The REPL context as text for error hints: a str, or a list of str joined by lines; a
    table gives None (its cells are not lines)."""
    if isinstance(context, str):
        return context
    if isinstance(context, (list, tuple)) and all(isinstance(d, str) for d in context):
        return "\n".join(context)
    return None

class RLM:
    """A recursive language-model agent over one sandboxed REPL.

    `sandbox` is "local" (an isolated Jupyter kernel), "e2b", or a zero-argument factory
    returning a `sandbox.Sandbox`. `max_depth` bounds `rlm_query` recursion: a run at depth d
    may start child runs while d < max_depth; at max depth `rlm_query` degrades to one
    `llm_query` on the prompt plus the text (cut to the sub-model's window). `depth` is
    internal (0 for a run a user starts). `stop_after_block` (default on) ends each reply at
    its first closing fence: one block per step, no imagined output, less generation; turn it
    off to let strong models write several blocks per reply. `isolation` (auto, bubblewrap,
    unshare, none) is the local kernel's isolation mode; None means auto, which refuses to run
    model-written code on a machine without bubblewrap unless "none" is asked for explicitly.
    """

    def __init__(
        self,
        lm: LM,
        *,
        sandbox: SandboxSpec = "local",
        max_iterations: int = 10,
        max_consecutive_errors: int = 3,
        max_depth: int = 1,
        output_limit: int = 2000,
        trace: Trace | None = None,
        cell_timeout: float | None = None,
        stop_after_block: bool = True,
        depth: int = 0,
        classifications: ClassificationLog | None = None,
        isolation: str | None = None,
    ) -> None:
        if not isinstance(lm, LM):
            raise TypeError(f"lm must be a delm_rlm.LM (or ScriptedLM); got {type(lm).__name__}")
        check_sandbox_spec(sandbox)
        for name, value, least in (
            ("max_iterations", max_iterations, 1),
            ("max_consecutive_errors", max_consecutive_errors, 1),
            ("max_depth", max_depth, 0),
            ("output_limit", output_limit, 100),
            ("depth", depth, 0),
        ):
            if not isinstance(value, int) or value < least:
                raise ValueError(f"{name} must be an int >= {least}; got {value!r}")
        self.lm = lm
        self.sandbox = sandbox
        self.isolation = isolation
        self.max_iterations = max_iterations
        self.max_consecutive_errors = max_consecutive_errors
        self.max_depth = max_depth
        self.output_limit = output_limit
        self.trace = trace
        self.cell_timeout = cell_timeout
        self.stop_after_block = stop_after_block
        self.depth = depth
        # Every classify() result of this agent (and its children): what a team's verifier
        # replays when it re-runs the agent's code.
        self.classifications = classifications if classifications is not None else ClassificationLog()

    # -- public entry points -------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        return {
            "model": self.lm.model_for("root"),
            "sandbox": self.sandbox if isinstance(self.sandbox, str) else "custom",
            "max_iterations": self.max_iterations,
            "max_consecutive_errors": self.max_consecutive_errors,
            "max_depth": self.max_depth,
            "output_limit": self.output_limit,
            "stop_after_block": self.stop_after_block,
        }

    async def run(self, question: str, context: Any, *, budget: Budget | None = None) -> Result:
        """Answer `question` over `context` (str, list of str, or DataFrame)."""
        if not isinstance(question, str) or not question.strip():
            raise ValueError("question must be a non-empty str")
        description = prompts.describe_context(context)  # also rejects bad context types
        trace = self.trace if self.trace is not None else Trace()
        first_event = len(trace.events)
        lm = self.lm.session(budget)
        observe_model_calls(lm, trace)
        started = time.monotonic()
        trace.emit(
            "run_started",
            agent="rlm",
            question=question,
            method="rlm",
            corpus=description,
            config={**self.config(), "budget": budget.model_dump() if budget else None},
        )
        sb = self._new_sandbox()
        try:
            await sb.start()
            await sb.load_context(context)
            outcome = await self.loop(
                sb, question=question, context_description=description, lm=lm, trace=trace,
                corpus_text=_context_text(context),
            )
        except Exception as exc:  # the run reports failures; it does not raise them
            message = f"{type(exc).__name__}: {exc}"
            trace.emit("error", agent="rlm", message=message)
            outcome = LoopOutcome(answer=None, status="error", error=message)
        finally:
            try:
                await sb.close()
            except Exception as exc:
                trace.emit("error", agent="rlm", message=f"sandbox close failed: {exc}")
        usage = lm.usage.total
        trace.emit(
            "run_finished", agent="rlm", status=outcome.status, answer=outcome.answer, usage=usage
        )
        return Result(
            answer=outcome.answer,
            status=outcome.status,
            error=outcome.error,
            usage=usage,
            usage_by_role=dict(lm.usage.by_role),
            trace_path=str(trace.path) if trace.path else None,
            trace=list(trace.events[first_event:]),
            seconds=round(time.monotonic() - started, 3),
            method="rlm",
            finished_by=outcome.finished_by,
            iterations=outcome.iterations,
        )

    def run_sync(self, question: str, context: Any, **kw: Any) -> Result:
        """`run` for code without an event loop."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.run(question, context, **kw))
        raise RuntimeError("run_sync() was called inside a running event loop; use `await rlm.run(...)`")

    # -- the loop ------------------------------------------------------------------------

    async def loop(
        self,
        sb: Sandbox,
        *,
        question: str,
        context_description: str,
        extra_tools_doc: str = "",
        lm: LM,
        agent_id: str = "rlm",
        task_id: str | None = None,
        role: str = "root",
        trace: Trace | None = None,
        accept: AnswerGate | None = None,
        system_prompt: str | None = None,
        corpus_text: str | None = None,
    ) -> LoopOutcome:
        """Run the REPL loop in `sb` (started, context loaded) until a finish, a limit or a budget.

        Registers llm_query / llm_query_batched / rlm_query on `sb` (bound to `lm` and these
        tags) and resets `answer`; extra tools must already be registered by the caller and
        described in `extra_tools_doc` (one line each, shown in the system prompt).

        `accept(answer, cells)` sees every answer the agent marks ready: None finishes the
        loop; a reason sends it back to the agent, whose answer is reset, and counts as a
        failed step (the team verifies answers here, so a rejection costs a step, not a
        whole new attempt). `system_prompt` replaces the RLM's own (e.g. a team's reading agents).
        `corpus_text`: the text the agent works on, when the host has it: a failed cell is told
        what that text says about its error (`literals.cell_error_hint`).
        """
        trace = trace if trace is not None else (self.trace if self.trace is not None else Trace())
        state = _LoopState()
        self.register_tools(sb, lm=lm, state=state, agent_id=agent_id, task_id=task_id, trace=trace)
        await sb.set_variables(answer={"content": None, "ready": False})
        system = system_prompt or prompts.rlm_system(extra_tools_doc, sub_limit_chars=_sub_limit_chars(lm))
        first = prompts.rlm_first(question, context_description)
        history: list[dict[str, str]] = []
        tags: dict[str, Any] = {"agent": agent_id, "task": task_id}
        partial: str | None = None
        last_stdout: str | None = None
        consecutive = 0
        no_code_before = False  # the previous reply had no code block
        last_error: str | None = None
        iteration = 0

        def emit(kind: str, **data: Any) -> None:
            trace.emit(kind, agent=agent_id, task=task_id, **data)

        def outcome(status: str, answer: str | None, **kw: Any) -> LoopOutcome:
            return LoopOutcome(
                answer=answer, status=status, iterations=iteration, cells=state.cells, **kw
            )

        async def run_blocks(blocks: list[str]) -> tuple[list[str], AnswerCheck | None, bool]:
            """Run a reply's blocks in order; stop at a finish or at the first failing block."""
            nonlocal partial, last_stdout
            feedback: list[str] = []
            check: AnswerCheck | None = None
            for n, code in enumerate(blocks, 1):
                emit("agent_step", iteration=iteration, action=f"running code ({code.count(chr(10)) + 1} lines)")
                result = await sb.execute(code, timeout=self.cell_timeout)
                self._record(state, emit, iteration, code, result)
                if result.restarted:
                    await sb.set_variables(answer={"content": None, "ready": False})
                if state.exceeded is not None:
                    raise state.exceeded
                if result.stdout.strip():
                    last_stdout = result.stdout
                shown = prompts.format_cell(result, self.output_limit)
                label = (
                    prompts.RLM_OUTPUT.format(output=shown)
                    if len(blocks) == 1
                    else prompts.RLM_BLOCK_OUTPUT.format(n=n, output=shown)
                )
                feedback.append(label)
                if not result.ok and (hint := cell_error_hint(code, result.error, corpus_text)):
                    feedback.append(hint)
                check = await read_answer(sb)
                if check.content is not None:
                    partial = check.content
                if check.ready:
                    return feedback, check, not result.ok
                if not result.ok:
                    if n < len(blocks):
                        feedback.append(prompts.RLM_SKIPPED_BLOCKS.format(n=len(blocks) - n))
                    return feedback, check, True
            return feedback, check, False

        try:
            for iteration in range(1, self.max_iterations + 1):
                emit("agent_step", iteration=iteration, action="thinking")
                messages = self._messages(system, first, history, lm, role)
                completion = await lm.complete(
                    messages,
                    role=role,
                    stop=BLOCK_STOP if self.stop_after_block else None,
                    tags={**tags, "iteration": iteration, **_tail(messages)},
                )
                reply = close_open_fence(completion.text) if self.stop_after_block else completion.text
                blocks = extract_code_blocks(reply)
                fenced = prose_in_blocks(blocks)  # an answer written inside a fence is prose
                if not blocks or fenced is not None:
                    prose = (fenced or strip_code_blocks(reply).strip()) if no_code_before else ""
                    no_code_before, blocks = True, []
                    consecutive += 1
                    last_error = "the ```repl block held prose" if fenced else "the reply had no ```repl block"
                    emit("agent_step", iteration=iteration, action="prose in a code block" if fenced else "no code block in reply")
                    feedback, check, failed = [prompts.RLM_PROSE_BLOCK if fenced else prompts.RLM_NO_CODE], None, True
                    if prose:  # shown the block format once already: the prose is the answer
                        prose_refusal = await accept(prose, state.cells) if accept else None
                        if prose_refusal is None:
                            emit("agent_step", iteration=iteration, action="answered in prose")
                            return outcome("answered", prose, finished_by="prose")
                        last_error = f"answer refused: {prose_refusal}"
                        feedback = [prompts.ANSWER_REFUSED.format(reason=prose_refusal)]
                else:
                    no_code_before = False
                    feedback, check, failed = await run_blocks(blocks)
                    refusal: str | None = None
                    if check is not None and check.ready:
                        refusal = await accept(check.content or "", state.cells) if accept else None
                        if refusal is None:
                            emit("agent_step", iteration=iteration, action="answered")
                            return outcome("answered", check.content, finished_by="state")
                        emit("agent_step", iteration=iteration, action="answer sent back")
                        await sb.set_variables(answer={"content": None, "ready": False})
                        feedback.append(prompts.ANSWER_REFUSED.format(reason=refusal))
                        check, failed = None, True
                    if failed:
                        consecutive += 1
                        bad = state.cells[-1]
                        last_error = (
                            f"answer refused: {refusal}" if refusal is not None
                            else bad.error or ("cell timed out" if bad.timed_out else "cell failed")
                        )
                    else:
                        consecutive = 0
                if consecutive >= self.max_consecutive_errors:
                    message = f"{consecutive} failed steps in a row; last: {last_error}"
                    emit("error", message=message)
                    return outcome("error", partial, error=message, finished_by="partial" if partial else None)
                if check is not None and check.note:
                    feedback.append(check.note)
                if iteration < self.max_iterations:
                    step = prompts.RLM_LAST_STEP if iteration == self.max_iterations - 1 else prompts.RLM_STEP
                    feedback.append(step.format(used=iteration, total=self.max_iterations))
                history += [
                    {"role": "assistant", "content": reply},
                    {"role": "user", "content": "\n\n".join(feedback)},
                ]

            # Out of steps: one last call for the best answer.
            emit("agent_step", iteration=iteration, action="out of steps: asking for a final answer")
            final_prompt = prompts.RLM_FINAL_CALL.format(question=question.strip())
            history[-1] = {"role": "user", "content": history[-1]["content"] + "\n\n" + final_prompt}
            iteration += 1
            messages = self._messages(system, first, history, lm, role)
            completion = await lm.complete(
                messages, role=role, tags={**tags, "iteration": iteration, "final": True, **_tail(messages)}
            )
            reply = completion.text
            blocks = extract_code_blocks(reply)
            if blocks:
                _, check, _ = await run_blocks(blocks)
                if check is not None and check.ready:
                    refusal = await accept(check.content or "", state.cells) if accept else None
                    if refusal is not None:
                        message = f"the last answer was refused: {refusal}"
                        emit("error", message=message)
                        return outcome("error", check.content, error=message)
                    emit("agent_step", iteration=iteration, action="answered")
                    return outcome("answered", check.content, finished_by="state")
            # A fence-less reply that was run as code is not also an answer text.
            text = "" if blocks and "```" not in reply else strip_code_blocks(reply)
            if text:
                emit("agent_step", iteration=iteration, action="answered by the final call")
                return outcome("answered", text, finished_by="final_call")
            if partial:
                return outcome("answered", partial, finished_by="partial")
            message = f"no answer after {self.max_iterations} steps and a final call"
            emit("error", message=message)
            return outcome("error", None, error=message)

        except BudgetExceeded as exc:
            try:
                answer = (await read_answer(sb)).content or partial
            except SandboxError:
                answer = partial
            if answer is None and last_stdout is not None:
                answer = prompts.truncate_middle(last_stdout.strip(), self.output_limit) or None
            exc.partial_answer = answer
            emit("budget_exceeded", limit=exc.limit, used=exc.used, allowed=exc.allowed)
            result = outcome(
                "budget",
                answer,
                error=f"budget exceeded: {exc.limit} used {exc.used:g} of {exc.allowed:g}",
                finished_by="partial" if answer is not None else None,
            )
            result._exceeded = exc
            return result
        except EndpointFailing:
            raise  # the endpoint is down for everyone: the caller ends the run, not this step
        except (LMError, SandboxError) as exc:
            what = "model call failed" if isinstance(exc, LMError) else "sandbox failed"
            emit("error", message=f"{what}: {exc}")
            return outcome("error", partial, error=f"{what}: {exc}",
                           finished_by="partial" if partial else None)

    # -- REPL tools ----------------------------------------------------------------------

    def register_tools(
        self,
        sb: Sandbox,
        *,
        lm: LM,
        state: _LoopState | None = None,
        agent_id: str = "rlm",
        task_id: str | None = None,
        trace: Trace | None = None,
    ) -> None:
        """Make llm_query, llm_query_batched and rlm_query callable in `sb` (role "sub")."""
        state = state if state is not None else _LoopState()
        tags = {"agent": agent_id, "task": task_id}

        async def llm_query(prompt: str) -> str:
            try:
                text = str(prompt)
                completion = await lm.complete(text, role="sub", tags={**tags, "prompt_tail": text[-500:]})
            except BudgetExceeded as exc:
                state.exceeded = state.exceeded or exc
                raise
            return completion.text

        async def llm_query_batched(prompts: list[str]) -> list[str]:  # noqa: F811 (REPL name)
            if isinstance(prompts, str) or not isinstance(prompts, list):
                raise TypeError(
                    "llm_query_batched takes a list of prompt strings; for one prompt use llm_query(prompt)"
                )
            results = await asyncio.gather(*(llm_query(p) for p in prompts), return_exceptions=True)
            return [
                r if isinstance(r, str) else f"ERROR: {type(r).__name__}: {r}" for r in results
            ]

        async def rlm_query(prompt: str, context: Any = None, text: Any = None) -> str:
            # The REPL doc says rlm_query(prompt, text); the contract's name `context` works too.
            text = text if text is not None else context
            if self.depth >= self.max_depth or not text:
                # At max depth (or with nothing to hand over) there is no child run: one sub-call.
                if trace is not None:
                    why = "at max depth" if text else "without a text"
                    trace.emit("agent_step", agent=agent_id, task=task_id,
                               action=f"rlm_query {why}: answered by llm_query")
                if not text:
                    return await llm_query(prompt)
                body = prompts.truncate_middle(_as_text_context(text), _sub_limit_chars(lm) or 0)
                return await llm_query(prompts.RLM_DEGRADED.format(prompt=prompt, text=body))
            state.children += 1
            child_id = f"{agent_id}.{state.children}"
            child = RLM(
                self.lm,
                sandbox=self.sandbox,
                max_iterations=self.max_iterations,
                max_consecutive_errors=self.max_consecutive_errors,
                max_depth=self.max_depth,
                output_limit=self.output_limit,
                trace=trace,
                cell_timeout=self.cell_timeout,
                stop_after_block=self.stop_after_block,
                depth=self.depth + 1,
                classifications=self.classifications,
                isolation=self.isolation,
            )
            # The child's view gets what is left of ours; its usage also counts in ours.
            child_lm = lm.session(lm.remaining())
            result = await child.run_child(str(prompt), text, lm=child_lm, agent_id=child_id, task_id=task_id)
            if result.exceeded is not None:
                state.exceeded = state.exceeded or result.exceeded
                raise result.exceeded
            if result.status != "answered" or result.answer is None:
                raise RuntimeError(f"the helper agent gave no answer: {result.error or result.status}")
            return result.answer

        async def classify(items: Any, labels: Any, instruction: str = "") -> list[str | None]:
            try:
                return await classify_items(
                    lm, items, labels, instruction, role="sub", tags=tags, log=self.classifications
                )
            except BudgetExceeded as exc:
                state.exceeded = state.exceeded or exc
                raise

        sb.register("llm_query", llm_query)
        sb.register("llm_query_batched", llm_query_batched)
        sb.register("rlm_query", rlm_query)
        sb.register("classify", classify)

    async def run_child(
        self, question: str, context: Any, *, lm: LM, agent_id: str, task_id: str | None = None
    ) -> LoopOutcome:
        """A recursive sub-run in a fresh sandbox (what `rlm_query` starts); role "sub"."""
        description = prompts.describe_context(context)
        trace = self.trace if self.trace is not None else Trace()
        trace.emit("agent_step", agent=agent_id, task=task_id, action=f"child run at depth {self.depth}")
        sb = self._new_sandbox()
        try:
            await sb.start()
            await sb.load_context(context)
            return await self.loop(
                sb, question=question, context_description=description, lm=lm,
                agent_id=agent_id, task_id=task_id, role="sub", trace=trace,
                corpus_text=_context_text(context),
            )
        finally:
            await sb.close()

    # -- helpers -------------------------------------------------------------------------

    def _new_sandbox(self) -> Sandbox:
        return sandbox_factory(self.sandbox, isolation=self.isolation)()

    def _record(self, state: _LoopState, emit: Callable[..., None], iteration: int,
                code: str, result: ExecResult) -> None:
        state.cells.append(
            Cell(iteration=iteration, code=code, stdout=result.stdout, stderr=result.stderr,
                 error=result.error, timed_out=result.timed_out, duration_s=result.duration_s)
        )
        emit(
            "code_cell",
            iteration=iteration,
            code=code,
            stdout=prompts.truncate_middle(result.stdout, TRACE_OUTPUT_CHARS),
            stdout_chars=len(result.stdout),
            stderr=prompts.truncate_middle(result.stderr, TRACE_OUTPUT_CHARS),
            error=result.error,
            timed_out=result.timed_out,
            duration_s=result.duration_s,
        )

    def _messages(
        self, system: str, first: str, history: list[dict[str, str]], lm: LM, role: str
    ) -> list[dict[str, str]]:
        """System + first message + history, dropping the oldest steps if over the window.

        History is append-only while it fits, so the server's prefix cache keeps working.
        """
        window = _window(lm, role)
        messages = [{"role": "system", "content": system}, {"role": "user", "content": first}]
        if not window:
            return messages + history
        reserve = int(getattr(lm, "max_tokens", None) or 1024)
        allowed = max(0, (window - reserve) * CHARS_PER_TOKEN)
        size = len(system) + len(first)
        drop = 0
        while drop + 2 < len(history) and size + sum(len(m["content"]) for m in history[drop:]) > allowed:
            drop += 2
        if drop:
            note = prompts.HISTORY_OMITTED.format(n=drop // 2)
            messages[1] = {"role": "user", "content": f"{first}\n\n{note}"}
        return messages + history[drop:]


def _window(lm: LM, role: str) -> int | None:
    try:
        return lm.context_window_for(role)
    except Exception:  # an LM that cannot tell: no sizing
        return None


def _sub_limit_chars(lm: LM) -> int | None:
    """About half a sub-model's window in characters: what one llm_query should carry."""
    window = _window(lm, "sub")
    return int(window * CHARS_PER_TOKEN // 2) if window else None


def _tail(messages: list[dict[str, str]]) -> dict[str, str]:
    """The end of the prompt, for the trace's model_call event (observers see tags only)."""
    return {"prompt_tail": messages[-1]["content"][-500:]}


