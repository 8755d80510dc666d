"""Finalization: when no task is left, one agent combines the admitted gists into the answer
(or adds tasks), up to `max_finalize_rounds` rounds; `add_up` and `combine`, the finalizer's
REPL helpers. A whole plan (team/scout.py) has no finalizer: its one verified answer is the
run's answer, and a whole program that was not verified sends the run to the split.

Partials must agree before they are combined (verify/agreement.py): admitted chunk partials
with mixed schemas (counts beside single numbers, a blank key, keys outside the others'
vocabulary) are refused before the finalizer starts, the run ending with the reason; in the
REPL, `add_up` refuses them too, and its total refuses a read of a key that partials lack
without accounting for all their records (a key a covering partial lacks is a true zero).
"""

from __future__ import annotations

from delm_rlm import prompts
from delm_rlm.gists import GistKind
from delm_rlm.state.queue import Task, TaskState
from delm_rlm.team.role import FinalRound, Role
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun
from delm_rlm.verify import disagreement

# Defined in the finalizer's REPL before each round (hybrid mode; pure Python, so a kernel
# restart only re-runs it): small models writing this loop themselves trip over a partial
# whose value is a str. `gists()` marks each partial "complete" when its counts account for
# all its chunk's records (team/sharing.py).
ADD_UP_CODE = '''\
def add_up(parts):
    """Add up partial values: dicts of counts key by key, plain numbers under "value".
    Refuses partials that disagree (counts beside single numbers, a blank key); the total
    refuses reading a key that partials lack without accounting for all their records."""
    import ast
    from collections import Counter

    class Total(Counter):
        lacking = {}

        def __getitem__(self, key):
            if key in self.lacking:
                raise KeyError(__LACKING__.format(key=key, ids=", ".join(self.lacking[key])))
            return super().__getitem__(key)

        def get(self, key, default=None):
            return self[key] if key in self else default

    total = Counter()
    shapes = {}
    keyed = []
    for g in parts:
        value = g.get("value") if isinstance(g, dict) and "id" in g else g
        where = g.get("id", "?") if isinstance(g, dict) else "?"
        if isinstance(value, str):  # "12", "1,200" or "{'spam': 3}"
            text = value.strip()
            try:
                value = ast.literal_eval(text if text[:1] in "{[" else text.replace(",", ""))
            except (ValueError, SyntaxError):
                pass
        if isinstance(value, dict):
            numbers = {k: n for k, n in value.items() if isinstance(n, (int, float)) and not isinstance(n, bool)}
            if numbers:
                shapes.setdefault("counts per key", []).append(where)
                if any(not str(k).strip() for k in numbers):
                    raise ValueError(__BLANK__.format(ids=where))
                keyed.append((where, {str(k) for k in numbers}, g.get("complete") if isinstance(g, dict) else None))
            for key, n in numbers.items():
                total[key] += n
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            shapes.setdefault("single numbers", []).append(where)
            total["value"] += value
        else:
            print(f"add_up: skipped {where}: {str(value)[:60]!r} is not a count")
    if len(shapes) > 1:
        parts_text = "; ".join(
            f"{', '.join(ids)} {'are' if len(ids) > 1 else 'is'} "
            f"{shape if len(ids) > 1 or shape.startswith('counts') else 'a single number'}"
            for shape, ids in shapes.items())
        raise ValueError(__MIXED__.format(parts=parts_text))
    result = Total(total)
    result.lacking = {}
    for key in total:
        missing = [where for where, keys, complete in keyed if str(key) not in keys and not complete]
        if missing:
            result.lacking[key] = missing
    return result


def combine(parts, how=None):
    """Combine partial values the way the team's newest METHOD says ("sum": add_up,
    "concat": lists joined, "max", "min"); no method: "sum"."""
    if how is None:
        methods = [m for m in gists(kind="method") if isinstance(m.get("value"), dict)]
        newest = max(methods, key=lambda m: m["value"].get("version", 0), default=None)
        how = (newest["value"].get("combine") if newest else None) or "sum"
    if how == "sum":
        return add_up(parts)
    values = [g.get("value") if isinstance(g, dict) and "id" in g else g for g in parts]
    if how == "concat":
        out = []
        for v in values:
            out.extend(v if isinstance(v, list) else [v])
        return out
    if how in ("max", "min"):
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        return (max if how == "max" else min)(numbers)
    raise ValueError(f"unknown combine step {how!r}: use sum, concat, max or min")
'''.replace("__LACKING__", repr(prompts.FINAL_LACKING_KEY)).replace(
    "__BLANK__", repr(prompts.FINAL_BLANK_KEYS)).replace("__MIXED__", repr(prompts.FINAL_MIXED_SCHEMAS))


