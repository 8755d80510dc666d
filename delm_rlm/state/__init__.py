"""A run's state. `protocol.py`: what a run's state offers (meta, gists, tasks with leases,
counters, the classification log, a snapshot for reports), typed; `sqlite.py`: `RunStore`,
that protocol on one SQLite file (all the SQL); `queue.py` (leased tasks) and `context.py`
(the verified shared context) on top of the protocol only. A new backend is a new file
passing tests/test_state_conformance.py."""
