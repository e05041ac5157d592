"""Schemathesis against the API's own OpenAPI schema, as an administrator with a valid CSRF
token (so the fuzzing reaches past authentication): no request gets a server error."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.web.conftest import Web

pytestmark = pytest.mark.integration
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")


@pytest.mark.parametrize("user", [None, "alice"], ids=["any-user", "an-existing-user"])
def test_no_request_the_schema_allows_gets_a_server_error(
        start_web: Callable[..., Web], tmp_path: Path, user: str | None) -> None:
    web = start_web()
    session, csrf = web.admin()
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    config = tmp_path / "schemathesis.toml"  # an existing user: the bodies get fuzzed too
    config.write_text(f'[parameters]\n"path.user" = "{user}"\n' if user else "")
    run = subprocess.run(
        [str(SCHEMATHESIS), "--config-file", str(config), "run",
         f"{web.url}/api/v1/openapi.json", "--url", web.url,
         "--checks", "not_a_server_error", "--max-examples", "60", "--seed", "1",
         "--generation-deterministic", "-H", f"Cookie: {cookie}", "-H", f"X-CSRF-Token: {csrf}"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path)  # its cache goes there
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "No issues found" in run.stdout or "passed" in run.stdout, run.stdout[-3000:]
