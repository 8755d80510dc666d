"""Labelling many short texts with a model, in batches: the REPL's `classify` tool.

Counting over a property the text does not state ("how many questions ask for a place?")
needs a label per line. One model call per line pays a prompt per line; one call for
everything overflows a small model's window and drops lines. `classify` packs the items into
numbered batches, reads "<n>: <label>" replies back onto their items, maps near-miss labels
("Location", "label: location.") onto the allowed ones, and asks again, one item at a time,
for the items a batch reply left out or labelled with something not allowed.

Every classification a run makes is kept in a `ClassificationLog`, so the verifier can replay
an agent's code, `classify` calls included, without a model: the replay proves the counts
follow from the labels the model gave; it cannot prove the labels right (the log says so;
the verifier's spot checks re-label a sample, `delm_rlm.verify.spot_check`).

Two options buy label quality: `rules` (labelling rules every prompt shows, e.g. the team's
admitted CONSTRAINT gists, so that agents label alike) and `votes` (k independent labellings
per item, the majority kept; k = 1 by default).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from delm_rlm import prompts
from delm_rlm.errors import ConfigError, NotFound
from delm_rlm.state.protocol import ClassificationRecord, ClassificationRecords

if TYPE_CHECKING:
    from delm_rlm.llm.gateway import LM

DEFAULT_BATCH_ITEMS = 20
DEFAULT_BATCH_CHARS = 2500
ITEM_CHARS = 400  # an item longer than this is cut in the prompt (labels rarely need more)
RULES_CHARS = 1500  # labelling rules shown in one prompt, at most (the first ones given win)
# Labellings per item when classify runs again on items a spot check found mislabelled: the
# same prompt again would get the same labels (temperature 0, the response cache), so the
# second call buys independent labellings instead and keeps the majority.
DISPUTED_VOTES = 3

# Labelling rules: a list of texts, or a function returning them when a call starts (rules
# admitted while a run goes on reach the calls made after).
RulesSource = Sequence[str] | Callable[[], Sequence[str]]

_NUMBERED = re.compile(r"^\s*(?:item\s*)?#?(\d+)\s*[:.)\]-]\s*(.*?)\s*$", re.IGNORECASE)


def _plain(text: str) -> str:
    text = text.casefold().strip()
    text = re.sub(r"^(?:label|category|answer|class)\s*[:=-]\s*", "", text)
    return " ".join(re.sub(r"[^\w\s]", " ", text).split())


def match_label(reply: str, labels: Sequence[str]) -> str | None:
    """The allowed label a reply names, or None. Exact (ignoring case, punctuation and a
    'Label:' prefix) first; then the one allowed label the reply contains (a label inside a
    longer named one does not count); then the one label the reply is a prefix of
    ("numeric" -> "numeric value"). Two labels named: None, never a guess."""
    said = _plain(reply)
    if not said:
        return None
    plain = {label: _plain(label) for label in labels}
    for label, p in plain.items():
        if p == said:
            return label
    inside = [label for label, p in plain.items() if p and re.search(rf"\b{re.escape(p)}\b", said)]
    # "human being" names "human" too: drop labels inside another named one; two left = no guess.
    named = [a for a in inside if not any(b != a and plain[a] in plain[b] for b in inside)]
    if named:
        return named[0] if len(named) == 1 else None
    if len(said) >= 3:
        starts = [label for label, p in plain.items() if p.startswith(said)]
        if len(starts) == 1:
            return starts[0]
    return None


def parse_numbered_labels(reply: str, n: int, labels: Sequence[str]) -> list[str | None]:
    """Read "<number>: <label>" lines (numbers 1..n) into a list of n labels; items with no
    line, a number out of range, a repeated number or no allowed label stay None."""
    out: list[str | None] = [None] * n
    seen: set[int] = set()
    for line in reply.splitlines():
        m = _NUMBERED.match(line)
        if not m:
            continue
        i = int(m.group(1)) - 1
        if not 0 <= i < n or i in seen:
            continue
        seen.add(i)
        out[i] = match_label(m.group(2), labels)
    return out


def batch_indices(items: Sequence[str], max_items: int, max_chars: int) -> list[list[int]]:
    """Consecutive batches of item indices, each at most `max_items` items and (unless one
    item alone is longer) `max_chars` characters of item text."""
    batches: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, item in enumerate(items):
        length = min(len(item), ITEM_CHARS)
        if current and (len(current) >= max_items or size + length > max_chars):
            batches.append(current)
            current, size = [], 0
        current.append(i)
        size += length
    if current:
        batches.append(current)
    return batches


def _item_text(item: str) -> str:
    text = " ".join(item.split())
    return text if len(text) <= ITEM_CHARS else text[: ITEM_CHARS - 3] + "..."


def check_arguments(items: Any, labels: Any, instruction: Any) -> tuple[list[str], list[str], str]:
    """classify's arguments as it uses them (items as str, labels stripped, instruction
    stripped); TypeError or ValueError saying what to pass."""
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise TypeError(
            "classify(items, labels) takes a list of texts as items, e.g. chunk.splitlines(); "
            f"got {type(items).__name__}"
        )
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)) or not labels:
        raise TypeError(
            "classify(items, labels) takes a non-empty list of label strings, e.g. "
            f"['spam', 'ham']; got {labels!r}"[:300]
        )
    if not all(isinstance(label, str) for label in labels):
        raise TypeError(
            "labels must be strings, the labels the question names written out; got "
            f"{list(labels)!r}"[:300]
        )
    if len(labels) < 2:
        raise ValueError(
            f"classify needs at least two labels to choose from; got {list(labels)!r} "
            "(add 'other' for everything else)"[:300]
        )
    label_list = [label.strip() for label in labels]
    if any(not label for label in label_list) or len(set(label_list)) != len(label_list):
        raise ValueError(f"labels must be distinct non-empty strings; got {label_list!r}"[:300])
    return [str(item) for item in items], label_list, str(instruction or "").strip()


class ClassificationLog:
    """Every classification of a run, keyed by (items, labels, instruction): what the
    verifier's replay of `classify` answers from. Thread-safe (the bridge calls tools from
    its own thread).

    Given a store (`state.protocol.ClassificationRecords`, e.g. the run's `RunStore`), every
    record is written through to it and the records already there are read back, so a
    resumed run, or a verifier in another process, replays what earlier agents got. Without
    one it lives in this process only.

    `rules` and `votes` are what every `classify` call recording here uses unless it passes
    its own (see `classify`): the run's labelling rules and its k. A classification that a
    spot check rejected (`dispute`) is labelled `DISPUTED_VOTES` times when asked for again
    (in this process: the verifier that rejected it serves the agent that asks again)."""

    def __init__(
        self, store: ClassificationRecords | None = None, *, rules: RulesSource | None = None, votes: int = 1
    ) -> None:
        check_votes(votes)
        self.rules = rules
        self.votes = votes
        self._lock = threading.Lock()
        self._results: dict[str, list[str | None]] = {}
        self._records: list[ClassificationRecord] = []  # kept here only without a store
        self._store = store
        self._loaded = 0  # how many of the store's records are in _results
        self._disputed: set[str] = set()  # keys a spot check rejected
        if store is not None:
            self._load_from(store)

    @staticmethod
    def key(items: Sequence[str], labels: Sequence[str], instruction: str) -> str:
        blob = json.dumps([list(items), list(labels), instruction], ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def record(self, items: Sequence[str], labels: Sequence[str], instruction: str, result: list[str | None]) -> None:
        key = self.key(items, labels, instruction)
        entry = ClassificationRecord(
            key=key, labels=list(labels), instruction=instruction, result=list(result), items=list(items)
        )
        with self._lock:
            if self._store is not None:  # stored first: memory never holds what the store lost
                self._store.append_classification(entry)
            else:
                self._records.append(entry)
            self._results[key] = list(result)

    def dispute(self, items: Sequence[str], labels: Sequence[str], instruction: str) -> None:
        """A spot check found these labels wrong: the next call with these arguments votes."""
        with self._lock:
            self._disputed.add(self.key(items, labels, instruction))

    def votes_for(self, items: Sequence[str], labels: Sequence[str], instruction: str) -> int:
        """The labellings per item a call with these arguments gets: the log's k, or at least
        `DISPUTED_VOTES` for a disputed classification."""
        with self._lock:
            disputed = self.key(items, labels, instruction) in self._disputed
        return max(self.votes, DISPUTED_VOTES) if disputed else self.votes

    def records(self) -> list[ClassificationRecord]:
        """Every classification recorded, oldest first, items included: the store's (every
        process's) when there is one, else this log's own."""
        if self._store is not None:
            return self._store.classifications()
        with self._lock:
            return list(self._records)

    def __len__(self) -> int:
        with self._lock:
            return len(self._results)

    def replay(self, items: Any, labels: Any, instruction: str = "") -> list[str | None]:
        """The labels an agent's `classify` call got for exactly these arguments."""
        item_list, label_list, text = check_arguments(items, labels, instruction)
        key = self.key(item_list, label_list, text)
        with self._lock:
            found = self._results.get(key)
        if found is None and self._store is not None:
            self._load_from(self._store)  # another process may have recorded it since
            with self._lock:
                found = self._results.get(key)
        if found is None:
            raise NotFound(
                "classify was not run on these items with these labels by the agent: a check "
                "replays only the classifications the agent made (same items, labels, instruction)"
            )
        return list(found)

    def _load_from(self, store: ClassificationRecords) -> None:
        with self._lock:
            records = store.classifications()
            # In append order, our own records included: the last record for a key wins.
            for record in records[self._loaded:]:
                self._results[record.key] = list(record.result)
            self._loaded = len(records)


def check_votes(votes: Any) -> int:
    """`votes` if it is a whole number >= 1; else ConfigError."""
    if isinstance(votes, bool) or not isinstance(votes, int) or votes < 1:
        raise ConfigError(f"votes (independent labellings per item) must be a whole number >= 1, got {votes!r}")
    return votes


def rules_now(rules: RulesSource | None, limit: int = RULES_CHARS) -> list[str]:
    """The rules a call shows: read now (a function is called), blank ones dropped, whitespace
    collapsed, and no more than fit in `limit` characters (earlier rules first)."""
    given = rules() if callable(rules) else (rules or [])
    shown: list[str] = []
    used = 0
    for rule in given:
        text = " ".join(str(rule).split())
        if not text:
            continue
        if used + len(text) > limit:
            break
        shown.append(text)
        used += len(text)
    return shown


def majority(votes: Sequence[str | None], *, strict: bool = False) -> str | None:
    """The label most votes gave (None votes do not count); a tie goes to the tied label that
    came first in `votes`, i.e. the earliest labelling's. `strict`: only a label given by
    more than half of all votes, else None. No label at all: None."""
    counts: dict[str, int] = {}
    for vote in votes:
        if vote is not None:
            counts[vote] = counts.get(vote, 0) + 1  # dicts keep first-seen order: the tie-break
    if not counts:
        return None
    best = max(counts.values())
    if strict and best * 2 <= len(votes):
        return None
    return next(label for label, n in counts.items() if n == best)


def vote_order(n: int, vote: int) -> list[int]:
    """The order labelling number `vote` (0-based) shows n items in: vote 0 keeps theirs;
    later votes a shuffle fixed by (n, vote), so their batches hold other neighbours."""
    order = list(range(n))
    if vote:
        random.Random(f"classify-vote-{n}-{vote}").shuffle(order)
    return order


async def label_votes(
    lm: LM,
    items: Sequence[str],
    labels: Sequence[str],
    instruction: str = "",
    *,
    votes: int = 1,
    first_vote: int = 0,
    role: str = "sub",
    tags: dict[str, Any] | None = None,
    rules: RulesSource | None = None,
    batch_items: int = DEFAULT_BATCH_ITEMS,
    batch_chars: int = DEFAULT_BATCH_CHARS,
) -> list[list[str | None]]:
    """`votes` labellings of `items` (already checked by `check_arguments`), one list per
    labelling. Labelling v (counted from `first_vote`) is a full pass: numbered batches, then
    one item at a time for what a batch missed. From v = 1 on, the items come in another
    order (`vote_order`) and the prompt says which labelling it is: at temperature 0 the same
    prompt gets the same reply (and the response cache would serve it), so a vote must be a
    different prompt to be a vote at all."""
    if batch_items < 1 or batch_chars < 1:
        raise ConfigError("batch_items and batch_chars must be >= 1")
    label_text = "; ".join(labels)
    shown_rules = rules_now(rules)
    rules_text = prompts.CLASSIFY_RULES.format(rules="\n".join(f"- {r}" for r in shown_rules)) if shown_rules else ""
    tag_base = dict(tags or {})
    n = len(items)

    async def one_pass(vote: int) -> list[str | None]:
        results: list[str | None] = [None] * n
        marker = prompts.CLASSIFY_VOTE.format(vote=vote + 1, votes=first_vote + votes) if vote else ""
        guide = f"{instruction}\n" if instruction else ""
        guide += rules_text + marker

        async def ask(prompt: str) -> str:
            call_tags = {**tag_base, "prompt_tail": prompt[-500:], **({"vote": vote + 1} if vote else {})}
            return (await lm.complete(prompt, role=role, tags=call_tags)).text

        async def run_batch(indices: list[int]) -> None:
            numbered = "\n".join(f"{k}. {_item_text(items[i])}" for k, i in enumerate(indices, start=1))
            prompt = prompts.CLASSIFY_BATCH.format(labels=label_text, instruction=guide, n=len(indices), items=numbered)
            got = parse_numbered_labels(await ask(prompt), len(indices), labels)
            for k, i in enumerate(indices):
                results[i] = got[k]

        async def run_one(i: int) -> None:
            prompt = prompts.CLASSIFY_ONE.format(labels=label_text, instruction=guide, item=_item_text(items[i]))
            reply = await ask(prompt)
            results[i] = match_label(reply.strip().splitlines()[0] if reply.strip() else "", labels)

        # A blank item (an empty line of chunk.splitlines()) has nothing to label: it stays
        # None and costs no call (a model asked about "" answers anything at all).
        order = [i for i in vote_order(n, vote) if items[i].strip()]
        shown = [items[i] for i in order]
        batches = [[order[k] for k in b] for b in batch_indices(shown, batch_items, batch_chars)]
        await asyncio.gather(*(run_batch(b) for b in batches))
        missing = [i for i in order if results[i] is None]
        if missing:
            await asyncio.gather(*(run_one(i) for i in missing))
        return results

    return list(await asyncio.gather(*(one_pass(first_vote + v) for v in range(votes))))


async def classify(
    lm: LM,
    items: Any,
    labels: Any,
    instruction: str = "",
    *,
    role: str = "sub",
    tags: dict[str, Any] | None = None,
    batch_items: int = DEFAULT_BATCH_ITEMS,
    batch_chars: int = DEFAULT_BATCH_CHARS,
    log: ClassificationLog | None = None,
    rules: RulesSource | None = None,
    votes: int | None = None,
) -> list[str | None]:
    """One allowed label per item (None where the model gave none of them twice, and for a
    blank item, which is never sent).

    `instruction` says what the labels mean ("the kind of answer each question asks for").
    Batches run concurrently (the gateway's concurrency limit applies); budgets and usage
    count every call, as for llm_query.

    `rules`: labelling rules every prompt shows (None: the log's); `votes`: k labellings per
    item, each item keeping the label most of them gave, a tie going to the earliest
    labelling's label among the tied (None: the log's k, more for a disputed classification
    (`ClassificationLog.votes_for`), else 1). k labellings cost k times
    the calls, all counted under `role`. The log records the labels kept."""
    item_list, label_list, text = check_arguments(items, labels, instruction)
    default = log.votes_for(item_list, label_list, text) if log is not None else 1
    k = check_votes(votes if votes is not None else default)
    shown_rules = rules if rules is not None else (log.rules if log is not None else None)
    passes = await label_votes(
        lm, item_list, label_list, text, votes=k, role=role, tags=tags, rules=shown_rules,
        batch_items=batch_items, batch_chars=batch_chars,
    )
    results = [majority([p[i] for p in passes]) for i in range(len(item_list))]
    if log is not None:
        log.record(item_list, label_list, text, results)
    return results
