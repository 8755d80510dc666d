"""SharedContext: the verified shared context over a run's store.

Agents see it through `prompt_view` (admitted gists that fit a token budget, highest-value
kinds first, one "[g3 FACT] text" line each; open QUESTIONs apart, under their own heading) and `unfold` (summary, then raw evidence read
back from the corpus by pointer). The verifier writes it through `add_pending`, `admit`,
`reject` (optionally recording a FAILURE gist in the same transaction), `merge`,
`add_support`, `record` and `supersede` (a conflict's loser), and asks `find_duplicate` before admitting. It reads and writes
the store only through `state.protocol.RunState`.

Token counts in the prompt view are estimated as ceil(characters / 4): close enough for
English text and code for a budget, and free to compute.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import Any

from delm_rlm.gists import (
    KIND_PRIORITY,
    CodeEvidence,
    Evidence,
    Gist,
    GistKind,
    GistStatus,
    QuoteEvidence,
    dedupe_key,
    normalize_text,
    text_numbers,
)
from delm_rlm.errors import ConfigError
from delm_rlm.state.protocol import RunState
from delm_rlm.values import values_equal

NEAR_DUPLICATE_JACCARD = 0.9
NO_GISTS = "(no verified gists yet)"
OPEN_QUESTIONS_HEADING = "Open questions (asked by agents, not verified; not answers):"
_LEVELS = {0: "text", 1: "summary", 2: "raw evidence"}


def estimate_tokens(text: str) -> int:
    """ceil(chars / 4): the prompt view's token estimate."""
    return math.ceil(len(text) / 4)


def _normalize_ws(text: str) -> str:
    return " ".join(text.split())


