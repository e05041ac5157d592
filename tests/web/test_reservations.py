"""GPU reservations on the web page, from a real gpuacct-enforcer: a user sees and releases
only their own (CSRF-checked), an administrator sees everyone's and cancels any, and the JSON
API mirrors it."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.fixtures.enforcement import TOKEN, Cluster
from tests.web.conftest import Web, csrf_of, proxied

pytestmark = [pytest.mark.integration]


def test_users_release_their_own_and_administrators_cancel_any(
        start_web: Callable[..., Web], cluster: Cluster) -> None:
    enforcer = cluster.enforcer([])
    for user in ("alice", "bob", "carol"):
        status, answer = enforcer.forward(user, {"op": "reserve", "count": 1,
                                                 "seconds": 3600})
        assert status == 200, answer
    web = start_web(enforcer_url=enforcer.url, auth={"webhook_token": TOKEN})

    alice = proxied("alice")
    page = alice.get(f"{web.url}/users/alice", timeout=10).text
    mine = page[page.index('id="reservations"'):]
    assert "GPU 0 on gpu01" in mine and "reservations/1/release" in mine
    assert "reservations/2/release" not in mine  # bob's is not on her page
    api = alice.get(f"{web.url}/api/v1/reservations", timeout=10).json()
    assert [e["user"] for e in api["entries"]] == ["alice"] and api["problem"] is None

    # Another user's release, or one without the form's token, changes nothing.
    token = csrf_of(page)
    assert alice.post(f"{web.url}/users/bob/reservations/2/release", data={"csrf": token},
                      timeout=10).status_code == 403
    assert alice.post(f"{web.url}/users/alice/reservations/1/release", data={"csrf": "x"},
                      timeout=10).status_code == 403
    # Her own id under her name, but the request is bob's: the enforcer does not find it.
    refused = alice.post(f"{web.url}/users/alice/reservations/2/release",
                         data={"csrf": token}, timeout=10)
    assert refused.status_code == 400 and "you have no reservation or queued request 2" in \
        refused.text
    assert len(enforcer.get("/v1/allocation")["entries"]) == 3

    done = alice.post(f"{web.url}/users/alice/reservations/1/release", data={"csrf": token},
                      timeout=10)
    assert done.status_code == 200 and "released: reservation 1" in done.text
    assert [e["user"] for e in enforcer.get("/v1/allocation")["entries"]] == ["bob", "carol"]

    admin, admin_csrf = web.admin()
    nodes = admin.get(f"{web.url}/admin/nodes", timeout=10).text
    assert "nobody is waiting" in nodes
    cancelled = admin.post(f"{web.url}/admin/reservations/2/cancel",
                           data={"csrf": admin_csrf, "reason": "maintenance"}, timeout=10)
    assert cancelled.status_code == 200 and "cancelled: reservation 2" in cancelled.text
    again = admin.post(f"{web.url}/admin/reservations/2/cancel", data={"csrf": admin_csrf},
                       timeout=10)
    assert again.status_code == 400 and "no open request 2" in again.text
    assert alice.post(f"{web.url}/admin/reservations/3/cancel", data={"csrf": token},
                      timeout=10).status_code == 403
    events = [(e["user"], e["event"], e["actor"])
              for e in enforcer.get("/v1/allocation/audit")]
    assert ("alice", "released", "alice") in events
    assert ("bob", "cancelled", "admin") in events  # the administrator's name
    everyone = admin.get(f"{web.url}/api/v1/reservations", timeout=10).json()
    assert [e["user"] for e in everyone["entries"]] == ["carol"]
