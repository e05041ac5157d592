"""deploy/install-node.sh into a scratch root, and the systemd unit it installs."""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from stack.tls import make_certificates

REPO = Path(__file__).parents[2]
pytestmark = [pytest.mark.root, pytest.mark.slow]


def verify_unit(unit: Path, tmp_path: Path, executable: Path, *beside: Path) -> str:
    """systemd-analyze's complaints about the unit (and the units `beside` it, such as a
    timer's service), with every gpuacct program in ExecStart pointed at `executable`."""
    copies = []
    for path in (unit, *beside):
        copy = tmp_path / path.name
        copy.write_text(re.sub(r"/opt/gpuacct/bin/gpuacct-[a-z]+", str(executable),
                               path.read_text()))
        copies.append(str(copy))
    done = subprocess.run(["systemd-analyze", "verify", *copies], capture_output=True,
                          text=True, timeout=60)
    return (done.stdout + done.stderr).strip()


@pytest.mark.parametrize("service", ["exporter", "billing", "enforcer", "web", "backup"])
def test_the_unit_files_are_clean(tmp_path: Path, service: str) -> None:
    unit = REPO / "deploy" / "systemd" / f"gpuacct-{service}.service"
    assert verify_unit(unit, tmp_path, Path("/bin/true")) == ""
    text = unit.read_text()
    assert "NoNewPrivileges=yes" in text
    if service != "exporter":  # the node's actuator is root on purpose; the rest need nothing
        assert "User=gpuacct" in text and "CapabilityBoundingSet=\n" in text
        assert "ProtectSystem=strict" in text


def test_the_backup_timer_is_clean_and_daily(tmp_path: Path) -> None:
    units = REPO / "deploy" / "systemd"
    timer = units / "gpuacct-backup.timer"
    assert verify_unit(timer, tmp_path, Path("/bin/true"), units / "gpuacct-backup.service") == ""
    assert "OnCalendar=daily" in timer.read_text()
    assert "backup /var/lib/gpuacct-backups --keep 14" in (
        units / "gpuacct-backup.service").read_text()


