"""Corpus: turn what a user hands us (paths or in-memory values) into one run's context.

A context reaches the sandbox in one of three shapes (see `sandbox.Sandbox.load_context`):
one text (`str`), a list of documents (`list[str]`), or a table (`pandas.DataFrame`).
`Corpus` normalizes user inputs into exactly one of those shapes, keeps a name for every
document (so evidence pointers can be shown as "notes/a.txt" rather than "doc 3"), and
writes the short description agents see instead of the text itself.

Path rules, applied the same way to a named file and to every file found in a folder:
- `.jsonl` / `.ndjson`: one document per line: the `text` field, else the first string
  field of the object (a bare JSON string line is the document itself);
- `.json`: a list of such objects or strings;
- `.csv`, `.tsv`, `.parquet`: a table;
- anything else that is text (UTF-8, no NUL bytes): one document per file.
One text file gives a single `str`; several files or a folder give documents; tables give a
DataFrame (several tables are concatenated with a `source` column). Tables and documents do
not mix in one corpus: the error says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd

from delm_rlm.errors import CorpusError

CorpusKind = Literal["text", "documents", "table"]

# Between documents when a corpus is read as one text: the REPL's `context` for a list of
# documents is DOCUMENT_SEPARATOR.join(docs) (sandbox/corpus.py's loader writes the same).
DOCUMENT_SEPARATOR = "\n\n"

DOCUMENT_SUFFIXES = {".jsonl", ".ndjson", ".json"}
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
_SNIFF_BYTES = 8192


class Corpus:
    """A normalized context: one text, a list of named documents, or a table."""

    def __init__(
        self,
        value: str | Sequence[str] | pd.DataFrame,
        *,
        names: Sequence[str] | None = None,
        source: str | None = None,
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
        docs: list[str] = []
        names: list[str] = []
        tables: list[tuple[str, pd.DataFrame]] = []
        for path in paths:
            if not path.exists():
                raise CorpusError(f"{path}: no such file or folder (check the path passed to --context)")
            if path.is_dir():
                files = _walk(path)
                if not files:
                    raise CorpusError(f"{path}: the folder holds no text-like files (hidden and binary files are skipped)")
                for file in files:
                    _load_file(file, _display_name(file, path), docs, names, tables, strict=False)
            else:
                _load_file(path, str(path), docs, names, tables, strict=True)
        if tables and docs:
            raise CorpusError(
                f"cannot mix tables ({tables[0][0]}) with text documents ({names[0]}) in one corpus: "
                "pass either tables (CSV/parquet) or text files, or convert the table to JSONL"
            )
        source = ", ".join(str(p) for p in paths)
        if tables:
            if len(tables) == 1:
                return cls(tables[0][1], source=source)
            frame = pd.concat(
                [t.assign(source=name) for name, t in tables], ignore_index=True, sort=False
            )
            return cls(frame, source=source)
        if not docs:
            raise CorpusError(f"{source}: no documents found")
        single_plain_file = len(paths) == 1 and paths[0].is_file() and len(docs) == 1 and (
            paths[0].suffix.lower() not in DOCUMENT_SUFFIXES
        )
        if single_plain_file:
            return cls(docs[0], names=names, source=source)
        return cls(docs, names=names, source=source)

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
        return [_row_text(row) for row in frame.to_dict(orient="records")]

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
        """Document `i`, numbered as the REPL's `docs` (a table row: see `_row_text`)."""
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
        return _row_text(frame.iloc[i].to_dict())

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

    def __repr__(self) -> str:
        return f"Corpus(kind={self.kind!r}, items={len(self)}, chars={self.total_chars})"


# ---- helpers ------------------------------------------------------------------------------


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


def _load_file(
    path: Path,
    name: str,
    docs: list[str],
    names: list[str],
    tables: list[tuple[str, pd.DataFrame]],
    *,
    strict: bool,
) -> None:
    """Append what `path` holds to docs/names or tables. In a folder (not strict), files
    that are not text are skipped; named explicitly, they are an error."""
    suffix = path.suffix.lower()
    if suffix in TABLE_SUFFIXES:
        tables.append((name, _read_table(path)))
        return
    if suffix in BINARY_HINTS or _looks_binary(path):
        if not strict:
            return
        hint = BINARY_HINTS.get(suffix, "pass text, JSONL, CSV or parquet files")
        raise CorpusError(f"{path}: unsupported file type ({suffix or 'binary data'}): {hint}")
    text = path.read_text(encoding="utf-8", errors="replace")
    if suffix in {".jsonl", ".ndjson"}:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as exc:
                raise CorpusError(f"{path}: line {number} is not valid JSON ({exc.msg}); fix or remove that line") from exc
            docs.append(_document_text(item, f"{path}: line {number}"))
            names.append(f"{name}:{number}")
        return
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise CorpusError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            docs.append(_document_text(item, f"{path}: item {i}"))
            names.append(f"{name}[{i}]")
        return
    docs.append(text)
    names.append(name)


def _document_text(item: Any, where: str) -> str:
    if isinstance(item, str):
        return item
    if isinstance(item, dict):
        if isinstance(item.get("text"), str):
            return item["text"]
        for value in item.values():
            if isinstance(value, str):
                return value
        raise CorpusError(f"{where}: the object has no string field; give each line a \"text\" field")
    raise CorpusError(f"{where}: expected an object with a \"text\" field or a string, got {type(item).__name__}")


def _read_table(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in {".parquet", ".pq"}:
            return pd.read_parquet(path)
        return pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",")
    except ImportError as exc:
        raise CorpusError(f"{path}: reading it needs an extra package ({exc}); pip install pyarrow") from exc
    except Exception as exc:  # pandas raises many parser error types; the user needs the file and why
        raise CorpusError(f"{path}: cannot read as a {suffix.lstrip('.')} table: {exc}") from exc


def _row_text(row: dict[str, Any]) -> str:
    # Must match the REPL's `docs` for a DataFrame (sandbox/corpus.py's loader): quotes cite
    # documents by index, and the verifier reads them back through this class.
    return " | ".join(f"{k}: {v}" for k, v in row.items())

