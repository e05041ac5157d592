"""GPU device gating on the real kernel: device nodes made with mknod under a test folder (the
node daemon's device root), the cgroup v1 `devices` controller and a cgroup v2 device program
(BPF), real test users' processes opening them. Without a driver behind a node, open() fails
with ENXIO once past the cgroup, and with EPERM where the cgroup refuses it; /dev/null's
numbers stand in for a GPU whose driver answers, so an already-open handle can be seen to
survive."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from exporter.enforce.gating import DevicesV1Gate, GpuDevice, denied, gpu_devices, open_gate
from exporter.enforce.state import ActuatorState, Applied
from gpuacct.policy import ReservedGpu
from tests.fixtures.enforcement import Cluster, alert, notification, wait_until
from tests.fixtures.gating import BPF_REFUSED, CONTROLS, GPUS, HAS_DEVICES_V1, make_devices
from tests.fixtures.gpus import device
from tests.fixtures.users import Processes, UnixUser

# Opens every node each tenth of a second and writes what came back (an errno's name, or
# ok); holds nvidia1 (/dev/null's numbers) open from the start and writes to it each time.
PROBE = """\
import errno, json, os, sys, time
root, out = sys.argv[1], sys.argv[2]
names = sys.argv[3:]
held = os.open(os.path.join(root, "nvidia1"), os.O_RDWR)
while True:
    seen = {}
    for name in names:
        try:
            os.close(os.open(os.path.join(root, name), os.O_RDWR))
            seen[name] = "ok"
        except OSError as exc:
            seen[name] = errno.errorcode[exc.errno]
    try:
        os.write(held, b"x")
        seen["held"] = "ok"
    except OSError as exc:
        seen["held"] = errno.errorcode[exc.errno]
    with open(out + ".new", "w") as f:
        json.dump(seen, f)
    os.replace(out + ".new", out)
    time.sleep(0.1)
