"""What the admission gate answers: a `Verdict` per proposal (with the spot check of its
labels and the conflicts it took part in, when there were any), `VerificationStats` for the
verifier's own cost, and `Rejection`, how a stage stops a proposal."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

VerdictStatus = Literal["admitted", "rejected", "merged"]

# The timed stages, in the order a proposal meets them.
STAGES = ("form", "quotes", "code", "labels", "support", "judge", "conflicts")


class LabelDispute(BaseModel):
    """One sampled item the spot check labelled otherwise than the agent's `classify` call,
    and what the independent votes on it said (`decided`: the label more than half of them
    gave; None: no such label, or no votes were asked)."""

    item: str
    given: str | None
    relabelled: str | None
    votes: list[str | None] = Field(default_factory=list)
    decided: str | None = None


class SpotCheckReport(BaseModel):
    """The spot check of a claim resting on model-given labels: the sampled items, the labels
    the agent's calls gave them and the verifier's independent ones. `agreement`: the share
    of the items both labelled on which they agree; `settled_agreement` also counts the
    disputes the votes settled for the agent's label, and is what `min_agreement` is asked
    of. `rule_ids`: the labelling rules (CONSTRAINT gists) the decided disputes became."""

    sample: list[str]
    given: list[str | None]
    relabelled: list[str | None]
    labels: list[str]
    agreement: float
    settled_agreement: float
    min_agreement: float
    passed: bool
    disputes: list[LabelDispute] = Field(default_factory=list)
    rule_ids: list[str] = Field(default_factory=list)


class ConflictOutcome(BaseModel):
    """A conflict between two admitted claims about one thing, and how it ended. `method`:
    "re-execution" (both carry checks and exactly one still prints its value), "vote"
    (independent verifier calls; `votes` holds the winner each named, None for a reply not
    understood) or "unresolved" (no majority could be had: both stay, the trace says so)."""

    gist_ids: list[str]
    method: Literal["re-execution", "vote", "unresolved"]
    winner: str | None = None
    loser: str | None = None
    reason: str
    votes: list[str | None] = Field(default_factory=list)
    reexecution: dict[str, str] = Field(default_factory=dict)
    failure_gist_id: str | None = None


class Verdict(BaseModel):
    """What happened to one proposal. `id` is the stored proposal; `admitted_id` the gist it
    counts as now (itself when admitted, the target when merged, the winner when it was
    admitted and then lost a conflict (`superseded_by`), None when rejected)."""

    status: VerdictStatus
    id: str | None = None
    admitted_id: str | None = None
    reason: str = ""
    stage: str | None = Field(default=None, description="the stage that decided a rejection")
    checks: list[str] = Field(default_factory=list)
    output: str | None = None
    failure_gist_id: str | None = None
    spot_check: SpotCheckReport | None = None
    conflicts: list[ConflictOutcome] = Field(default_factory=list)
    superseded_by: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != "rejected"

    def for_agent(self) -> dict[str, Any]:
        """The JSON an agent's `propose()` returns."""
        out: dict[str, Any] = {"status": self.status}
        if self.admitted_id:
            out["id"] = self.admitted_id
        if self.status == "rejected":
            out["reason"] = self.reason
        elif self.status == "merged":
            out["note"] = f"same as {self.admitted_id}, which is already verified"
        if self.superseded_by is not None:
            lost = next((c.reason for c in self.conflicts if c.loser == self.id), "")
            out.update(status="superseded", note=f"it disagreed with {self.superseded_by}, which won: {lost}"[:500])
        elif any(c.winner == self.id for c in self.conflicts):
            beaten = ", ".join(c.loser or "?" for c in self.conflicts if c.winner == self.id)
            out["note"] = f"it disagreed with {beaten}, and won: {beaten} is superseded"
        if self.spot_check is not None and not self.spot_check.passed:
            out["spot_check"] = {"agreement": self.spot_check.settled_agreement, "items": len(self.spot_check.sample)}
        if self.output is not None:
            out["check_output"] = self.output[:500]
        return out


class VerificationStats(BaseModel):
    """The verifier's own cost, next to the judge's model usage (role 'verifier')."""

    proposed: int = 0
    admitted: int = 0
    rejected: int = 0
    merged: int = 0
    checks_run: dict[str, int] = Field(default_factory=lambda: dict.fromkeys(STAGES, 0))
    # Check interpreters lost to a timeout or crash, plus verifier sandboxes rebuilt after a
    # check broke the kernel (every check runs in a fresh forked interpreter anyway).
    kernel_restarts: int = 0
    spot_checks: int = 0  # claims whose labels were re-labelled on a sample
    spot_check_items: int = 0  # items re-labelled, in all
    spot_check_rejections: int = 0
    label_rules: int = 0  # labelling rules (CONSTRAINT gists) proposed from disputes
    conflicts: int = 0  # conflicts between admitted claims found
    superseded: int = 0  # claims that lost one
    seconds: float = 0.0
    seconds_by_stage: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


class Rejection(Exception):
    """Raised by a stage to reject the proposal it is checking; `Verifier.verify` catches it
    and answers a rejected `Verdict`, so it never reaches the verifier's caller.

    `record`: whether the rejection says something about the corpus, so a FAILURE gist
    records it (form problems and the verifier's own failures do not); `output`: what the
    check printed, kept on the FAILURE gist."""

    def __init__(
        self, stage: str, reason: str, *, record: bool = True, output: str | None = None,
        spot_check: SpotCheckReport | None = None,
    ) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.record = record
        self.output = output
        self.spot_check = spot_check  # the labels stage's report, kept on the verdict
