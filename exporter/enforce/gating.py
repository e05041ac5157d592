"""Which GPUs' device nodes each user may open, held by the kernel.

A blocked user's new GPU program fails at start ("no CUDA-capable device") instead of being
killed a sampling interval later, and a GPU reserved for someone is closed to everyone else (in
strict mode, every GPU its user has not reserved). Handles opened before are left alone: the kill
path stays for them. Only the GPUs' own nodes are ever closed (/dev/nvidiaN, /dev/dri/renderD*,
/dev/davinciN); control devices (nvidiactl, nvidia-uvm, kfd, davinci_manager) stay open.

`denied` decides, purely; a gate carries it out, on a group per user (`<group>/user-<uid>`) the
user's processes are moved into each cycle (what they start inherits it): `DevicesV1Gate` denies
or allows each GPU's node there with the cgroup v1 `devices` controller, `DevicesBpfGate`
attaches a cgroup v2 device program that refuses them.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from exporter.enforce import bpf_devices
from exporter.enforce.cgroups import group_of, write
from exporter.enforce.state import ActuatorState, ProcKey

# A GPU's device node under the device root, and the number of its first GPU.
GPU_NODES = ((re.compile(r"nvidia(\d+)"), "", 0),
             (re.compile(r"renderD(\d+)"), "dri", 128),
             (re.compile(r"davinci(\d+)"), "", 0))


class GateError(Exception):
    """The kernel refused a step; the message says which and where."""


@dataclass(frozen=True)
class GpuDevice:
    index: int  # the GPU's, as the exporter numbers GPUs
    path: Path
    major: int
    minor: int

    @property
    def rule(self) -> str:
        return f"c {self.major}:{self.minor} rwm"


def gpu_devices(root: Path) -> list[GpuDevice]:
    """The GPUs' character device nodes under `root` (/dev). They are numbered as the
    exporter numbers GPUs: NVIDIA's, then AMD's, then Ascend's, each vendor's in its order."""
    found: list[GpuDevice] = []
    for pattern, folder, first in GPU_NODES:
        offset = len(found)  # after the previous vendors' GPUs
        try:
            names = os.listdir(root / folder)
        except OSError:
            continue
        numbered = sorted((int(m[1]) - first, name) for name in names
                          if (m := pattern.fullmatch(name)) and int(m[1]) >= first)
        for number, name in numbered:
            path = root / folder / name
            try:
                info = path.stat()
            except OSError:
                continue
            if stat.S_ISCHR(info.st_mode):
                found.append(GpuDevice(offset + number, path, os.major(info.st_rdev),
                                       os.minor(info.st_rdev)))
    return found


def denied(state: ActuatorState, user: str, gpus: Iterable[int], now: float) -> frozenset[int]:
    """The GPUs the user may not open now: all of them while blocked; else those reserved for
    someone else, and in strict mode those the user has not reserved."""
    applied = state.users.get(user)
    if applied is not None and applied.block_since is not None:
        return frozenset(gpus)
    holders = {r.gpu: r.user for r in state.reserved if r.ends > now}
    return frozenset(i for i in gpus
                     if (holders[i] != user if i in holders else state.mode == "strict"))


def allows(listed: str, device: GpuDevice) -> bool:
    """Whether a v1 devices.list (`a *:* rwm`, `c 195:* rw`...) lets the device be opened."""
    for line in listed.splitlines():
        kind, _, rest = line.partition(" ")
        numbers, _, access = rest.partition(" ")
        major, _, minor = numbers.partition(":")
        if (kind in ("a", "c") and major in ("*", str(device.major))
                and minor in ("*", str(device.minor)) and access.strip("m")):
            return True
    return False


class DeviceGate(Protocol):
    name: str
    devices: Sequence[GpuDevice]

    def apply(self, uid: int, closed: frozenset[int], procs: Sequence[ProcKey]) -> None:
        """Close these GPUs to the uid's processes (`procs`, the ones running now) and open
        the others; raises GateError."""

    def apply_container(self, container: str, pid: int, closed: frozenset[int]) -> None:
        """Close these GPUs in the group of a user's container (`pid` runs in it), never
        opening what its engine did not give it; raises GateError."""

    def forget_containers(self, live: set[str]) -> None:
        """Forget the containers no longer among `live`."""


class _GroupGate:
    """A group per user (`<root>/<group>/user-<uid>`), the user's processes moved into it from
    the root group; what a group lets open is each mechanism's own."""

    name = ""
    controller: str | None = None  # the v1 hierarchy processes are found in; None: the unified

    def __init__(self, root: Path, group: str, devices: Sequence[GpuDevice],
                 proc_root: str = "/proc") -> None:
        self.root, self.group, self.proc_root = root, group, proc_root
        self.devices: Sequence[GpuDevice] = tuple(devices)
        # What the kernel holds, by uid; None: a group an earlier run left, written again.
        self._closed: dict[int, frozenset[int] | None] = {
            int(g.name.removeprefix("user-")): None for g in (root / group).glob("user-*")
            if g.name.removeprefix("user-").isdigit()}
        self._moved: dict[int, set[ProcKey]] = {}
        # container id -> its group, what is closed in it, what we denied there for that
        self._containers: dict[str, tuple[Path, frozenset[int], frozenset[int]]] = {}

    def _close(self, group: Path, closed: frozenset[int]) -> None:
        raise NotImplementedError

    def _close_container(self, group: Path, closed: frozenset[int],
                         denied: frozenset[int]) -> frozenset[int]:
        """Close `closed` in a container's group where `denied` is what we denied there
        before: what we deny there now."""
        raise NotImplementedError

    def apply_container(self, container: str, pid: int, closed: frozenset[int]) -> None:
        known = self._containers.get(container)
        if known is not None and known[1] == closed:
            return
        if known is None:
            where = group_of(pid, self.controller, self.proc_root)
            if where is None:
                return  # gone meanwhile
            known = (self.root / where.lstrip("/"), frozenset(), frozenset())
        group = known[0]
        self._containers[container] = (group, closed,
                                       self._close_container(group, closed, known[2]))

    def forget_containers(self, live: set[str]) -> None:
        for container in self._containers.keys() - live:
            del self._containers[container]

    def _apply_slice(self, uid: int, closed: frozenset[int]) -> None:
        """The user's systemd slice held too, where the mechanism can (cgroup v2)."""

    def apply(self, uid: int, closed: frozenset[int], procs: Sequence[ProcKey]) -> None:
        self._apply_slice(uid, closed)
        if not closed and uid not in self._closed:
            return  # never closed anything to this user: nothing to open
        group = self.root / self.group / f"user-{uid}"
        try:
            group.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise GateError(f"cannot create {group}: {exc.strerror}") from None
        if self._closed.get(uid) != closed:
            self._close(group, closed)
            self._closed[uid] = closed
        if not closed:
            self._moved.pop(uid, None)
            return
        moved = self._moved.setdefault(uid, set())
        moved &= set(procs)
        inside = f"/{self.group}/user-{uid}"
        for key in procs:
            if key in moved:
                continue
            now_in = group_of(key[0], self.controller, self.proc_root)
            if now_in is None:
                continue  # gone meanwhile
            # Only from the root group: a process in another (a container's, a systemd unit
            # with a device policy of its own) is held there, and moving it would loosen that.
            if now_in in ("/", inside):
                try:
                    (group / "cgroup.procs").write_text(str(key[0]))
                except OSError as exc:
                    if exc.errno == errno.ESRCH:
                        continue
                    raise GateError(f"cannot move {key[0]} into {group}: {exc.strerror}") from None
            moved.add(key)