async def finalize_round(run: TeamRun, role: Role) -> None:
    """One finalization round by `role`'s agent, unless another agent holds the round or
    tasks came back: the run ends with the answer, or goes on with the tasks it added."""
    async with run.finalize_lock:
        if run.done.is_set() or not run.queue.drained():
            return
        if run.plan == "whole" and run.whole_task is not None:
            finish_whole(run, role.state)
            return
        partials = [g for g in run.context.admitted(kinds=GistKind.PARTIAL) if g.provenance.task_id in run.chunks]
        problem = disagreement(partials)
        if problem is not None:
            run.status, run.error = "error", prompts.FINAL_REFUSED.format(reason=problem)
            run.trace.emit("error", agent=role.state.agent_id, task=FINAL_TASK_ID, message=run.error)
            run.done.set()
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
            run.error = run.error or no_answer_reason(run, failed)
            run.trace.emit("error", agent=state.agent_id, task=FINAL_TASK_ID, message=run.error)
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


def no_answer_reason(run: TeamRun, failed: list[Task]) -> str:
    """Why a finalizer that named no answer had none to give: what the shared context held."""
    admitted = [g for g in run.context.admitted() if g.kind != GistKind.FAILURE]
    if admitted:
        return f"the finalizer gave no answer from the {len(admitted)} verified gist(s)"
    why = "; ".join(f"{t.id}: {(t.last_error or 'failed')[:160]}" for t in failed[:4])
    return ("the finalizer gave no answer: no gist was verified" + (f" (the failed tasks: {why})" if why else "")
            + "; the run's trace shows each rejection (delm-rlm trace RUN_DIR)")


def finish_whole(run: TeamRun, state: AgentState) -> None:
    """End a whole plan: its verified answer is the run's answer (no finalizer call); a
    whole task that failed sends the run to the split (`run.replan` says why)."""
    task = run.queue.get(str(run.whole_task))
    if task.state != TaskState.DONE:
        run.replan = task.last_error or "the task failed"
        run.done.set()
        return
    gists = [run.store.get_gist(i) for i in task.gist_ids]
    answer = run.whole_answer
    if answer is None and gists:  # the answer of an earlier session: its gist's text
        answer = gists[0].summary or gists[0].text.split(": ", 1)[-1]
    run.answer, run.answer_gist_ids = answer, [g.id for g in gists if g.id]
    run.trace.emit("finalize", agent=state.agent_id, task=task.id, answer=answer, gist_ids=run.answer_gist_ids,
                   plan="whole")
    run.done.set()


def answer_gist_ids(run: TeamRun, state: AgentState) -> list[str]:
    """The gists the answer rests on: those the finalizer read (not FAILURE records);
    when it read none through the tools, every admitted PARTIAL and FACT it was shown."""
    admitted = {g.id: g for g in run.context.admitted()}
    read = [i for i in dict.fromkeys(state.read_ids) if i in admitted and admitted[i].kind != GistKind.FAILURE]
    if read:
        return read
    return [g.id for g in admitted.values() if g.kind in (GistKind.PARTIAL, GistKind.FACT) and g.id]
