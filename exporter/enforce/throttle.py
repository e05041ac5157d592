"""CPU quotas on a user's processes, the way the node supports best.

- systemd (PID 1 is systemd): `systemctl set-property --runtime user-<uid>.slice CPUQuota=N%`;
  systemd already keeps every process of the user in that slice.
- cgroup v2: `cpu.max` of `user.slice/user-<uid>.slice` if it exists, else of a gpuacct group
  the user's processes are moved into.
- cgroup v1: `cpu.cfs_quota_us` of the user's slice in the `cpu` hierarchy if it exists, else of
  a gpuacct group the processes are moved into.
A quota is percent of one CPU, as systemd's CPUQuota: 50 means half a core for all the user's
processes together. Lifting restores the unlimited quota and moves processes back.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Protocol

from exporter.enforce.cgroups import group_of, write

log = logging.getLogger(__name__)
PERIOD_US = 100_000


class LimitError(Exception):
    """The quota could not be set or lifted; the message says where."""


class CpuLimiter(Protocol):
    name: str

    def limit(self, uid: int, percent: int, pids: Iterable[int]) -> None:
        """Apply (or re-apply, with processes that appeared since) the quota."""

    def lift(self, uid: int) -> None: ...


class SystemdLimiter:
    name = "systemd"

    def __init__(self, run: Callable[[Sequence[str]], None] | None = None) -> None:
        self._run = run or self._systemctl

    @staticmethod
    def _systemctl(argv: Sequence[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if done.returncode:
            raise LimitError(f"{' '.join(argv)}: {done.stderr.strip() or done.returncode}")

    def limit(self, uid: int, percent: int, pids: Iterable[int]) -> None:
        self._run(["systemctl", "set-property", "--runtime", f"user-{uid}.slice",
                   f"CPUQuota={percent}%"])

    def lift(self, uid: int) -> None:
        self._run(["systemctl", "set-property", "--runtime", f"user-{uid}.slice", "CPUQuota="])


def _write(path: Path, value: str) -> None:
    write(path, value, LimitError)


class CgroupLimiter:
    """cgroup v2 (`cpu.max`) or v1 (`cpu.cfs_*`), on the user's slice or on our own group."""

    def __init__(self, root: Path, version: int, proc_root: str = "/proc") -> None:
        self.version = version
        self.name = f"cgroup{version}"
        self.root = root if version == 2 else root / "cpu"
        self.proc_root = proc_root

    def _slice(self, uid: int) -> Path:
        return self.root / "user.slice" / f"user-{uid}.slice"

    def _own(self, uid: int) -> Path:
        return self.root / "gpuacct" / f"user-{uid}"

    def _set(self, group: Path, percent: int | None) -> None:
        quota = percent * PERIOD_US // 100 if percent else None
        if self.version == 2:
            _write(group / "cpu.max", f"{quota or 'max'} {PERIOD_US}")
        else:
            _write(group / "cpu.cfs_period_us", str(PERIOD_US))
            _write(group / "cpu.cfs_quota_us", str(quota or -1))

    def _current_group(self, pid: int) -> str | None:
        """The pid's group in this hierarchy, relative to its root."""
        return group_of(pid, None if self.version == 2 else "cpu", self.proc_root)

    def limit(self, uid: int, percent: int, pids: Iterable[int]) -> None:
        if self._slice(uid).is_dir():
            self._set(self._slice(uid), percent)
            return
        group = self._own(uid)
        if not group.is_dir():
            try:
                group.mkdir(parents=True)
            except OSError as exc:
                raise LimitError(f"cannot create {group}: {exc.strerror}") from None
            if self.version == 2:  # the cpu controller must be enabled down to our group
                for parent in (self.root, group.parent):
                    _write(parent / "cgroup.subtree_control", "+cpu")
        self._set(group, percent)
        inside = "/" + str(group.relative_to(self.root))
        for pid in pids:
            if self._current_group(pid) not in (None, inside):
                try:
                    (group / "cgroup.procs").write_text(str(pid))
                except OSError as exc:  # gone, or a kernel thread: nothing to limit
                    log.debug("cannot move %d into %s: %s", pid, group, exc)

    def lift(self, uid: int) -> None:
        if self._slice(uid).is_dir():
            self._set(self._slice(uid), None)
            return
        group = self._own(uid)
        if not group.is_dir():
            return
        self._set(group, None)
        # Back to the root group: where a process came from may be gone, and the root group
        # is unlimited, which is all lifting promises.
        for pid in (group / "cgroup.procs").read_text().split():
            try:
                (self.root / "cgroup.procs").write_text(pid)
            except OSError as exc:
                log.debug("cannot move %s back: %s", pid, exc)
        try:
            group.rmdir()
        except OSError as exc:
            log.warning("cannot remove %s: %s", group, exc.strerror)


def detect(choice: str, cgroup_root: Path,
           systemd_running: Callable[[], bool] | None = None) -> CpuLimiter | None:
    """The limiter `choice` names; for auto, the best this node has; None if none works."""
    def has_systemd() -> bool:
        return Path("/run/systemd/system").is_dir() and shutil.which("systemctl") is not None

    running = systemd_running or has_systemd
    if choice == "systemd" or (choice == "auto" and running()):
        return SystemdLimiter()
    if choice == "cgroup2" or (choice == "auto" and (cgroup_root / "cgroup.controllers").exists()):
        return CgroupLimiter(cgroup_root, 2)
    if choice == "cgroup1" or (choice == "auto" and
                               (cgroup_root / "cpu" / "cpu.cfs_quota_us").exists()):
        return CgroupLimiter(cgroup_root, 1)
    return None
