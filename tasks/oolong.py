"""OOLONG: load published synth/real rows as Tasks, and generate OOLONG-synth-style rows.

Loading keeps the published column layout unchanged (``task.raw`` is the row). The generator
builds windows from a labelled pool (TREC by default) with the published line format,
intro/outro, date and user-id distributions, per-window label skew and question templates,
and computes every gold answer exactly from the generated lines.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np

from delm_rlm.errors import ConfigError, ScoringError
from tasks.answers import oolong_synth_gold
from tasks.model import DatasetError, Task
from tasks.pool import Pool, read_pool
from tasks.rows import read_rows, require

__all__ = [
    "ANSWER_TYPES",
    "REAL_COLUMNS",
    "SYNTH_COLUMNS",
    "TASK_GROUPS",
    "TASK_TYPES",
    "expected_lines",
    "filter_tasks",
    "generate",
    "load",
    "load_hf",
    "row_to_task",
    "write_rows",
]

# Column order of the published oolongbench/oolong-synth parquet files.
SYNTH_COLUMNS: tuple[str, ...] = (
    "id",
    "context_len",
    "dataset",
    "context_window_text",
    "context_window_text_with_labels",
    "question",
    "task_group",
    "task",
    "answer",
    "answer_type",
    "input_subset",
    "num_labels",
    "context_window_id",
)
REAL_COLUMNS: tuple[str, ...] = (
    "id",
    "context_window_id",
    "context_window_text",
    "question",
    "answer",
    "question_type",
    "episodes",
    "campaign",
)
ANSWER_TYPES: tuple[str, ...] = (
    "ANSWER_TYPE.LABEL",
    "ANSWER_TYPE.COMPARISON",
    "ANSWER_TYPE.NUMERIC",
    "ANSWER_TYPE.USER",
    "ANSWER_TYPE.DATE",
    "ANSWER_TYPE.MONTH_YEAR",
)
TASK_TYPES: tuple[str, ...] = (
    "TASK_TYPE.MOST_FREQ",
    "TASK_TYPE.LEAST_FREQ",
    "TASK_TYPE.SECOND_MOST_FREQ",
    "TASK_TYPE.RELATIVE_FREQ",
    "TASK_TYPE.NUMERIC_ONE_CLASS",
    "TASK_TYPE.REPRESENTED_N_TIMES",
)
TASK_GROUPS: tuple[str, ...] = ("counting", "user", "timeline")

Variant = Literal["auto", "synth", "real"]

# ---------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------


def _detect_variant(row: dict[str, Any]) -> Literal["synth", "real"]:
    if "answer_type" in row or "context_window_text_with_labels" in row:
        return "synth"
    if "question_type" in row or "campaign" in row or "episodes" in row:
        return "real"
    return "synth"  # the synth checks then name the missing field


def row_to_task(
    row: dict[str, Any],
    *,
    variant: Variant = "auto",
    labels: bool = False,
    file: str | Path | None = None,
    rowno: int | None = None,
    _texts: dict[str, str] | None = None,
) -> Task:
    """One published OOLONG row -> Task (scorer ``oolong_synth`` or ``oolong_real``).

    ``labels=True`` uses ``context_window_text_with_labels`` (synth only) and gives the task id
    the suffix ``-labels`` so labelled and unlabelled runs of one row do not collide.
    """
    kind = _detect_variant(row) if variant == "auto" else variant
    texts = _texts if _texts is not None else {}
    if kind == "synth":
        rid = require(row, "id", int, file, rowno)
        context_len = require(row, "context_len", int, file, rowno)
        dataset = require(row, "dataset", str, file, rowno)
        plain = require(row, "context_window_text", str, file, rowno)
        labelled = require(row, "context_window_text_with_labels", str, file, rowno)
        question = require(row, "question", str, file, rowno)
        group = require(row, "task_group", str, file, rowno)
        task_type = require(row, "task", str, file, rowno)
        answer = require(row, "answer", str, file, rowno)
        answer_type = require(row, "answer_type", str, file, rowno)
        subset = require(row, "input_subset", (str, bool), file, rowno)
        num_labels = require(row, "num_labels", int, file, rowno)
        window_id = require(row, "context_window_id", int, file, rowno)
        if answer_type not in ANSWER_TYPES:
            raise DatasetError(file, rowno, "answer_type", f"{answer_type!r} is not one of {', '.join(ANSWER_TYPES)}")
        if group not in TASK_GROUPS:
            raise DatasetError(file, rowno, "task_group", f"{group!r} is not one of {', '.join(TASK_GROUPS)}")
        if isinstance(subset, str) and subset not in ("True", "False"):
            raise DatasetError(file, rowno, "input_subset", f"expected 'True' or 'False', got {subset!r}")
        try:
            oolong_synth_gold(answer)
        except ScoringError as exc:
            raise DatasetError(file, rowno, "answer", str(exc)) from exc
        text = labelled if labels else plain
        context = texts.setdefault(text, text)  # 25 rows share one window: keep one copy
        return Task(
            id=f"{rid}-labels" if labels else str(rid),
            question=question,
            context=context,
            answer=answer,
            answer_type=answer_type,
            scorer="oolong_synth",
            metadata={
                "dataset": dataset,
                "context_len": context_len,
                "task_group": group,
                "task": task_type,
                "answer_type": answer_type,
                "input_subset": subset in ("True", True),
                "num_labels": num_labels,
                "context_window_id": window_id,
                "labelled": labels,
                "benchmark": "oolong",
            },
        ).with_raw(row)
    if labels:
        raise DatasetError(file, rowno, None, "labels=True needs OOLONG-synth rows; OOLONG-real has no labelled text")
    rid = require(row, "id", (int, str), file, rowno)
    plain = require(row, "context_window_text", str, file, rowno)
    question = require(row, "question", str, file, rowno)
    answer = require(row, "answer", (str, int), file, rowno)
    qtype = row.get("question_type")
    if qtype is not None and not isinstance(qtype, str):
        raise DatasetError(file, rowno, "question_type", f"expected str, got {type(qtype).__name__}")
    window_id = row.get("context_window_id")
    if window_id is not None and (isinstance(window_id, bool) or not isinstance(window_id, (int, str))):
        raise DatasetError(file, rowno, "context_window_id", f"expected int or str, got {type(window_id).__name__}")
    context_len = row.get("context_len")
    return Task(
        id=str(rid),
        question=question,
        context=texts.setdefault(plain, plain),
        answer=str(answer),
        answer_type=None,
        scorer="oolong_real",
        metadata={
            "dataset": row.get("dataset") if isinstance(row.get("dataset"), str) else "oolong_real",
            "context_len": context_len if isinstance(context_len, int) else None,
            "task_group": qtype,
            "task": qtype,
            "context_window_id": window_id,
            "campaign": row.get("campaign"),
            "labelled": False,
            "benchmark": "oolong_real",
        },
    ).with_raw(row)


def _as_set(value: Any) -> set[Any] | None:
    if value is None:
        return None
    if isinstance(value, (str, int)):
        return {value}
    return set(value)


def filter_tasks(
    tasks: Iterable[Task],
    *,
    datasets: str | Iterable[str] | None = None,
    context_lens: int | Iterable[int] | None = None,
    task_groups: str | Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Keep tasks whose metadata ``dataset``/``context_len``/``task_group`` are in the given sets."""
    ds, lens, groups = _as_set(datasets), _as_set(context_lens), _as_set(task_groups)
    out = [
        t
        for t in tasks
        if (ds is None or t.metadata.get("dataset") in ds)
        and (lens is None or t.metadata.get("context_len") in lens)
        and (groups is None or t.metadata.get("task_group") in groups)
    ]
    return out[:limit] if limit is not None else out


