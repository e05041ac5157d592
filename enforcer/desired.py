"""The one versioned state every node is sent: the enforcement policy per user (enforcer.store)
and the reservations (allocator). Its version is the sum of the two stores' versions, so it
goes up whenever either changes and a node never has to merge two sources."""

from __future__ import annotations

import threading

from allocator.service import Allocator
from enforcer.store import Store
from gpuacct.policy import NodePolicy


class Desired:
    def __init__(self, store: Store, allocator: Allocator | None = None) -> None:
        self.store, self.allocator = store, allocator
        self._lock = threading.Lock()
        self._cached: NodePolicy | None = None

    def current(self) -> NodePolicy:
        policy = self.store.policy
        if self.allocator is None:
            return policy
        version = policy.version + self.allocator.version
        with self._lock:
            if self._cached is None or self._cached.version != version:
                self._cached = policy.model_copy(update={
                    "version": version, "reservations": self.allocator.desired()})
            return self._cached

    def dump(self) -> bytes:
        return self.current().model_dump_json().encode()
