"""The run context: what one run of a team holds (TeamRun), and what one agent's REPL tools
need to know about its current task (AgentState). Every role and every team module works
on these two; their methods only read or update their own fields (and the added-task count
in the store)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from delm_rlm.chunking import Chunk
from delm_rlm.classify import ClassificationLog
from delm_rlm.corpus import Corpus
from delm_rlm.errors import BudgetExceeded
from delm_rlm.gists import Gist, GistKind, Provenance
from delm_rlm.llm import LM, Usage
from delm_rlm.rlm import Cell
from delm_rlm.state.context import SharedContext
from delm_rlm.state.queue import Task, TaskQueue
from delm_rlm.state.protocol import RunState
from delm_rlm.team.config import SandboxFactory, TeamConfig
from delm_rlm.team.coordination import Coordination
from delm_rlm.trace import Trace
from delm_rlm.verify import MethodGate, Verdict, Verifier

# The task id the finalizer's steps and gists are recorded under.
FINAL_TASK_ID = "final"


@dataclass
class AgentState:
    """What the REPL tools of one agent need to know about its current task."""

    agent_id: str
    task: Task | None = None
    chunk: Chunk | None = None
    finalizing: bool = False
    last_round: bool = False
    verdicts: list[Verdict] = field(default_factory=list)
    added_tasks: list[str] = field(default_factory=list)
    read_ids: list[str] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)  # the current task's cells (hybrid)
    failed_method: Gist | None = None  # the method that failed on the current task's chunk

    def begin_task(self, task: Task, chunk: Chunk | None) -> None:
        """Forget the previous task's verdicts and cells: `task` starts now."""
        self.task = task
        self.chunk = chunk
        self.verdicts = []
        self.cells = []
        self.finalizing = False
        self.failed_method = None

    def begin_final_round(self, last: bool) -> None:
        """The agent finalizes now; `last`: no more tasks may be added."""
        self.finalizing, self.last_round = True, last
        self.added_tasks, self.read_ids = [], []

    @property
    def task_or_final_id(self) -> str:
        return self.task.id if self.task is not None else FINAL_TASK_ID

    @property
    def first_attempt(self) -> bool:
        """Whether the current task is on its first claim (see `TeamRun.rejects_empty`)."""
        return self.task is not None and self.task.attempts <= 1


@dataclass
class TeamRun:
    """One run: its settings, its state (store, queue, shared context, trace), the verifier,
    the team's gateway session, and the outcome the agents reach."""

    config: TeamConfig
    run_dir: Path
    store: RunState
    corpus: Corpus
    docs: list[str]
    question: str
    description: str
    trace: Trace
    queue: TaskQueue
    context: SharedContext
    verifier: Verifier
    lm: LM
    sandbox_factory: SandboxFactory
    chunks: dict[str, Chunk] = field(default_factory=dict)  # task id -> its slice of the corpus
    # The plan (team/scout.py): "whole" (one task, `whole_task`, over the whole corpus) or
    # "split"; `replan` says why a whole plan that failed falls back to the split.
    plan: str = "split"
    whole_task: str | None = None
    whole_answer: str | None = None
    replan: str | None = None
    # The scout found no record states what the question asks about: every chunk's records
    # must be labelled (classify), so a partial that matched nothing is never true.
    labelling: bool = False
    methods: MethodGate | None = None  # shared methods (hybrid mode; verify/methods.py)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finalize_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    answer: str | None = None
    answer_gist_ids: list[str] = field(default_factory=list)
    status: str = "answered"
    error: str | None = None
    exceeded: BudgetExceeded | None = None
    finalize_round: int = 0
    added_tasks: int = 0
    agent_errors: list[str] = field(default_factory=list)
    # Usage of the run's earlier sessions (a resumed run), read back from its trace.
    prior_usage: Usage = field(default_factory=Usage)
    prior_usage_by_role: dict[str, Usage] = field(default_factory=dict)
    # The agents' classify() results, replayed by the verifier when it re-runs their code.
    classifications: ClassificationLog = field(default_factory=ClassificationLog)
    # Several processes on one run (`Team.join`): which one finalizes, this process's agent-id
    # prefix, whether it joined a run another process started, and whether another process
    # ended the run (its ending is then in the meta, not this process's to write).
    coordination: Coordination | None = None
    agent_prefix: str = ""
    agent_ids: set[str] = field(default_factory=set)  # this process's agents
    joined: bool = False
    ended_elsewhere: bool = False

    def chunk_text(self, chunk: Chunk | None) -> str:
        """A task's slice of the corpus; the whole corpus for a task without one."""
        if chunk is not None:
            return chunk.text(self.docs, self.corpus.table)
        return self.corpus.value if isinstance(self.corpus.value, str) else "\n\n".join(self.docs)

    def rejects_empty(self, state: AgentState) -> bool:
        """Whether the gate sends back a partial that matched nothing (empty, or counts all
        under None): always when the plan needs labels, else on a task's first attempt only
        (so a chunk that truly holds nothing costs one retry)."""
        return self.labelling or state.first_attempt

    def chunk_desc(self, chunk: Chunk | None) -> str:
        if chunk is None:
            return "the whole corpus (chunk == context)"
        return chunk.describe(len(self.chunks) or 1, self.corpus.names)

    def provenance(self, state: AgentState) -> Provenance:
        return Provenance(
            task_id=state.task_or_final_id,
            agent_id=state.agent_id,
            model=self.lm.model_for("finalizer" if state.finalizing else "root"),
        )

    def count_added_tasks(self, n: int) -> None:
        """Count `n` tasks the agents added (a store counter: a resume, or another process
        on the same run, goes on from the stored count)."""
        self.added_tasks = self.store.add_to_counter("added_tasks", n)

    def chunk_key(self, task_id: str | None) -> tuple[int, int, int] | None:
        chunk = self.chunks.get(task_id or "")
        return None if chunk is None else (chunk.doc, chunk.start, chunk.end)

    def chunks_without_partial(self) -> list[str]:
        """The chunk tasks whose chunk no admitted PARTIAL covers (from that task or a later
        one on the same chunk), first task per chunk: their tasks failed."""
        covered = {self.chunk_key(g.provenance.task_id) for g in self.context.admitted(kinds=GistKind.PARTIAL)}
        seen: set[tuple[int, int, int]] = set()
        missing: list[str] = []
        for task_id in self.chunks:
            key = self.chunk_key(task_id)
            if key is not None and key not in covered and key not in seen:
                seen.add(key)
                missing.append(task_id)
        return missing

    def requeue_chunks(self, task_ids: Iterable[str], goal: Callable[[Chunk], str], created_by: str) -> list[str]:
        """A new task for each of these tasks' chunks, within the added-task limit; the new
        tasks' ids (their chunks stored in the meta, the count kept)."""
        room = max(0, self.config.max_added_tasks - self.added_tasks)
        added: list[str] = []
        for task_id in task_ids:
            chunk = self.chunks.get(task_id)
            if chunk is None or len(added) >= room:
                continue
            task = self.queue.add(goal(chunk), created_by=created_by)
            self.chunks[task.id] = chunk
            added.append(task.id)
        if added:
            self.store.set_meta(chunks={k: c.model_dump() for k, c in self.chunks.items()})
            self.count_added_tasks(len(added))
        return added

    def partial_answer(self) -> str | None:
        """The best answer a run that stopped early has: what is verified so far."""
        view = self.context.prompt_view(2000)
        return None if view.startswith("(no verified") else f"Verified so far:\n{view}"
