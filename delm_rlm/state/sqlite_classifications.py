"""The classification log of an SQLite run store: one row per `classify` call, in append
order. Schema v5 adds the items labelled (a JSON list, NULL in rows written before), so a
report or an evaluation can see what the model said about each item, not only the counts.
`RunStore` calls these inside its own transactions."""

from __future__ import annotations

import sqlite3

from delm_rlm.state.protocol import ClassificationRecord

ITEMS_COLUMN = "ALTER TABLE classifications ADD COLUMN items TEXT;"  # v5: JSON list, or NULL


def migrate_v4_to_v5(conn: sqlite3.Connection) -> None:
    """Add the items column (where missing); earlier records keep NULL (their items were
    never stored)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(classifications)")}
    if "items" not in columns:
        conn.execute(ITEMS_COLUMN)


def append_classification(conn: sqlite3.Connection, record: ClassificationRecord) -> None:
    conn.execute(
        "INSERT INTO classifications(key, labels, instruction, result, items) VALUES (?, ?, ?, ?, ?)",
        record.stored_columns(),
    )


def classifications(conn: sqlite3.Connection) -> list[ClassificationRecord]:
    rows = conn.execute(
        "SELECT key, labels, instruction, result, items FROM classifications ORDER BY seq"
    ).fetchall()
    return [ClassificationRecord.from_stored(*row) for row in rows]
