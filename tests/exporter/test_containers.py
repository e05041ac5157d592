"""Containers billed to whoever started them, on a real Docker engine (tests.fixtures.docker):
a test user runs a container through gpuacct's Docker socket; its process (root in the
container) on a simulated GPU is billed to that user, and stopped when the user is blocked;
a container started on the engine's own socket is counted unattributed and, with
`exporter.unattributed.action: stop`, stopped; a caller setting gpuacct.user is refused."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from exporter.containers.owners import ContainerOwners, Owner
from exporter.containers.proxy import DockerProxy, Refused, stamp
from gpuacct.config import ContainerSettings
from tests.fixtures.docker import IMAGE, Dockerd
from tests.fixtures.enforcement import Cluster, EnforcingNode, alert, notification, wait_until
from tests.fixtures.gating import make_devices
from tests.fixtures.gpus import device
from tests.fixtures.users import UnixUser


def value(node: EnforcingNode, name: str, /, **labels: str) -> float:
    """The sum of the samples of `name` with these labels (0 when there are none)."""
    return sum(s.value for family in text_string_to_metric_families(node.exporter.scrape())
               for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


@pytest.fixture
def docker_group(test_users: dict[str, UnixUser]) -> Iterator[str]:
    """A group of the test's own that may use gpuacct's Docker socket."""
    name = f"gpuacct-dk{uuid.uuid4().hex[:6]}"
    subprocess.run(["groupadd", name], check=True)
    yield name
    subprocess.run(["groupdel", name], check=False)


@pytest.mark.integration
@pytest.mark.root
def test_containers_are_billed_gated_and_stopped_as_their_users_are(
        devices_group: str, dockerd: Dockerd, docker_group: str, cluster: Cluster,
        shared_dir: Path, test_users: dict[str, UnixUser]) -> None:
    alice = test_users["alice"]
    proxy = shared_dir / "docker.sock"
    dev = shared_dir / "dev"
    make_devices(dev)
    enforcer = cluster.enforcer([], allocator={"mode": "open"})
    node = cluster.node("gpu01", enforcer_port=enforcer.port, pull_seconds=0.5,
                        devices=[device(0), device(1), device(2)], device_gating="auto",
                        device_root=str(dev), cgroup_group=devices_group,
                        exporter={"containers": {"docker_socket": str(dockerd.socket),
                                                 "user_labels": ["lab.owner"],
                                                 "proxy_socket": str(proxy),
                                                 "proxy_group": docker_group},
                                  "unattributed": {"action": "stop"}})
    wait_until(proxy.exists)
    assert proxy.stat().st_mode & 0o777 == 0o660 and proxy.stat().st_gid == grp.getgrnam(
        docker_group).gr_gid
    home = shared_dir / alice.name
    home.mkdir()
    os.chown(home, alice.uid, alice.gid)
    # Outside the group the socket is closed to her.
    refused = dockerd.cli("ps", socket=proxy, check=False, user=alice, home=home)
    assert refused.returncode != 0 and "permission denied" in refused.stderr.lower()
    in_group: dict[str, Any] = {"user": alice, "home": home,
                                "groups": [grp.getgrnam(docker_group).gr_gid]}

    # She may not name who the container is billed to.
    forged = dockerd.cli("run", "-d", "--network", "none", "--label", "gpuacct.user=bob",
                         IMAGE, "true", socket=proxy, check=False, **in_group)
    assert forged.returncode != 0 and "gpuacct.user is gpuacct's own" in forged.stderr

    # Her container (given GPU 0's device node): its process runs as root, and is hers.
    mine = dockerd.cli("run", "-d", "--network", "none", "--device",
                       f"{dev / 'nvidia0'}:/dev/nvidia0", IMAGE, "sleep", "600",
                       socket=proxy, **in_group).stdout.strip()
    assert dockerd.cli("inspect", "-f", "{{index .Config.Labels \"gpuacct.user\"}}",
                       mine).stdout.strip() == alice.name
    pid = dockerd.pid(mine)
    assert os.stat(f"/proc/{pid}").st_uid == 0
    node.gpus.put(0, pid)
    job = f"docker-{mine[:12]}"
    wait_until(lambda: value(node, "gpuacct_job_gpu_seconds_total", user=alice.name,
                             job=job, gpu="0") > 0.5, timeout=30)
    assert value(node, "gpuacct_job_info", user=alice.name, job=job, source="container") == 1
    assert value(node, "gpuacct_unattributed_gpu_seconds_total", gpu="0") == 0

    # Root's container, on the engine's own socket: nobody's, counted, and stopped.
    roots = dockerd.cli("run", "-d", "--network", "none", IMAGE, "sleep", "600").stdout.strip()
    node.gpus.put(1, dockerd.pid(roots))
    wait_until(lambda: value(node, "gpuacct_unattributed_gpu_seconds_total", node="gpu01",
                             container=roots[:12], image=IMAGE, gpu="1") > 0, timeout=30)
    # sleep is the container's init and ignores SIGTERM: SIGKILL after the grace (2 s).
    wait_until(lambda: not dockerd.running(roots), timeout=30)
    assert dockerd.running(mine)  # hers is not touched for it

    # An orchestrator's container, on the engine's own socket, labelled with whose it is.
    labelled = dockerd.cli("run", "-d", "--network", "none", "--label",
                           f"lab.owner={alice.name}", IMAGE, "sleep", "600").stdout.strip()
    node.gpus.put(2, dockerd.pid(labelled))
    wait_until(lambda: value(node, "gpuacct_job_gpu_seconds_total", user=alice.name,
                             job=f"docker-{labelled[:12]}", gpu="2") > 0, timeout=30)

    # Blocked, her container is held as any work of hers: running work left alone, its
    # GPU closed to whatever starts in it; open again when the block lifts. Her balance
    # exhausted, its process is stopped like any GPU process of hers: through the engine,
    # since it runs as root.
    def opening() -> str:
        """What opening GPU 0's node in her container says (no driver: ENXIO past it)."""
        return dockerd.cli("exec", mine, "cat", "/dev/nvidia0", check=False).stderr

    assert "No such device or address" in opening()
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block")))
    wait_until(lambda: "Operation not permitted" in opening(), timeout=30)
    assert dockerd.running(mine)
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block", status="resolved")))
    wait_until(lambda: "No such device or address" in opening(), timeout=30)
    enforcer.post_alerts(notification(alert(alice.name, "kill", "GpuacctBalanceExhaustedKillGpu")))
    wait_until(lambda: not dockerd.running(mine) and not dockerd.running(labelled), timeout=30)

    def audited(user: str, container: str) -> bool:
        return any(a["user"] == user and a["action"] == "terminate" and a["result"] == "ok"
                   and container[:12] in a["detail"] for a in enforcer.audit())
    wait_until(lambda: audited(alice.name, mine) and audited("(unattributed)", roots),
               timeout=30)


