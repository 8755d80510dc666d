"""Fault injection for store tests: a write transaction that fails just before COMMIT.

It lives here, not in the store: `fail_before_commit` wraps the store's public
`transaction()` on one instance for the duration of a `with` block, so production code
carries no test hook.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any


@contextmanager
def fail_before_commit(store: Any, action: Callable[[], None]) -> Iterator[None]:
    """Inside the block, every outermost write transaction of `store` runs `action` after
    its body and before COMMIT; an exception from `action` rolls the whole transaction back
    (and `os._exit` from it kills the process with the transaction open). Inner (re-entrant)
    transactions and transactions whose body raised are left alone. One thread at a time."""
    real: Callable[[], AbstractContextManager[Any]] = store.transaction
    depth = 0

    @contextmanager
    def failing() -> Iterator[Any]:
        nonlocal depth
        with real() as tx:
            depth += 1
            try:
                yield tx
            finally:
                depth -= 1
            if depth == 0:
                action()

    setattr(store, "transaction", failing)  # the instance attribute shadows the method
    try:
        yield
    finally:
        delattr(store, "transaction")
