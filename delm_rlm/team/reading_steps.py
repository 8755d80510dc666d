"""The reading path's steps, shared by the reading roles of both modes (team/reading_roles.py).

The hierarchy (DeLM's long-source summaries):

    raw text (the corpus, in the run directory)
      -> grounded summary per chunk (team/summaries.py): query-independent points, each with
         a verbatim anchor checked by the quote verifier; cached per slice across questions
      -> query-aware gist per chunk: about a hundred tokens on what the chunk says about the
         question (for a multiple-choice question, per choice: supported, contradicted, not
         mentioned), citing anchors; admitted only if the deterministic support rule
         (`verify.support`) and then the judge accept it.

The shared context holds the gists (`text`); each gist's `summary` is its chunk's grounded
summary and its `evidence` the cited anchors, so `unfold(id, 1)` reads the summary and
`unfold(id, 2)` the raw spans. A chunk's summary reads at most `read_slices` of its slices,
those sharing most with the question (team/summaries.py `pick_slices`, ranked across the
chunk's documents); the rest stay unread. A task without a chunk (one the finalizer added)
first reads the unread slices most related to its goal (again at most `read_slices`), then
the anchors of the run's summaries most related to it; the finalizer is told what is unread.

The finalizer compares the choices against the admitted gists and answers in the official
format ("The correct answer is (B)"). The answer gate (`answer_refusal`): an answer about
documents must rest on at least one admitted gist whose quotes are found in the corpus;
otherwise it is refused, and the chunks no admitted gist covers are read again (while
rounds and task room are left).
"""

from __future__ import annotations

import asyncio
import re
import weakref
from typing import Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from delm_rlm import prompts
from delm_rlm.chunking import Chunk, team_split
from delm_rlm.gists import MAX_TEXT_CHARS, Gist, GistKind
from delm_rlm.state.context import SharedContext
from delm_rlm.state.queue import Task
from delm_rlm.team.reading import question_signals
from delm_rlm.team.replies import ask_json, validation_message
from delm_rlm.team.role import AnswerRefusal, FinalRound, RoundOutcome
from delm_rlm.team.run import FINAL_TASK_ID, AgentState, TeamRun
from delm_rlm.team.summaries import (
    Anchor,
    ChunkSummary,
    SummaryCache,
    TextSpan,
    pick_slices,
    slice_spans,
    summarize_chunk,
)
from delm_rlm.team.tools import add_goal_task
from delm_rlm.verify import Verdict
from delm_rlm.verify.form import MAX_EVIDENCE_ITEMS, MAX_SUMMARY_CHARS
from delm_rlm.verify.support import corpus_quotes, stems, support_problem

GIST_WORDS = 60  # the prompt asks for 50 words; longer gists are cut here (about 100 tokens)
POINTS_CHARS = 3000  # the summary's points shown to the gist writer
RETRIEVED_ANCHORS = 12  # anchors a task without a chunk reads, across the run's summaries
KNOWN_ANCHORS_SHOWN = 6  # a gist citing anchors the summary lacks is told these
SOURCE_AROUND_CHARS = 400  # raw text around each cited anchor shown to the judge

_ANCHOR_ID = re.compile(r"\b[aA](\d{1,3})\b")
_CHOICE_MARK = re.compile(r"\b([A-D]) (supported|contradicted)\b")
_LETTER = (
    re.compile(r"\(([A-D])\)"),
    re.compile(r"^\W*([A-D])\W*$"),
    re.compile(r"^\W*([A-D])[).:\s]"),
    re.compile(r"\b(?:answer|choice|option)\s*(?:is\s*)?:?\s*\(?([A-D])\b", re.IGNORECASE),
)


def _id_list(value: Any) -> Any:
    if value is None:
        return []
    if isinstance(value, (str, int)):
        value = [value]
    return [str(v).strip().strip("[]").lower() for v in value] if isinstance(value, list) else value


