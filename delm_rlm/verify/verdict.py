"""What the admission gate answers: a `Verdict` per proposal, `VerificationStats` for the
verifier's own cost, and `Rejection`, how a stage stops a proposal."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

VerdictStatus = Literal["admitted", "rejected", "merged"]

# The timed stages, in the order a proposal meets them.
STAGES = ("form", "quotes", "code", "judge")


class Verdict(BaseModel):
    """What happened to one proposal. `id` is the stored proposal; `admitted_id` the gist it
    counts as now (itself when admitted, the target when merged, None when rejected)."""

    status: VerdictStatus
    id: str | None = None
    admitted_id: str | None = None
    reason: str = ""
    stage: str | None = Field(default=None, description="the stage that decided a rejection")
    checks: list[str] = Field(default_factory=list)
    output: str | None = None
    failure_gist_id: str | None = None

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
    seconds: float = 0.0
    seconds_by_stage: dict[str, float] = Field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))


class Rejection(Exception):
    """Raised by a stage to reject the proposal it is checking; `Verifier.verify` catches it
    and answers a rejected `Verdict`, so it never reaches the verifier's caller.

    `record`: whether the rejection says something about the corpus, so a FAILURE gist
    records it (form problems and the verifier's own failures do not); `output`: what the
    check printed, kept on the FAILURE gist."""

    def __init__(self, stage: str, reason: str, *, record: bool = True, output: str | None = None) -> None:
        super().__init__(reason)
        self.stage = stage
        self.reason = reason
        self.record = record
        self.output = output
