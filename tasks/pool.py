"""Labelled pools the OOLONG-style generator draws its lines from."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tasks.model import DatasetError

# TREC coarse codes in the pool's code order, with the names OOLONG uses for them.
TREC_LABELS: dict[str, str] = {
    "ABBR": "abbreviation",
    "ENTY": "entity",
    "DESC": "description and abstract concept",
    "HUM": "human being",
    "LOC": "location",
    "NUM": "numeric value",
}

_TREC_LINE = re.compile(r"^(ABBR|ENTY|DESC|HUM|LOC|NUM):(\S+)\s+(.+)$")


@dataclass(frozen=True)
class Pool:
    """Texts with their labels; ``label_list`` fixes the label order, ``trec`` marks TREC."""

    texts: tuple[str, ...]
    labels: tuple[str, ...]
    label_list: tuple[str, ...]
    trec: bool
    source: str

    def __len__(self) -> int:
        return len(self.texts)


def _one_line(text: str) -> str:
    # A window holds one instance per line, so an instance may not contain a line break.
    return " ".join(text.split())


def _finish(pairs: list[tuple[str, str]], source: str) -> Pool:
    if not pairs:
        raise DatasetError(source, None, None, "the pool is empty: give at least one (text, label) pair")
    labels = [label for _, label in pairs]
    trec = all(label in TREC_LABELS for label in labels)
    if trec:
        labels = [TREC_LABELS[label] for label in labels]
    else:
        trec = all(label in TREC_LABELS.values() for label in labels)
    # OOLONG lists all six TREC categories whatever a window holds; other pools, their own.
    label_list = tuple(TREC_LABELS.values()) if trec else tuple(dict.fromkeys(labels))
    if len(set(labels)) < 2:
        raise DatasetError(source, None, "label", "the pool needs at least two distinct labels")
    return Pool(tuple(_one_line(t) for t, _ in pairs), tuple(labels), label_list, trec, source)


def read_pool(pool: str | Path | Iterable[tuple[str, str]]) -> Pool:
    """A pool from a path or from (text, label) pairs.

    Files: TREC ``COARSE:fine text`` lines (e.g. ``HUM:ind Who was ...``), ``label<TAB>text``
    lines, or JSONL objects with ``text`` (or ``input``) and ``label``. TREC coarse codes map to
    OOLONG's names (``HUM`` -> ``human being``...).
    """
    if isinstance(pool, (str, Path)):
        return _read_pool_file(Path(pool))
    pairs: list[tuple[str, str]] = []
    for i, item in enumerate(pool):
        if not (isinstance(item, Sequence) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise DatasetError("<pool>", i + 1, None, f"expected a (text, label) pair of strings, got {item!r:.80}")
        text, label = item
        if not text.strip() or not label.strip():
            raise DatasetError("<pool>", i + 1, "text" if not text.strip() else "label", "empty")
        pairs.append((text, label.strip()))
    return _finish(pairs, "<pool>")


def _read_pool_file(path: Path) -> Pool:
    if not path.is_file():
        raise DatasetError(path, None, None, "pool file does not exist")
    pairs: list[tuple[str, str]] = []
    with path.open(encoding="utf-8", errors="replace") as fh:
        lines = [(n, line.rstrip("\n")) for n, line in enumerate(fh, start=1) if line.strip()]
    if path.suffix == ".jsonl":
        for n, line in lines:
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(path, n, None, f"not valid JSON ({exc.msg})") from exc
            if not isinstance(obj, dict):
                raise DatasetError(path, n, None, "expected a JSON object with text and label")
            text = obj.get("text", obj.get("input"))
            if not isinstance(text, str) or not text.strip():
                raise DatasetError(path, n, "text", "missing or not a non-empty string")
            label = obj.get("label")
            if isinstance(label, bool) or not isinstance(label, (str, int)) or not str(label).strip():
                raise DatasetError(path, n, "label", "missing or not a string/int")
            pairs.append((text, str(label).strip()))
        return _finish(pairs, str(path))
    trec_format = _TREC_LINE.match(lines[0][1]) is not None if lines else False
    for n, line in lines:
        if trec_format:
            m = _TREC_LINE.match(line)
            if m is None:
                raise DatasetError(path, n, None, "expected a TREC line 'COARSE:fine text' like the first line")
            pairs.append((m.group(3), m.group(1)))
        else:
            label, sep, text = line.partition("\t")
            if not sep or not label.strip() or not text.strip():
                raise DatasetError(
                    path, n, None, "expected 'label<TAB>text' (or TREC 'COARSE:fine text', or a .jsonl file)"
                )
            pairs.append((text, label.strip()))
    return _finish(pairs, str(path))
