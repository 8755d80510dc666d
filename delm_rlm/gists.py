"""Gists: the typed, verified entries of a run's shared context.

A gist is what every agent's prompt shows (`text`, at most 300 characters), backed by a
longer grounded `summary` and by evidence pointers (a quoted span of a corpus document, or
code and its output) that `SharedContext.unfold` reads on demand. Agents propose gists as
PENDING; only the verifier moves them to ADMITTED, REJECTED or MERGED, and an ADMITTED gist
that lost a conflict with another (two claims about one thing that disagree) to SUPERSEDED,
pointing at the winner (`superseded_by`).
"""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import datetime, timezone
from enum import Enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from delm_rlm.values import non_finite_path

MAX_TEXT_CHARS = 300


class GistKind(str, Enum):
    FACT = "fact"  # a verified statement about the corpus
    PARTIAL = "partial"  # a partial result (per chunk/document) that the finalizer aggregates
    FAILURE = "failure"  # a dead end: what was tried and why it failed, so no one repeats it
    CONSTRAINT = "constraint"  # a rule governing how the question or corpus must be read
    EVIDENCE = "evidence"  # raw support (quotes, outputs) others may build on
    QUESTION = "question"  # an open question worth a task
    # Code that computes a chunk's partial from `chunk` alone (no model); its value holds
    # {"code", "combine", "version", "shape", "home", "trials", "amends"} (verify/methods.py).
    METHOD = "method"


# Order of the prompt view, highest value first. CONSTRAINTs are few and change how every
# other gist and task must be read; METHODs do a chunk's work without a model; FACTs are
# verified reusable results; PARTIALs are the values the finalizer aggregates; FAILUREs save
# repeated dead ends; EVIDENCE is mostly reachable through unfold; QUESTIONs are not
# knowledge at all.
KIND_PRIORITY: tuple[GistKind, ...] = (
    GistKind.CONSTRAINT,
    GistKind.METHOD,
    GistKind.FACT,
    GistKind.PARTIAL,
    GistKind.FAILURE,
    GistKind.EVIDENCE,
    GistKind.QUESTION,
)


def normalize_text(text: str) -> str:
    """Case-, whitespace- and punctuation-insensitive form used for duplicate detection."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = re.sub(r"[^\w\s.]", " ", text)  # keep '.' inside numbers like 3.5
    text = re.sub(r"\.(?!\d)", " ", text)
    return " ".join(text.split())


def text_numbers(text: str) -> set[str]:
    """The number-bearing words of a text, normalized ('chunk 3' -> {'3'})."""
    return {t for t in normalize_text(text).split() if any(c.isdigit() for c in t)}


def dedupe_key(kind: GistKind | str, text: str) -> str:
    """What two gists must share to be duplicates: their kind and the numbers in their text
    (duplicates are exact or near matches with the same numbers). The store indexes it, so
    finding a gist's duplicate reads a few candidates instead of every admitted gist."""
    return f"{parse_kind(kind).value}|{' '.join(sorted(text_numbers(text)))}"


def parse_kind(value: GistKind | str) -> GistKind:
    """A kind from any case of its name ("FACT", "fact"); a clear error for unknown kinds."""
    if isinstance(value, GistKind):
        return value
    lowered = str(value).strip().lower()
    if lowered not in {k.value for k in GistKind}:
        raise ValueError(
            f"unknown gist kind {value!r}; use one of " + ", ".join(k.name for k in GistKind)
        )
    return GistKind(lowered)


class GistStatus(str, Enum):
    PENDING = "pending"
    ADMITTED = "admitted"
    REJECTED = "rejected"
    MERGED = "merged"
    SUPERSEDED = "superseded"  # admitted, then lost a conflict: `superseded_by` names the winner


class QuoteEvidence(BaseModel):
    """A verbatim span of corpus document `doc`, characters [start, end)."""

    type: Literal["quote"] = "quote"
    doc: int = Field(ge=0, description="document index in the corpus (0-based)")
    start: int = Field(ge=0)
    end: int = Field(ge=0)
    quote: str = Field(min_length=1)

    @model_validator(mode="after")
    def _span_order(self) -> QuoteEvidence:
        if self.end < self.start:
            raise ValueError(
                f"quote span end ({self.end}) is before start ({self.start}); "
                "give the character offsets as [start, end) with start <= end"
            )
        return self


