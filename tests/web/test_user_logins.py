"""Users reach their own page without an authenticating proxy, and nobody reaches another's.

A forged `X-Remote-User` from a real non-root local user is refused on every route with the
default config. `gpuacct web`, run by a real test user on a node (the exporter's socket, which
names the caller by SO_PEERCRED), prints a one-time link; Chromium opens it and sees that
user's page only; the link used twice, altered or expired is refused; root gets no link."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Browser, expect

from ledger import Ledger
from stack.process import free_port
from tests.fixtures.enforcement import TOKEN, Cluster
from tests.fixtures.ldap import Slapd
from tests.fixtures.users import UnixUser, change_accounts
from tests.web.conftest import Web
from tests.web.test_browser import SCREENSHOTS
from web import api, ledger_pages, pages, people

pytestmark = [pytest.mark.integration, pytest.mark.root]
LINK = re.compile(r"http://\S+/login/link/\S+")
FILLED = {"user": "alice", "name": "alice", "what": "usage"}
QUERY = "?from=2026-11-01&to=2026-12-01&month=2026-11"
# Each request as the test user: the status of every path, as JSON.
FORGER = """
import json, sys, urllib.error, urllib.request
base, paths = sys.argv[1], json.loads(sys.argv[2])
codes = {}
for path in paths:
    request = urllib.request.Request(base + path, headers={"X-Remote-User": "alice"})
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            codes[path] = answer.status
    except urllib.error.HTTPError as exc:
        codes[path] = exc.code