class DevicesV1Gate(_GroupGate):
    """The cgroup v1 `devices` controller, mounted at `root`: each GPU's node denied or
    allowed in the user's group."""

    name, controller = "cgroup1", "devices"

    def _close(self, group: Path, closed: frozenset[int]) -> None:
        for device in self.devices:
            kind = "deny" if device.index in closed else "allow"
            write(group / f"devices.{kind}", device.rule, GateError)

    def _close_container(self, group: Path, closed: frozenset[int],
                         denied: frozenset[int]) -> frozenset[int]:
        """Deny what is newly closed, of what the engine let the container open; allow again
        only what we denied: a GPU the container was never given stays shut."""
        try:
            listed = (group / "devices.list").read_text()
        except OSError as exc:
            raise GateError(f"cannot read {group / 'devices.list'}: {exc.strerror}") from None
        now = set(denied)
        for device in self.devices:
            if device.index in closed and device.index not in now and allows(listed, device):
                write(group / "devices.deny", device.rule, GateError)
                now.add(device.index)
            elif device.index in now and device.index not in closed:
                write(group / "devices.allow", device.rule, GateError)
                now.discard(device.index)
        return frozenset(now)


class DevicesBpfGate(_GroupGate):
    """cgroup v2, mounted at `root`: a device program on the user's group that refuses the
    closed GPUs' nodes (attached in place of the one before). Where systemd keeps the user's
    processes in `<slices>/user-<uid>.slice` (a login's session scopes are below it), the
    same program goes on that slice too, beside systemd's own programs; a slice made anew (the
    user logged out and in again) is held again."""

    name, controller = "cgroup2", None

    def __init__(self, root: Path, group: str, devices: Sequence[GpuDevice],
                 proc_root: str = "/proc", slices: str | None = None) -> None:
        super().__init__(root, group, devices, proc_root)
        self.slices = root / slices if slices else None
        # uid -> (the slice's inode, what is closed on it; None: unknown, an earlier run's)
        self._on_slices: dict[int, tuple[int, frozenset[int] | None]] = {}
        for found in self.slices.glob("user-*.slice") if self.slices else ():
            uid = found.name.removeprefix("user-").removesuffix(".slice")
            with contextlib.suppress(OSError):
                if uid.isdigit():
                    self._on_slices[int(uid)] = (found.stat().st_ino, None)

    def _refusing(self, closed: frozenset[int]) -> bytes:
        return bpf_devices.program([(d.major, d.minor) for d in self.devices
                                    if d.index in closed])

    def _close(self, group: Path, closed: frozenset[int]) -> None:
        try:
            bpf_devices.attach(group, self._refusing(closed))
        except bpf_devices.BpfError as exc:
            raise GateError(str(exc)) from None

    def _close_container(self, group: Path, closed: frozenset[int],
                         denied: frozenset[int]) -> frozenset[int]:
        """Beside the engine's own program (runc's): ours only ever refuses more."""
        try:
            bpf_devices.attach_beside(group, self._refusing(closed) if closed else None)
        except bpf_devices.BpfError as exc:
            raise GateError(str(exc)) from None
        return closed

    def _apply_slice(self, uid: int, closed: frozenset[int]) -> None:
        if self.slices is None:
            return
        user_slice = self.slices / f"user-{uid}.slice"
        try:
            inode = user_slice.stat().st_ino
        except OSError:
            self._on_slices.pop(uid, None)  # no login now: nothing there to hold
            return
        known, held = self._on_slices.get(uid, (inode, frozenset()))
        if known == inode and held == closed:
            return
        try:
            bpf_devices.attach_beside(user_slice, self._refusing(closed) if closed else None)
        except bpf_devices.BpfError as exc:
            raise GateError(str(exc)) from None
        self._on_slices[uid] = (inode, closed)