def test_the_stamp_is_added_and_never_taken_from_the_caller() -> None:
    assert stamp(b'{"Image": "x", "Labels": {"a": "b"}}', "alice") == \
        b'{"Image": "x", "Labels": {"a": "b", "gpuacct.user": "alice"}}'
    assert stamp(b'{"Image": "x", "Labels": null}', "alice").endswith(
        b'"Labels": {"gpuacct.user": "alice"}}')
    # Go reads `labels` as Labels, the later spelling's entries over the earlier's.
    assert json.loads(stamp(b'{"Labels": {"a": "b"}, "LABELS": {"c": "d"}}', "alice")) == {
        "Labels": {"a": "b", "c": "d", "gpuacct.user": "alice"}}
    for body, status in ((b'{"Labels": {"gpuacct.user": "bob"}}', 403), (b"[1]", 400),
                         (b'{"Labels": {}, "labels": {"gpuacct.user": "bob"}}', 403),
                         (b"{nope", 400), (b'{"Labels": "x"}', 400)):
        with pytest.raises(Refused) as refused:
            stamp(body, "alice")
        assert refused.value.status == status


def test_whose_a_container_is_without_an_engine_to_ask(test_users: dict[str, UnixUser]) -> None:
    """No engine (containerd, Kubernetes): the variables named in config, then a rootless
    engine's owning user; never anyone below min_uid."""
    alice, bob = test_users["alice"], test_users["bob"]
    owners = ContainerOwners(ContainerSettings(docker_socket=None, user_env=["LAB_USER"]), 1000)
    id = "ab" * 32
    cgroup = (f"0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/"
              f"cri-containerd-{id}.scope\n")
    assert owners.of("0::/user.slice/user-1000.slice/session-3.scope\n", dict) is None
    found = owners.of(cgroup, lambda: {"LAB_USER": alice.name})
    assert found is not None and found.owner == Owner(alice.uid, alice.name)
    assert found.by == "$LAB_USER" and found.short == id[:12]
    rootless = (f"0::/user.slice/user-{bob.uid}.slice/user@{bob.uid}.service/"
                f"docker-{'cd' * 32}.scope\n")
    found = owners.of(rootless, dict)
    assert found is not None and found.owner == Owner(bob.uid, bob.name)
    assert found.by == "rootless"
    nobody = owners.of(f"0::/docker/{'ef' * 32}\n", lambda: {"LAB_USER": "root"})
    assert nobody is not None and nobody.owner is None


