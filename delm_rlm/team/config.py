"""TeamConfig: the one declaration of a team's settings, their defaults and their rules.

`Team(lm, **settings)` validates its settings here, and a run stores the result in its meta
so that `Team.resume` runs the same way. What each setting does is documented in `Team`'s
docstring (a test keeps the two in step).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, model_validator

from delm_rlm.chunking import DEFAULT_CHUNK_CHARS, DEFAULT_MAX_TASKS, SplitBy
from delm_rlm.llm import Budget
from sandbox import SandboxFactory, SandboxSpec

TeamMode = Literal["hybrid", "delm"]
PlanMode = Literal["auto", "whole", "split", "model"]
# What a run's meta stores for a sandbox given as a factory (it cannot be stored).
CUSTOM_SANDBOX = "custom"


class TeamConfig(BaseModel):
    """Everything that shapes a run; stored in the run's meta so `resume` runs the same way."""

    agents: int = Field(default=4, ge=1, le=256)
    mode: TeamMode = "hybrid"
    plan: PlanMode = "auto"
    sandbox: str = "local"
    # The local kernel's isolation: auto (bubblewrap, else refuse), bubblewrap, unshare, none.
    isolation: Literal["auto", "bubblewrap", "unshare", "none"] = "auto"
    chunk_chars: int | None = Field(default=DEFAULT_CHUNK_CHARS, ge=1)
    chunk_tokens: int | None = Field(default=None, ge=1)
    split_by: SplitBy = "auto"
    # The initial split's task cap: over it, documents and rows are packed into fewer chunks.
    max_tasks: int = Field(default=DEFAULT_MAX_TASKS, ge=1)
    max_iterations: int = Field(default=8, ge=1)
    cell_timeout: float | None = Field(default=None, gt=0)
    lease_s: float = Field(default=60.0, gt=0)
    max_attempts: int = Field(default=3, ge=1)
    judge: bool = True
    check_timeout: float = Field(default=30.0, gt=0)
    gist_tokens: int = Field(default=800, ge=0)
    final_gist_tokens: int | None = Field(default=None, ge=0)  # None: 4 x gist_tokens
    max_finalize_rounds: int = Field(default=3, ge=1)
    max_plan_tasks: int = Field(default=16, ge=1)
    max_added_tasks: int = Field(default=32, ge=0)
    # The reading path: the most slices (~8,000 chars each) one task's summary reads, those
    # sharing most with the question (None: every slice).
    read_slices: int | None = Field(default=1, ge=1)
    # Model-given labels (issue 14): a partial resting on classify() is spot-checked on this
    # many of its items by the verifier role (0: off); below the agreement it is rejected.
    spot_check_sample: int = Field(default=8, ge=0)
    spot_check_agreement: float = Field(default=0.75, ge=0.0, le=1.0)
    max_label_rules: int = Field(default=3, ge=0)
    votes: int = Field(default=3, ge=1)
    resolve_conflicts: bool = True
    classify_votes: int = Field(default=1, ge=1)
    # Coverage rule of verify.agreement (a counts partial accounts for its chunk's records):
    # the share of records its counts may miss; None turns the rule off.
    coverage_tolerance: float | None = Field(default=0.1, ge=0.0, lt=1.0)
    budget: Budget | None = None

    @model_validator(mode="after")
    def _settings_fit_together(self) -> TeamConfig:
        if self.chunk_chars is None and self.chunk_tokens is None:
            raise ValueError("give a chunk size: chunk_chars=... or chunk_tokens=...")
        if self.plan == "whole" and self.mode != "hybrid":
            raise ValueError("plan='whole' runs one program over the corpus: it needs mode='hybrid'")
        return self

    @property
    def final_view_tokens(self) -> int:
        """The finalizer's gist view: wider than an agent's, since it reads the whole result
        (in hybrid mode it also reads every gist through gists() in code)."""
        return self.final_gist_tokens if self.final_gist_tokens is not None else 4 * self.gist_tokens
