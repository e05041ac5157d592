"""GPU device gating on the real kernel: device nodes made with mknod under a test folder (the
node daemon's device root), the cgroup v1 `devices` controller and a cgroup v2 device program
(BPF), real test users' processes opening them. Without a driver behind a node, open() fails
with ENXIO once past the cgroup, and with EPERM where the cgroup refuses it; /dev/null's
numbers stand in for a GPU whose driver answers, so an already-open handle can be seen to
survive."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from exporter.enforce import bpf_devices
from exporter.enforce.gating import (
    DevicesV1Gate,
    GpuDevice,
    allows,
    denied,
    gpu_devices,
    open_gate,
)
from exporter.enforce.state import ActuatorState, Applied
from exporter.users import pam_session
from gpuacct.policy import ReservedGpu
from tests.fixtures.enforcement import (
    Cluster,
    Enforcer,
    EnforcingNode,
    alert,
    notification,
    wait_until,
)
from tests.fixtures.gating import (
    BPF_REFUSED,
    CONTROLS,
    GPUS,
    HAS_DEVICES_V1,
    V2,
    make_devices,
    remove_tree,
)
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


def gated(cluster: Cluster, shared_dir: Path, mechanism: str, group: str,
          **actuator: Any) -> tuple[Enforcer, EnforcingNode, Path]:
    """An enforcer, and a node of four GPUs whose device nodes are made under `shared_dir`,
    gated by `mechanism` in the test's own `group`."""
    root = shared_dir / "dev"
    make_devices(root)
    enforcer = cluster.enforcer([], allocator={"mode": "open"})
    node = cluster.node("gpu01", enforcer_port=enforcer.port, pull_seconds=0.5,
                        devices=[device(i) for i in range(4)], device_gating=mechanism,
                        device_root=str(root), cgroup_group=group, **actuator)
    return enforcer, node, root


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_blocked_or_another_users_gpu_is_closed_at_open(
        mechanism: str, devices_group: str, cluster: Cluster, shared_dir: Path,
        processes: Processes, test_users: dict[str, UnixUser]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    enforcer, node, root = gated(cluster, shared_dir, mechanism, devices_group)
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


# Tries each node once and prints what came back (an errno's name, or ok).
ONCE = """\
import errno, json, os, sys
seen = {}
for name in sys.argv[2:]:
    try:
        os.close(os.open(os.path.join(sys.argv[1], name), os.O_RDWR))
        seen[name] = "ok"
    except OSError as exc:
        seen[name] = errno.errorcode[exc.errno]
print(json.dumps(seen))
"""

# A login as PAM makes one: the stack of service sys.argv[1] opened for the user, then the
# user's first command (ONCE) started from the session's process, as sshd does.
LOGIN = """\
import os, sys, pam
service, user, uid, gid, root, *names = sys.argv[1:]
session = pam.pam()
assert session.authenticate(user, "", service=service, call_end=False), session.reason
assert session.open_session() == 0, session.reason
child = os.fork()
if child == 0:
    os.setgroups([])
    os.setgid(int(gid))
    os.setuid(int(uid))
    os.execv("/usr/bin/python3", ["/usr/bin/python3", "-c", ONCE, root, *names])
os.waitpid(child, 0)
session.close_session()
session.end()
"""


@pytest.fixture
def pam_service(shared_dir: Path) -> Iterator[str]:
    """A PAM service of the test's own whose session stack runs gpuacct's hook, asking the
    daemon at `shared_dir`/user.sock."""
    name = f"gpuacct-test-{uuid.uuid4().hex[:8]}"
    hook = Path(pam_session.__file__)
    (Path("/etc/pam.d") / name).write_text(
        "auth required pam_permit.so\naccount required pam_permit.so\n"
        f"session required pam_exec.so quiet /usr/bin/python3 -I {hook} "
        f"{shared_dir / 'user.sock'}\n")
    yield name
    (Path("/etc/pam.d") / name).unlink()


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_a_login_is_held_from_its_first_command(
        mechanism: str, devices_group: str, cluster: Cluster, shared_dir: Path,
        pam_service: str, test_users: dict[str, UnixUser]) -> None:
    """The PAM hook has the daemon hold the new session before the user's first command: a
    blocked user's very first open() of a GPU is refused."""
    alice = test_users["alice"]
    enforcer, node, root = gated(cluster, shared_dir, mechanism, devices_group,
                                 user_socket=str(shared_dir / "user.sock"))
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block")))
    wait_until(lambda: node.hook(alice.name) is not None)

    def first_command() -> dict[str, str]:
        done = subprocess.run([sys.executable, "-c", f"ONCE = {ONCE!r}\n{LOGIN}", pam_service,
                               alice.name, str(alice.uid), str(alice.gid), str(root), *GPUS,
                               *CONTROLS], capture_output=True, text=True, timeout=60,
                              check=True)
        seen: dict[str, str] = json.loads(done.stdout)
        return seen

    assert first_command() == {**dict.fromkeys(GPUS, "EPERM"), **dict.fromkeys(CONTROLS,
                                                                                "ENXIO")}
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block", status="resolved")))
    wait_until(lambda: node.hook(alice.name) is None)
    assert first_command() == {**{name: "ENXIO" for name in (*GPUS, *CONTROLS)},
                               "nvidia1": "ok"}
    # Only root may have a session held (a user could otherwise move others' processes).
    asked = subprocess.run(
        ["/usr/bin/python3", "-c", "import socket, sys; s = socket.socket(socket.AF_UNIX); "
         "s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); "
         "print(s.makefile().readline())", str(shared_dir / "user.sock"),
         json.dumps({"op": "session", "user": alice.name, "pid": 1}) + "\n"],
        user=alice.uid, group=alice.gid, extra_groups=[], capture_output=True, text=True,
        timeout=30, check=True)
    assert json.loads(asked.stdout)["kind"] == "refused"


@pytest.mark.integration
@pytest.mark.root
@pytest.mark.skipif(BPF_REFUSED is not None, reason=f"no cgroup v2 device programs: {BPF_REFUSED}")
def test_a_systemd_user_slice_is_held_beside_systemds_own_programs(
        devices_group: str, cluster: Cluster, shared_dir: Path, processes: Processes,
        test_users: dict[str, UnixUser]) -> None:
    """Where systemd keeps a login in user-<uid>.slice/session-N.scope (cgroup v2), the slice
    itself is held, beside the device program systemd put there (here: one refusing
    renderD128, named as systemd's are), which gpuacct never takes away; a slice made anew
    at the next login is held again."""
    alice = test_users["alice"]
    slices = V2 / devices_group / "slices"
    enforcer, node, root = gated(cluster, shared_dir, "cgroup2", devices_group,
                                 user_slices=f"{devices_group}/slices")
    out = shared_dir / alice.name / "seen.json"
    (shared_dir / alice.name).mkdir()
    os.chown(shared_dir / alice.name, alice.uid, alice.gid)

    def login() -> None:
        """As pam_systemd: the slice and the session's scope, systemd's program on the
        slice, then the user's first process in the scope."""
        scope = slices / f"user-{alice.uid}.slice" / "session-1.scope"
        scope.mkdir(parents=True)
        systemds_own(scope.parent)
        proc = processes.run(alice, ["/bin/sh", "-c", "kill -STOP $$; exec /usr/bin/python3 "
                                                      f"-c '{PROBE}' {root} {out} "
                                     + " ".join((*GPUS, *CONTROLS))])
        wait_until(lambda: psutil.Process(proc.pid).status() == psutil.STATUS_STOPPED)
        (scope / "cgroup.procs").write_text(str(proc.pid))
        os.kill(proc.pid, signal.SIGCONT)

    login()
    wait_until(lambda: seen(out) == closed("dri/renderD128"))
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block")))
    wait_until(lambda: seen(out) == closed(*GPUS))
    assert (V2 / devices_group / f"user-{alice.uid}" / "cgroup.procs").read_text() == ""
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block", status="resolved")))
    wait_until(lambda: seen(out) == closed("dri/renderD128"))  # systemd's stays

    # She logs out (systemd removes the slice), is blocked, and logs in again.
    processes.stop_all()
    remove_tree(slices / f"user-{alice.uid}.slice")
    out.unlink()
    enforcer.post_alerts(notification(alert(alice.name, "block", "Block2")))
    wait_until(lambda: node.hook(alice.name) is not None)
    login()
    wait_until(lambda: seen(out) == closed(*GPUS))


def systemds_own(group: Path) -> None:
    """A device program as systemd attaches one (beside others), refusing renderD128."""
    code = bpf_devices.program([GPUS["dri/renderD128"]])
    insns, license_ = ctypes.create_string_buffer(code), ctypes.create_string_buffer(b"GPL")
    fd = bpf_devices._bpf(bpf_devices.PROG_LOAD, struct.pack(
        "<IIQQIIQII16s", bpf_devices.PROG_TYPE_CGROUP_DEVICE, len(code) // 8,
        ctypes.addressof(insns), ctypes.addressof(license_), 0, 0, 0, 0, 0, b"sd_devices"),
        "loading systemd's stand-in")
    target = os.open(group, os.O_RDONLY | os.O_DIRECTORY)
    try:
        bpf_devices._bpf(bpf_devices.PROG_ATTACH, struct.pack(
            "<IIII", target, fd, bpf_devices.CGROUP_DEVICE, bpf_devices.F_ALLOW_MULTI),
            "attaching systemd's stand-in")
    finally:
        os.close(target)
        os.close(fd)


def test_a_containers_group_is_closed_and_opened_only_as_far_as_its_engine_gave(
        tmp_path: Path) -> None:
    """Against folders standing in for the controller and /proc: in a container's own group
    (the engine's) only GPUs the engine let it open are denied, and only those are allowed
    again: a GPU it was never given stays shut."""
    proc = tmp_path / "proc"
    (proc / "10").mkdir(parents=True)
    (proc / "10" / "cgroup").write_text("5:devices:/docker/abc\n0::/\n")
    group = tmp_path / "docker" / "abc"
    group.mkdir(parents=True)
    (group / "devices.list").write_text("c 1:3 rwm\nc 195:0 rwm\nc 136:* rwm\n")
    gate = DevicesV1Gate(tmp_path, "g", [GpuDevice(0, Path("nvidia0"), 195, 0),
                                        GpuDevice(1, Path("nvidia1"), 195, 1)], str(proc))
    gate.apply_container("abc", 10, frozenset({0, 1}))
    assert (group / "devices.deny").read_text() == "c 195:0 rwm"
    (group / "devices.deny").unlink()
    gate.apply_container("abc", 10, frozenset({0, 1}))  # as it was: nothing written
    assert not (group / "devices.deny").exists()
    gate.apply_container("abc", 10, frozenset())
    assert (group / "devices.allow").read_text() == "c 195:0 rwm"
    assert not (tmp_path / "g").exists()  # its processes were never moved anywhere


@pytest.mark.parametrize("listed, allowed", [
    ("a *:* rwm\n", True), ("c 195:* rw\n", True), ("c 195:0 m\n", False),
    ("c 195:1 rwm\nb 195:0 rwm\n", False), ("c *:0 r\n", True), ("", False)])
def test_what_a_devices_list_lets_open(listed: str, allowed: bool) -> None:
    assert allows(listed, GpuDevice(0, Path("nvidia0"), 195, 0)) is allowed
