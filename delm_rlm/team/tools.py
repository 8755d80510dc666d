"""The team's REPL tools (`gists`, `unfold`, `propose`, `add_task`) and how an agent's
proposal becomes a gist: partial texts tagged with their task, bare quotes located in the
corpus (near copies mapped to the span they copy); added tasks carry goals, never bare ids;
a check offered with `method=True` (or a proposal of kind "method") becomes the team's
method once verified (team/sharing.py)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError

from delm_rlm.chunking import Chunk
from delm_rlm.errors import ConfigError, RunStateError
from delm_rlm.gists import Gist, GistKind, parse_kind
from delm_rlm.team.replies import validation_message
from delm_rlm.state.queue import Task
from delm_rlm.team.run import AgentState, TeamRun
from delm_rlm.verify.fuzzy import map_quote
from delm_rlm.team.sharing import offer_method, partial_covers
from sandbox import Sandbox


def register_team_tools(sb: Sandbox, run: TeamRun, state: AgentState) -> None:
    """Offer the team's tools in `sb`, bound to `run` and to the agent whose state is `state`."""

    def gists(kind: str | None = None) -> list[dict[str, Any]]:
        try:
            found = run.context.admitted(kinds=kind)
        except ValidationError as exc:
            raise ConfigError(
                f"unknown kind {kind!r}: use partial, fact, failure, constraint, evidence, question or method"
            ) from exc
        state.read_ids.extend(g.id for g in found if g.id)
        out: list[dict[str, Any]] = []
        for g in found:
            item = {"id": g.id, "kind": g.kind.value, "text": g.text, "value": g.value, "support": g.support}
            if g.kind == GistKind.PARTIAL:
                # True: its counts account for all its chunk's records (a key it lacks is 0).
                item["complete"] = partial_covers(run, g)
            out.append(item)
        return out

    def unfold(id: str, level: int = 1) -> str:  # noqa: A002 - the REPL name agents use
        state.read_ids.append(str(id))
        return run.context.unfold(str(id), int(level))

    async def propose(
        kind: str, text: str, value: Any = None, check: str | None = None,
        evidence: Any = None, summary: str | None = None, tolerance: float = 0.0,
        method: bool | str = False,
    ) -> dict[str, Any]:
        if state.task is None and not state.finalizing:
            return {"status": "rejected", "reason": "no task is claimed: nothing to propose for"}
        combine = method if isinstance(method, str) else None
        try:
            if parse_kind(kind) == GistKind.METHOD:
                if not check:
                    return {"status": "rejected", "reason": "a method needs its code: propose('method', text, check=code)"}
                verdict = await offer_method(run, state, code=str(check), text=str(text), claimed=value,
                                             combine=combine)
                return verdict.for_agent()
        except ValueError as exc:
            return {"status": "rejected", "reason": f"bad proposal: {exc}"}
        try:
            gist = Gist(
                kind=kind,
                text=tag_partial_text(state, str(text), kind),
                summary=summary,
                value=value,
                check=check,
                tolerance=tolerance,
                evidence=evidence_pointers(run.docs, state.chunk, evidence),
                provenance=run.provenance(state),
            )
        except (ValidationError, ValueError, TypeError) as exc:
            reason = validation_message(exc)
            run.trace.emit("gist_rejected", agent=state.agent_id, task=state.task_or_final_id,
                           gist_id=None, reason=f"bad proposal: {reason}", failure_gist_id=None)
            return {"status": "rejected", "reason": f"bad proposal: {reason}"}
        chunk = state.chunk
        check_vars = chunk.repl_variables() if chunk is not None else {}
        verdict = await run.verifier.verify(
            gist, source=run.chunk_text(chunk) if chunk is not None else None,
            check_vars=check_vars, reject_empty=run.rejects_empty(state),
        )
        state.verdicts.append(verdict)
        reply = verdict.for_agent()
        if method and verdict.ok and gist.check is not None and gist.kind == GistKind.PARTIAL:
            described = gist.text.removeprefix(f"{state.task_or_final_id}: ")
            shared = await offer_method(run, state, code=gist.check, text=described, claimed=gist.value,
                                        combine=combine)
            reply["method"] = shared.for_agent()
        return reply

    def add_task(goal: str, deps: list[str] | None = None) -> str:
        if state.last_round:
            raise RunStateError("this is the last round: no more tasks can be added; answer now")
        if run.added_tasks >= run.config.max_added_tasks:
            raise RunStateError(
                f"the team already added {run.added_tasks} tasks (the limit); answer with what is verified"
            )
        task = add_goal_task(run, str(goal), created_by=state.agent_id, deps=list(deps or []))
        if task is None:
            raise ConfigError(f"{goal!r} is not a goal: say in words what the new task must find")
        run.count_added_tasks(1)
        state.added_tasks.append(task.id)
        return task.id

    sb.register("gists", gists)
    sb.register("unfold", unfold)
    sb.register("propose", propose)
    sb.register("add_task", add_task)


_BARE_IDS = re.compile(r"^\W*(?:(?:task|gist)\s*)?([tg]\d+)(?:\W+(?:(?:task|gist)\s*)?[tg]\d+)*\W*$", re.IGNORECASE)
_NAMED_TASK = re.compile(r"\b(t\d+)\b")


