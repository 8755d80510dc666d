"""Which process of a run finalizes it: the coordinator, chosen through the run's store.

A run's tasks may be worked by several processes: the one that started it and any number of
`delm-rlm worker`s on other machines (`Team.join`). Exactly one of them finalizes. The role is
decided by the store's atomic counter `coordinator_epoch`: a process takes the role by adding 1
to it and holds the role while the counter still equals the value its own addition returned.
The holder writes a heartbeat (the meta key `coordinator_<epoch>`) every `stale_s / 3`; when
the current holder's heartbeat is older than `stale_s` (it was SIGKILLed, its machine went
away, it hangs), another process takes over. Of two processes racing to take over, one gets
the expected value from the counter and wins; the other gets a higher one and stays a worker.

A holder that only paused (longer than `stale_s`) finds on its next `holds()` that it was
replaced, and stops finalizing. Clocks of the machines are assumed to agree to well within
`stale_s`, as task leases already assume.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable

from delm_rlm.state.protocol import RunState

log = logging.getLogger(__name__)

EPOCH_COUNTER = "coordinator_epoch"


def heartbeat_key(epoch: int) -> str:
    return f"coordinator_{epoch}"


class Coordination:
    """One process's view of the run's coordinator role (see the module docstring).

    holder: this process's name (in the heartbeat, for people reading the meta).
    stale_s: how old the holder's heartbeat may be before another process takes over.
    """

    def __init__(self, store: RunState, holder: str, stale_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        if stale_s <= 0:
            raise ValueError(f"stale_s must be > 0, got {stale_s}")
        self.store = store
        self.holder = holder
        self.stale_s = stale_s
        self.clock = clock
        self.epoch: int | None = None  # the epoch this process took, while it may hold it
        self._absent_since: dict[int, float] = {}  # epochs whose holder has not beaten yet
        self.seen_holder: str | None = None  # the holder named by the last heartbeat read

    @property
    def beat_period(self) -> float:
        return self.stale_s / 3

    def holds(self) -> bool:
        """True while this process is the coordinator (nobody took the role over since)."""
        if self.epoch is None:
            return False
        if self.store.counter(EPOCH_COUNTER) != self.epoch:
            log.info("%s: the coordinator role passed to another process", self.holder)
            self.epoch = None
        return self.epoch is not None

    def take(self, *, force: bool = False) -> bool:
        """Take the role: at once with `force` (the process that starts or resumes the run),
        else only when the current holder's heartbeat is stale and no other process took
        it first. True when this process holds the role now."""
        current = self.store.counter(EPOCH_COUNTER)
        if self.epoch is not None and self.epoch == current:
            return True
        if not force and not self._stale(current):
            return False
        got = self.store.add_to_counter(EPOCH_COUNTER, 1)
        if not force and got != current + 1:
            return False  # another process took over between our read and our addition
        self.epoch = got
        self.beat()
        return True

    def beat(self) -> bool:
        """Renew the heartbeat; False (and the role dropped) when another process holds it."""
        if not self.holds():
            return False
        assert self.epoch is not None
        self.store.set_meta(**{heartbeat_key(self.epoch): {"holder": self.holder, "beat": self.clock()}})
        return True

    def _stale(self, epoch: int) -> bool:
        if epoch == 0:
            return True  # nobody ever took the role
        now = self.clock()
        beat = self.store.get_meta(heartbeat_key(epoch))
        self.seen_holder = str(beat["holder"]) if isinstance(beat, dict) and "holder" in beat else None
        if not isinstance(beat, dict) or not isinstance(beat.get("beat"), (int, float)):
            # Taken but not beaten yet: give the taker its grace period, counted from now.
            return now - self._absent_since.setdefault(epoch, now) > self.stale_s
        return now - float(beat["beat"]) > self.stale_s


def worker_name() -> str:
    """This process's name among a run's processes: host and pid."""
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())[:24] or "host"
    return f"{host}-{os.getpid()}"
