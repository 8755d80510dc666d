"""Corpus: turn what a user hands us (paths or in-memory values) into one run's context.

A context reaches the sandbox in one of three shapes (see `sandbox.Sandbox.load_context`):
one text (`str`), a list of documents (`list[str]`), or a table (`pandas.DataFrame`).
`Corpus` normalizes user inputs into exactly one of those shapes, keeps a name for every
document (so evidence pointers can be shown as "notes/a.txt" rather than "doc 3"), and
writes the short description agents see instead of the text itself.

Path rules, applied the same way to a named file and to every file found in a folder:
- `.jsonl` / `.ndjson` / `.json` (a list): every record reaches the agents whole.
  Records (JSON objects) become a table, one column per field (what
  `pandas.read_json(lines=True)` gives), unless they hold one long text field beside some
  metadata (`{"id", "title", "text"}` with long texts): then each record is one document
  with every field on its own line (`key: value`). Objects holding only `text`, and bare
  JSON strings, are documents. A file mixing strings and objects is read as documents (an
  object's `text` field, else its first string field) with a warning naming the fields
  left out; records with no string field at all are refused.
- `.csv`, `.tsv`, `.parquet`: a table (parquet needs the `parquet` extra: pyarrow);
- anything else that is text (UTF-8, no NUL bytes): one document per file.
One text file gives a single `str`; several files or a folder give documents; tables give a
DataFrame (several tables, record files among them, are concatenated with a `source`
column). A folder that mixes record files with text files gets each record as a document
(`key: value` lines); tables (CSV/parquet) and text documents do not mix in one corpus: the
error says so.

Nothing is dropped without a word: what loading left out (files of a folder that are not
text, bytes that are not UTF-8, record fields) is logged as a warning on the `delm_rlm`
logger and kept in `Corpus.notes`.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median
from typing import Any, Literal

import pandas as pd

from delm_rlm.chunking import row_lines
from delm_rlm.errors import CorpusError

CorpusKind = Literal["text", "documents", "table"]

# Between documents when a corpus is read as one text: the REPL's `context` for a list of
# documents is DOCUMENT_SEPARATOR.join(docs) (sandbox/corpus.py's loader writes the same).
DOCUMENT_SEPARATOR = "\n\n"

RECORD_SUFFIXES = {".jsonl", ".ndjson"}
DOCUMENT_SUFFIXES = {*RECORD_SUFFIXES, ".json"}
TABLE_SUFFIXES = {".csv", ".tsv", ".parquet", ".pq"}
# Known binary formats get a specific hint instead of a generic "not text".
BINARY_HINTS = {
    ".pdf": "convert it to text first (e.g. `pdftotext file.pdf`)",
    ".docx": "convert it to text first (e.g. `pandoc file.docx -t plain -o file.txt`)",
    ".doc": "convert it to text first (e.g. with LibreOffice: `soffice --convert-to txt`)",
    ".xlsx": "save it as CSV first",
    ".xls": "save it as CSV first",
    ".zip": "unpack it and pass the folder",
    ".gz": "decompress it first",
}
# A record field is "the text" of its records when its median length is at least this and
# longer than all the other fields together: such records read best as documents.
LONG_TEXT_CHARS = 200
PARQUET_HINT = "pip install 'delm-rlm[parquet]' (pyarrow)"
# The files a run directory keeps its corpus in (Corpus.save / Corpus.load).
SAVED_CORPUS_FILE = "corpus.json"
SAVED_TABLE_FILE = "corpus.parquet"
SAVED_TABLE_JSON_FILE = "corpus.table.json"  # where pyarrow is not installed
_SNIFF_BYTES = 8192

logger = logging.getLogger(__name__)


class Corpus:
    """A normalized context: one text, a list of named documents, or a table.

    `notes`: what loading decided or left out (also logged on the `delm_rlm` logger).
    """

    def __init__(
        self,
        value: str | Sequence[str] | pd.DataFrame,
        *,
        names: Sequence[str] | None = None,
        source: str | None = None,
        notes: Sequence[str] = (),
    ) -> None:
        self.kind: CorpusKind
        if isinstance(value, pd.DataFrame):
            self.kind = "table"
            self.value: str | list[str] | pd.DataFrame = value
            count = len(value)
        elif isinstance(value, str):
            self.kind = "text"
            self.value = value
            count = 1
        elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
            docs = list(value)
            bad = [i for i, d in enumerate(docs) if not isinstance(d, str)]
            if bad:
                raise CorpusError(
                    f"document {bad[0]} is a {type(docs[bad[0]]).__name__}, not a str: "
                    "pass a list of strings (or a DataFrame for tabular data)"
                )
            self.kind = "documents"
            self.value = docs
            count = len(docs)
        else:
            raise CorpusError(
                f"cannot use a {type(value).__name__} as a corpus: pass a str, a list of str, "
                "a pandas DataFrame, or file/folder paths"
            )
        if names is not None and len(names) != count:
            raise CorpusError(f"{len(names)} names given for {count} documents")
        self.names: list[str] = list(names) if names is not None else _default_names(self.kind, count)
        self.source = source
        self.notes: list[str] = list(notes)

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def coerce(cls, value: Corpus | str | Sequence[str] | pd.DataFrame | Path) -> Corpus:
        """Accept a Corpus, an in-memory value, or a `Path` (a `str` is text, never a path)."""
        if isinstance(value, Corpus):
            return value
        if isinstance(value, Path):
            return cls.from_paths([value])
        return cls(value)

    @classmethod
    def from_paths(cls, paths: Iterable[str | Path]) -> Corpus:
        """Load files and folders (see the module docstring for the rules)."""
        paths = [Path(p) for p in paths]
        if not paths:
            raise CorpusError("no context given: pass at least one file or folder (--context PATH)")
        loaded = _Loaded()
        for path in paths:
            if not path.exists():
                raise CorpusError(f"{path}: no such file or folder (check the path passed to --context)")
            if path.is_dir():
                files = _walk(path)
                skipped = [f for f in files if not _load_file(f, _display_name(f, path), loaded, strict=False)]
                if len(skipped) == len(files):
                    raise CorpusError(f"{path}: the folder holds no text-like files (hidden and binary files are skipped)")
                if skipped:
                    shown = ", ".join(str(f.relative_to(path)) for f in skipped[:5])
                    more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
                    loaded.warn(f"{path}: skipped {len(skipped)} file(s) that are not text: {shown}{more}")
            else:
                _load_file(path, str(path), loaded, strict=True)
        source = ", ".join(str(p) for p in paths)
        if loaded.records and loaded.docs:
            # Records beside text files: every record becomes a document holding all its
            # fields, so nothing of them is lost and the shapes agree (beside CSV tables,
            # records stay a table: the tables are concatenated below).
            for at, name, records in reversed(loaded.records):  # reversed: each insert leaves earlier places as they are
                loaded.add_records_as_documents(at, name, records)
            loaded.records = []
        if loaded.tables and loaded.docs:
            raise CorpusError(
                f"cannot mix tables ({loaded.tables[0][0]}) with text documents ({loaded.names[0]}) in one corpus: "
                "pass either tables (CSV/parquet) or text files, or convert the table to JSONL"
            )
        tables = loaded.tables + [(name, _records_table(records)) for _, name, records in loaded.records]
        if tables:
            if len(tables) == 1:
                return cls(tables[0][1], source=source, notes=loaded.notes)
            frame = pd.concat([t.assign(source=name) for name, t in tables], ignore_index=True, sort=False)
            return cls(frame, source=source, notes=loaded.notes)
        if not loaded.docs:
            raise CorpusError(f"{source}: no documents found")
        single_plain_file = len(paths) == 1 and paths[0].is_file() and len(loaded.docs) == 1 and (
            paths[0].suffix.lower() not in DOCUMENT_SUFFIXES
        )
        if single_plain_file:
            return cls(loaded.docs[0], names=loaded.names, source=source, notes=loaded.notes)
        return cls(loaded.docs, names=loaded.names, source=source, notes=loaded.notes)

    # ---- views --------------------------------------------------------------------------

    @property
    def docs(self) -> list[str]:
        """The corpus as documents, the same way the sandbox defines `docs`."""
        if self.kind == "text":
            return [self.value]  # type: ignore[list-item]
        if self.kind == "documents":
            return self.value  # type: ignore[return-value]
        frame: pd.DataFrame = self.value  # type: ignore[assignment]
        if "text" in frame.columns:
            return frame["text"].astype(str).tolist()
        return row_lines(frame)

    @property
    def table(self) -> pd.DataFrame | None:
        """The table of a table corpus (its rows are `docs`), else None."""
        return self.value if self.kind == "table" else None  # type: ignore[return-value]

    @property
    def text(self) -> str:
        """The corpus as one text, the same text the REPL's `context` holds: the text itself,
        the documents joined by DOCUMENT_SEPARATOR, or a table as CSV without the index."""
        if self.kind == "text":
            return self.value  # type: ignore[return-value]
        if self.kind == "documents":
            return DOCUMENT_SEPARATOR.join(self.value)  # type: ignore[arg-type]
        return self.value.to_csv(index=False)  # type: ignore[union-attr]

    def __len__(self) -> int:
        return 1 if self.kind == "text" else len(self.value)

    def doc(self, i: int) -> str:
        """Document `i`, numbered as the REPL's `docs` (a table row: every column, or its
        `text` column when it has one)."""
        n = len(self)
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n:
            raise CorpusError(f"no document {i!r}: this corpus has documents 0..{n - 1}")
        if self.kind == "text":
            return self.value  # type: ignore[return-value]
        if self.kind == "documents":
            return self.value[i]  # type: ignore[index,return-value]
        frame: pd.DataFrame = self.value  # type: ignore[assignment]
        if "text" in frame.columns:
            return str(frame["text"].iloc[i])
        return row_lines(frame, i, i + 1)[0]

    def name(self, i: int) -> str:
        self.doc(i)  # same bounds check and message
        return self.names[i]

    @property
    def total_chars(self) -> int:
        if self.kind == "table":
            return len(self.text)
        return sum(len(d) for d in self.docs)

    def describe(self, max_names: int = 8) -> str:
        """A few lines for a prompt or a person: shape, size and samples, never the text.

        The shape description is the agents' own (`prompts.describe_context`, one wording
        everywhere); a corpus loaded from files adds where it came from and its file names.
        """
        from delm_rlm.prompts import describe_context

        text = describe_context(self.value)
        if self.source is None:
            return text
        lines = [f"Loaded from {self.source}."]
        if self.kind == "documents":
            shown = ", ".join(f"{i}: {n}" for i, n in enumerate(self.names[:max_names]))
            more = f", ... ({len(self.names) - max_names:,} more)" if len(self.names) > max_names else ""
            lines.append(f"Documents: {shown}{more}.")
        return "\n".join([text, *lines])

    # ---- keeping a corpus beside a run --------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write the corpus into `directory` (a run's): `corpus.json`, and a table's rows in
        `corpus.parquet` (or `corpus.table.json` where pyarrow is not installed)."""
        directory = Path(directory)
        meta: dict[str, Any] = {"kind": self.kind, "names": self.names, "source": self.source, "notes": self.notes}
        if self.kind == "table":
            frame: pd.DataFrame = self.value  # type: ignore[assignment]
            try:
                frame.to_parquet(directory / SAVED_TABLE_FILE, index=False)
                meta["table_file"] = SAVED_TABLE_FILE
            except (ImportError, TypeError, ValueError):  # no pyarrow, or a column it cannot type
                frame.reset_index(drop=True).to_json(directory / SAVED_TABLE_JSON_FILE, orient="table", index=False)
                meta["table_file"] = SAVED_TABLE_JSON_FILE
        else:
            meta["value"] = self.value
        tmp = directory / (SAVED_CORPUS_FILE + ".tmp")
        tmp.write_text(json.dumps(meta), encoding="utf-8")
        tmp.replace(directory / SAVED_CORPUS_FILE)
        return directory / SAVED_CORPUS_FILE

    @classmethod
    def load(cls, directory: str | Path) -> Corpus:
        """The corpus `save` kept in `directory` (also reads runs saved before `table_file`)."""
        path = Path(directory) / SAVED_CORPUS_FILE
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: this run directory cannot be resumed without its corpus")
        meta = json.loads(path.read_text(encoding="utf-8"))
        if meta["kind"] == "table":
            table_file = Path(directory) / meta.get("table_file", SAVED_TABLE_FILE)
            if table_file.suffix == ".json":
                value: Any = pd.read_json(table_file, orient="table")
            else:
                value = _read_parquet(table_file)
        else:
            value = meta["value"]
        return cls(value, names=meta.get("names"), source=meta.get("source"), notes=meta.get("notes") or ())

    def __repr__(self) -> str:
        return f"Corpus(kind={self.kind!r}, items={len(self)}, chars={self.total_chars})"


