"""A node one version behind its control host keeps working: the previous release's exporter,
built from its commit and installed in its own virtualenv, pulls this enforcer's policy,
applies a block to a real test user and reports back, signed both ways (CHANGELOG.md says which
skews work)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from stack.process import free_port
from tests.fixtures.enforcement import Cluster, alert, notification, wait_until
from tests.fixtures.users import UnixUser

REPO = Path(__file__).parents[2]
PREVIOUS = "f5d99cedc7b33aad84e5416a68f5454c542ad574"  # the last commit of 0.1.0
pytestmark = [pytest.mark.integration, pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def previous_release() -> Iterator[Path]:
    """The previous release's python, with its gpuacct installed from its own source."""
    top = Path(tempfile.mkdtemp(prefix="gpuacct-previous-"))
    try:
        source = top / "src"
        source.mkdir()
        archive = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(REPO), "archive",
                                  PREVIOUS], capture_output=True, timeout=120, check=True)
        subprocess.run(["tar", "-x", "-C", str(source)], input=archive.stdout, check=True,
                       timeout=120)
        venv = top / "venv"
        subprocess.run(["/usr/bin/python3", "-m", "venv", str(venv)], check=True, timeout=120)
        done = subprocess.run([str(venv / "bin" / "pip"), "install", "-q",
                               "--disable-pip-version-check", "-c",
                               str(source / "constraints.txt"), str(source)],
                              capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        yield venv / "bin" / "python"
    finally:
        shutil.rmtree(top, ignore_errors=True)


def test_a_node_of_the_previous_release_takes_the_policy_and_reports(
        cluster: Cluster, previous_release: Path, test_users: dict[str, UnixUser]) -> None:
    version = subprocess.run([str(previous_release), "-m", "exporter", "--version"],
                             capture_output=True, text=True, timeout=60, cwd="/")
    assert version.stdout.startswith("gpuacct-exporter 0.1.0"), version.stdout
    alice = test_users["alice"].name
    port = free_port()
    node = cluster.node("gpu01", enforcer_port=port, pull_seconds=1,
                        python=str(previous_release))
    assert 'gpuacct_build_info{pythonversion=' in node.exporter.scrape()
    assert 'version="0.1.0"' in node.exporter.scrape()  # the old code runs, not this checkout
    enforcer = cluster.enforcer([node], port)
    status, _ = enforcer.post_alerts(notification(alert(alice, "block", "GpuacctBalanceLow")))
    assert status == 200
    wait_until(lambda: (node.hook(alice) or {}).get("block"), timeout=20)
    # What the old node did reached this enforcer's audit with its signed sync.
    wait_until(lambda: any(e["node"] == "gpu01" and e["action"] == "block"
                           and e["result"] == "ok" for e in enforcer.audit(alice)), timeout=20)
    # Every pull after the enforcer came up was taken (the first may find it not up yet).
    refused = [line for line in node.exporter.process.log_path.read_text().splitlines()
               if ("cannot pull the policy" in line and "Connection refused" not in line)
               or "not a policy" in line]
    assert refused == []
    version = enforcer.policy()["version"]

    def node_version() -> float | None:
        return next((float(line.split()[1]) for line in node.exporter.scrape().splitlines()
                     if line.startswith("gpuacct_node_policy_version ")), None)
    wait_until(lambda: node_version() == version, timeout=20)
