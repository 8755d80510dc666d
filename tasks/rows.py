"""Reading benchmark rows from local files (parquet, JSONL, JSON list), unchanged."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tasks.model import DatasetError

ROW_SUFFIXES = (".parquet", ".jsonl", ".json")


def read_rows(path: str | Path) -> list[tuple[Path, int, dict[str, Any]]]:
    """Rows of a parquet, JSONL or JSON-list file (or of every such file in a folder, by name).

    Returns ``(file, row_number, row)`` with 1-based row numbers (for JSONL, the line number),
    so a later check can name where a bad row is. Values come back as plain Python objects.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in ROW_SUFFIXES and p.is_file())
        if not files:
            raise DatasetError(path, None, None, "folder has no .parquet, .jsonl or .json files")
        return [item for f in files for item in read_rows(f)]
    if not path.is_file():
        raise DatasetError(path, None, None, "file does not exist")
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError as exc:
            raise DatasetError(path, None, None, "reading parquet needs pyarrow: pip install 'delm-rlm[parquet]'") from exc

        try:
            rows = pq.read_table(path).to_pylist()
        except Exception as exc:  # pyarrow raises several kinds for a broken file
            raise DatasetError(path, None, None, f"not a readable parquet file ({exc})") from exc
        return [(path, i + 1, row) for i, row in enumerate(rows)]
    if path.suffix == ".jsonl":
        out: list[tuple[Path, int, dict[str, Any]]] = []
        with path.open(encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetError(path, lineno, None, f"not valid JSON ({exc.msg})") from exc
                if not isinstance(row, dict):
                    raise DatasetError(path, lineno, None, f"expected a JSON object, got {type(row).__name__}")
                out.append((path, lineno, row))
        return out
    if path.suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(path, None, None, f"not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        if not isinstance(data, list):
            raise DatasetError(path, None, None, "expected a JSON list of row objects")
        for i, row in enumerate(data):
            if not isinstance(row, dict):
                raise DatasetError(path, i + 1, None, f"expected a JSON object, got {type(row).__name__}")
        return [(path, i + 1, row) for i, row in enumerate(data)]
    raise DatasetError(path, None, None, f"unsupported file type {path.suffix!r}: use .parquet, .jsonl or .json")


def require(
    row: dict[str, Any], field: str, types: type | tuple[type, ...], file: Path | str | None, rowno: int | None
) -> Any:
    """``row[field]``, checked against ``types`` (bools are not accepted as ints)."""
    if field not in row or row[field] is None:
        raise DatasetError(file, rowno, field, "missing")
    value = row[field]
    wanted = types if isinstance(types, tuple) else (types,)
    if (isinstance(value, bool) and bool not in wanted) or not isinstance(value, wanted):
        names = " or ".join(t.__name__ for t in wanted)
        raise DatasetError(file, rowno, field, f"expected {names}, got {type(value).__name__} {value!r:.60}")
    return value