# ---- loading ------------------------------------------------------------------------------


@dataclass
class _Loaded:
    """What the files of one `from_paths` call hold so far."""

    docs: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    # (where among docs the file's records go, file, [(name, record)]): a table, unless text files join them
    records: list[tuple[int, str, list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        logger.warning("%s", message)
        self.notes.append(message)

    def note(self, message: str) -> None:
        logger.info("%s", message)
        self.notes.append(message)

    def add_records_as_documents(self, at: int, file: str, records: list[tuple[str, dict[str, Any]]]) -> None:
        self.docs[at:at] = [record_text(r) for _, r in records]
        self.names[at:at] = [n for n, _ in records]
        self.note(f"{file}: {len(records):,} records read as documents, every field on its own line (key: value)")


def _default_names(kind: CorpusKind, count: int) -> list[str]:
    if kind == "text":
        return ["text"]
    return [f"{'row' if kind == 'table' else 'doc'} {i}" for i in range(count)]


def _display_name(file: Path, root: Path) -> str:
    return str(root / file.relative_to(root))


def _walk(folder: Path) -> list[Path]:
    """Every non-hidden file under `folder`, sorted by relative path (reproducible order)."""
    found: list[Path] = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts):
            continue
        if path.is_file():
            found.append(path)
    return found


def _looks_binary(path: Path) -> bool:
    with path.open("rb") as f:
        head = f.read(_SNIFF_BYTES)
    if b"\x00" in head:
        return True
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the sniff window is still text.
        return exc.start < len(head) - 4
    return False


def _read_text(path: Path, loaded: _Loaded) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("utf-8", errors="replace")
        loaded.warn(f"{path}: {text.count(chr(0xFFFD)):,} byte sequence(s) are not UTF-8 and were replaced by \ufffd")
        return text


def _load_file(path: Path, name: str, loaded: _Loaded, *, strict: bool) -> bool:
    """Add what `path` holds to `loaded`; False when the file was skipped. In a folder (not
    strict), files that are not text are skipped; named explicitly, they are an error."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        loaded.tables.append((name, _read_table(path)))
        return True
    if suffix in BINARY_HINTS or _looks_binary(path):
        if not strict:
            return False
        hint = BINARY_HINTS.get(suffix, "pass text, JSONL, CSV or parquet files")
        raise CorpusError(f"{path}: unsupported file type ({suffix or 'binary data'}): {hint}")
    text = _read_text(path, loaded)
    if suffix in RECORD_SUFFIXES:
        items: list[tuple[str, str, Any]] = []  # (name, where, value)
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from exc
            items.append((f"{name}:{number}", f"{path}: line {number}", item))
        _add_items(str(path), items, loaded)
        return True
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        values = data if isinstance(data, list) else [data]
        _add_items(str(path), [(f"{name}[{i}]", f"{path}: item {i}", v) for i, v in enumerate(values)], loaded)
        return True
    loaded.docs.append(text)
    loaded.names.append(name)
    return True


def _add_items(file: str, items: list[tuple[str, str, Any]], loaded: _Loaded) -> None:
    """The values of one JSONL/JSON file: documents, or records kept whole (see the module
    docstring for which)."""
    values = [v for _, _, v in items]
    if values and all(isinstance(v, dict) for v in values):
        if not any(isinstance(x, str) for v in values for x in v.values()):
            raise CorpusError(f"{items[0][1]}: the object has no string field; give each line a \"text\" field")
        if all(set(v) == {"text"} and isinstance(v["text"], str) for v in values):
            loaded.docs.extend(v["text"] for v in values)
            loaded.names.extend(n for n, _, _ in items)
            return
        text_field = long_text_field(values)
        if text_field is not None:
            loaded.docs.extend(record_text(v) for v in values)
            loaded.names.extend(n for n, _, _ in items)
            loaded.note(f"{file}: {len(values):,} records read as documents (the text is in {text_field!r}; "
                        "every field is kept as a `key: value` line)")
            return
        loaded.records.append((len(loaded.docs), file, [(n, v) for n, _, v in items]))
        columns = list(dict.fromkeys(k for v in values for k in v))
        loaded.note(f"{file}: {len(values):,} records read as a table with columns {', '.join(map(str, columns))}")
        return
    dropped: dict[str, int] = {}
    for _, where, value in items:
        text, left_out = _document_text(value, where)
        loaded.docs.append(text)
        for key in left_out:
            dropped[key] = dropped.get(key, 0) + 1
    loaded.names.extend(n for n, _, _ in items)
    if dropped:
        shown = ", ".join(f"{k!r} ({n:,}x)" for k, n in sorted(dropped.items()))
        loaded.warn(f"{file}: mixes strings and objects, so it is read as documents (an object's \"text\" field, "
                    f"else its first string field); these fields were left out: {shown}. "
                    "Give every line the same shape to keep all fields")


def long_text_field(records: Sequence[dict[str, Any]]) -> str | None:
    """The one field that holds the text of these records, if there is one: a string in
    every record, at least LONG_TEXT_CHARS long (median) and longer than the other fields
    together (median). None: the records are rows of a table."""
    candidates = [k for k in records[0] if all(isinstance(r.get(k), str) for r in records)]
    for key in candidates:
        lengths = [len(r[key]) for r in records]
        rest = [sum(len(_field_text(v)) for k, v in r.items() if k != key) for r in records]
        if median(lengths) >= LONG_TEXT_CHARS and median(lengths) > median(rest):
            return key
    return None


def record_text(record: dict[str, Any]) -> str:
    """A record as a document: one `key: value` line per field, in the record's order."""
    return "\n".join(f"{k}: {_field_text(v)}" for k, v in record.items())


def _field_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)