def _exchange(path: Path, raw: bytes, wait: float = 1.0) -> bytes:
    """Send `raw` as it is, and read what comes back until the proxy closes or is quiet."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
        s.sendall(raw)
        s.settimeout(wait)
        got = b""
        with contextlib.suppress(TimeoutError):
            while data := s.recv(65536):
                got += data
        return got


def _create(labels: dict[str, str], body: bytes = b"") -> bytes:
    body = body or json.dumps({"Image": IMAGE, "Cmd": ["true"], "Labels": labels}).encode()
    return (b"POST /containers/create HTTP/1.1\r\nHost: d\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.integration
@pytest.mark.root
def test_the_proxy_passes_on_only_what_it_read(dockerd: Dockerd,
                                               tmp_path: Path) -> None:
    """Requests the engine could read otherwise than the proxy (an encoded path, doubled or
    mixed framing) are refused, and what follows an attach the engine did not switch is
    never passed on: no container is created past the stamp."""
    path = tmp_path / "docker.sock"
    stop = threading.Event()
    DockerProxy(path, dockerd.socket, "root").start(stop)
    try:
        before = set(dockerd.cli("ps", "-aq").stdout.split())
        forged = _create({"gpuacct.user": "bob"})
        # The engine reads LABELS as Labels (Go matches keys regardless of case).
        spelled = _create({}, json.dumps({"Image": IMAGE, "Cmd": ["true"], "Labels": {},
                                          "LABELS": {"gpuacct.user": "bob"}}).encode())
        assert b"gpuacct's own" in _exchange(path, spelled)
        encoded = forged.replace(b"/containers/create", b"/containers/%63reate")
        assert b"encoded or not plain" in _exchange(path, encoded)
        doubled = forged.replace(b"Content-Length:", b"Transfer-Encoding: chunked\r\n"
                                 b"Content-Length:")
        assert b"framed other than" in _exchange(path, doubled)
        assert b"swarm services" in _exchange(
            path, b"POST /v1.41/services/create HTTP/1.1\r\nHost: d\r\nContent-Length: 2"
                  b"\r\n\r\n{}")
        answer = _exchange(path, b"POST /containers/nope/attach?stream=1 HTTP/1.1\r\n"
                                 b"Host: d\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n"
                                 b"Content-Length: 0\r\n\r\n" + forged, wait=3.0)
        assert answer.startswith(b"HTTP/1.1 404") and answer.count(b"HTTP/1.1") == 1
        assert set(dockerd.cli("ps", "-aq").stdout.split()) == before
        made = _exchange(path, _create({"lab": "x"}))
        assert made.startswith(b"HTTP/1.1 201"), made
        id = json.loads(made.partition(b"\r\n\r\n")[2])["Id"]
        assert dockerd.cli("inspect", "-f", "{{json .Config.Labels}}", id).stdout.strip() == \
            '{"gpuacct.user":"root","lab":"x"}'
    finally:
        stop.set()