def load(
    source: str | Path | Sequence[dict[str, Any]],
    *,
    variant: Variant = "auto",
    labels: bool = False,
    datasets: str | Iterable[str] | None = None,
    context_lens: int | Iterable[int] | None = None,
    task_groups: str | Iterable[str] | None = None,
    limit: int | None = None,
) -> list[Task]:
    """Tasks from OOLONG rows: a parquet/JSONL/JSON file, a folder of them, or row dicts
    (e.g. from :func:`generate`). Every row is checked; a bad one raises DatasetError naming
    the file, row and field. Filters apply after checking, so nothing is skipped unseen."""
    if isinstance(source, (str, Path)):
        items = read_rows(source)
    else:
        items = [("<rows>", i + 1, row) for i, row in enumerate(source)]
    texts: dict[str, str] = {}
    tasks = [
        row_to_task(row, variant=variant, labels=labels, file=f, rowno=n, _texts=texts) for f, n, row in items
    ]
    return filter_tasks(tasks, datasets=datasets, context_lens=context_lens, task_groups=task_groups, limit=limit)


def load_hf(
    variant: Literal["synth", "real"] = "synth",
    split: str = "validation",
    *,
    config: str | None = None,
    labels: bool = False,
    **filters: Any,
) -> list[Task]:
    """Tasks from the Hugging Face copies (``oolongbench/oolong-synth``, ``oolongbench/oolong-real``
    config ``dnd``), read from the local cache only: nothing is downloaded here."""
    try:
        import datasets  # noqa: PLC0415 - optional, heavy: imported only when asked for
    except ImportError as exc:
        raise DatasetError(
            None,
            None,
            None,
            "the 'datasets' package is not installed: `pip install datasets`, "
            "or pass local parquet/JSONL files to tasks.oolong.load",
        ) from exc
    name = "oolongbench/oolong-synth" if variant == "synth" else "oolongbench/oolong-real"
    cfg = config if config is not None or variant == "synth" else "dnd"
    # Offline for this call only: a cached copy or a clear error, never a download.
    switches = [(datasets.config, "HF_DATASETS_OFFLINE"), (datasets.config, "HF_HUB_OFFLINE")]
    try:
        import huggingface_hub.constants as hub_constants  # noqa: PLC0415

        switches.append((hub_constants, "HF_HUB_OFFLINE"))
    except ImportError:
        pass
    saved = [(mod, attr, getattr(mod, attr)) for mod, attr in switches if hasattr(mod, attr)]
    try:
        for mod, attr, _ in saved:
            setattr(mod, attr, True)
        data = datasets.load_dataset(name, cfg, split=split)
    except Exception as exc:  # offline / not cached: datasets raises several kinds
        raise DatasetError(
            name,
            None,
            None,
            f"not available from the local Hugging Face cache ({type(exc).__name__}: {exc}); "
            f"download it once with datasets.load_dataset({name!r}) or pass local files",
        ) from exc
    finally:
        for mod, attr, value in saved:
            setattr(mod, attr, value)
    return load(list(data), variant=variant, labels=labels, **filters)


