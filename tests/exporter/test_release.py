"""`gpuacct-exporter release`: every quota the node's enforcement set is lifted, every login
notice removed, and the state emptied; what is on a cgroup tree of the test's own."""

from __future__ import annotations

from pathlib import Path

from exporter.enforce.hookfile import hook_path
from exporter.enforce.release import release_all
from exporter.enforce.state import ActuatorState, Applied, StateFile
from gpuacct.config import ActuatorSettings
from gpuacct.policy import UserPolicy


def test_every_quota_and_notice_is_taken_back(tmp_path: Path) -> None:
    root, hooks = tmp_path / "cgroup", tmp_path / "hooks"
    (root / "user.slice" / "user-1001.slice").mkdir(parents=True)
    (root / "cgroup.controllers").write_text("cpu")
    quota = root / "user.slice" / "user-1001.slice" / "cpu.max"
    quota.write_text("50000 100000")
    hooks.mkdir()
    for user in ("alice", "bob", "gone"):  # `gone`: a notice the state no longer names
        hook_path(hooks, user).write_text("{}")
    settings = ActuatorSettings(state_file=tmp_path / "actuator.json", hook_dir=hooks,
                                cpu_limiter="cgroup2", cgroup_root=root)
    StateFile(settings.state_file).save(ActuatorState(version=7, users={
        "alice": Applied(uid=1001, policy=UserPolicy(cpu_quota_percent=50), quota=50),
        "bob": Applied(uid=1002, policy=UserPolicy(block=True))}))

    assert release_all(settings) == ["alice", "bob"]
    assert quota.read_text() == "max 100000"
    assert list(hooks.iterdir()) == []
    assert StateFile(settings.state_file).load() == ActuatorState()
    assert release_all(settings) == []  # again: nothing left, nothing fails
