"""What the node did, logged, counted, and queued for the enforcer's audit log until it has
been delivered."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

from gpuacct.policy import NodeAction, NodeActionKind, Result

log = logging.getLogger("exporter.actuator")
MAX_REPORTS = 10_000


class Reports:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.queued: list[NodeAction] = []
        self.counts: Counter[tuple[str, str]] = Counter()

    def record(self, user: str, action: NodeActionKind, result: Result, detail: str = "",
               alert: str = "") -> None:
        level = logging.WARNING if result in ("failed", "refused") else logging.INFO
        log.log(level, "%s %s: %s %s", action, user, result, detail)
        report = NodeAction(id=uuid.uuid4().hex, at=self._clock(), user=user, action=action,
                            result=result, detail=detail, alert=alert)
        with self._lock:
            self.counts[(action, result)] += 1
            self.queued.append(report)
            del self.queued[:-MAX_REPORTS]

    def take(self) -> list[NodeAction]:
        with self._lock:
            taken, self.queued = self.queued, []
            return taken

    def give_back(self, reports: list[NodeAction]) -> None:
        """Reports that could not be delivered go back to the front of the queue."""
        with self._lock:
            self.queued[:0] = reports
            del self.queued[:-MAX_REPORTS]

    def recorded(self) -> int:
        """How many were ever recorded (taking them does not lower it)."""
        with self._lock:
            return sum(self.counts.values())
