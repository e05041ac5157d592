"""The session secret rotates without logging anybody out: SIGHUP with two secrets keeps the
sessions signed with the old one and signs new ones with the new; dropping the old one then
ends only the sessions it signed."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import requests

from tests.fixtures.enforcement import reconfigure, reload_refused
from tests.web.conftest import Web


def logged_in(web: Web, session: requests.Session) -> bool:
    answer = session.get(f"{web.url}/admin", timeout=10, allow_redirects=False)
    return answer.status_code == 200


def test_the_session_secret_rotates_with_sighup(start_web: Callable[..., Web],
                                               tmp_path: Path) -> None:
    web = start_web()
    config = tmp_path / "gpuacct.yaml"
    before, _ = web.admin()
    assert logged_in(web, before)
    reconfigure(web.process, config, {"web": {"session_secret": ["next-session-secret",
                                                                 "s3cret-for-tests"]}})
    assert logged_in(web, before)  # signed with the old secret, still good
    after, _ = web.admin()  # signed with the new one
    reconfigure(web.process, config, {"web": {"session_secret": "next-session-secret"}})
    assert logged_in(web, after)
    assert not logged_in(web, before)
    # A reload that would end every session is refused; the secret in use stays.
    config.write_text(config.read_text().replace("session_secret: next-session-secret", ""))
    reload_refused(web.process, "web.session_secret is no longer set")
    assert logged_in(web, after)
