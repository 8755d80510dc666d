"""The blobs of an SQLite run store (schema v4): named byte strings, written once, read back
checked against their SHA-256. `RunStore` calls these inside its own transactions."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from delm_rlm.errors import ConfigError, NotFound, StoreError
from delm_rlm.state.protocol import BlobInfo, blob_bytes, check_blob_name

BLOBS_TABLE = """
CREATE TABLE IF NOT EXISTS blobs (
    name   TEXT PRIMARY KEY,          -- e.g. 'corpus'
    sha256 TEXT NOT NULL,             -- hex digest of data
    size   INTEGER NOT NULL,
    data   BLOB NOT NULL
);
"""


def migrate_v3_to_v4(conn: sqlite3.Connection) -> None:
    """Add the blob table (a v3 run has no blobs)."""
    conn.execute(BLOBS_TABLE)


def blob_info(conn: sqlite3.Connection, name: str) -> BlobInfo:
    row = conn.execute(
        "SELECT sha256, size FROM blobs WHERE name = ?", (check_blob_name(name),)
    ).fetchone()
    if row is None:
        raise NotFound(f"no blob {name!r} in this run")
    return BlobInfo(name=name, sha256=row[0], size=row[1])


def put_blob(conn: sqlite3.Connection, name: str, data: bytes) -> BlobInfo:
    data = blob_bytes(data)
    info = BlobInfo.of(name, data)
    try:
        stored = blob_info(conn, name)
    except NotFound:
        conn.execute(
            "INSERT INTO blobs(name, sha256, size, data) VALUES (?, ?, ?, ?)",
            (name, info.sha256, info.size, data),
        )
        return info
    if stored.sha256 != info.sha256:
        raise ConfigError(
            f"blob {name!r} is already stored with other bytes (sha256 {stored.sha256[:12]}...); "
            "a run's blobs are written once: store the new bytes under another name"
        )
    return stored


def get_blob(conn: sqlite3.Connection, name: str, path: Path) -> bytes:
    row = conn.execute(
        "SELECT sha256, data FROM blobs WHERE name = ?", (check_blob_name(name),)
    ).fetchone()
    if row is None:
        raise NotFound(f"no blob {name!r} in this run")
    data = bytes(row[1])
    if BlobInfo.of(name, data).sha256 != row[0]:
        raise StoreError(
            f"blob {name!r} in {path} no longer matches its SHA-256 {row[0]}; "
            "the stored bytes are damaged: store them again under a new name"
        )
    return data