def add_goal_task(run: TeamRun, text: str, *, created_by: str, deps: list[str] | None = None) -> Task | None:
    """Queue a task a finalizer or agent asked for, as a goal in words. Small models name a
    task or gist instead ("t1"): that becomes a goal saying what to redo or check, on the
    same chunk; a task whose words name a task ("re-read t3 ...") also gets that task's
    chunk. None when `text` is neither a goal nor a known id (nothing is added)."""
    text = " ".join(str(text).split())
    ids = [m.lower() for m in re.findall(r"[tg]\d+", text, re.IGNORECASE)] if _BARE_IDS.match(text) else []
    chunk: Chunk | None = None
    if ids:
        known = {t.id: t for t in run.queue.all()}
        task, gist = known.get(ids[0]), None
        if task is None and ids[0].startswith("g"):
            gist = next((g for g in run.context.admitted() if g.id == ids[0]), None)
            task = known.get(gist.provenance.task_id or "") if gist is not None else None
        if gist is not None:
            what = f"check gist {gist.id} ('{gist.text[:120]}') against the text"
        elif task is not None:
            what = f"redo task {task.id}"
        else:
            return None
        goal = f"For the team question ({run.question[:200]}): {what}"
        if task is not None:
            goal += f"; that task's goal was: {task.goal[:300]}"
            chunk = run.chunks.get(task.id)
    elif len(text) < 3:
        return None
    else:
        goal = text
        named = _NAMED_TASK.search(text)
        chunk = run.chunks.get(named.group(1)) if named else None
    added = run.queue.add(goal[:1000], deps=deps or [], created_by=created_by)
    if chunk is not None:
        run.chunks[added.id] = chunk
        run.store.set_meta(chunks={k: c.model_dump() for k, c in run.chunks.items()})
    return added


def tag_partial_text(state: AgentState, text: str, kind: Any) -> str:
    """PARTIAL gists are per task: the task id in the text keeps chunk 3's count from
    merging with chunk 4's equal count."""
    text = " ".join(text.split())
    is_partial = str(getattr(kind, "value", kind)).strip().lower() == "partial"
    if is_partial and state.task is not None and not text.startswith(f"{state.task.id}:"):
        text = f"{state.task.id}: {text}"
    return text


def evidence_pointers(docs: list[str], chunk: Chunk | None, evidence: Any) -> list[Any]:
    """Accept evidence as dicts ({"doc", "start", "end", "quote"} or {"code", "output"})
    or bare quote strings, which are located in the task's chunk (or the corpus): an
    agent need not compute offsets, and a string not found there keeps the chunk's span
    so the verifier rejects it with the reason."""
    if evidence is None:
        return []
    if isinstance(evidence, (str, dict)):
        evidence = [evidence]
    if not isinstance(evidence, list):
        raise TypeError("evidence must be a list of quotes (str) or dicts")
    out: list[Any] = []
    for item in evidence:
        if isinstance(item, str):
            out.append(locate_quote(docs, chunk, item))
        elif isinstance(item, dict):
            if "quote" in item and ("start" not in item or "end" not in item):
                out.append(locate_quote(docs, chunk, str(item["quote"]), item.get("doc")))
            else:
                out.append(item if "type" in item else {**item, "type": "code" if "code" in item else "quote"})
        else:
            raise TypeError(f"an evidence item must be a quote (str) or a dict, not {type(item).__name__}")
    return out


def chunk_spans(docs: list[str], chunk: Chunk) -> list[tuple[int, int, int]]:
    """The chunk as (doc, start, end) spans, one per document it covers (a packed chunk
    covers several): offsets are always within one document."""
    return [(d, chunk.start if d == chunk.doc else 0, chunk.end if d == chunk.last_doc else len(docs[d]))
            for d in chunk.documents]


def locate_quote(docs: list[str], chunk: Chunk | None, quote: str, doc: Any = None) -> dict[str, Any]:
    """A quote pointer for `quote`: searched in the chunk first, then in the named doc, then
    in every doc. A quote not found word for word but close to a span of the chunk (or of
    the named doc) is mapped to that span and stands for its verbatim text
    (`verify.fuzzy`, similarity >= FUZZY_QUOTE_THRESHOLD). Not found: the chunk's span (the
    verifier then rejects it, showing the closest text)."""
    needle = quote.strip()
    in_chunk = [sp for sp in chunk_spans(docs, chunk) if doc in (None, sp[0])] if chunk is not None else []
    for d, lo, hi in in_chunk:
        at = docs[d].find(needle, lo, hi)
        if at >= 0:
            return {"type": "quote", "doc": d, "start": at, "end": at + len(needle), "quote": quote}
    candidates = [int(doc)] if isinstance(doc, int) and 0 <= doc < len(docs) else range(len(docs))
    for d in candidates:
        at = docs[d].find(needle)
        if at >= 0:
            return {"type": "quote", "doc": d, "start": at, "end": at + len(needle), "quote": quote}
    # A near copy: the span it paraphrases, in the chunk (or the named doc) only.
    if in_chunk:
        where = in_chunk
    elif isinstance(doc, int) and 0 <= doc < len(docs):
        where = [(doc, 0, len(docs[doc]))]
    else:
        where = []
    for d, lo, hi in where if needle else []:
        match = map_quote(docs[d], needle, lo, hi)
        if match is not None:
            return {"type": "quote", "doc": d, "start": match.start, "end": match.end,
                    "quote": docs[d][match.start:match.end]}
    if chunk is not None:
        d, lo, hi = (in_chunk or chunk_spans(docs, chunk))[0]
        return {"type": "quote", "doc": d, "start": lo, "end": hi, "quote": quote}
    d = int(doc) if isinstance(doc, int) and 0 <= doc < len(docs) else 0
    return {"type": "quote", "doc": d, "start": 0, "end": len(docs[d]) if docs else 0, "quote": quote}
