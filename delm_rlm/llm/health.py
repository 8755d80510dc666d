"""Whether an endpoint keeps failing: the gateway's guard against calling a dead endpoint
over and over.

An agent that retries failed model calls (a hybrid loop, a team re-queuing its tasks) would
otherwise send a persistently failing endpoint hundreds of requests, each with its own
retries and backoff. `EndpointHealth` counts the calls of one LM (shared by its sessions)
that failed for good in a row; at `limit` of them the gateway refuses further calls at once
with `EndpointFailing`, naming the endpoint, the last error and the fix. One answered call
resets the count. After `reopen_after_s` calls are let through again (in case the endpoint
recovered, for a long-lived LM in a notebook or an evaluation); the next failure stops them
again at once.
"""

from __future__ import annotations

import threading
import time

from delm_rlm.errors import ConfigError, EndpointFailing

DEFAULT_MAX_CONSECUTIVE_FAILURES = 8
REOPEN_AFTER_S = 60.0


class EndpointHealth:
    """Failed calls in a row at one LM's endpoint. Thread-safe (the sandbox bridge calls the
    gateway from its own thread). `limit` None never stops calls."""

    def __init__(self, limit: int | None = DEFAULT_MAX_CONSECUTIVE_FAILURES, *, reopen_after_s: float = REOPEN_AFTER_S) -> None:
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"max_consecutive_failures must be a whole number >= 1 or None (never stop), got {limit!r}")
        if reopen_after_s < 0:
            raise ConfigError(f"reopen_after_s must be >= 0 seconds, got {reopen_after_s}")
        self.limit = limit
        self.reopen_after_s = float(reopen_after_s)
        self._lock = threading.Lock()
        self._failures = 0
        self._last_error = ""
        self._stopped_at: float | None = None

    @property
    def consecutive_failures(self) -> int:
        with self._lock:
            return self._failures

    def admit(self, endpoint: str) -> None:
        """Raise EndpointFailing while calls to `endpoint` are stopped."""
        with self._lock:
            if self._stopped_at is None:
                return
            if time.monotonic() - self._stopped_at >= self.reopen_after_s:
                self._stopped_at = None  # try again; the next failure stops calls at once
                return
            failures, last = self._failures, self._last_error
        raise EndpointFailing(
            f"stopped calling {endpoint}: its last {failures} calls failed in a row, the last with: {last} -- "
            "fix what that error says (is the server up? are the URL, model name and API key right?) and run "
            f"again. LM(max_consecutive_failures=...) sets how many failures in a row stop the calls (default "
            f"{DEFAULT_MAX_CONSECUTIVE_FAILURES}; None never stops); calls are let through again after "
            f"{self.reopen_after_s:g}s"
        )

    def succeeded(self) -> None:
        with self._lock:
            self._failures = 0
            self._last_error = ""
            self._stopped_at = None

    def failed(self, error: str) -> None:
        with self._lock:
            self._failures += 1
            self._last_error = error[:1000]
            if self.limit is not None and self._failures >= self.limit:
                self._stopped_at = time.monotonic()


__all__ = ["DEFAULT_MAX_CONSECUTIVE_FAILURES", "REOPEN_AFTER_S", "EndpointHealth"]
