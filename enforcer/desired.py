"""The one versioned state every node is sent: the enforcement policy per user (enforcer.store)
and the reservations (allocator). Its version is the sum of the two stores' versions, so it
goes up whenever either changes and a node never has to merge two sources.

Beside the version ride the allowances (the config's GPU limits) and what each user holds on
each node, as the nodes last said: they change with every sync, so they are in every answer
without making a new version (no push to every node for them)."""

from __future__ import annotations

import threading
import time

from allocator.service import Allocator
from enforcer.store import Store
from gpuacct.config import BillingSettings
from gpuacct.limits import set_limits, usage_limits
from gpuacct.policy import Allowance, Allowances, Held, NodePolicy

# A node's holdings count this long after its last sync: one that went away holds nothing.
HELD_SECONDS = 300.0


def allowances(billing: BillingSettings) -> Allowances:
    """Each user's GPU allowance from billing.limits and billing.user_limits."""
    def allowance(limits: dict[str, float]) -> Allowance:
        return Allowance(**{k: int(v) for k, v in limits.items()
                            if k in Allowance.model_fields})
    return Allowances(default=allowance(set_limits(billing.limits)),
                      users={u: allowance(usage_limits(billing, u))
                             for u in sorted(billing.user_limits)})


class Desired:
    def __init__(self, store: Store, allocator: Allocator | None = None,
                 limits: Allowances | None = None) -> None:
        self.store, self.allocator = store, allocator
        self.limits = limits or Allowances()
        self._lock = threading.Lock()
        self._cached: NodePolicy | None = None
        self._held: dict[str, tuple[float, dict[str, Held]]] = {}  # node -> (when, user -> held)
        self._held_changed = False

    def report_held(self, node: str, held: dict[str, Held], now: float | None = None) -> None:
        """What a node's sync says each user holds there now."""
        now = time.time() if now is None else now
        with self._lock:
            before = self._held.get(node, (0.0, {}))[1]
            self._held[node] = (now, held)
            self._held_changed |= held != before

    def _holdings(self, now: float) -> dict[str, dict[str, Held]]:
        by_user: dict[str, dict[str, Held]] = {}
        for node, (at, held) in sorted(self._held.items()):
            if now - at <= HELD_SECONDS:
                for user, h in held.items():
                    if self.limits.of(user) != Allowance():  # only the limited are counted
                        by_user.setdefault(user, {})[node] = h
        return by_user

    def current(self) -> NodePolicy:
        policy = self.store.policy
        version = policy.version + (self.allocator.version if self.allocator else 0)
        now = time.time()
        with self._lock:
            expired = any(now - at > HELD_SECONDS for at, _ in self._held.values())
            if (self._cached is None or self._cached.version != version or self._held_changed
                    or expired):
                if expired:
                    self._held = {n: v for n, v in self._held.items()
                                  if now - v[0] <= HELD_SECONDS}
                update: dict[str, object] = {
                    "version": version, "allowances": self.limits.model_copy(
                        update={"held": self._holdings(now)})}
                if self.allocator is not None:
                    update["reservations"] = self.allocator.desired()
                self._cached = policy.model_copy(update=update)
                self._held_changed = False
            return self._cached

    def dump(self) -> bytes:
        """The whole desired state, every field (GET /v1/policy)."""
        return self.current().model_dump_json().encode()

    def for_nodes(self) -> bytes:
        return encode(self.current())


def encode(policy: NodePolicy) -> bytes:
    """The policy as nodes are sent it: a field at its default is left out (the node fills it
    in), so a node from before a field was added still takes the policy while the field is not
    used (nodes before 0.2 refuse fields they do not know)."""
    return policy.model_dump_json(exclude_defaults=True).encode()