def _records_table(records: list[tuple[str, dict[str, Any]]]) -> pd.DataFrame:
    """Records as a table, one column per field (missing fields empty); nested values are
    kept as their JSON text, so the table stays one value per cell."""
    rows = [{k: (_field_text(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()} for _, r in records]
    frame = pd.DataFrame.from_records(rows)
    for column in frame.columns:
        kinds = {type(v) for v in frame[column] if v is not None and not (isinstance(v, float) and pd.isna(v))}
        if len(kinds) > 1 and not kinds <= {int, float, bool}:
            # Strings beside numbers in one field: one type per column, as read_json would not guess.
            frame[column] = [v if v is None or (isinstance(v, float) and pd.isna(v)) else str(v) for v in frame[column]]
    return frame


def _document_text(item: Any, where: str) -> tuple[str, list[str]]:
    """One value of a mixed file as a document, and the fields it leaves out."""
    if isinstance(item, str):
        return item, []
    if isinstance(item, dict):
        key = "text" if isinstance(item.get("text"), str) else next((k for k, v in item.items() if isinstance(v, str)), None)
        if key is None:
            raise CorpusError(f"{where}: the object has no string field; give each line a \"text\" field")
        return item[key], [k for k in item if k != key]
    raise CorpusError(f"{where}: expected an object with a \"text\" field or a string, got {type(item).__name__}")


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as exc:
        raise CorpusError(f"{path}: reading parquet needs pyarrow ({exc}); {PARQUET_HINT}") from exc


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in {".parquet", ".pq"}:
        try:
            return _read_parquet(path)
        except CorpusError:
            raise
        except Exception as exc:  # pyarrow raises several error types for a broken file
            raise CorpusError(f"{path}: cannot read as a parquet table: {exc}") from exc
    try:
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except Exception as exc:  # pandas raises many parser error types; the user needs the file and why
        raise CorpusError(f"{path}: cannot read as a {suffix.lstrip('.')} table: {exc}") from exc
