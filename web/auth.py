"""Who is asking: an administrator (password login, signed session cookie, CSRF token), a user
logged in (a one-time link from a node, the site's directory, PAM) or named by a trusted
reverse proxy's header. Nobody else sees anything."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import argon2
from itsdangerous import BadSignature, URLSafeTimedSerializer

SESSION_COOKIE = "gpuacct_session"
SESSION_SECONDS = 12 * 3600
# OWASP's minimum for argon2id (m=19 MiB, t=2, p=1): 19 MiB and ~50 ms a login, so a burst of
# logins cannot take the server's memory as scrypt at N=2^17 (128 MiB each) could.
_HASHER = argon2.PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)


def hash_password(password: str) -> str:
    """An argon2id hash (`$argon2id$v=19$m=...`), for auth.admin_password_hash and
    web.administrators (`gpuacct-web hash-password`)."""
    return _HASHER.hash(password)


def verify_password(password: str, stored: str) -> bool:
    """Against an argon2id hash, or a `scrypt$n$r$p$salt$hash` one made before it."""
    stored = stored.strip()
    if stored.startswith("$argon2"):
        try:
            return _HASHER.verify(stored, password)
        except (argon2.exceptions.Argon2Error, ValueError):  # a mismatch, or not a hash
            return False
    return _verify_scrypt(password, stored)


def weaker_than_now(stored: str) -> bool:
    """A hash made with weaker parameters than hash_password uses now (scrypt, or an older
    argon2id): it still logs in, and the log asks for a new one."""
    stored = stored.strip()
    return not stored.startswith("$argon2") or _HASHER.check_needs_rehash(stored)


def _verify_scrypt(password: str, stored: str) -> bool:
    try:
        kind, n, r, p, salt, digest = stored.split("$")
        if kind != "scrypt":
            return False
        expected = base64.b64decode(digest)
        got = hashlib.scrypt(password.encode(), salt=base64.b64decode(salt), n=int(n),
                             r=int(r), p=int(p), dklen=len(expected))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(got, expected)


Role = Literal["admin", "finance", "manager"]
LEGACY_ADMIN = "admin"  # auth.admin_password_hash's administrator


@dataclass(frozen=True)
class Viewer:
    admin: bool  # an administrator of any role is logged in
    user: str | None  # the user a trusted proxy named
    csrf: str  # the session's CSRF token ("" without a session)
    name: str | None = None  # the administrator's login name
    role: Role | None = None
    manages: frozenset[str] = frozenset()  # a manager's accounts

    @property
    def actor(self) -> str:
        """How the ledger's audit names this administrator's changes."""
        return f"{self.name} (web)"


class Sessions:
    """Session cookies signed with the configured secret: {name, csrf}; the role is read from
    the config at each request, so a changed or removed administrator takes effect at once."""

    def __init__(self, keys: Sequence[str]) -> None:
        self.rotate(keys)

    def rotate(self, keys: Sequence[str]) -> None:
        """New secrets: cookies signed with any of them are good; the first signs new ones
        (itsdangerous signs with the last of its list)."""
        self._serializer = URLSafeTimedSerializer(list(reversed(keys)), salt="gpuacct-session")

    def new(self, admin: str | None = None, user: str | None = None,
            role: Role | None = None) -> tuple[str, str]:
        """(cookie value, csrf token) for the administrator `admin` and/or the user `user`
        (neither: nobody yet). `role`: one the directory granted at login, kept in the
        session, as the directory is not asked at every request."""
        csrf = secrets.token_urlsafe(24)
        return self._serializer.dumps({"name": admin, "user": user, "role": role,
                                       "csrf": csrf}), csrf

    def read(self, cookie: str | None) -> dict[str, object] | None:
        if not cookie:
            return None
        try:
            data = self._serializer.loads(cookie, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        return data if isinstance(data, dict) else None


class LoginLimiter:
    """At most `per_minute` failed logins per client address in any minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._failures: dict[str, deque[float]] = defaultdict(deque)
        self._lock = threading.Lock()

    def blocked(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            failures = self._failures[client]
            while failures and failures[0] < now - 60:
                failures.popleft()
            return len(failures) >= self.per_minute

    def failed(self, client: str, now: float | None = None) -> None:
        with self._lock:
            self._failures[client].append(time.monotonic() if now is None else now)
