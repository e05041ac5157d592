"""gpuacct-web as its own process over a ledger with accounts, usage and transactions."""

from __future__ import annotations

import re
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
import requests
import yaml
from playwright.sync_api import Browser, sync_playwright

from gpuacct.store import Target
from ledger import Ledger
from ledger.schema import sum_weeks
from stack.process import ManagedProcess, free_port
from tests.fixtures.ledger import forge
from tests.fixtures.servers import RUNNING
from tests.fixtures.tls import Tls
from web.auth import hash_password

PASSWORD = "correct horse battery"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
NOW = time.time()


def fill_ledger(path: Target, users: int = 3, windows: int = 5,
                names: list[str] | None = None) -> None:
    """Accounts alice, bob, carol... (or `names`) with `windows` billed minutes of usage
    each."""
    ledger = Ledger(path)
    names = names or ["alice", "bob", "carol",
                      *[f"user{i:04d}" for i in range(3, users)]][:users]
    ends = [int(NOW // 60 * 60) - 60 * (windows - w) for w in range(windows)]
    cost = {name: Decimal("0.123457") * (i + 1) for i, name in enumerate(names)}
    with forge(ledger) as db:  # the windows' usage lines, as an engine billed them
        for end in ends:
            db.execute("INSERT INTO windows VALUES ($1, $2, $3, $4, $5)",
                       (end, end - 60, NOW, len(names), "0"))
            # alice held her GPU idle for half of each minute.
            db.executemany("INSERT INTO usage_lines VALUES "
                           "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, NULL)", [
                (end, name, f"job-{i % 7}", "gpu01:9835",
                 "NVIDIA A100-SXM4-80GB" if i % 2 == 0 else "NVIDIA GeForce RTX 3090",
                 "60", "12.5", str(cost[name]), 0.0, "30" if i == 0 else "0",
                 "0.05" if i == 0 else "0", name) for i, name in enumerate(names)])
        sum_weeks(db)
    with ledger.batch():
        for name in names:
            ledger.open_account(name, Decimal(100), NOW - 86400 * 3)
        for end in ends:
            for name in names:
                ledger.post(name, "charge", -cost[name], float(end), f"charge:{end}:{name}",
                            window_end=end)
    ledger.close()


@dataclass
class Web:
    process: ManagedProcess
    url: str
    ledger: Target

    def admin(self, name: str = "", password: str = PASSWORD) -> tuple[requests.Session, str]:
        """A logged-in administrator's session and its CSRF token (no name: the one of
        auth.admin_password_hash)."""
        session = requests.Session()
        page = session.get(f"{self.url}/login", timeout=10).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
        answer = session.post(f"{self.url}/login", data={"name": name, "password": password,
                                                         "csrf": csrf}, timeout=10)
        assert answer.status_code == 200 and answer.url.endswith("/admin"), answer.text
        token = re.search(r'name="csrf" value="([^"]+)"', answer.text).group(1)  # type: ignore[union-attr]
        return session, token

    def balance(self, user: str) -> Decimal:
        return Ledger(self.ledger).balance(user) or Decimal(0)


@pytest.fixture
def start_web(tmp_path: Path) -> Iterator[Callable[..., Web]]:
    started: list[ManagedProcess] = []

    def start(users: int = 3, windows: int = 5, auth: dict[str, str] | None = None,
              names: list[str] | None = None, port: int | None = None,
              web_auth: dict[str, object] | None = None, ledger_at: Target | None = None,
              tls: Tls | None = None, **web: object) -> Web:
        """`auth`: the top-level section (secrets); `web_auth`: web.auth (LDAP, PAM);
        `ledger_at`: where the ledger is (default: a file beside the config); `tls`: served
        over TLS with its certificate."""
        if web_auth is not None:
            web["auth"] = web_auth
        d = tmp_path / f"web-{len(started)}" if started else tmp_path  # a second one
        d.mkdir(exist_ok=True)
        ledger = ledger_at or d / "ledger.sqlite3"
        fill_ledger(ledger, users, windows, names)
        # Most tests name their user with the proxy's header, from this host; None: the
        # default, which believes no header.
        web.setdefault("trusted_proxies", ["127.0.0.1", "::1"])
        if web["trusted_proxies"] is None:
            del web["trusted_proxies"]
        port = port or free_port()
        config = d / "gpuacct.yaml"
        config.write_text(yaml.safe_dump({
            "billing": {"ledger": str(ledger)},
            "web": {"session_secret": "s3cret-for-tests", **web},
            "auth": {"admin_password_hash": hash_password(PASSWORD), **(auth or {})}}))
        served = ["--web.config.file", str(tls.web_config)] if tls else []
        url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
        proc = ManagedProcess("web", [sys.executable, "-m", "web", "--config", str(config),
                                      "run", "--web.listen-address", f"127.0.0.1:{port}",
                                      *served], d / "web.log", f"{url}/-/healthy",
                              ready_tls=tls.context if tls else None)
        started.append(proc)
        RUNNING.append(proc)
        return Web(proc.start().wait_ready(), url, ledger)

    yield start
    for proc in started:
        proc.stop()
        if proc in RUNNING:
            RUNNING.remove(proc)


def proxied(user: str) -> requests.Session:
    """A session that the proxy's header names `user` (the fixture trusts this host)."""
    session = requests.Session()
    session.headers["X-Remote-User"] = user
    return session


def csrf_of(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found, page
    return found.group(1)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium through Playwright."""
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM)
        yield browser
        browser.close()