def test_install_node_into_a_scratch_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    key = tmp_path / "key"
    key.write_text("a-node-key-for-tests\n")
    certs = make_certificates(tmp_path / "tls", ["gpu01"])
    argv = [str(REPO / "deploy" / "install-node.sh"), "--root", str(root),
            "--enforcer-url", "https://control:9837", "--key-file", str(key),
            "--ca-file", str(certs.ca_file), "--tls-cert", str(certs.cert_file),
            "--tls-key", str(certs.key_file)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr

    bin_dir = root / "opt" / "gpuacct" / "bin"
    for script in ("gpuacct-exporter", "gpuacct-balance"):
        assert subprocess.run([str(bin_dir / script), "--help"], capture_output=True,
                              timeout=60).returncode == 0, script
    config = root / "etc" / "gpuacct" / "gpuacct.yaml"
    data = yaml.safe_load(config.read_text())
    assert data["exporter"]["actuator"] == {"dry_run": False,
                                            "enforcer_url": "https://control:9837"}
    assert data["auth"] == {"node_key": {"file": "/etc/gpuacct/node-key"}}
    # TLS: the enforcer verified against the CA, the node's own listener on its certificate.
    assert data["tls_client_config"] == {"ca_file": "/etc/gpuacct/tls/ca.crt"}
    tls = root / "etc" / "gpuacct" / "tls"
    assert (tls / "ca.crt").read_bytes() == certs.ca_file.read_bytes()
    assert (tls / "node.key").stat().st_mode & 0o777 == 0o600
    assert yaml.safe_load((root / "etc" / "gpuacct" / "web.yml").read_text()) == {
        "tls_server_config": {"cert_file": "/etc/gpuacct/tls/node.crt",
                              "key_file": "/etc/gpuacct/tls/node.key"}}
    drop_in = root / "etc" / "systemd" / "system" / "gpuacct-exporter.service.d" / "tls.conf"
    assert "--web.config.file /etc/gpuacct/web.yml" in drop_in.read_text()
    assert config.stat().st_mode & 0o777 == 0o644  # users' gpuacct-balance reads it
    node_key = root / "etc" / "gpuacct" / "node-key"
    assert node_key.read_text() == "a-node-key-for-tests\n"
    assert node_key.stat().st_mode & 0o777 == 0o600
    hook = root / "etc" / "profile.d" / "gpuacct.sh"
    printed = subprocess.run([str(bin_dir / "gpuacct-balance"), "--print-hook"],
                             capture_output=True, text=True, timeout=60).stdout
    assert hook.read_text() == printed and "--greeting" in printed
    # The PAM session hook, ready for its line in /etc/pam.d: it runs as it is, and a call
    # outside a session (no PAM_TYPE) does nothing.
    pam_hook = root / "usr" / "local" / "lib" / "gpuacct" / "pam-session"
    assert pam_hook.read_text().startswith("#!/usr/bin/python3 -I\n")
    assert pam_hook.stat().st_mode & 0o777 == 0o755
    assert subprocess.run([str(pam_hook)], capture_output=True, timeout=30).returncode == 0
    for command in ("gpuacct-balance", "gpuacct"):
        assert (root / "usr" / "local" / "bin" / command).readlink() == Path(
            f"/opt/gpuacct/bin/{command}")
    unit = root / "etc" / "systemd" / "system" / "gpuacct-exporter.service"
    assert verify_unit(unit, tmp_path, bin_dir / "gpuacct-exporter") == ""
    # The node runs the versions the tests ran, not whatever PyPI has today.
    frozen = pins(subprocess.run([str(bin_dir / "pip"), "freeze"], capture_output=True,
                                 text=True, timeout=60).stdout)
    assert "prometheus-client" in frozen  # gpuacct itself is listed by its path, not pinned
    assert frozen.items() <= pins((REPO / "constraints.txt").read_text()).items()

    # Again, as an upgrade: the operator's config is kept, and nothing else changes either.
    config.write_text(config.read_text() + "# edited by the operator\n")
    before = installed_files(root)
    again = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "keeping" in again.stdout
    assert config.read_text().endswith("# edited by the operator\n")
    assert installed_files(root) == before
    assert subprocess.run([str(bin_dir / "gpuacct-exporter"), "--help"],
                          capture_output=True, timeout=60).returncode == 0


def pins(text: str) -> dict[str, str]:
    """`name==version` lines (pip freeze, a constraints file) by canonical name."""
    found: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            found[str(canonicalize_name(name))] = version.strip()
    return found


def test_every_dependency_is_pinned() -> None:
    """A dependency added to pyproject.toml without a version in constraints.txt would install
    whatever is newest; `./run.sh` and install-node.sh would then run untested code."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["test"]]
    names = {canonicalize_name(Requirement(spec).name) for spec in declared}
    assert names - pins((REPO / "constraints.txt").read_text()).keys() == set()


def installed_files(root: Path) -> dict[str, tuple[int, str]]:
    """Mode and content (or link target) of everything installed outside the virtualenv."""
    found = {}
    for path in sorted(root.rglob("*")):
        if path.is_relative_to(root / "opt") or (path.is_dir() and not path.is_symlink()):
            continue
        content = str(path.readlink()) if path.is_symlink() else path.read_text()
        found[str(path.relative_to(root))] = (path.lstat().st_mode, content)
    return found


def test_install_node_refuses_an_unreadable_key(tmp_path: Path) -> None:
    done = subprocess.run([str(REPO / "deploy" / "install-node.sh"), "--root",
                           str(tmp_path / "root"), "--key-file", str(tmp_path / "missing")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cannot read the key file" in done.stderr


def test_install_node_refuses_a_certificate_without_its_key(tmp_path: Path) -> None:
    certs = make_certificates(tmp_path / "tls", ["gpu01"])
    done = subprocess.run([str(REPO / "deploy" / "install-node.sh"), "--root",
                           str(tmp_path / "root"), "--tls-cert", str(certs.cert_file)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--tls-cert and --tls-key go together" in done.stderr
