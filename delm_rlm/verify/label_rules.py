"""Shared labelling rules: the run's CONSTRAINT gists, shown to every `classify` call.

Two agents labelling alike items differently is invisible to code checks (each count follows
from its own labels). A rule says how such items are read ("a question asking for a year is
numeric value"); once admitted, every later `classify` call of every agent shows it
(`label_rules(context)` is the provider `ClassificationLog(rules=...)` reads at each call), and
so does the verifier's own re-labelling. Rules come from two places:

- an agent that meets an ambiguous case proposes a CONSTRAINT gist itself, quoting the items;
- a disagreement a spot check found and its votes decided (`rule_gist`) becomes one, with the
  item quoted from the corpus, proposed through the gate like any gist: its quote is checked,
  and the votes that decided it stand in for the judge (a rule whose item the corpus does not
  hold goes to the judge).

The prompt view lists CONSTRAINT gists first (`delm_rlm.gists.KIND_PRIORITY`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from delm_rlm import prompts
from delm_rlm.gists import Gist, GistKind, Provenance, QuoteEvidence
from delm_rlm.state.context import SharedContext
from delm_rlm.values import collapse_whitespace

RULE_ITEM_CHARS = 160  # of the item, in the rule's one-line text
MAX_QUOTED_ITEM_CHARS = 2000  # a longer item is not quoted (the judge then reads the chunk)


def label_rules(context: SharedContext) -> Callable[[], list[str]]:
    """The rules provider for `classify`: the text of every admitted CONSTRAINT gist, in the
    prompt view's order (most supported first, then oldest), read when it is called."""

    def rules() -> list[str]:
        return [g.text for g in context.admitted(kinds=GistKind.CONSTRAINT)]

    return rules


def locate_item(item: str, docs: Sequence[str]) -> QuoteEvidence | None:
    """A quote pointer to where `item` (stripped) first occurs in the corpus, or None."""
    needle = item.strip()
    if not needle or len(needle) > MAX_QUOTED_ITEM_CHARS:
        return None
    for d, doc in enumerate(docs):
        at = doc.find(needle)
        if at >= 0:
            return QuoteEvidence(doc=d, start=at, end=at + len(needle), quote=needle)
    return None


def rule_gist(
    item: str, label: str, other: str | None, docs: Sequence[str], *, task_id: str | None,
    votes: Sequence[str | None] = (),
) -> Gist:
    """The CONSTRAINT gist saying `item` takes `label` rather than `other`, quoting the item
    where the corpus has it (no quote: the judge reads the claim against its chunk)."""
    shown = collapse_whitespace(item)
    if len(shown) > RULE_ITEM_CHARS:
        shown = shown[: RULE_ITEM_CHARS - 3] + "..."
    text = prompts.LABEL_RULE.format(item=shown.replace('"', "'"), label=label, other=other or "any other label")
    quote = locate_item(item, docs)
    said = ", ".join(v if v is not None else "(no label)" for v in votes)
    return Gist(
        kind=GistKind.CONSTRAINT,
        text=text[:300],
        summary=(f"Two labellings of this item disagreed ({other} and {label}); "
                 f"independent votes: {said or 'none'}; the majority said {label}."),
        evidence=[quote] if quote is not None else [],
        provenance=Provenance(task_id=task_id, agent_id="verifier"),
    )
