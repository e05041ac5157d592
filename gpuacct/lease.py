"""Who acts among several copies of one service on one store (active and standby): the one
holding the lease, a row in the store taken for `seconds` and renewed well before it ends.
The billing engine takes it at each tick; the enforcer waits for it, then keeps it in a
thread. Either way, a copy that cannot renew it in time stops acting: never two at once."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Protocol

from gpuacct.store import StoreError


class LeaseStore(Protocol):
    """A store with the lease row (gpuacct.store.take_lease and its kin)."""

    def acquire_lease(self, holder: str, seconds: float, now: float | None = None) -> bool: ...

    def lease_holder(self) -> str | None: ...

    def release_lease(self, holder: str) -> None: ...


class Lease:
    def __init__(self, store: LeaseStore, holder: str, seconds: float,
                 log: logging.Logger) -> None:
        self.store, self.holder, self.seconds, self.log = store, holder, seconds, log
        self.standing_by = False  # said once: another holds it
        self.lost = threading.Event()  # kept, then not renewed in time

    def take(self) -> bool:
        """Take or renew it now; False (said once per standby) while another holds it."""
        if not self.store.acquire_lease(self.holder, self.seconds):
            if not self.standing_by:
                self.log.info("standby: %s holds the lease; taking over when it ends",
                              self.store.lease_holder() or "another copy")
                self.standing_by = True
            return False
        if self.standing_by:
            self.log.info("took the lease: %s acts now", self.holder)
            self.standing_by = False
        return True

    def wait(self, stop: threading.Event) -> bool:
        """Standby until this copy holds it; False if `stop` came first. A store that cannot
        be reached is said and tried again."""
        while True:
            try:
                if self.take():
                    return True
            except StoreError as exc:
                self.log.warning("standby: cannot reach the store: %s", exc)
            if stop.wait(min(1.0, self.seconds / 4)):
                return False

    def keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> threading.Thread:
        """Renew it four times a period in a thread until `stop`; if it cannot be renewed
        before it ends (another took it, or the store was away), `lost` is set and
        `on_lost` called."""
        thread = threading.Thread(target=self._keep, args=(stop, on_lost), name="lease",
                                  daemon=True)
        thread.start()
        return thread

    def _keep(self, stop: threading.Event, on_lost: Callable[[], None]) -> None:
        renewed = time.monotonic()
        while not stop.wait(self.seconds / 4):
            try:
                if self.store.acquire_lease(self.holder, self.seconds):
                    renewed = time.monotonic()
                    continue
                self.log.error("the lease went to %s: stopping", self.store.lease_holder())
            except StoreError as exc:
                if time.monotonic() - renewed < self.seconds * 0.75:
                    self.log.warning("cannot renew the lease yet: %s", exc)
                    continue
                self.log.error("cannot renew the lease before it ends (%s): stopping", exc)
            self.lost.set()
            on_lost()
            return

    def release(self) -> None:
        """Given back at a clean stop, so a standby takes over at once."""
        self.store.release_lease(self.holder)