print(json.dumps(codes))
"""


def every_get_route() -> list[str]:
    """Every page and API route that shows something, with its parameters filled in."""
    paths = []
    for module in (pages, ledger_pages, people, api):
        for route in module.router.routes:
            path = getattr(route, "path", "")
            if "GET" not in getattr(route, "methods", ()) or path in ("/", "/login") \
                    or "{token}" in path:
                continue
            paths.append(re.sub(r"\{(\w+)\}", lambda m: FILLED[m.group(1)], path) + QUERY)
    return paths


def as_user(user: UnixUser, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), user=user.uid, group=user.gid, extra_groups=[],
                          cwd="/tmp", env={"PATH": "/usr/bin:/bin", "HOME": "/tmp"},
                          capture_output=True, text=True, timeout=60)


def test_a_forged_user_header_is_refused_everywhere_by_default(
        start_web: Callable[..., Web], test_users: dict[str, UnixUser]) -> None:
    paths = every_get_route()
    assert len(paths) >= 15 and "/users/alice" + QUERY in paths
    for trusted in (None, ["10.9.9.9"]):
        web = start_web(trusted_proxies=trusted)
        done = as_user(test_users["bob"], "/usr/bin/python3", "-c", FORGER, web.url,
                       json.dumps(paths))
        assert done.returncode == 0, done.stderr
        codes = json.loads(done.stdout)
        assert {p: c for p, c in codes.items() if c != 403} == {}, trusted
        web.process.stop()


def test_a_user_logs_in_with_a_link_from_their_node(
        start_web: Callable[..., Web], cluster: Cluster, installed_gpuacct: Path,
        test_users: dict[str, UnixUser], browser: Browser) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    sockets = Path(tempfile.mkdtemp(prefix="gpuacct-login-"))
    sockets.chmod(0o755)  # the test users reach the node's socket
    socket = str(sockets / "user.sock")
    web_port, enforcer_port = free_port(), free_port()
    node = cluster.node("gpu01", enforcer_port=enforcer_port, user_socket=socket)
    enforcer = cluster.enforcer([node], port=enforcer_port, sections={"web": {
        "public_url": f"http://127.0.0.1:{web_port}", "auth": {"link_seconds": 4}}})
    web = start_web(port=web_port, names=[alice.name, bob.name], trusted_proxies=None,
                    enforcer_url=enforcer.url, auth={"webhook_token": TOKEN})
    gpuacct = str(installed_gpuacct / "bin" / "gpuacct")

    def link_for(user: UnixUser) -> str:
        done = as_user(user, gpuacct, "--socket", socket, "web")
        assert done.returncode == 0, done.stderr
        assert f"logs you in as {user.name} once" in done.stdout
        found = LINK.search(done.stdout)
        assert found, done.stdout
        return found.group(0)

    link = link_for(alice)
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(link)
    expect(page).to_have_url(f"{web.url}/users/{alice.name}")
    expect(page.locator("h1")).to_contain_text(alice.name)
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=SCREENSHOTS / "login-link.png", full_page=True)
    # Her session is hers alone: bob's page and the administrators' are refused.
    answer = page.goto(f"{web.url}/users/{bob.name}")
    assert answer is not None and answer.status == 403
    expect(page.get_by_text("you may see only your own account")).to_be_visible()
    answer = page.goto(f"{web.url}/admin")
    assert answer is not None and answer.status == 403
    answer = page.goto(f"{web.url}/prices")  # users see the prices
    assert answer is not None and answer.status == 200
    expect(page.locator("#prices")).to_contain_text("A100")
    # ... and download their own usage and transactions, nobody else's.
    span = "from=2020-01-01&to=2100-01-01"
    for what, column in (("usage", "user"), ("transactions", "account")):
        got = page.request.get(f"{web.url}/users/{alice.name}/export/{what}.csv?{span}")
        assert got.status == 200, got.text()
        rows = list(csv.DictReader(io.StringIO(got.text())))
        assert rows and {r[column] for r in rows} == {alice.name}, (what, rows)
        assert page.request.get(
            f"{web.url}/users/{bob.name}/export/{what}.csv?{span}").status == 403
    page.goto(f"{web.url}/users/{alice.name}")
    expect(page.get_by_role("link", name="this month's usage (CSV)")).to_be_visible()

    # The same link again, from a fresh browser: refused.
    other = browser.new_page()
    answer = other.goto(link)
    assert answer is not None and answer.status == 410
    expect(other.get_by_text("used already, has expired or was never issued")).to_be_visible()
    # An altered link: refused, and the real one still works once.
    fresh = link_for(bob)
    altered = fresh[:-1] + ("A" if fresh[-1] != "A" else "B")
    answer = other.goto(altered)
    assert answer is not None and answer.status == 410
    answer = other.goto(fresh)
    assert answer is not None and answer.status == 200 and other.url.endswith(f"/{bob.name}")
    # An expired one (web.auth.link_seconds: 4).
    stale = link_for(alice)
    time.sleep(4.5)
    answer = browser.new_page().goto(stale)
    assert answer is not None and answer.status == 410

    # Root's peer credentials give root, never someone else, and root has no page.
    done = subprocess.run([gpuacct, "--socket", socket, "web"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "uid 0) is a system account" in done.stderr, done.stderr
    script = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); "
              "s.connect(sys.argv[1]); s.sendall(json.dumps({'op': 'login', 'user': "
              f"'{alice.name}'}}).encode() + b'\\n'); print(s.makefile().readline())")
    done = subprocess.run(["/usr/bin/python3", "-c", script, socket], capture_output=True,
                          text=True, timeout=30)
    reply = json.loads(done.stdout)
    assert reply["kind"] == "refused" and "unknown key" in reply["detail"], reply


def log_in(web: Web, name: str, password: str) -> tuple[requests.Session, requests.Response]:
    session = requests.Session()
    page = session.get(f"{web.url}/login", timeout=10).text
    csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    answer = session.post(f"{web.url}/login", timeout=30,
                          data={"name": name, "password": password, "csrf": csrf})
    return session, answer


def test_users_log_in_with_the_sites_directory(
        start_web: Callable[..., Web], slapd: Slapd, cluster: Cluster) -> None:
    enforcer = cluster.enforcer([], sections={"notifications": {"channels": {
        "email": {"url": "mailto://127.0.0.1:25?from=gpuacct@example.org&to={address}"}}}})
    web = start_web(names=["ada", "ben"], trusted_proxies=None, enforcer_url=enforcer.url,
                    auth={"webhook_token": TOKEN}, web_auth={"ldap": {
                        "url": slapd.url, "user_dn": "uid={user},ou=people,dc=example,dc=org",
                        "groups_base": "ou=groups,dc=example,dc=org",
                        "roles": {"gpu-admins": "admin"}, "timeout_seconds": 2}})
    ada, answer = log_in(web, "ada", "ada-password")
    assert answer.status_code == 200 and answer.url == f"{web.url}/users/ada", answer.text
    assert ada.get(f"{web.url}/users/ben", timeout=10).status_code == 403
    assert ada.get(f"{web.url}/admin", timeout=10).status_code == 403
    # Her address for notices came from the directory's `mail`.
    assert enforcer.get("/v1/notices/settings/ada")["address"] == "ada@example.org"
    # ben is in gpu-admins: the directory makes him an administrator.
    ben, answer = log_in(web, "ben", "ben-password")
    assert answer.status_code == 200 and answer.url == f"{web.url}/admin", answer.text
    assert ben.get(f"{web.url}/users/ada", timeout=10).status_code == 200

    # A wrong password is refused, and after five in a minute every try is.
    for _ in range(5):
        assert log_in(web, "ada", "wrong")[1].status_code == 401
    _, answer = log_in(web, "ada", "ada-password")
    assert answer.status_code == 429 and "too many failed logins" in answer.text
    audit = Ledger(web.ledger).audit_entries(0)
    assert sum(e.action == "login.failed" for e in audit) == 5
    assert any(e.action == "login" and "through ldap, as admin" in e.detail for e in audit)

    # The directory away: a page that says so, not a 500.
    slapd.stop()
    web.process.stop()
    web = start_web(names=["ada"], trusted_proxies=None, web_auth={"ldap": {
        "url": slapd.url, "timeout_seconds": 2}})
    _, answer = log_in(web, "ada", "ada-password")
    assert answer.status_code == 503, answer.text
    assert f"the directory at {slapd.url} cannot be reached" in answer.text


def test_a_local_user_logs_in_with_pam(start_web: Callable[..., Web],
                                       test_users: dict[str, UnixUser]) -> None:
    carol = test_users["carol"]
    change_accounts(["chpasswd"], input=f"{carol.name}:pam-password-42\n")
    try:
        web = start_web(names=[carol.name], trusted_proxies=None,
                        web_auth={"pam": {"service": "login"}})
        session, answer = log_in(web, carol.name, "pam-password-42")
        assert answer.status_code == 200 and answer.url == f"{web.url}/users/{carol.name}", \
            answer.text
        assert session.get(f"{web.url}/users/{carol.name}", timeout=10).status_code == 200
        _, answer = log_in(web, carol.name, "not-her-password")
        assert answer.status_code == 401
    finally:
        change_accounts(["passwd", "-d", carol.name])