class GistReply(BaseModel):
    """A reading agent's JSON gist for its part."""

    gist: str
    anchors: list[str] = Field(default_factory=list)
    choices: dict[str, str] = Field(default_factory=dict)

    @field_validator("anchors", mode="before")
    @classmethod
    def _anchor_ids(cls, value: Any) -> Any:
        return _id_list(value)

    @field_validator("choices", mode="before")
    @classmethod
    def _choice_map(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return {}
        return {str(k).strip().strip("()").upper()[:1]: str(v) for k, v in value.items()}


class FinalReply(BaseModel):
    """The reading finalizer's JSON reply: the answer and the gists it rests on, or tasks."""

    answer: str | None = None
    gists: list[str] = Field(default_factory=list)
    tasks: list[str] = Field(default_factory=list)

    @field_validator("gists", mode="before")
    @classmethod
    def _gist_ids(cls, value: Any) -> Any:
        return _id_list(value)

    @field_validator("answer", mode="before")
    @classmethod
    def _answer_text(cls, value: Any) -> Any:
        return None if value is None else str(value)

    @field_validator("tasks", mode="before")
    @classmethod
    def _goals(cls, value: Any) -> Any:
        items = [value] if isinstance(value, (str, dict)) else value if isinstance(value, list) else []
        return [str(t.get("goal") or t.get("task") or "") if isinstance(t, dict) else str(t) for t in items]


def cited_anchor_ids(text: str) -> list[str]:
    """The anchor ids ("a3") that `text` cites."""
    return [f"a{n}" for n in _ANCHOR_ID.findall(text)]


def choice_verdict(text: str) -> str | None:
    """"supported", "contradicted" or None (not mentioned) from a gist's word for a choice."""
    t = text.casefold()
    if any(w in t for w in ("contradict", "refute", "false", "wrong", "incorrect")):
        return "contradicted"
    if re.search(r"\b(not|no|none|unclear|unknown)\b", t):
        return None
    if any(w in t for w in ("support", "true", "correct", "yes", "match")):
        return "supported"
    return None


def choice_letter(answer: str) -> str | None:
    """The choice an answer names: "(B)", "B", "B) ...", "the answer is B"; None if none."""
    for pattern in _LETTER:
        found = pattern.search(answer.replace("*", "").strip())
        if found:
            return found.group(1).upper()
    return None


def official_answer(letter: str) -> str:
    return f"The correct answer is ({letter})"


_BY_RUN: weakref.WeakKeyDictionary[SharedContext, ReadingSteps] = weakref.WeakKeyDictionary()


class ReadingSteps:
    """One run's reading: its summaries (per chunk, in memory; per slice, in the cache), the
    gist step, the reading finalizer and the answer gate. `ReadingSteps.of(run)` is the one
    instance every agent of the run shares."""

    def __init__(self, run: TeamRun) -> None:
        self.run = run
        self.cache = SummaryCache.beside(run.lm)
        self.summaries: dict[tuple[int, int, int], ChunkSummary] = {}
        self._locks: dict[tuple[int, int, int], asyncio.Lock] = {}

    @classmethod
    def of(cls, run: TeamRun) -> ReadingSteps:
        steps = _BY_RUN.get(run.context)
        if steps is None:
            steps = _BY_RUN[run.context] = cls(run)
        return steps

    @property
    def multiple_choice(self) -> bool:
        return bool(question_signals(self.run.question)["multiple_choice"])

    # -- summaries --------------------------------------------------------------------------

    async def summary_for(self, task: Task, state: AgentState) -> ChunkSummary:
        """The grounded summary the task reads: its chunk's (made once per run, a summary
        with rejected slices made again on a retry), or the anchors most related to its goal."""
        run = self.run
        if state.chunk is not None:
            return await self.chunk_summary(state.chunk, state.agent_id, task.id)
        if not self.summaries:  # nothing read yet (a model plan): read the corpus's chunks first
            for part in self.corpus_chunks():
                await self.chunk_summary(part, state.agent_id, task.id)
        await self.read_unread(task.goal, state.agent_id, task.id)  # the question picked the first slices
        return self.retrieved(f"{task.goal} {run.question}")

    def unread(self) -> list[TextSpan]:
        """The slices no summary of the run has read yet, in corpus order."""
        spans = {s.key: s for summary in self.summaries.values() for s in summary.unread}
        return [spans[k] for k in sorted(spans) if k not in self.summaries]

    async def read_unread(self, query: str, agent: str, task_id: str) -> None:
        """Summarize the unread slices most related to `query` (at most `read_slices`); each
        becomes a summary of its own, so the retrieval pool and `unread` see it."""
        run, spans = self.run, self.unread()
        if not spans:
            return
        chosen = pick_slices([run.docs[s.doc][s.start:s.end] for s in spans], query, run.config.read_slices)
        tags = {"agent": agent, "task": task_id}

        async def read(span: TextSpan) -> None:
            async with self._locks.setdefault(span.key, asyncio.Lock()):
                if span.key not in self.summaries:
                    self.summaries[span.key] = await summarize_chunk(
                        run.lm, run.docs, span.doc, span.start, span.end, cache=self.cache, trace=run.trace,
                        tags=tags, where=f"document {span.doc + 1}, characters {span.start:,}-{span.end:,}")

        await asyncio.gather(*(read(spans[i]) for i in sorted(chosen)))

    def unread_note(self) -> str:
        """For the finalizer: how much of the documents no summary has read."""
        spans = self.unread()
        if not spans:
            return ""
        chars = sum(s.end - s.start for s in spans)
        return (f"Not read yet: {len(spans)} slice(s) of the documents ({chars:,} characters) that share the fewest "
                "words with the question. A task you add reads those most related to its goal.\n")

    async def chunk_summary(self, chunk: Chunk, agent: str, task_id: str) -> ChunkSummary:
        run = self.run
        key = (chunk.doc, chunk.start, chunk.end)
        async with self._locks.setdefault(key, asyncio.Lock()):
            known = self.summaries.get(key)
            if known is not None and known.anchors and not known.rejected:
                return known
            where, tags = run.chunk_desc(chunk), {"agent": agent, "task": task_id}
            # A packed chunk (several documents, or rows) is read document by document: an
            # anchor's offsets are within one document.
            parts = [(d, chunk.start if d == chunk.doc else 0, chunk.end if d == chunk.last_doc else len(run.docs[d]))
                     for d in chunk.documents]
            parts = [(d, s, e) for d, s, e in parts if s < e or len(parts) == 1]
            chosen = self.slices_to_read(parts)
            read = await asyncio.gather(*(
                summarize_chunk(run.lm, run.docs, d, s, e, cache=self.cache, trace=run.trace, tags=tags, where=where,
                                read=lambda texts, keep=keep: keep)
                for (d, s, e), keep in zip(parts, chosen)
            ))
            summary = read[0] if len(read) == 1 else ChunkSummary(
                where=where,
                anchors=[a.model_copy(update={"id": f"a{i}"})
                         for i, a in enumerate((a for part in read for a in part.anchors), start=1)],
                rejected=[r for part in read for r in part.rejected],
                unread=[u for part in read for u in part.unread],
                from_cache=sum(part.from_cache for part in read),
            )
            self.summaries[key] = summary
            return summary

    def slices_to_read(self, parts: list[tuple[int, int, int]]) -> list[set[int]]:
        """For each (doc, start, end) part of a chunk, the indexes of its slices to read: the
        `read_slices` of the whole chunk that share most with the question."""
        run = self.run
        texts = [[run.docs[d][s + lo:s + hi] for lo, hi in slice_spans(run.docs[d][s:e])] for d, s, e in parts]
        where = [(p, i) for p, part in enumerate(texts) for i in range(len(part))]
        chosen = pick_slices([texts[p][i] for p, i in where], run.question, run.config.read_slices)
        return [{i for n, (q, i) in enumerate(where) if q == p and n in chosen} for p in range(len(parts))]

    def corpus_chunks(self) -> list[Chunk]:
        """The corpus split as the planner splits it (the run's chunk size)."""
        cfg, run = self.run.config, self.run
        return team_split(run.docs, chunk_chars=cfg.chunk_chars, chunk_tokens=cfg.chunk_tokens, split_by=cfg.split_by,
                          max_tasks=cfg.max_tasks, count_tokens=run.lm.count_tokens, table=run.corpus.table)

    def retrieved(self, query: str) -> ChunkSummary:
        """The run's anchors most related to `query` (shared word stems), renumbered."""
        wanted = stems(query)
        pool: dict[tuple[int, int, int], Anchor] = {}
        for summary in self.summaries.values():
            for a in summary.anchors:
                pool.setdefault((a.doc, a.start, a.end), a)
        ranked = sorted(pool.values(), key=lambda a: (-len(wanted & stems(f"{a.point} {a.quote}")), a.doc, a.start))
        picked = [a.model_copy(update={"id": f"a{i}"}) for i, a in enumerate(ranked[:RETRIEVED_ANCHORS], start=1)]
        return ChunkSummary(where="the points of the documents most related to this task", anchors=picked,
                            rejected=[] if picked else ["no part of the documents has a grounded summary yet"])

    # -- gists ------------------------------------------------------------------------------

    async def write_gist(self, task: Task, summary: ChunkSummary, state: AgentState) -> tuple[GistReply | None, str | None]:
        """The model's query-aware gist of `summary` for the task (JSON, one repair round)."""
        run = self.run
        retry = prompts.team_retry(task.reasons())
        messages = [
            {"role": "system", "content": prompts.READ_GIST_SYSTEM},
            {"role": "user", "content": prompts.READ_GIST_USER.format(
                question=run.question, task_id=task.id, goal=task.goal, retry=retry, where=summary.where,
                points=summary.render(POINTS_CHARS))},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=task.id, action="writing its gist")
        return await ask_json(run.lm, messages, GistReply, role="root",
                              tags={"agent": state.agent_id, "task": task.id},
                              example='{"gist": "... [a1]", "anchors": ["a1"]}')

    async def propose_gist(self, state: AgentState, summary: ChunkSummary, text: str,
                           anchors: Any = (), choices: Any = None) -> Verdict:
        """Propose a gist of `summary` (cited anchors: `anchors` and the [aN] marks in `text`)
        as a PARTIAL: quotes, then the support rule, then the judge."""
        run = self.run
        words = " ".join(str(text).split()).split()
        text = " ".join(words[:GIST_WORDS]) + (" ..." if len(words) > GIST_WORDS else "")
        ids = list(dict.fromkeys([*_id_list(anchors), *cited_anchor_ids(text)]))
        found = [(i, summary.anchor(i)) for i in ids if i]
        cited = [a for _, a in found if a is not None]
        unknown = [i for i, a in found if a is None]
        marks = {k: choice_verdict(v) for k, v in (choices or {}).items()} if isinstance(choices, dict) else {}
        note = "; ".join(f"{k} {v}" for k, v in sorted(marks.items()) if v and k in "ABCD")
        tail = f" ({note})" if note else ""
        head = f"{state.task_or_final_id}: {text}"
        if len(head) + len(tail) > MAX_TEXT_CHARS:
            head = head[: MAX_TEXT_CHARS - len(tail) - 3] + "..."
        backing = f"Gist: {text}\n" + (f"Choices: {note}\n" if note else "") + f"Grounded summary of {summary.where}:\n"
        try:
            gist = Gist(kind=GistKind.PARTIAL, text=head + tail,
                        summary=backing + summary.render(MAX_SUMMARY_CHARS - len(backing)),
                        # two anchors in one sentence share their passage: it is quoted once
                        evidence=list({(e.doc, e.start, e.end): e for e in (a.evidence() for a in cited)}.values())
                        [:MAX_EVIDENCE_ITEMS],
                        provenance=run.provenance(state))
        except (ValidationError, ValueError) as exc:
            return Verdict(status="rejected", reason=f"bad gist: {validation_message(exc)}")
        allowed = f"{run.question} {state.task.goal if state.task else ''}"
        basis = [(a.point, a.passage) for a in cited]
        source = "\n[...]\n".join(
            run.docs[a.doc][max(0, a.start - SOURCE_AROUND_CHARS): a.end + SOURCE_AROUND_CHARS] for a in cited
        ) or summary.render(MAX_SUMMARY_CHARS)
        return await run.verifier.verify(
            gist, source=source, require_check=False,
            support=lambda _: support_problem(text, basis, allowed, unknown, known=[
                f"[{a.id}] {a.point[:80]}" for a in summary.anchors[:KNOWN_ANCHORS_SHOWN]]),
        )

    # -- the finalizer and the answer gate -------------------------------------------------

    async def finalize(self, state: AgentState, final: FinalRound) -> RoundOutcome:
        """Compare the question (and its choices) with the admitted gists, in one JSON call."""
        run, cfg = self.run, self.run.config
        admitted = {g.id: g for g in run.context.admitted() if g.kind != GistKind.FAILURE}
        messages = [
            {"role": "system", "content": prompts.READ_FINAL_SYSTEM},
            {"role": "user", "content": prompts.READ_FINAL_USER.format(
                question=run.question, round=final.number, rounds=final.rounds,
                gists=run.context.prompt_view(cfg.final_view_tokens),
                failed=final.failed_note + ("" if final.last else self.unread_note()),
                last=prompts.TEAM_FINALIZE_LAST + "\n" if final.last else "")},
        ]
        run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                       action="comparing the question with the verified gists")
        parsed, error = await ask_json(run.lm, messages, FinalReply, role="finalizer",
                                       tags={"agent": state.agent_id, "task": FINAL_TASK_ID},
                                       example='{"answer": "B", "gists": ["g1"]}')
        if parsed is not None and parsed.tasks and not final.last:
            added = []
            for goal in parsed.tasks[: max(0, cfg.max_added_tasks - run.added_tasks)]:
                task = add_goal_task(run, goal, created_by=state.agent_id)
                if task is not None:
                    added.append(task.id)
            run.count_added_tasks(len(added))
            if added:
                return RoundOutcome(None, added)
        answer = parsed.answer if parsed is not None else None
        cited = [i for i in (parsed.gists if parsed is not None else []) if i in admitted]
        state.read_ids.extend(cited or list(admitted))
        if self.multiple_choice:
            letter = choice_letter(answer or "")
            if letter is None:
                letter = self.tally_choices(state)
            answer = official_answer(letter) if letter is not None else answer
        if answer is None and parsed is None:
            run.error = f"the finalizer's reply was not valid JSON: {error}"
        return RoundOutcome(answer, [])

    def tally_choices(self, state: AgentState) -> str | None:
        """The choice the admitted gists' marks support most (supported +1, contradicted -1),
        when one leads; for a finalizer reply that names no choice."""
        score: dict[str, int] = {}
        backers: dict[str, list[str]] = {}
        for g in self.run.context.admitted(kinds=GistKind.PARTIAL):
            for letter, mark in _CHOICE_MARK.findall(g.text):
                score[letter] = score.get(letter, 0) + (1 if mark == "supported" else -1)
                if mark == "supported" and g.id:
                    backers.setdefault(letter, []).append(g.id)
        ranked = sorted(score.items(), key=lambda kv: -kv[1])
        if not ranked or ranked[0][1] <= 0 or (len(ranked) > 1 and ranked[1][1] == ranked[0][1]):
            return None
        letter = ranked[0][0]
        state.read_ids[:] = backers.get(letter, [])
        self.run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                            action=f"the finalizer named no choice: ({letter}) from the gists' choice marks")
        return letter

    def answer_refusal(self, state: AgentState, answer: str, gist_ids: list[str], last: bool) -> AnswerRefusal | None:
        """The answer gate: None when `answer` rests on an admitted gist whose quotes are in
        the corpus; else why not, with the chunks no gist covers queued again (unless `last`)."""
        run = self.run
        admitted = {g.id: g for g in run.context.admitted()}
        supporting = [admitted[i] for i in gist_ids if i in admitted and admitted[i].kind != GistKind.FAILURE]
        read = [g.id for g in supporting if corpus_quotes(g, run.docs)]
        if read:
            run.trace.emit("agent_step", agent=state.agent_id, task=FINAL_TASK_ID,
                           action=f"the answer rests on evidence read from the corpus: {', '.join(map(str, read))}")
            return None
        if supporting:
            reason = (f"the answer rests on no evidence read from the documents: its gists "
                      f"{', '.join(str(g.id) for g in supporting)} quote nothing found in them")
        else:
            reason = "the answer rests on no evidence read from the documents: no verified gist supports it"
        return AnswerRefusal(reason, [] if last else self.read_again(state, reason))

    def read_again(self, state: AgentState, reason: str) -> list[str]:
        """Queue the chunks no admitted gist covers again (within the added-task limit)."""
        run = self.run
        covered = {run.chunk_key(g.provenance.task_id) for g in run.context.admitted(kinds=GistKind.PARTIAL)
                   if corpus_quotes(g, run.docs)}
        first: dict[tuple[int, int, int], str] = {}
        for task_id in run.chunks:
            key = run.chunk_key(task_id)
            if key is not None and key not in covered:
                first.setdefault(key, task_id)
        return run.requeue_chunks(
            first.values(),
            lambda chunk: prompts.READ_EVIDENCE_GOAL.format(chunk_desc=run.chunk_desc(chunk), reason=reason[:200]),
            created_by=state.agent_id)


__all__ = [
    "GIST_WORDS",
    "FinalReply",
    "GistReply",
    "ReadingSteps",
    "choice_letter",
    "choice_verdict",
    "cited_anchor_ids",
    "official_answer",
]