class SharedContext:
    def __init__(self, store: RunState, corpus_docs: Sequence[str] | None = None) -> None:
        self.store = store
        self.corpus_docs = corpus_docs

    # -- verifier's writes -----------------------------------------------------------------

    def add_pending(self, gist: Gist) -> Gist:
        """Store a proposed gist as PENDING (any id/status/note it carries is ignored)."""
        fresh = gist.model_copy(
            update={"id": None, "status": GistStatus.PENDING, "note": None, "merged_into": None,
                    "superseded_by": None}
        )
        return self.store.add_gist(Gist.model_validate(fresh.model_dump()))

    def admit(
        self, gist_id: str, note: str | None = None, evidence: Sequence[Evidence] = ()
    ) -> Gist:
        """PENDING -> ADMITTED; `evidence` (e.g. the check's output) is appended to the gist's."""
        with self.store.transaction() as tx:
            gist = self._pending(tx.get_gist(gist_id), "admit")
            return tx.update_gist(
                gist_id,
                status=GistStatus.ADMITTED,
                note=note,
                evidence=[*gist.evidence, *evidence],
            )

    def reject(
        self, gist_id: str, note: str, failure: Gist | None = None
    ) -> tuple[Gist, Gist | None]:
        """PENDING -> REJECTED with the reason; `failure` (a FAILURE gist saying what was
        tried and why it failed) is recorded as ADMITTED in the same transaction."""
        if not note or not note.strip():
            raise ConfigError("a rejection needs a note saying why (agents read it)")
        if failure is not None and failure.kind != GistKind.FAILURE:
            raise ConfigError(f"the failure record must be a FAILURE gist, not {failure.kind.name}")
        with self.store.transaction() as tx:
            self._pending(tx.get_gist(gist_id), "reject")
            rejected = tx.update_gist(gist_id, status=GistStatus.REJECTED, note=note.strip())
            recorded = None
            if failure is not None:
                recorded = tx.add_gist(self._as_admitted(failure, note=f"rejection of {gist_id}"))
        return rejected, recorded

    def merge(self, gist_id: str, into: str, note: str | None = None) -> Gist:
        """PENDING -> MERGED into an ADMITTED gist, whose support grows by this one's.
        Returns the updated target gist."""
        if gist_id == into:
            raise ConfigError(f"cannot merge {gist_id} into itself")
        with self.store.transaction() as tx:
            gist = self._pending(tx.get_gist(gist_id), "merge")
            target = tx.get_gist(into)
            if target.status != GistStatus.ADMITTED:
                raise ConfigError(
                    f"can only merge into an ADMITTED gist; {into} is {target.status.value}"
                )
            tx.update_gist(
                gist_id,
                status=GistStatus.MERGED,
                merged_into=into,
                note=note or f"duplicate of {into}",
            )
            return tx.update_gist(into, support=target.support + gist.support)

    def add_support(self, gist_id: str, n: int = 1) -> Gist:
        """Count `n` more independent findings for an ADMITTED gist (e.g. a rejection that
        repeats a recorded FAILURE); read and written in one transaction, so concurrent
        verifiers never lose a count. Returns the updated gist."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"support grows by a whole number >= 1, got {n!r}")
        with self.store.transaction() as tx:
            gist = tx.get_gist(gist_id)
            if gist.status != GistStatus.ADMITTED:
                raise ConfigError(
                    f"only ADMITTED gists gain support; {gist_id} is {gist.status.value}"
                )
            return tx.update_gist(gist_id, support=gist.support + n)

    def supersede(self, gist_id: str, winner: str, note: str, failure: Gist | None = None) -> tuple[Gist, Gist | None]:
        """ADMITTED -> SUPERSEDED: `gist_id` lost a conflict with the ADMITTED gist `winner`,
        which it now points at; `failure` (a FAILURE gist saying why) is recorded as ADMITTED
        in the same transaction. Nothing is deleted: the loser stays readable by id."""
        if gist_id == winner:
            raise ConfigError(f"{gist_id} cannot be superseded by itself")
        if not note or not note.strip():
            raise ConfigError("superseding a gist needs a note saying why (agents read it)")
        if failure is not None and failure.kind != GistKind.FAILURE:
            raise ConfigError(f"the failure record must be a FAILURE gist, not {failure.kind.name}")
        with self.store.transaction() as tx:
            for gid in (gist_id, winner):
                status = tx.get_gist(gid).status
                if status != GistStatus.ADMITTED:
                    raise ConfigError(f"only ADMITTED gists take part in a conflict; {gid} is {status.value}")
            loser = tx.update_gist(gist_id, status=GistStatus.SUPERSEDED, superseded_by=winner, note=note.strip())
            recorded = tx.add_gist(self._as_admitted(failure, note=f"conflict lost by {gist_id}")) if failure else None
        return loser, recorded

    def record(self, gist: Gist, note: str | None = None) -> Gist:
        """Add a gist directly as ADMITTED: for what the system itself knows to be true
        (e.g. a FAILURE gist about a rejection, a CONSTRAINT from the run's config)."""
        return self.store.add_gist(self._as_admitted(gist, note=note))

    @staticmethod
    def _as_admitted(gist: Gist, note: str | None) -> Gist:
        data = gist.model_dump()
        data.update(id=None, status=GistStatus.ADMITTED, note=note, merged_into=None, superseded_by=None)
        return Gist.model_validate(data)

    @staticmethod
    def _pending(gist: Gist, action: str) -> Gist:
        if gist.status != GistStatus.PENDING:
            raise ConfigError(
                f"cannot {action} {gist.id}: it is already {gist.status.value} "
                "(only PENDING gists are decided)"
            )
        return gist

    # -- duplicates ----------------------------------------------------------------------------

    def find_duplicate(self, gist: Gist) -> Gist | None:
        """The earliest ADMITTED gist of the same kind and the same value (numbers within
        the larger tolerance) whose text is the same after normalization, or near it:
        token Jaccard >= 0.9 with exactly the same numbers in the text (so 'chunk 3' never
        merges into 'chunk 4'). None when there is no such gist."""
        norm = normalize_text(gist.text)
        tokens = set(norm.split())
        numbers = text_numbers(gist.text)
        # Only gists with the same kind and text numbers can match: an indexed lookup.
        candidates = self.store.list_gists(
            status=GistStatus.ADMITTED, kinds=gist.kind, dedupe_key=dedupe_key(gist.kind, gist.text)
        )
        for other in candidates:
            if other.id == gist.id:
                continue
            if not values_equal(gist.value, other.value, max(gist.tolerance, other.tolerance)):
                continue
            other_norm = normalize_text(other.text)
            if other_norm == norm:
                return other
            other_tokens = set(other_norm.split())
            union = tokens | other_tokens
            jaccard = len(tokens & other_tokens) / len(union) if union else 1.0
            if jaccard >= NEAR_DUPLICATE_JACCARD and text_numbers(other.text) == numbers:
                return other
        return None

    # -- agents' reads -------------------------------------------------------------------------

    def admitted(self, kinds: Any = None) -> list[Gist]:
        """ADMITTED gists in prompt-view order (kind priority, then support, then id)."""
        gists = self.store.list_gists(status=GistStatus.ADMITTED, kinds=kinds)
        rank = {kind: i for i, kind in enumerate(KIND_PRIORITY)}
        return sorted(gists, key=lambda g: (rank[g.kind], -g.support, int(g.id[1:])))

    def prompt_view(self, token_budget: int) -> str:
        """Admitted gists as '[g3 FACT] text' lines, highest-value kinds first, within
        `token_budget` (estimated as chars/4, including the closing 'left out' line).

        QUESTION gists come last, under their own heading (`OPEN_QUESTIONS_HEADING`): an
        agent asked them, nothing verified them, and they are never shown among the
        verified gists. The lines are always a prefix of that order; when some gists do not
        fit, a last line says how many (by kind) and how to read them. If not even that line
        fits, it is still returned: the agent must learn that gists exist."""
        if token_budget < 0:
            raise ConfigError(f"token_budget must be >= 0, got {token_budget}")
        gists = self.admitted()
        if not gists:
            return NO_GISTS
        lines: list[str] = []
        if all(g.kind == GistKind.QUESTION for g in gists):
            lines.append(NO_GISTS)
        used = sum(estimate_tokens(line + "\n") for line in lines)
        shown = 0
        for i, gist in enumerate(gists):
            heading = gist.kind == GistKind.QUESTION and (i == 0 or gists[i - 1].kind != GistKind.QUESTION)
            entry = ([OPEN_QUESTIONS_HEADING] if heading else []) + [gist.label()]
            cost = sum(estimate_tokens(line + "\n") for line in entry)
            rest = gists[i + 1 :]
            # Reserve room for the 'left out' line unless this is the last gist.
            reserve = estimate_tokens(self._left_out_line(rest)) if rest else 0
            if used + cost + reserve > token_budget:
                break
            lines.extend(entry)
            used += cost
            shown += 1
        if shown < len(gists):
            lines.append(self._left_out_line(gists[shown:]))
        return "\n".join(lines)

    @staticmethod
    def _left_out_line(left: list[Gist]) -> str:
        by_kind = Counter(g.kind for g in left)
        parts = ", ".join(f"{by_kind[k]} {k.name}" for k in KIND_PRIORITY if by_kind[k])
        what = "verified gists" if not by_kind[GistKind.QUESTION] else (
            "open questions" if by_kind[GistKind.QUESTION] == len(left) else "gists and open questions"
        )
        return (
            f"({len(left)} more {what} left out for space: {parts}; "
            "list them with gists() and read one with unfold(id, level))"
        )

    def unfold(self, gist_id: str, level: int = 1) -> str:
        """0: the gist's line; 1: its summary (the text when it has none); 2: raw evidence:
        each quote re-read from the corpus at its pointer beside the stored quote, each
        code evidence with its output, and the check code with the claimed value."""
        if level not in _LEVELS:
            raise ConfigError(
                f"unfold level must be 0 (text), 1 (summary) or 2 (raw evidence); got {level!r}"
            )
        gist = self.store.get_gist(gist_id)
        head = gist.label()
        if gist.status != GistStatus.ADMITTED:
            head += f"  (status: {gist.status.value}"
            head += f", merged into {gist.merged_into})" if gist.merged_into else ""
            head += f", superseded by {gist.superseded_by})" if gist.superseded_by else ""
            head += "" if gist.merged_into or gist.superseded_by else ")"
        if level == 0:
            return head
        if level == 1:
            if gist.summary:
                return f"{head}\nsummary: {gist.summary}"
            return f"{head}\nsummary: (none; the text above is all there is)"
        out = [head]
        if gist.note:
            out.append(f"verifier: {gist.note}")
        if not gist.evidence:
            out.append("evidence: (none)")
        for n, ev in enumerate(gist.evidence, start=1):
            out.extend(self._evidence_lines(n, ev))
        if gist.check is not None:
            out.append("check code:")
            out.append(_indent(gist.check))
        if gist.value is not None or gist.check is not None:
            tol = f" (tolerance {gist.tolerance:g})" if gist.tolerance else ""
            out.append(f"claimed value: {gist.value!r}{tol}")
        return "\n".join(out)

    def _evidence_lines(self, n: int, ev: QuoteEvidence | CodeEvidence) -> list[str]:
        if isinstance(ev, CodeEvidence):
            return [f"evidence {n}: code", _indent(ev.code), "  output:", _indent(ev.output, 4)]
        lines = [f"evidence {n}: quote from doc {ev.doc} [{ev.start}:{ev.end}]",
                 f"  stored: {ev.quote!r}"]
        docs = self.corpus_docs
        if docs is None:
            lines.append("  source: (corpus not available to this context)")
        elif ev.doc >= len(docs):
            lines.append(f"  source: (doc {ev.doc} does not exist; the corpus has {len(docs)} docs)")
        elif ev.end > len(docs[ev.doc]):
            lines.append(
                f"  source: (span ends at {ev.end}, past the end of doc {ev.doc} "
                f"({len(docs[ev.doc])} chars))"
            )
        else:
            source = docs[ev.doc][ev.start : ev.end]
            same = _normalize_ws(source) == _normalize_ws(ev.quote)
            lines.append(f"  source: {source!r}" + ("" if same else "  (DIFFERS from the stored quote)"))
        return lines


def _indent(text: str, spaces: int = 2) -> str:
    pad = " " * spaces
    return "\n".join(pad + line for line in (text.splitlines() or [""]))
