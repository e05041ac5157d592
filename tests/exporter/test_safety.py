"""Property: whatever the policy and the process table, no signal ever reaches root, a uid
below min_uid, a protected user, or a process whose start time changed since it was chosen."""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from exporter.devices.base import GpuUnit
from exporter.enforce.actuator import Actuator
from exporter.enforce.signals import Signaller, Target
from exporter.usage.accounting import GpuHolder
from exporter.usage.procs import ProcIdentity, ProcSample
from exporter.usage.sampler import Snapshot
from gpuacct.config import ActuatorSettings
from gpuacct.policy import NodePolicy, Reason, UserPolicy

MIN_UID = 1000
NAMES = {0: "root", 1: "daemon", 999: "postgres", 1000: "ann", 1001: "ben", 1002: "cat",
         65534: "nobody"}
UIDS = {name: uid for uid, name in NAMES.items()}

processes = st.lists(st.tuples(
    st.sampled_from([0, 1, 999, 1000, 1000, 1001, 1001, 1002, 1002, 65534]),  # uid
    st.booleans(),  # on a GPU
    st.integers(0, 3).map(lambda n: n == 0),  # its start time changes before the signal
    st.integers(0, 5),  # parent: index of an earlier process, if any
), min_size=1, max_size=25)
user_policies = st.dictionaries(st.sampled_from([*UIDS, "ann", "ben", "cat"]), st.builds(
    UserPolicy, block=st.booleans(), kill=st.booleans(),
    reasons=st.just((Reason(alert="A", action="kill"),))), max_size=7)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(table=processes, first=user_policies, second=user_policies,
       protected=st.sets(st.sampled_from(sorted(UIDS)), max_size=2),
       dry_run=st.integers(0, 3).map(lambda n: n == 0))
def test_no_signal_reaches_a_process_it_must_not(
        table: list[tuple[int, bool, bool, int]], first: dict[str, UserPolicy],
        second: dict[str, UserPolicy], protected: set[str], dry_run: bool) -> None:
    procs, holders, changed = [], [], set()
    for i, (uid, on_gpu, reused, parent) in enumerate(table):
        pid = 100 + i
        sample = ProcSample(
            pid=pid, start_ticks=5000 + i, ppid=100 + parent if parent < i else 1, cpu_ticks=0,
            child_ticks=0, rss_bytes=0,
            identity=ProcIdentity(uid=uid, user=NAMES[uid], job="j", job_source="env",
                                  name="p", is_shell=False))
        procs.append(sample)
        if on_gpu:
            holders.append(GpuHolder(GpuUnit("0", "GPU-0", "A100"), pid, NAMES[uid], "j", None,
                                     None))
        if reused:
            changed.add(pid)
    by_pid = {p.pid: p for p in procs}
    sent: list[int] = []

    def identity(pid: int) -> tuple[int, int] | None:
        p = by_pid.get(pid)
        if p is None:
            return None
        return p.start_ticks + (1 if pid in changed else 0), p.identity.uid

    signaller = Signaller(MIN_UID, protected, dry_run, open_pid=lambda pid: pid,
                          identity=identity, deliver=lambda fd, sig: sent.append(fd),
                          close=lambda fd: None, user_name=NAMES.get)
    snapshot = Snapshot(procs=tuple(procs), holders=tuple(holders))
    with tempfile.TemporaryDirectory() as tmp:
        actuator = Actuator(
            ActuatorSettings(state_file=Path(tmp) / "s.json", hook_dir=Path(tmp) / "h",
                             kill_grace_seconds=0, dry_run=dry_run, protected_users=[]),
            "n", signaller, None, lambda: snapshot, tell=lambda uid, text: 0,
            uid_of=UIDS.get)
        actuator.apply(NodePolicy(version=1, users=first))
        actuator.cycle(snapshot)
        actuator.apply(NodePolicy(version=2, users=second))
        actuator.cycle(snapshot)
        actuator.cycle(snapshot)
    for pid in sent:
        p = by_pid[pid]
        assert p.identity.uid >= MIN_UID and p.identity.uid != 0
        assert NAMES[p.identity.uid] not in protected
        assert pid not in changed
    if dry_run:
        assert sent == []
    event(f"signals sent: {'some' if sent else 'none'}")


def test_only_users_leaves_everyone_else_alone() -> None:
    """gpuacct-stack --demo enforces on its demo users only: another local user's process is
    never signalled, whatever the policy or the environment says."""
    sent: list[int] = []
    signaller = Signaller(MIN_UID, [], False, open_pid=lambda pid: pid,
                          identity=lambda pid: (pid * 10, 1001 if pid == 2 else 1000),
                          deliver=lambda fd, sig: sent.append(fd), close=lambda fd: None,
                          user_name=NAMES.get, only_users=["ann"])
    assert signaller.refusal(1000) is None
    assert signaller.refusal(1001) == "ben is not one of exporter.only_users"
    assert signaller.send(Target(2, 20, 1001, "train"), 15)[0] == "refused"
    assert signaller.send(Target(1, 10, 1000, "train"), 15)[0] == "ok"
    assert sent == [1]