class CodeEvidence(BaseModel):
    """Code that was run and the output it printed."""

    type: Literal["code"] = "code"
    code: str = Field(min_length=1)
    output: str


Evidence = Annotated[QuoteEvidence | CodeEvidence, Field(discriminator="type")]


class Provenance(BaseModel):
    task_id: str | None = None
    agent_id: str | None = None
    model: str | None = None
    created_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class Gist(BaseModel):
    id: str | None = Field(default=None, description='assigned by the store: "g1", "g2", ...')
    kind: GistKind
    text: str
    summary: str | None = None
    evidence: list[Evidence] = Field(default_factory=list)
    check: str | None = Field(default=None, description="code that prints the claimed value")
    value: Any | None = Field(default=None, description="the claimed value (JSON)")
    tolerance: float = Field(
        default=0.0, ge=0.0, allow_inf_nan=False,
        description="kept for stored gists; the verifier sets how values compare, never a proposer",
    )
    provenance: Provenance = Field(default_factory=Provenance)
    status: GistStatus = GistStatus.PENDING
    note: str | None = Field(default=None, description="the verifier's note")
    merged_into: str | None = None
    support: int = Field(default=1, ge=1, description="how many proposals this gist stands for")
    superseded_by: str | None = Field(default=None, description="the gist that won a conflict with this one")

    @field_validator("kind", mode="before")
    @classmethod
    def _kind_any_case(cls, value: Any) -> Any:
        # Agents type kinds in the REPL as "FACT" or "fact"; both mean the same kind.
        if isinstance(value, str):
            return parse_kind(value)
        return value

    @field_validator("text")
    @classmethod
    def _text_short(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("gist text is empty; state the claim in one short sentence")
        if len(value) > MAX_TEXT_CHARS:
            raise ValueError(
                f"gist text is {len(value)} characters; the limit is {MAX_TEXT_CHARS}. "
                "Keep `text` to one short claim and put the detail in `summary`."
            )
        return value

    @field_validator("id", "merged_into")
    @classmethod
    def _gist_id(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"g[1-9]\d*", value):
            raise ValueError(f"gist ids look like 'g1', 'g2', ...; got {value!r}")
        return value

    @field_validator("tolerance", mode="before")
    @classmethod
    def _legacy_tolerance(cls, value: Any) -> Any:
        # Stores written before finite tolerances were enforced hold inf as JSON null: read
        # it as no tolerance, so such a run can still be listed and resumed.
        return 0.0 if value is None else value

    @field_validator("value")
    @classmethod
    def _json_value(cls, value: Any) -> Any:
        where = non_finite_path(value)
        if where is not None:
            raise ValueError(
                f"gist value has a non-finite number (inf or nan) at {where}: values must be "
                "finite numbers (JSON has no inf or nan)"
            )
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"gist value must be plain JSON (number, string, bool, list, dict, null): {exc}"
            ) from exc
        return value

    @model_validator(mode="after")
    def _merge_consistent(self) -> Gist:
        if self.status == GistStatus.MERGED and self.merged_into is None:
            raise ValueError("a MERGED gist must name the gist it was merged into (merged_into)")
        if self.status != GistStatus.MERGED and self.merged_into is not None:
            raise ValueError("merged_into is only set on MERGED gists")
        if self.merged_into is not None and self.merged_into == self.id:
            raise ValueError(f"gist {self.id} cannot be merged into itself")
        return self

    @model_validator(mode="after")
    def _supersede_consistent(self) -> Gist:
        if self.superseded_by is not None and not re.fullmatch(r"g[1-9]\d*", self.superseded_by):
            raise ValueError(f"gist ids look like 'g1', 'g2', ...; got {self.superseded_by!r}")
        if (self.status == GistStatus.SUPERSEDED) != (self.superseded_by is not None):
            raise ValueError("a SUPERSEDED gist names the gist that won (superseded_by), and only it does")
        if self.superseded_by is not None and self.superseded_by == self.id:
            raise ValueError(f"gist {self.id} cannot be superseded by itself")
        return self

    def label(self) -> str:
        """The one-line form every prompt shows: '[g3 FACT] text'."""
        flat = " ".join(self.text.split())
        return f"[{self.id or 'g?'} {self.kind.name}] {flat}"
