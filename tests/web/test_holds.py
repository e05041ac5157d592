"""The web page against a hostile visitor: script sent in every query and path parameter of
every route comes back escaped, every answer carries the security headers, every route that
changes something lets exactly the roles of docs/web.md's table through, a forged
X-Forwarded-For does not reset the login throttle, the cookie is Secure over TLS, and a
100 MiB body is refused with 413 while the server barely grows."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from gpuacct.config import settings_from_mapping
from tests.fixtures.hostile import MIB, post_huge_body, rss_kib
from tests.fixtures.tls import Tls
from tests.web.conftest import PASSWORD, Web, csrf_of, proxied
from web.app import create_app
from web.auth import hash_password, verify_password, weaker_than_now

pytestmark = pytest.mark.integration
SCRIPT = "<script>alert(1)</script>"
FORM = "application/x-www-form-urlencoded"
HEADERS = {"content-security-policy", "x-frame-options", "x-content-type-options",
           "referrer-policy"}
DOCS = Path(__file__).parents[2] / "docs" / "web.md"
STAFF = {"fiona": {"password_hash": hash_password("fiona's secret"), "role": "finance"},
         "mark": {"password_hash": hash_password("mark's secret"), "role": "manager",
                  "accounts": ["bob"]}}


def routes(web: Web) -> list[APIRoute]:
    app = create_app(settings_from_mapping({"billing": {"ledger": str(web.ledger)}}))
    found: list[APIRoute] = []
    for route in app.routes:  # an included router keeps its own routes
        inner = getattr(route, "original_router", None)
        found += [r for r in (inner.routes if inner else [route]) if isinstance(r, APIRoute)]
    return found


def query_names(dependant: Dependant) -> list[str]:
    """The query parameters of a route and of everything it depends on."""
    return [p.alias for p in dependant.query_params] + [
        n for d in dependant.dependencies for n in query_names(d)]


def held(answer: requests.Response) -> None:
    """Escaped if it is a page, JSON if not, and the headers on it."""
    assert set(map(str.lower, answer.headers)) >= HEADERS, (
        answer.url, answer.headers)
    kind = answer.headers.get("content-type", "")
    assert SCRIPT not in answer.text or "json" in kind, (answer.url, kind, answer.text[:300])
    assert answer.status_code < 500, (answer.url, answer.status_code, answer.text[:300])


def test_script_in_every_parameter_of_every_route_comes_back_escaped(
        start_web: Callable[..., Web]) -> None:
    web = start_web(trusted_proxies=None)
    visitors: dict[str, Callable[[], requests.Session]] = {
        "nobody": requests.Session, "admin": lambda: web.admin()[0]}
    tried = 0
    for route in routes(web):
        names = query_names(route.dependant)
        for method in route.methods or ():
            for make in visitors.values():
                session = make()  # anew: /login and /logout end the session they are sent
                # Every path parameter hostile, then each query parameter in turn.
                path = re.sub(r"\{[^}]+\}", SCRIPT, route.path_format)
                for query in [{}, *({n: SCRIPT} for n in names)]:
                    answer = session.request(method, f"{web.url}{path}", params=query,
                                             data={"csrf": SCRIPT}, timeout=10,
                                             allow_redirects=False)
                    held(answer)
                    tried += 1
                if names:  # with good path parameters, so the query ones are read
                    good = route.path_format.replace("{user}", "alice").replace(
                        "{name}", "alice").replace("{id}", "1").replace(
                        "{what}", "usage").replace("{token}", "x" * 43)
                    for name in names:
                        answer = session.request(method, f"{web.url}{good}",
                                                 params={name: SCRIPT}, timeout=10,
                                                 allow_redirects=False)
                        held(answer)
                        tried += 1
    assert tried > 100
    # The reported pages, by name: 400 and escaped.
    admin, _ = web.admin()
    for url in ("/users/alice?page=", "/jobs?page=", "/admin?sort=", "/admin/audit?days=",
                "/admin/accounts/alice/statement?month="):
        answer = admin.get(f"{web.url}{url}{SCRIPT}", timeout=10)
        assert answer.status_code == 400 and "&lt;script&gt;" in answer.text, url
        held(answer)


def _table() -> dict[str, dict[str, bool]]:
    text = DOCS.read_text()
    start = text.index("<!-- state-changing routes")
    rows = re.findall(r"^\| `(\w+ [^`]+)` \|(.+)\|$", text[start:start + 5000], re.M)
    columns = ["nobody", "self", "other", "manager", "finance", "admin"]
    return {route: dict(zip(columns, [c.strip() == "yes" for c in cells.split("|")],
                            strict=True)) for route, cells in rows}


def test_every_state_changing_route_lets_through_exactly_the_roles_docs_name(
        start_web: Callable[..., Web]) -> None:
    web = start_web(administrators=STAFF, login_failures_per_minute=100)
    table = _table()
    before = web.balance("bob")
    changing = {f"{m} {r.path_format}" for r in routes(web) for m in r.methods or ()
                if m in ("POST", "PUT", "PATCH", "DELETE")}
    assert changing == set(table), "docs/web.md's table and the app's routes differ"

    def session_of(who: str) -> tuple[requests.Session, str]:
        if who in ("admin", "finance", "manager"):
            name, password = {"admin": ("", PASSWORD), "finance": ("fiona", "fiona's secret"),
                              "manager": ("mark", "mark's secret")}[who]
            return web.admin(name, password)
        if who == "nobody":
            session = requests.Session()
            return session, csrf_of(session.get(f"{web.url}/login", timeout=10).text)
        session = proxied("bob" if who == "self" else "alice")
        page = session.get(f"{web.url}/users/{'bob' if who == 'self' else 'alice'}",
                           timeout=10)
        return session, csrf_of(page.text)

    forms = {"recharge": {"amount": "1", "reason": "test"},
             "adjust": {"amount": "1", "reason": "test"},
             "limits": {"user": "bob", "amount": "5"}, "members": {"user": "carol"},
             "prices": {"other_gpu_per_minute": "0.1", "cpu_per_core_minute": "0.01",
                        "reason": "test", "gpu": "A100=0.5"},
             "notices": {"address": "bob@lab.example"},
             "login": {"name": "nobody", "password": "wrong"}}
    for route, allowed in table.items():
        method, path = route.split(" ", 1)
        url = web.url + path.replace("{user}", "bob").replace("{name}", "bob").replace(
            "{id}", "1")
        what = path.rstrip("/").split("/")[-1]
        for who, may in allowed.items():
            session, csrf = session_of(who)
            body = forms.get(what, {})
            if path.startswith("/api/"):
                answer = session.request(method, url, json=body, timeout=10,
                                         headers={"X-CSRF-Token": csrf}, allow_redirects=False)
            else:
                answer = session.request(method, url, data={**body, "csrf": csrf}, timeout=10,
                                         allow_redirects=False)
            refused = answer.status_code == 403  # 401 on /login: a wrong password, let in
            assert refused != may, (route, who, answer.status_code, answer.text[:300])
    # Four routes move money, each let through for finance and admin: 1 each time.
    assert web.balance("bob") == before + 8


def test_a_forged_forwarded_address_does_not_reset_the_login_throttle(
        start_web: Callable[..., Web]) -> None:
    web = start_web(trusted_proxies=None, login_failures_per_minute=3)
    session = requests.Session()
    csrf = csrf_of(session.get(f"{web.url}/login", timeout=10).text)
    statuses = []
    for i in range(5):
        answer = session.post(f"{web.url}/login", timeout=10,
                              headers={"X-Forwarded-For": f"203.0.113.{i}"},
                              data={"name": "", "password": f"guess {i}", "csrf": csrf})
        statuses.append(answer.status_code)
    assert statuses == [401, 401, 401, 429, 429]
    right = session.post(f"{web.url}/login", timeout=10, data={
        "name": "", "password": PASSWORD, "csrf": csrf}, allow_redirects=False)
    assert right.status_code == 429  # the throttle holds for the minute, right or wrong
    # Another address guessing the same name is held back too (per name).
    other = requests.Session()
    other_csrf = csrf_of(other.get(f"{web.url}/login", timeout=10).text)
    again = other.post(f"{web.url}/login", timeout=10, data={
        "name": "admin", "password": "guess", "csrf": other_csrf})
    assert again.status_code == 429


def test_the_session_cookie_is_secure_over_tls(start_web: Callable[..., Web], tls: Tls) -> None:
    web = start_web(tls=tls)
    answer = requests.get(f"{web.url}/login", timeout=10, verify=str(tls.certs.ca_file))
    cookie = answer.headers["set-cookie"]
    assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie, cookie
    assert set(map(str.lower, answer.headers)) >= HEADERS


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_100_mib_body_is_refused_with_413_and_the_web_barely_grows(
        start_web: Callable[..., Web], chunked: bool) -> None:
    web = start_web()
    port = int(web.url.rsplit(":", 1)[1])
    post_huge_body(port, "/login", MIB // 2, chunked)  # warm
    before = rss_kib(web.process.pid)
    for path in ("/login", "/api/v1/prices", "/users/alice/recharge",
                 "/api/v1/accounts/alice/recharge"):
        kind = "application/json" if path.startswith("/api/") else FORM
        assert post_huge_body(port, path, 100 * MIB, chunked, kind=kind) == 413, path
    grown = rss_kib(web.process.pid) - before
    assert grown < 10 * 1024, f"grew {grown} KiB"
    assert requests.get(f"{web.url}/-/healthy", timeout=10).status_code == 200


def _scrypt(password: str) -> str:
    """A hash as gpuacct-web made them before argon2id."""
    salt = b"0123456789abcdef"
    digest = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def test_passwords_are_argon2id_and_an_older_hash_logs_in_and_asks_for_a_new_one(
        start_web: Callable[..., Web]) -> None:
    new = hash_password("pw")
    assert new.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert verify_password("pw", new) and not verify_password("pW", new)
    assert not weaker_than_now(new)
    old = _scrypt(PASSWORD)
    assert verify_password(PASSWORD, old) and weaker_than_now(old)
    web = start_web(auth={"admin_password_hash": old})
    web.admin()  # logs in
    assert "admin logs in with a password hash weaker than argon2id" in (
        web.process.log_path.read_text())
