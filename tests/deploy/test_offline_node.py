"""A node installed from the control host's wheelhouse, in a network namespace that reaches no
package index: the bundle `gpuacct-admin node add` makes is all the node needs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.admin.test_enrol import admin

REPO = Path(__file__).parents[2]
pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def offline() -> Iterator[str]:
    """A network namespace with only its loopback: no route to any package index."""
    name = f"gat-offline-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


def test_a_node_installs_from_the_wheelhouse_with_no_index_reachable(
        tmp_path: Path, offline: str) -> None:
    etc, wheelhouse = tmp_path / "etc", tmp_path / "wheelhouse"
    built = admin("wheelhouse", str(REPO), "--into", str(wheelhouse))
    assert built.returncode == 0, built.stderr
    assert any(wheelhouse.glob("gpuacct-*.whl")) and any(wheelhouse.glob("fastapi-*.whl"))
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    added = admin("node", "add", "gpu07", "10.0.0.17", "--etc", str(etc),
                  "--wheelhouse", str(wheelhouse))
    assert added.returncode == 0, added.stderr
    to = "/root/gpuacct-enrol"
    assert (f"ssh root@10.0.0.17 rm -rf {to} && scp -rq {etc}/nodes/gpu07 root@10.0.0.17:{to} "
            f"&& ssh root@10.0.0.17 {to}/install-node.sh --bundle {to}") in added.stdout

    # What scp -r puts on the node: the bundle, the wheelhouse's wheels inside it.
    enrol = tmp_path / "node" / "gpuacct-enrol"
    shutil.copytree(etc / "nodes" / "gpu07", enrol, symlinks=False)
    in_namespace = ["ip", "netns", "exec", offline]
    reach = subprocess.run([*in_namespace, sys.executable, "-c",
                            "import urllib.request; urllib.request.urlopen("
                            "'https://pypi.org/simple/', timeout=5)"],
                           capture_output=True, text=True, timeout=60)
    assert reach.returncode != 0 and "URLError" in reach.stderr  # no index from in there
    root = tmp_path / "node" / "root"
    done = subprocess.run([*in_namespace, str(enrol / "install-node.sh"), "--bundle",
                           str(enrol), "--root", str(root)],
                          capture_output=True, text=True, timeout=600,
                          env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
    assert done.returncode == 0, done.stdout + done.stderr

    bin_dir = root / "opt" / "gpuacct" / "bin"
    version = subprocess.run([str(bin_dir / "gpuacct"), "--version"], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("gpuacct 0."), version
    config = yaml.safe_load((root / "etc" / "gpuacct" / "gpuacct.yaml").read_text())
    assert config["exporter"]["actuator"]["enforcer_url"] == "https://control.lab:9837"
    assert config["tls_client_config"] == {"ca_file": "/etc/gpuacct/tls/ca.crt"}
    node_key = root / "etc" / "gpuacct" / "node-key"
    assert node_key.read_bytes() == (etc / "nodes" / "gpu07" / "node-key").read_bytes()
    assert node_key.stat().st_mode & 0o777 == 0o600
    unit = root / "etc" / "systemd" / "system" / "gpuacct-exporter.service"
    assert unit.read_text() == (REPO / "deploy" / "systemd" /
                                "gpuacct-exporter.service").read_text()
    # Exactly the control host's versions (the wheelhouse's), gpuacct's too.
    frozen = subprocess.run([str(bin_dir / "pip"), "freeze"], capture_output=True, text=True,
                            timeout=60).stdout
    wheels = {w.name.split("-")[0].lower().replace("_", "-") + "==" + w.name.split("-")[1]
              for w in wheelhouse.glob("*.whl")}
    installed = {line.lower().replace("_", "-") for line in frozen.splitlines()
                 if "==" in line}
    assert installed <= wheels, installed - wheels


def test_a_missing_source_or_an_empty_wheelhouse_is_named(tmp_path: Path) -> None:
    missing = admin("wheelhouse", str(tmp_path / "nowhere"), "--into", str(tmp_path / "w"))
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"gpuacct-admin wheelhouse: {tmp_path / 'nowhere'}: no "
                                      "such checkout or wheel")
    etc, empty = tmp_path / "etc", tmp_path / "empty"
    empty.mkdir()
    assert admin("init", "--etc", str(etc), "--host", "control.lab").returncode == 0
    added = admin("node", "add", "gpu07", "10.0.0.17", "--etc", str(etc), "--wheelhouse",
                  str(empty))
    assert added.returncode == 2
    assert f"no gpuacct wheel in {empty}: make the wheelhouse first" in added.stderr
    assert not (etc / "nodes" / "gpu07").exists()  # nothing half-done
