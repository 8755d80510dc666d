"""A run's state. `protocol.py`: what a run's state offers (meta, gists, tasks with leases,
counters, the classification log, blobs, a snapshot for reports), typed; `sqlite.py`:
`RunStore`, that protocol on one SQLite file (all its SQL, blobs in `sqlite_blobs.py`);
`postgres.py`: `PostgresRunStore`, the protocol on a PostgreSQL database shared by many
machines (its transactions in `postgres_tx.py`, schema in `postgres_schema.py`, URLs and
connections in `postgres_conn.py`); `opener.py`: `open_state(path or URL)`; `check.py`:
`check_store`, for `delm-rlm doctor`. `queue.py` (leased tasks) and `context.py` (the
verified shared context) sit on top of the protocol only. A new backend is a new file
passing tests/test_state_conformance.py."""
