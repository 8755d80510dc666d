"""Methods shared in a team (verify/methods.py has the rules): an agent's chunk code offered
as a METHOD, admitted methods applied to claimed chunks without a model call, and what the
finalizer's REPL learns about the partials (whether each accounts for all its records).

A chunk task claimed while a method is admitted is first served by the newest method, run by
the verifier's method sandbox: when it works, the task is done with no model call (the trace
records `method_applied`); when it fails, the chunk goes to an agent loop whose prompt holds
the failure and the method's code, and the agent's fixed code, proposed with method=True,
becomes the method's next version (trace: `method_failed`, then the new METHOD gist).
"""

from __future__ import annotations

from typing import Any

from delm_rlm import prompts
from delm_rlm.gists import Gist
from delm_rlm.state.queue import Task
from delm_rlm.team.run import AgentState, TeamRun
from delm_rlm.verify import ChunkTarget, MethodValue, Verdict
from delm_rlm.verify.agreement import COVERAGE_TOLERANCE, count_records, covers_records
from delm_rlm.verify.methods import TRIALS

METHOD_CODE_SHOWN = 1500  # characters of a failed method's code in the agent's prompt


def chunk_target(run: TeamRun, task_id: str | None) -> ChunkTarget | None:
    chunk = run.chunks.get(task_id or "")
    return ChunkTarget(task_id, chunk) if task_id is not None and chunk is not None else None


def trial_targets(run: TeamRun, home: str, amends: Gist | None) -> list[ChunkTarget]:
    """The other chunks a proposed method is tried on: the one after `home` (in split
    order, wrapping around), and the home of the method it amends (which that method
    served), else the chunk halfway round. Deterministic, at most TRIALS."""
    order = sorted(run.chunks, key=lambda t: run.chunks[t].index)
    if home not in order or len(order) < 2:
        return []
    at = order.index(home)
    picks = [order[(at + 1) % len(order)]]
    old_home = MethodValue.model_validate(amends.value).home if amends is not None else None
    for candidate in (old_home, order[(at + len(order) // 2) % len(order)]):
        if candidate in run.chunks and candidate != home and candidate not in picks:
            picks.append(candidate)
    return [ChunkTarget(t, run.chunks[t]) for t in picks[:TRIALS]]


async def offer_method(run: TeamRun, state: AgentState, *, code: str, text: str, claimed: Any = None,
                       combine: str | None = None) -> Verdict:
    """Propose `code`, which computed the agent's chunk, as the team's method."""
    home = chunk_target(run, state.task.id if state.task is not None else None)
    if run.methods is None or home is None:
        return Verdict(status="rejected", stage="method",
                       reason="methods are shared for chunk tasks only: this task has no chunk")
    amends = state.failed_method
    return await run.methods.propose(
        code=code, text=text, agent=state.agent_id, home=home,
        trials=trial_targets(run, home.task_id, amends), claimed=claimed, combine=combine,
        amends=amends.id if amends is not None else None,
    )


async def serve_by_method(run: TeamRun, state: AgentState, task: Task) -> tuple[Verdict | None, str]:
    """Apply the newest admitted method to `task`'s chunk. Returns its verdict (None: no
    method to apply) and, when it failed, the note for the agent's prompt."""
    target = chunk_target(run, task.id)
    method = run.methods.latest() if run.methods is not None and target is not None else None
    if method is None or target is None or run.methods is None:
        return None, ""
    verdict = await run.methods.apply(method, target, state.agent_id)
    if verdict.ok:
        return verdict, ""
    state.failed_method = method
    spec = MethodValue.model_validate(method.value)
    code = spec.code if len(spec.code) <= METHOD_CODE_SHOWN else spec.code[:METHOD_CODE_SHOWN] + "\n# ..."
    note = prompts.TEAM_METHOD_FAILED.format(method_id=method.id, version=spec.version,
                                             reason=verdict.reason, code=code)
    return verdict, note


def partial_covers(run: TeamRun, gist: Gist) -> bool | None:
    """Whether a chunk partial's counts account for all its chunk's records (rule C1 of
    verify.agreement): True means a key it lacks is an explicit zero. None: not a count of
    records, or not a chunk task's partial."""
    chunk = run.chunks.get(gist.provenance.task_id or "")
    if chunk is None:
        return None
    tolerance = run.config.coverage_tolerance
    return covers_records(gist.value, count_records(chunk.text(run.docs)),
                          tolerance if tolerance is not None else COVERAGE_TOLERANCE)