def open_gate(choice: str, cgroup_root: Path, device_root: Path, group: str,
              slices: str | None = None) -> tuple[DeviceGate | None, str]:
    """The gate `choice` (auto, cgroup1, cgroup2, off) asks for and this node allows, or
    None, with the mechanism's name as `/metrics` says it, or why there is none. auto: the v1
    devices controller where it is mounted, else cgroup v2's device programs."""
    if choice == "off":
        return None, "off"
    devices = gpu_devices(device_root)
    if not devices:
        return None, f"none: no GPU device nodes under {device_root}"
    v1 = cgroup_root / "devices"
    if choice in ("auto", "cgroup1") and (v1 / "devices.allow").exists():
        return DevicesV1Gate(v1, group, devices), "cgroup1"
    # cgroup v2 alone is mounted at the root; beside v1 (hybrid), at unified/.
    v2 = cgroup_root if (cgroup_root / "cgroup.controllers").exists() else cgroup_root / "unified"
    if choice in ("auto", "cgroup2") and (v2 / "cgroup.procs").exists():
        refused = bpf_devices.available()
        if refused is None:
            return DevicesBpfGate(v2, group, devices, slices=slices), "cgroup2"
        return None, f"none: {refused}"
    if choice == "cgroup1":
        return None, f"none: no cgroup v1 devices controller at {v1}"
    return None, f"none: no cgroup v1 devices controller at {v1}, no cgroup v2 at {v2}"