def write_rows(rows: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Write rows as parquet (``.parquet``) or JSONL (``.jsonl``), columns unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise ImportError(f"writing {path} needs pyarrow: pip install 'delm-rlm[parquet]'", name=exc.name) from exc

        pq.write_table(pa.Table.from_pylist(list(rows)), path)
    elif path.suffix == ".jsonl":
        with path.open("w", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        raise ConfigError(f"{path}: use a .parquet or .jsonl file name")
    return path


# ---------------------------------------------------------------------------------------
# Generation
# ---------------------------------------------------------------------------------------

DATE_START = date(2022, 2, 16)
DATE_END = date(2025, 6, 21)
_MON = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
MONTH_NAMES = (
    "January", "February", "March", "April", "May", "June",
    "July", "August", "September", "October", "November", "December",
)  # fmt: skip
_DATES = [DATE_START + timedelta(days=d) for d in range((DATE_END - DATE_START).days + 1)]
# %b %d, %Y without depending on the process locale.
_DATE_TEXT = [f"{_MON[d.month - 1]} {d.day:02d}, {d.year}" for d in _DATES]

# Reported token estimates for TREC windows (gpt-4 tokenizer): prompt, question, per line.
TREC_PROMPT_TOKENS = 168
QUESTION_TOKENS = 250
TREC_LINE_TOKENS = 39
LINE_FRAME_TOKENS = 27  # "Date: ... || User: ... || Instance: " for non-TREC estimates
QUESTIONS_PER_WINDOW = 25
MIN_CONTEXT_LEN, MAX_CONTEXT_LEN = 1024, 2**23

_COMPARE = ("more common than", "less common than", "same frequency as")
_LABEL_FORM = "Give your final answer in the form 'Label: answer' where answer is one of the labels: {labels}."
_USER_FORM = "Give your final answer in the form 'User: [X]', where [X] is the user ID."
_DATE_FORM = "Give your final answer in the form 'Date: [X]', where [X] is the date in the format MM/DD/YYYY."


def expected_lines(context_len: int, prompt_tokens: int = TREC_PROMPT_TOKENS, line_tokens: int = TREC_LINE_TOKENS) -> int:
    """Lines in a window of nominal size ``context_len``: ``(0.95*T - prompt - 250) // line``."""
    return int((0.95 * context_len - prompt_tokens - QUESTION_TOKENS) // line_tokens)


@dataclass
class _Question:
    family: str
    group: str
    question: str
    answer: list[Any]
    task: str
    answer_type: str
    subset: bool = False


def _counting(counts: dict[str, int], head: str, group: str, subset: bool) -> dict[str, list[_Question]]:
    """The counting families over ``counts`` (insertion order = first appearance)."""
    fam: dict[str, list[_Question]] = defaultdict(list)
    total = sum(counts.values())
    if total == 0:
        return fam
    tag = f"{group}:{'subset' if subset else 'all'}"
    label_list = ", ".join(counts)
    freq = {k: v / total for k, v in counts.items()}
    top = max(counts.values())
    tops = [k for k, v in counts.items() if v == top]
    if len(tops) == 1:
        gap = min((abs(freq[tops[0]] - freq[k]) for k in counts if k != tops[0]), default=1.0)
        if gap > 0.02:  # the published rule: unique and ahead by more than 2%
            fam[f"{tag}:most_label"].append(
                _Question(
                    "most_label",
                    group,
                    f"{head} which of the labels is the most common? {_LABEL_FORM.format(labels=label_list)}",
                    [tops[0]],
                    "TASK_TYPE.MOST_FREQ",
                    "ANSWER_TYPE.LABEL",
                    subset,
                )
            )
    low = min(counts.values())
    lows = [k for k, v in counts.items() if v == low]
    if len(lows) == 1 and len(counts) > 1:  # a tie would make the question ambiguous
        fam[f"{tag}:least_label"].append(
            _Question(
                "least_label",
                group,
                f"{head} which of the labels is the least common? {_LABEL_FORM.format(labels=label_list)}",
                [lows[0]],
                "TASK_TYPE.LEAST_FREQ",
                "ANSWER_TYPE.LABEL",
                subset,
            )
        )
    keys = list(counts)
    for i, a in enumerate(keys):
        for b in keys[i + 1 :]:
            diff = freq[a] - freq[b]
            if abs(diff) > 0.02 or counts[a] == counts[b]:
                gold = _COMPARE[0] if counts[a] > counts[b] else _COMPARE[1] if counts[a] < counts[b] else _COMPARE[2]
                fam[f"{tag}:compare"].append(
                    _Question(
                        "compare",
                        group,
                        f"{head} is label '{a}' more common, less common, or the same frequency as label '{b}'? "
                        f"Give your final answer in the form 'Answer: {a} is [X] {b}', where [X] is "
                        "'more common than', 'less common than', or 'same frequency as'.",
                        [gold],
                        "TASK_TYPE.RELATIVE_FREQ",
                        "ANSWER_TYPE.COMPARISON",
                        subset,
                    )
                )
    for label, n in counts.items():
        fam[f"{tag}:count"].append(
            _Question(
                "count",
                group,
                f"{head} how many data points should be classified as label '{label}'? "
                "Give your final answer in the form 'Answer: number'.",
                [n],
                "TASK_TYPE.NUMERIC_ONE_CLASS",
                "ANSWER_TYPE.NUMERIC",
                subset,
            )
        )
    return fam


def _ranked(counter: Counter[Any]) -> list[tuple[Any, int]]:
    # Descending count; ties keep first-appearance order (Counter preserves insertion order).
    return sorted(counter.items(), key=lambda kv: -kv[1])


def _questions(labels: list[str], users: list[int], days: list[int], rng: np.random.Generator) -> list[_Question]:
    fam: dict[str, list[_Question]] = defaultdict(list)
    ordered_labels = list(dict.fromkeys(labels))

    # counting
    for key, qs in _counting(dict(Counter(labels)), "In the above data,", "counting", False).items():
        fam[key].extend(qs)

    # user
    user_rank = _ranked(Counter(users))
    if len(user_rank) > 1 and user_rank[0][1] > user_rank[1][1]:
        fam["user:most_user"].append(
            _Question("most_user", "user", f"In the above data, which user is represented most often? {_USER_FORM}",
                      [user_rank[0][0]], "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.USER")
        )  # fmt: skip
        if len(user_rank) == 2 or user_rank[1][1] > user_rank[2][1]:
            fam["user:second_user"].append(
                _Question("second_user", "user",
                          f"In the above data, which user is represented the second most often? {_USER_FORM}",
                          [user_rank[1][0]], "TASK_TYPE.SECOND_MOST_FREQ", "ANSWER_TYPE.USER")
            )  # fmt: skip
    users_by_label: dict[str, list[int]] = defaultdict(list)
    for u, lab in zip(users, labels):
        users_by_label[lab].append(u)
    for lab in ordered_labels:
        rank = _ranked(Counter(users_by_label[lab]))
        if len(rank) > 1 and rank[0][1] > rank[1][1]:
            fam["user:label_user"].append(
                _Question("label_user", "user",
                          f"In the above data, which user has the most instances with the label {lab}? {_USER_FORM}",
                          [rank[0][0]], "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.USER")
            )  # fmt: skip
    top_users = [u for u, _ in user_rank[: min(50, len(user_rank))]]
    k = max(1, min(int(rng.integers(10, 21)), int(len(top_users) * 0.8)))
    chosen = [top_users[i] for i in sorted(rng.choice(len(top_users), size=k, replace=False))]
    chosen_set = set(chosen)
    head = (
        "For the following question, only consider the subset of instances that are associated with user IDs "
        f"{', '.join(str(u) for u in chosen)}. Among instances associated with these users,"
    )
    sub_counts = dict(Counter(lab for u, lab in zip(users, labels) if u in chosen_set))
    for key, qs in _counting(sub_counts, head, "user", True).items():
        fam[key].extend(qs)

    # timeline
    date_rank = _ranked(Counter(days))
    if len(date_rank) == 1 or date_rank[0][1] > date_rank[1][1]:
        fam["timeline:most_date"].append(
            _Question("most_date", "timeline", f"In the above data, which date is represented most often? {_DATE_FORM}",
                      [_DATES[date_rank[0][0]]], "TASK_TYPE.MOST_FREQ", "ANSWER_TYPE.DATE")
        )  # fmt: skip
        if len(date_rank) > 2 and date_rank[1][1] > date_rank[2][1]:
            fam["timeline:second_date"].append(
                _Question("second_date", "timeline",
                          f"In the above data, which date is represented the second most often? {_DATE_FORM}",
                          [_DATES[date_rank[1][0]]], "TASK_TYPE.SECOND_MOST_FREQ", "ANSWER_TYPE.DATE")
            )  # fmt: skip
    if len(date_rank) > 3:
        n = date_rank[3][1]
        fam["timeline:n_times"].append(
            _Question(
                "n_times",
                "timeline",
                f"In the above data, how many dates are represented exactly {n} times? Give your final answer in the "
                f"form 'Answer: [X]', where [X] is the number of dates represented exactly {n} times.",
                [sum(1 for _, c in date_rank if c == n)],
                "TASK_TYPE.REPRESENTED_N_TIMES",
                "ANSWER_TYPE.NUMERIC",
            )
        )
    by_month: dict[tuple[int, int], Counter[str]] = defaultdict(Counter)
    for d, lab in zip(days, labels):
        day = _DATES[d]
        by_month[(day.year, day.month)][lab] += 1
    months = sorted(by_month)
    for a in ordered_labels:
        for b in ordered_labels:
            if a == b:
                continue
            wins = [m for m in months if by_month[m][a] > by_month[m][b]]
            fam["timeline:months_more"].append(
                _Question(
                    "months_more",
                    "timeline",
                    f"For how many months does the label '{a}' occur more frequently than the label '{b}'? Disregard "
                    f"months where there is a tie.  Give your final answer in the form 'Answer: [X]', where [X] is the "
                    f"number of months where '{a}' occurs more often than '{b}.'",
                    [len(wins)],
                    "TASK_TYPE.RELATIVE_FREQ",
                    "ANSWER_TYPE.NUMERIC",
                )
            )
            if wins:
                y, m = wins[0]
                fam["timeline:first_month"].append(
                    _Question(
                        "first_month",
                        "timeline",
                        f"In which month did the label '{a} first occur more often than the label '{b}'? Give your "
                        "final answer in the form 'Answer: [month] [year]', where [month] is the name of the month and "
                        f"[year] is the four-digit year where '{a}' first occured more often than '{b}.'",
                        [f"{MONTH_NAMES[m - 1]} {y}"],
                        "TASK_TYPE.RELATIVE_FREQ",
                        "ANSWER_TYPE.MONTH_YEAR",
                    )
                )
    present_months = sorted({_DATES[d].month for d in days})
    month = present_months[int(rng.integers(len(present_months)))]
    name = MONTH_NAMES[month - 1]
    head = (
        f"For the following question, only consider the subset of instances that occur in {name} of any year. "
        f"Among instances occuring in {name},"
    )
    month_counts = dict(Counter(lab for d, lab in zip(days, labels) if _DATES[d].month == month))
    for key, qs in _counting(month_counts, head, "timeline", True).items():
        fam[key].extend(qs)

    # Round-robin over the families in a seeded order, so every family is represented.
    families = sorted(fam)
    order = [families[i] for i in rng.permutation(len(families))]
    pools = {f: [fam[f][i] for i in rng.permutation(len(fam[f]))] for f in families}
    picked: list[_Question] = []
    while len(picked) < QUESTIONS_PER_WINDOW and any(pools.values()):
        for f in order:
            if pools[f] and len(picked) < QUESTIONS_PER_WINDOW:
                picked.append(pools[f].pop())
    return sorted(picked, key=lambda q: TASK_GROUPS.index(q.group))  # stable: counting, user, timeline


def _description(pool: Pool, n: int, labels_shown: Sequence[str], intro: bool) -> str:
    start = "The following" if intro else "Recall: the preceding"
    quoted = ", ".join(f"'{label}'" for label in labels_shown)
    if pool.trec:
        specific = (
            f"general-knowledge questions, one per line. Each question has an answer that can be described as one "
            f"of {len(labels_shown)} categories: {quoted}."
        )
    else:
        specific = f"texts, one per line. Each text can be classified as one of {len(labels_shown)} categories: {quoted}."
    return (
        f"{start} lines contain {n} {specific}\n\nYou will be asked to answer questions about the aggregate label "
        f"statistics across all {n} examples in this dataset. Do not try to guess, estimate, or approximate the "
        "result. Calculate the exact answer given these datapoints.\n\n"
    )


def generate(
    pool: str | Path | Sequence[tuple[str, str]] | Pool,
    context_len: int,
    seed: int = 0,
    windows: int = 1,
    *,
    dataset: str | None = None,
) -> list[dict[str, Any]]:
    """OOLONG-synth-style rows (the published columns), 25 questions per window.

    ``pool``: a TREC ``COARSE:fine text`` file, a ``label<TAB>text`` file, a JSONL file with
    ``text``/``label``, or (text, label) pairs. ``context_len``: nominal window size in tokens,
    1024 .. 2**23; a TREC window holds ``(0.95*T - 168 - 250) // 39`` lines (other pools use a
    per-line estimate from their mean length). Instances are drawn without replacement while
    a label's pool suffices, with replacement beyond. Same ``seed`` -> identical rows.
    """
    if not isinstance(context_len, int) or isinstance(context_len, bool):
        raise TypeError(f"context_len must be an int number of tokens, got {context_len!r}")
    if not MIN_CONTEXT_LEN <= context_len <= MAX_CONTEXT_LEN:
        raise ConfigError(f"context_len {context_len} is outside {MIN_CONTEXT_LEN}..{MAX_CONTEXT_LEN} tokens")
    if not 0 <= seed < 10_000:
        raise ConfigError(f"seed must be in 0..9999 (it is part of the row ids), got {seed}")
    if not 1 <= windows <= 999:
        raise ConfigError(f"windows must be in 1..999, got {windows}")
    pl = pool if isinstance(pool, Pool) else read_pool(pool)
    name = dataset or ("trec_coarse" if pl.trec else "custom")
    if pl.trec:
        line_tokens, prompt_tokens = TREC_LINE_TOKENS, TREC_PROMPT_TOKENS
    else:
        mean_chars = sum(len(t) for t in pl.texts) / len(pl.texts)
        line_tokens, prompt_tokens = LINE_FRAME_TOKENS + max(1, round(mean_chars / 4)), TREC_PROMPT_TOKENS
    n_lines = expected_lines(context_len, prompt_tokens, line_tokens)
    if n_lines < 4:
        raise ConfigError(f"context_len {context_len} fits only {n_lines} lines of this pool; use a larger context_len")

    k = len(pl.label_list)
    label_index = {lab: i for i, lab in enumerate(pl.label_list)}
    by_label = [np.flatnonzero(np.array([label_index[x] for x in pl.labels]) == i) for i in range(k)]
    texts = np.array(pl.texts, dtype=object)

    rows: list[dict[str, Any]] = []
    for w in range(windows):
        rng = np.random.default_rng([seed, w, context_len])
        # Skewed label mix: softmax over random weights at a random temperature (2..6).
        temperature = int(rng.integers(2, 7))
        logits = rng.random(k) * 10.0 / temperature
        probs = np.exp(logits - logits.max())
        probs[[len(ix) == 0 for ix in by_label]] = 0.0
        probs /= probs.sum()
        counts = rng.multinomial(n_lines, probs)
        picks = [
            rng.choice(by_label[i], size=c, replace=c > len(by_label[i])) for i, c in enumerate(counts) if c > 0
        ]
        label_ids = np.concatenate([np.full(c, i) for i, c in enumerate(counts) if c > 0])
        order = rng.permutation(n_lines)
        pool_ids = np.concatenate(picks)[order]
        label_ids = label_ids[order]
        # Dates uniform over the published range.
        days = rng.integers(0, len(_DATES), size=n_lines)
        # User ids: 5-digit; ~10% of ids are common and take a line with probability 0.8.
        n_users = min(89_000, max(10, n_lines // 2))
        ids = rng.choice(90_000, size=n_users, replace=False) + 10_000
        n_common = max(1, round(0.1 * n_users))
        common, rare = ids[:n_common], ids[n_common:]
        use_common = rng.random(n_lines) < 0.8
        users = np.where(
            use_common, common[rng.integers(0, n_common, n_lines)], rare[rng.integers(0, len(rare), n_lines)]
        )
        shown = [pl.label_list[i] for i in rng.permutation(k)]

        line_labels = [pl.label_list[i] for i in label_ids.tolist()]
        user_list = users.tolist()
        day_list = days.tolist()
        inst = texts[pool_ids].tolist()
        lines = [
            f"Date: {_DATE_TEXT[d]} || User: {u} || Instance: {t}" for d, u, t in zip(day_list, user_list, inst)
        ]
        intro, outro = _description(pl, n_lines, shown, True), _description(pl, n_lines, shown, False)
        plain = intro + "\n".join(lines) + "\n" + outro
        labelled = (
            intro + "\n".join(f"{line} || Label: {lab}" for line, lab in zip(lines, line_labels)) + "\n" + outro
        )
        window_id = (context_len // 1024) * 10**7 + seed * 1000 + w
        for q, item in enumerate(_questions(line_labels, user_list, day_list, rng)):
            rows.append(
                {
                    "id": window_id * 100 + q,
                    "context_len": context_len,
                    "dataset": name,
                    "context_window_text": plain,
                    "context_window_text_with_labels": labelled,
                    "question": item.question,
                    "task_group": item.group,
                    "task": item.task,
                    "answer": repr(item.answer),
                    "answer_type": item.answer_type,
                    "input_subset": str(item.subset),
                    "num_labels": k,
                    "context_window_id": window_id,
                }
            )
    return rows
