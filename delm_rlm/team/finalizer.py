"""Finalization: when no task is left, one agent combines the admitted gists into the answer
(or adds tasks), up to `max_finalize_rounds` rounds; `add_up`, the finalizer's REPL helper."""

from __future__ import annotations

from delm_rlm.gists import GistKind
from delm_rlm.state.queue import TaskState
from delm_rlm.team.role import FinalRound, Role
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun

# Defined in the finalizer's REPL before each round (hybrid mode; pure Python, so a kernel
# restart only re-runs it): small models writing this loop themselves trip over a partial
# whose value is a str.
ADD_UP_CODE = '''\
def add_up(parts):
    """Add up partial values: dicts of counts key by key, plain numbers under "value"."""
    import ast
    from collections import Counter
    total = Counter()
    for g in parts:
        value = g.get("value") if isinstance(g, dict) and "id" in g else g
        if isinstance(value, str):  # "12", "1,200" or "{'spam': 3}"
            text = value.strip()
            try:
                value = ast.literal_eval(text if text[:1] in "{[" else text.replace(",", ""))
            except (ValueError, SyntaxError):
                pass
        if isinstance(value, dict):
            for key, n in value.items():
                if isinstance(n, (int, float)) and not isinstance(n, bool):
                    total[key] += n
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            total["value"] += value
        else:
            where = g.get("id", "?") if isinstance(g, dict) else "?"
            print(f"add_up: skipped {where}: {str(value)[:60]!r} is not a count")
    return total
'''


async def finalize_round(run: TeamRun, role: Role) -> None:
    """One finalization round by `role`'s agent, unless another agent holds the round or
    tasks came back: the run ends with the answer, or goes on with the tasks it added."""
    async with run.finalize_lock:
        if run.done.is_set() or not run.queue.drained():
            return
        cfg, state = run.config, role.state
        run.finalize_round = run.store.add_to_counter("finalize_rounds")
        last = run.finalize_round >= cfg.max_finalize_rounds or run.added_tasks >= cfg.max_added_tasks
        state.begin_final_round(last)
        run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                       action=f"finalizing (round {run.finalize_round} of {cfg.max_finalize_rounds})")
        failed = [t for t in run.queue.all() if t.state == TaskState.FAILED]
        failed_note = ""
        if failed:
            failed_note = "Failed tasks: " + "; ".join(f"{t.id} ({(t.last_error or '')[:120]})" for t in failed[:8]) + "\n"
        try:
            answer, added = await role.finalize(
                FinalRound(number=run.finalize_round, rounds=cfg.max_finalize_rounds, last=last,
                           failed_note=failed_note)
            )
        finally:
            state.finalizing = False
        if added and not last:
            run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                           action=f"added {len(added)} task(s): {', '.join(added)}")
            return
        if answer is None:
            run.status = "error"
            run.error = run.error or "the finalizer gave no answer"
            run.done.set()
            return
        ids = answer_gist_ids(run, state)
        refusal = role.refuse_answer(answer, ids, last)  # the answer gate (team/role.py)
        if refusal is not None:
            run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                           action=f"answer refused: {refusal.reason}"[:300], answer=answer, added=refusal.added)
            if not refusal.added:
                run.status, run.error = "error", f"the answer {answer[:80]!r} was refused: {refusal.reason}"
                run.done.set()
            return
        run.answer, run.answer_gist_ids = answer, ids
        run.trace.emit("finalize", agent=state.agent_id, task=FINAL_TASK_ID, answer=answer, gist_ids=ids)
        run.done.set()


def answer_gist_ids(run: TeamRun, state: AgentState) -> list[str]:
    """The gists the answer rests on: those the finalizer read (not FAILURE records);
    when it read none through the tools, every admitted PARTIAL and FACT it was shown."""
    admitted = {g.id: g for g in run.context.admitted()}
    read = [i for i in dict.fromkeys(state.read_ids) if i in admitted and admitted[i].kind != GistKind.FAILURE]
    if read:
        return read
    return [g.id for g in admitted.values() if g.kind in (GistKind.PARTIAL, GistKind.FACT) and g.id]