"""


def probe(processes: Processes, user: UnixUser, root: Path, out: Path) -> None:
    processes.run(user, ["/usr/bin/python3", "-c", PROBE, str(root), str(out),
                         *GPUS, *CONTROLS])


def seen(out: Path) -> dict[str, str]:
    try:
        result: dict[str, str] = json.loads(out.read_text())
        return result
    except (OSError, ValueError):
        return {}


OPEN = {**{name: "ENXIO" for name in (*GPUS, *CONTROLS)}, "nvidia1": "ok", "held": "ok"}


def closed(*names: str) -> dict[str, str]:
    return {**OPEN, **dict.fromkeys(names, "EPERM")}


MECHANISMS = [
    pytest.param("cgroup1", marks=pytest.mark.skipif(
        not HAS_DEVICES_V1, reason="no cgroup v1 devices controller here")),
    pytest.param("cgroup2", marks=pytest.mark.skipif(
        BPF_REFUSED is not None, reason=f"no cgroup v2 device programs here: {BPF_REFUSED}")),
]


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_blocked_or_another_users_gpu_is_closed_at_open(
        mechanism: str, devices_group: str, cluster: Cluster, shared_dir: Path,
        processes: Processes, test_users: dict[str, UnixUser]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    root = shared_dir / "dev"
    make_devices(root)
    enforcer = cluster.enforcer([], allocator={"mode": "open"})
    node = cluster.node("gpu01", enforcer_port=enforcer.port, pull_seconds=0.5,
                        devices=[device(i) for i in range(4)], device_gating=mechanism,
                        device_root=str(root), cgroup_group=devices_group)
    outs = {}
    for user in (alice, bob):
        (shared_dir / user.name).mkdir()
        os.chown(shared_dir / user.name, user.uid, user.gid)
        outs[user.name] = shared_dir / user.name / "seen.json"
        probe(processes, user, root, outs[user.name])
    wait_until(lambda: seen(outs[alice.name]) == OPEN and seen(outs[bob.name]) == OPEN)
    assert (f'gpuacct_gpu_device_gating_info{{mechanism="{mechanism}",reason=""}} 1.0'
            in node.exporter.scrape())

    # Blocked: no GPU node opens for alice (what she holds open still works); bob untouched.
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block")))
    wait_until(lambda: seen(outs[alice.name]) == closed(*GPUS))
    assert seen(outs[bob.name]) == OPEN
    # The block lifts: within a sync, her GPU nodes open again.
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block", status="resolved")))
    wait_until(lambda: seen(outs[alice.name]) == OPEN)

    # alice reserves GPU 0: closed to bob, open to her.
    status, body = enforcer.forward(alice.name, {"op": "reserve", "count": 1, "seconds": 3600,
                                                  "gpus": [0], "node": "gpu01"},
                                    gpus=[{"index": i, "model": "NVIDIA A100"}
                                          for i in range(4)], uid=alice.uid)
    assert status == 200 and "granted" in body["text"], body
    wait_until(lambda: seen(outs[bob.name]) == closed("nvidia0"))
    assert seen(outs[alice.name]) == OPEN
    enforcer.forward(alice.name, {"op": "release"}, uid=alice.uid)
    wait_until(lambda: seen(outs[bob.name]) == OPEN)
    assert all(p.poll() is None for p in processes.started)  # nothing was killed for it


def test_gpu_device_nodes_are_found_by_kind_numbered_in_the_backends_order(
        tmp_path: Path) -> None:
    make_devices(tmp_path)
    (tmp_path / "nvidia7").write_text("not a device")  # a file: never a GPU
    (tmp_path / "dri" / "card0").touch()
    found = {(d.index, d.path.name, d.major, d.minor) for d in gpu_devices(tmp_path)}
    assert found == {(0, "nvidia0", 195, 0), (1, "nvidia1", 1, 3),
                     (2, "renderD128", 226, 128), (3, "davinci0", 239, 0)}


def test_who_may_open_which_gpu() -> None:
    now, gpus = 1000.0, range(4)
    state = ActuatorState(reserved=(ReservedGpu(gpu=1, user="ann", id=1, ends=now + 60),
                                    ReservedGpu(gpu=2, user="bob", id=2, ends=now - 1)))
    assert denied(state, "ann", gpus, now) == frozenset()
    assert denied(state, "bob", gpus, now) == {1}  # his own reservation has ended
    state.users["bob"] = Applied(uid=1001, block_since=now)
    assert denied(state, "bob", gpus, now) == {0, 1, 2, 3}
    state.mode = "strict"
    assert denied(state, "ann", gpus, now) == {0, 2, 3}


def test_without_gpu_nodes_or_a_devices_controller_there_is_no_gate(tmp_path: Path) -> None:
    assert open_gate("auto", tmp_path, tmp_path, "g") == (
        None, f"none: no GPU device nodes under {tmp_path}")
    assert open_gate("off", tmp_path, tmp_path, "g") == (None, "off")
    make_devices(tmp_path / "dev")
    assert open_gate("auto", tmp_path, tmp_path / "dev", "g") == (
        None, f"none: no cgroup v1 devices controller at {tmp_path / 'devices'}, no cgroup v2 "
        f"at {tmp_path / 'unified'}")
    assert open_gate("cgroup1", tmp_path, tmp_path / "dev", "g") == (
        None, f"none: no cgroup v1 devices controller at {tmp_path / 'devices'}")


def test_a_gate_writes_only_what_changed(tmp_path: Path) -> None:
    """Against folders standing in for the controller and /proc: what a user never had
    closed is never written; a closing writes each GPU's rule once and moves each process
    once, never one that is in a group of someone else's (a container's)."""
    proc = tmp_path / "proc"
    for pid, where in ((10, "/"), (11, "/docker/0123abcd")):  # 11: in a container's group
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cgroup").write_text(f"6:freezer:/\n5:devices:{where}\n0::/\n")
    gate = DevicesV1Gate(tmp_path, "g", [GpuDevice(0, Path("nvidia0"), 195, 0),
                                        GpuDevice(1, Path("nvidia1"), 195, 1)], str(proc))
    gate.apply(1001, frozenset(), [(10, 1)])
    assert not (tmp_path / "g").exists()
    gate.apply(1001, frozenset({1}), [(10, 1), (11, 1), (12, 1)])  # 12: gone meanwhile
    group = tmp_path / "g" / "user-1001"
    assert (group / "devices.deny").read_text() == "c 195:1 rwm"
    assert (group / "devices.allow").read_text() == "c 195:0 rwm"
    assert (group / "cgroup.procs").read_text() == "10"
    (group / "cgroup.procs").unlink()
    gate.apply(1001, frozenset({1}), [(10, 1)])
    assert not (group / "cgroup.procs").exists()  # already moved, already denied
    gate.apply(1001, frozenset(), [(10, 1)])
    assert (group / "devices.allow").read_text() == "c 195:1 rwm"  # opened again
    # A restarted node opens what an earlier run closed, though it never closed it itself.
    (group / "devices.allow").unlink()
    again = DevicesV1Gate(tmp_path, "g", gate.devices, str(proc))
    again.apply(1001, frozenset(), [(10, 1)])
    assert (group / "devices.allow").read_text() == "c 195:1 rwm"
