"""The systemd and cgroup v2 paths, on what they would run or write (this machine has cgroup v1
and no systemd as PID 1; the v1 path is tested for real in test_actuator.py)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import pytest

from exporter.enforce.throttle import CgroupLimiter, LimitError, SystemdLimiter, detect


def test_systemd_sets_and_resets_cpuquota_on_the_user_slice() -> None:
    ran: list[Sequence[str]] = []
    limiter = SystemdLimiter(run=ran.append)
    limiter.limit(1001, 50, [123])
    limiter.lift(1001)
    assert ran == [
        ["systemctl", "set-property", "--runtime", "user-1001.slice", "CPUQuota=50%"],
        ["systemctl", "set-property", "--runtime", "user-1001.slice", "CPUQuota="],
    ]


def test_a_failing_systemctl_is_a_limit_error_naming_the_command(tmp_path: Path) -> None:
    fake = tmp_path / "systemctl"
    fake.write_text("#!/bin/sh\necho 'Unit user-1001.slice not loaded.' >&2\nexit 1\n")
    fake.chmod(0o755)
    old = os.environ["PATH"]
    os.environ["PATH"] = f"{tmp_path}:{old}"
    try:
        with pytest.raises(LimitError, match=r"CPUQuota=50%: Unit user-1001.slice not loaded"):
            SystemdLimiter().limit(1001, 50, [])
    finally:
        os.environ["PATH"] = old


def test_cgroup_v2_writes_cpu_max_of_the_user_slice(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu memory pids\n")
    user_slice = tmp_path / "user.slice" / "user-1001.slice"
    user_slice.mkdir(parents=True)
    limiter = detect("auto", tmp_path, systemd_running=lambda: False)
    assert isinstance(limiter, CgroupLimiter) and limiter.name == "cgroup2"
    limiter.limit(1001, 50, [os.getpid()])
    assert (user_slice / "cpu.max").read_text() == "50000 100000"
    limiter.lift(1001)
    assert (user_slice / "cpu.max").read_text() == "max 100000"


def test_cgroup_v2_without_a_user_slice_uses_its_own_group_and_moves_processes(
        tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    limiter = CgroupLimiter(tmp_path, 2)
    limiter.limit(1002, 10, [os.getpid()])
    group = tmp_path / "gpuacct" / "user-1002"
    assert (group / "cpu.max").read_text() == "10000 100000"
    assert (tmp_path / "cgroup.subtree_control").read_text() == "+cpu"
    assert (group.parent / "cgroup.subtree_control").read_text() == "+cpu"
    assert (group / "cgroup.procs").read_text() == str(os.getpid())


def test_cgroup_v1_on_a_systemd_user_slice_sets_the_cfs_quota(tmp_path: Path) -> None:
    user_slice = tmp_path / "cpu" / "user.slice" / "user-1003.slice"
    user_slice.mkdir(parents=True)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    limiter = detect("auto", tmp_path, systemd_running=lambda: False)
    assert limiter is not None and limiter.name == "cgroup1"
    limiter.limit(1003, 150, [])
    assert (user_slice / "cpu.cfs_period_us").read_text() == "100000"
    assert (user_slice / "cpu.cfs_quota_us").read_text() == "150000"  # 1.5 CPUs
    limiter.lift(1003)
    assert (user_slice / "cpu.cfs_quota_us").read_text() == "-1"


def test_detect_prefers_systemd_and_can_be_told(tmp_path: Path) -> None:
    (tmp_path / "cgroup.controllers").write_text("cpu\n")
    assert detect("auto", tmp_path, systemd_running=lambda: True).name == "systemd"  # type: ignore[union-attr]
    assert detect("cgroup1", tmp_path).name == "cgroup1"  # type: ignore[union-attr]
    assert detect("off", tmp_path) is None
    assert detect("auto", tmp_path / "nothing", systemd_running=lambda: False) is None


def test_an_unwritable_group_is_a_limit_error(tmp_path: Path) -> None:
    limiter = CgroupLimiter(tmp_path / "missing", 2)
    (tmp_path / "missing").write_text("")  # a file where the hierarchy should be
    with pytest.raises(LimitError, match="cannot create"):
        limiter.limit(1001, 50, [])
