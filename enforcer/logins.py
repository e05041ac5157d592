"""One-time login links (gpuacct.login), kept in memory: a token is a random secret, stored
only as its hash, bound to a user, used once, and expiring; a restart forgets every link,
which can only refuse one (the user runs `gpuacct web` again), never grant one twice."""

from __future__ import annotations

import hashlib
import secrets
import threading
import time

from gpuacct.login import LINK_PATH, Redeemed


class LinkRefused(Exception):
    """Said to the user as it is."""


class LoginLinks:
    def __init__(self, page_url: str | None, seconds: float, min_uid: int) -> None:
        self.page_url, self.seconds, self.min_uid = page_url, seconds, min_uid
        self._links: dict[bytes, tuple[Redeemed, float]] = {}
        self._lock = threading.Lock()

    def issue(self, user: str, uid: int, node: str, now: float | None = None) -> str:
        """The link for this caller, as the node vouched for them."""
        now = time.time() if now is None else now
        if self.page_url is None:
            raise LinkRefused("the web page's address is not configured (web.public_url): "
                              "ask your administrator")
        if uid == 0 or uid < self.min_uid:
            raise LinkRefused(f"{user} (uid {uid}) is a system account and has no page: "
                              "run `gpuacct web` as yourself")
        token = secrets.token_urlsafe(32)
        with self._lock:
            self._links = {k: v for k, v in self._links.items() if v[1] > now}
            self._links[_digest(token)] = (Redeemed(user=user, node=node), now + self.seconds)
        return f"{self.page_url.rstrip('/')}{LINK_PATH}{token}"

    def redeem(self, token: str, now: float | None = None) -> Redeemed:
        now = time.time() if now is None else now
        with self._lock:
            found = self._links.pop(_digest(token), None)
        if found is None or found[1] <= now:
            raise LinkRefused("this link was used already, has expired or was never issued: "
                              "run `gpuacct web` on a node for a new one")
        return found[0]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
