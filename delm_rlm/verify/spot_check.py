"""The labels stage: spot checks of claims that rest on model-given labels.

A check that calls `classify` is replayed from the run's log, which proves the counts follow
from the labels the model gave, never that the labels are right. So when a claim's check
replayed `classify`, the verifier draws a sample of the items those calls labelled (seeded
by the claim, so the same claim always gets the same sample), labels them again with an
independent call (role "verifier", which may route to another model; the items in another
order, so the prompt is not the agent's), and compares:

- `agreement`: the share of the sampled items both labellings labelled on which they agree;
- each disagreement is a dispute, put to `votes` further independent labellings; the label
  more than half of them give decides it (none does: undecided);
- `settled_agreement` counts the disputes decided for the agent's label as agreeing, and the
  claim is rejected when it falls below `min_agreement`;
- every decided dispute (up to `max_rules` per check) becomes a labelling rule, a CONSTRAINT
  gist proposed through the gate (`verify.label_rules`), which every later `classify` call
  shows.

The report (`verdict.SpotCheckReport`: sample, both labellings, agreement, disputes, rules)
goes on the verdict and into the trace (`labels_checked`). Its model calls are counted under
role "verifier" (verification overhead), its counts in `VerificationStats`.

Which replays belong to a check: `ReplayWatcher` wraps the replayed `classify` and keeps the
recent calls in order; the gate takes a mark when a proposal arrives and, after its code
stage, asks for the calls made since whose items all occur in the claim's source text (checks
take turns on the one verifier kernel, and another chunk's items are not in this one's text).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.classify import DISPUTED_VOTES, RulesSource, check_arguments, label_votes, majority
from delm_rlm.errors import ConfigError, LMError
from delm_rlm.gists import Gist, GistKind
from delm_rlm.trace import Trace
from delm_rlm.values import collapse_whitespace
from delm_rlm.verify.label_rules import rule_gist
from delm_rlm.verify.verdict import LabelDispute, Rejection, SpotCheckReport, Verdict, VerificationStats

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM

DEFAULT_SPOT_CHECK_SAMPLE = 8  # items re-labelled per claim when spot checks are on
DEFAULT_MIN_AGREEMENT = 0.75  # the settled agreement a claim needs (6 of 8)
DEFAULT_MAX_RULES = 3  # labelling rules one spot check may propose
REPLAY_WINDOW = 256  # replayed classify calls kept for attributing them to checks

# Claims a spot check applies to: the ones whose values are counted or reused.
CHECKED_KINDS = frozenset({GistKind.PARTIAL, GistKind.FACT})

# (rule, source, decided): `decided` says which independent votes decided the rule's label.
Propose = Callable[[Gist, "str | None", str], Awaitable[Verdict]]


@dataclass(frozen=True)
class ReplayedLabels:
    """One `classify` call a check replayed: its arguments and the labels the log gave."""

    seq: int
    items: tuple[str, ...]
    labels: tuple[str, ...]
    instruction: str
    result: tuple[str | None, ...]


class ReplayWatcher:
    """Remembers the `classify` calls checks replay (the latest `window` of them)."""

    def __init__(self, window: int = REPLAY_WINDOW) -> None:
        self._lock = threading.Lock()
        self._seen: deque[ReplayedLabels] = deque(maxlen=window)
        self._seq = 0

    def wrap(self, replay_tools: Mapping[str, Callable[..., Any]] | None) -> dict[str, Callable[..., Any]]:
        """`replay_tools` with its `classify` (if any) watched; the others as they are."""
        tools = dict(replay_tools or {})
        if "classify" in tools:
            tools["classify"] = self._watching(tools["classify"])
        return tools

    def _watching(self, replay: Callable[..., Any]) -> Callable[..., Any]:
        def classify(items: Any, labels: Any, instruction: str = "") -> Any:
            result = replay(items, labels, instruction)
            item_list, label_list, text = check_arguments(items, labels, instruction)
            # No items: the check's counterfactual run on an emptied corpus, nothing to sample.
            if item_list and isinstance(result, list) and len(result) == len(item_list):
                with self._lock:
                    self._seq += 1
                    self._seen.append(ReplayedLabels(
                        self._seq, tuple(item_list), tuple(label_list), text, tuple(result)
                    ))
            return result

        return classify

    def mark(self) -> int:
        """A point in the stream of replays: `since(mark, ...)` returns what came after it."""
        with self._lock:
            return self._seq

    def since(self, mark: int, source: str | None) -> list[ReplayedLabels]:
        """The replays after `mark` whose items all occur in `source` (whitespace collapsed),
        the latest one per distinct call; [] without a source (a claim about no text)."""
        if source is None:
            return []
        with self._lock:
            recent = [r for r in self._seen if r.seq > mark]
        text = collapse_whitespace(source)
        latest: dict[tuple[Any, ...], ReplayedLabels] = {}
        for r in recent:
            if r.items and all(collapse_whitespace(item) in text for item in r.items):
                latest[(r.items, r.labels, r.instruction)] = r
        return sorted(latest.values(), key=lambda r: r.seq)


def draw_sample(gist: Gist, replays: Sequence[ReplayedLabels], size: int) -> list[tuple[int, int]]:
    """(replay index, item index) pairs: `size` of the replays' items (all, when fewer),
    drawn by a generator seeded with the claim (task, text, value) and the calls, so the
    same claim over the same labels always gets the same sample. Blank items (never labelled,
    `classify`) are not drawn: a rule about "" would teach nothing."""
    pool = [(r, i) for r, replay in enumerate(replays) for i, item in enumerate(replay.items) if item.strip()]
    seed_text = json.dumps(
        [gist.provenance.task_id, gist.text, gist.value, [[list(r.items), list(r.labels), r.instruction] for r in replays]],
        ensure_ascii=False, default=str,
    )
    rng = random.Random(int(hashlib.sha256(seed_text.encode("utf-8")).hexdigest()[:16], 16))
    drawn = rng.sample(pool, min(size, len(pool)))
    # The re-labelling must not be the agent's prompt again: never the items' own order.
    if len(drawn) > 1 and drawn == sorted(drawn):
        drawn = drawn[1:] + drawn[:1]
    return drawn


class SpotChecker:
    """Re-labels samples of model-given labels (see the module docstring).

    `sample`: items per claim (0: off); `min_agreement`: the settled agreement a claim needs;
    `votes`: independent labellings that decide each dispute (0: none, disputes stay
    undecided and agreement is the plain one); `max_rules`: rules one check may propose;
    `rules`: the labelling rules the re-labelling shows (the same ones the agents' calls
    show); `propose`: how a rule enters the shared context (the gate's own `verify`);
    `on_rejected`: told each classification a rejected claim rests on (the team's log then
    labels those items by several votes when the agent asks again)."""

    def __init__(
        self,
        lm: LM | None,
        docs: Sequence[str],
        *,
        sample: int = 0,
        min_agreement: float = DEFAULT_MIN_AGREEMENT,
        votes: int = 3,
        max_rules: int = DEFAULT_MAX_RULES,
        rules: RulesSource | None = None,
        propose: Propose | None = None,
        trace: Trace | None = None,
        stats: VerificationStats | None = None,
        on_rejected: Callable[[ReplayedLabels], None] | None = None,
    ) -> None:
        if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
            raise ConfigError(f"spot_check_sample must be a whole number >= 0 (0: off), got {sample!r}")
        if not 0.0 <= float(min_agreement) <= 1.0:
            raise ConfigError(f"spot_check_agreement must be between 0 and 1, got {min_agreement!r}")
        if isinstance(max_rules, bool) or not isinstance(max_rules, int) or max_rules < 0:
            raise ConfigError(f"max_label_rules must be a whole number >= 0, got {max_rules!r}")
        self.lm = lm
        self.docs = docs
        self.sample = sample
        self.min_agreement = float(min_agreement)
        self.votes = votes
        self.max_rules = max_rules
        self.rules = rules
        self.propose = propose
        self.trace = trace
        self.stats = stats if stats is not None else VerificationStats()
        self.on_rejected = on_rejected

    @property
    def enabled(self) -> bool:
        return self.sample > 0 and self.lm is not None

    def applies(self, gist: Gist, replays: Sequence[ReplayedLabels]) -> bool:
        """Whether `gist` rests on model-given labels this checker should re-label."""
        return self.enabled and gist.kind in CHECKED_KINDS and any(r.items for r in replays)

    async def check(self, gist: Gist, replays: Sequence[ReplayedLabels], source: str | None) -> SpotCheckReport:
        """Re-label a sample, settle the disputes, propose rules; the report, or a `Rejection`
        (stage "labels", recorded, carrying the report) when settled agreement is too low.
        A failing model rejects without a record (it says nothing about the claim)."""
        try:
            return await self._check(gist, replays, source)
        except LMError as exc:
            raise Rejection("labels", f"the spot check's model failed ({exc}); propose again later", record=False) from exc

    async def _check(self, gist: Gist, replays: Sequence[ReplayedLabels], source: str | None) -> SpotCheckReport:
        assert self.lm is not None  # applies() said so
        lm = self.lm
        drawn = draw_sample(gist, replays, self.sample)
        items = [replays[r].items[i] for r, i in drawn]
        given = [replays[r].result[i] for r, i in drawn]
        relabelled: list[str | None] = [None] * len(drawn)
        tags = {"agent": "verifier", "task": gist.provenance.task_id, "purpose": "spot check"}
        groups = self._groups(drawn, replays)
        # One independent labelling of the sample, per distinct label set and instruction.
        async def relabel(key: tuple[tuple[str, ...], str], positions: list[int]) -> None:
            (labels, instruction), shown = key, [items[p] for p in positions]
            got = (await label_votes(lm, shown, labels, instruction, role="verifier", tags=tags, rules=self.rules))[0]
            for p, label in zip(positions, got):
                relabelled[p] = label

        await asyncio.gather(*(relabel(k, ps) for k, ps in groups.items()))
        compared = [p for p in range(len(drawn)) if relabelled[p] is not None]
        disputed = [p for p in compared if relabelled[p] != given[p]]
        decided: dict[int, tuple[str | None, list[str | None]]] = {}
        if disputed and self.votes > 0:
            async def settle(key: tuple[tuple[str, ...], str], positions: list[int]) -> None:
                (labels, instruction), shown = key, [items[p] for p in positions]
                passes = await label_votes(
                    lm, shown, labels, instruction, votes=self.votes, first_vote=1, role="verifier",
                    tags={**tags, "purpose": "label dispute"}, rules=self.rules,
                )
                for n, p in enumerate(positions):
                    said = [one[n] for one in passes]
                    decided[p] = (majority(said, strict=True), said)

            by_key: dict[tuple[tuple[str, ...], str], list[int]] = {}
            for key, positions in groups.items():
                mine = [p for p in positions if p in disputed]
                if mine:
                    by_key[key] = mine
            await asyncio.gather(*(settle(k, ps) for k, ps in by_key.items()))
        disputes = [
            LabelDispute(item=items[p], given=given[p], relabelled=relabelled[p],
                         votes=decided.get(p, (None, []))[1], decided=decided.get(p, (None, []))[0])
            for p in disputed
        ]
        agree = len(compared) - len(disputed)
        upheld = sum(1 for d in disputes if d.decided is not None and d.decided == d.given)
        agreement = agree / len(compared) if compared else 1.0
        settled = (agree + upheld) / len(compared) if compared else 1.0
        rule_ids = await self._propose_rules(gist, disputes, source)
        report = SpotCheckReport(
            sample=items, given=given, relabelled=relabelled, labels=sorted({lab for r in replays for lab in r.labels}),
            agreement=round(agreement, 4), settled_agreement=round(settled, 4), min_agreement=self.min_agreement,
            passed=settled >= self.min_agreement, disputes=disputes, rule_ids=rule_ids,
        )
        self.stats.spot_checks += 1
        self.stats.spot_check_items += len(items)
        if self.trace is not None:
            self.trace.emit("labels_checked", agent="verifier", task=gist.provenance.task_id,
                            gist_id=gist.id, **report.model_dump(mode="json"))
        if not report.passed:
            self.stats.spot_check_rejections += 1
            if self.on_rejected is not None:
                for replay in replays:
                    self.on_rejected(replay)
            raise Rejection("labels", self._reason(report), spot_check=report)
        return report

    @staticmethod
    def _groups(drawn: Sequence[tuple[int, int]], replays: Sequence[ReplayedLabels]) -> dict[tuple[tuple[str, ...], str], list[int]]:
        """Sample positions by the (labels, instruction) their call used, in drawn order."""
        groups: dict[tuple[tuple[str, ...], str], list[int]] = {}
        for p, (r, _) in enumerate(drawn):
            groups.setdefault((replays[r].labels, replays[r].instruction), []).append(p)
        return groups

    async def _propose_rules(self, gist: Gist, disputes: Sequence[LabelDispute], source: str | None) -> list[str]:
        """Each decided dispute (up to `max_rules`) proposed as a labelling rule; the ids of
        the ones admitted or merged into an existing rule."""
        if self.propose is None:
            return []
        ids: list[str] = []
        for d in [d for d in disputes if d.decided is not None][: self.max_rules]:
            other = d.relabelled if d.decided == d.given else d.given
            rule = rule_gist(d.item, str(d.decided), other, self.docs, task_id=gist.provenance.task_id, votes=d.votes)
            self.stats.label_rules += 1
            started = time.perf_counter()
            said = ", ".join(v if v is not None else "(no label)" for v in d.votes)
            verdict = await self.propose(rule, source, f"decided by {len(d.votes)} independent votes ({said})")
            # The rule's own verification counted its time already: not again in this stage's.
            nested = time.perf_counter() - started
            self.stats.seconds -= nested
            self.stats.seconds_by_stage["labels"] -= nested
            if verdict.ok and verdict.admitted_id:
                ids.append(verdict.admitted_id)
        return list(dict.fromkeys(ids))

    @staticmethod
    def _reason(report: SpotCheckReport) -> str:
        def short(text: str) -> str:
            text = collapse_whitespace(text)
            return text if len(text) <= 60 else text[:57] + "..."

        examples = "; ".join(f"{short(d.item)!r}: {d.given} -> {d.relabelled}" for d in report.disputes[:3])
        new_rules = prompts.SPOT_CHECK_NEW_RULES.format(ids=", ".join(report.rule_ids)) if report.rule_ids else ""
        return prompts.SPOT_CHECK_REJECTED.format(
            n=len(report.sample), agreement=report.settled_agreement, threshold=report.min_agreement,
            examples=examples or "(none)", rules=new_rules, votes=DISPUTED_VOTES,
        )
