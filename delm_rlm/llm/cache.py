"""The on-disk response cache: one SQLite file keyed by the full request and its endpoint."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from delm_rlm.errors import LMError
from delm_rlm.llm.transport import ChatReply, ChatRequest

CACHE_FILE_NAME = "responses.sqlite"
_CACHE_FILE_SUFFIXES = (".sqlite", ".sqlite3", ".db")


def cache_dir() -> Path:
    """Where delm-rlm keeps its caches (responses, the assembled local model, server logs):
    `$DELM_RLM_CACHE_DIR`, else `~/.cache/delm-rlm`."""
    env = os.environ.get("DELM_RLM_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "delm-rlm"


class ResponseCache:
    """On-disk response cache: one SQLite file, WAL mode, safe for concurrent processes."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA busy_timeout=30000")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT NOT NULL,"
                    " text TEXT NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,"
                    " finish_reason TEXT, created_at REAL NOT NULL)"
                )
            except sqlite3.Error as e:
                raise LMError(
                    f"cannot open the response cache {self.path}: {e}; pass cache=False or set "
                    "DELM_RLM_CACHE_DIR to a writable directory"
                ) from e
            self._conn = conn
        return self._conn

    @staticmethod
    def key(request: ChatRequest, endpoint: str) -> str:
        payload = {
            "v": 1,
            "endpoint": endpoint,
            "model": request.model,
            "messages": request.messages,
            "temperature": request.temperature,
            "max_tokens": request.max_tokens,
            "stop": list(request.stop) if request.stop else None,
        }
        blob = json.dumps(payload, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> ChatReply | None:
        with self._lock:
            row = self._connection().execute(
                "SELECT text, input_tokens, output_tokens, finish_reason FROM responses WHERE key = ?", (key,)
            ).fetchone()
        if row is None:
            return None
        return ChatReply(text=row[0], input_tokens=row[1], output_tokens=row[2], finish_reason=row[3])

    def put(self, key: str, model: str, reply: ChatReply) -> None:
        with self._lock:
            self._connection().execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key, model, reply.text, reply.input_tokens, reply.output_tokens, reply.finish_reason, time.time()),
            )

    def __len__(self) -> int:
        with self._lock:
            return int(self._connection().execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def open_cache(cache: bool | str | Path | None, temperature: float) -> ResponseCache | None:
    """The cache an LM's `cache=` setting means: None = on at temperature 0; True/False force
    it; a path puts the SQLite file there (a directory, or a file ending in .sqlite/.db)."""
    use_cache = (temperature == 0) if cache is None else bool(cache) if isinstance(cache, bool) else True
    if not use_cache:
        return None
    if isinstance(cache, str | Path):
        p = Path(cache).expanduser()
        return ResponseCache(p if p.suffix in _CACHE_FILE_SUFFIXES else p / CACHE_FILE_NAME)
    return ResponseCache(cache_dir() / CACHE_FILE_NAME)


__all__ = ["CACHE_FILE_NAME", "ResponseCache", "cache_dir", "open_cache"]
