"""The node actuator on real processes of real test users, GPUs from the fake NVML."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from exporter.enforce.actuator import Actuator
from exporter.enforce.collector import ActuatorCollector
from exporter.enforce.signals import Signaller, tell_user
from exporter.enforce.throttle import CgroupLimiter, CpuLimiter
from gpuacct.config import ActuatorSettings
from gpuacct.policy import NodePolicy, Reason, UserPolicy
from tests.exporter.conftest import Node
from tests.fixtures.gpus import FakeGpus, device
from tests.fixtures.scenarios import gpu_job
from tests.fixtures.servers import wait_for
from tests.fixtures.users import SCRIPTS, Processes, UnixUser, wait_until_exec

pytestmark = pytest.mark.root
Users = dict[str, UnixUser]
BLOCK = Reason(alert="GpuacctBalanceLimitedBlockGpu", action="block", summary="no new GPU work")
KILL = Reason(alert="GpuacctBalanceExhaustedKillGpu", action="kill", summary="out of money")


class Rig:
    def __init__(self, node: Node, tmp_path: Path, limiter: CpuLimiter | None = None,
                 **settings: Any) -> None:
        self.node, self.tmp_path, self.limiter = node, tmp_path, limiter
        self.settings = ActuatorSettings(state_file=tmp_path / "actuator.json",
                                         hook_dir=tmp_path / "hooks", kill_grace_seconds=1.0,
                                         **settings)
        self.told: list[tuple[int, str]] = []
        self.actuator = self.restart()
        self.version = 0

    def restart(self) -> Actuator:
        """A new actuator on the same state file: what the exporter does after a restart."""
        def tell(uid: int, text: str) -> int:
            self.told.append((uid, text))
            return tell_user(uid, text)

        self.actuator = Actuator(self.settings, "test-node",
                                 Signaller(1000, self.settings.protected_users,
                                           self.settings.dry_run),
                                 self.limiter, lambda: self.node.sampler.snapshot, tell=tell)
        return self.actuator

    def apply(self, **users: UserPolicy) -> None:
        self.version += 1
        assert self.actuator.apply(NodePolicy(version=self.version, users=users))

    def cycle(self) -> None:
        self.node.cycle()
        self.actuator.cycle(self.node.sampler.snapshot)

    def results(self, action: str) -> list[str]:
        return [r.result for r in self.actuator.reports.queued if r.action == action]


@pytest.fixture
def actuator_rig(make_node: Callable[..., Node], tmp_path: Path,
        test_users: Users) -> Iterator[Callable[..., Rig]]:
    def make(**settings: Any) -> Rig:
        gpus = FakeGpus([device(0), device(1)])
        node = make_node(gpus, interval_seconds=0.25)
        return Rig(node, tmp_path, **settings)
    yield make
    for user in test_users.values():  # whatever a failed test left throttled
        CgroupLimiter(Path("/sys/fs/cgroup"), 1).lift(user.uid)


def gpu_process(rig: Rig, processes: Processes, user: UnixUser, gpu: int,
                script: str = "idle.py") -> subprocess.Popen[bytes]:
    assert isinstance(rig.node.gpus, FakeGpus)
    return gpu_job(processes, rig.node.gpus, user, f"job-{gpu}", gpu, script=script)


@pytest.fixture
def terminal(test_users: Users) -> Iterator[Callable[[UnixUser], int]]:
    """A login terminal of a user: a pty whose slave is the controlling tty of their shell."""
    opened: list[tuple[int, subprocess.Popen[bytes]]] = []

    def open_for(user: UnixUser) -> int:
        master, slave = os.openpty()
        os.fchown(slave, user.uid, -1)
        shell = subprocess.Popen(["setsid", "-c", "sleep", "300"], stdin=slave, stdout=slave,
                                 stderr=slave, user=user.uid, group=user.gid, extra_groups=[])
        os.close(slave)
        opened.append((master, shell))
        return master

    yield open_for
    for master, shell in opened:
        shell.kill()
        shell.wait()
        os.close(master)


def read_terminal(master: int, timeout: float = 3.0) -> str:
    text, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            text += os.read(master, 65536)
        elif text:
            break
    return text.decode(errors="replace")


def test_block_stops_a_later_gpu_process_within_one_cycle_and_tells_the_user(
        actuator_rig: Callable[..., Rig], processes: Processes, test_users: Users,
        terminal: Callable[[UnixUser], int]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    r = actuator_rig()
    tty = terminal(alice)
    time.sleep(0.2)
    earlier = gpu_process(r, processes, alice, gpu=0)
    bobs = gpu_process(r, processes, bob, gpu=1)
    r.cycle()
    r.apply(**{alice.name: UserPolicy(block=True, reasons=(BLOCK,))})
    assert "no new GPU work" in read_terminal(tty)  # the notice
    assert r.results("block") == ["ok"]

    later = gpu_process(r, processes, alice, gpu=1)
    r.cycle()  # the first cycle that sees it
    assert later.wait(timeout=2) == -signal.SIGTERM
    message = read_terminal(tty)
    assert f"stopping your GPU processes {later.pid} (idle.py)" in message
    assert "new GPU work is blocked" in message
    time.sleep(0.3)
    assert earlier.poll() is None and bobs.poll() is None  # running before, or not blocked
    assert r.results("terminate") == ["ok"]
    hook = (r.settings.hook_dir / f"{alice.name}.json")
    assert hook.stat().st_uid == alice.uid and hook.stat().st_mode & 0o077 == 0

    # After a restart the baseline still holds: the earlier process is still spared.
    r.restart()
    again = gpu_process(r, processes, alice, gpu=0)
    r.cycle()
    assert again.wait(timeout=2) == -signal.SIGTERM
    assert earlier.poll() is None

    r.apply()  # recharged: the block lifts
    free = gpu_process(r, processes, alice, gpu=1)
    r.cycle()
    time.sleep(0.3)
    assert free.poll() is None
    assert not hook.exists()


def test_kill_terminates_gpu_process_trees_and_sigkills_after_the_grace(
        actuator_rig: Callable[..., Rig], processes: Processes, test_users: Users) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    r = actuator_rig()
    # A GPU process that ignores SIGTERM, with a child that does not.
    stubborn = processes.run(alice, ["/usr/bin/python3", "-c", (
        "import signal, subprocess, time; "
        f"subprocess.Popen(['/usr/bin/python3', '{SCRIPTS / 'idle.py'}']); "
        "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)")])
    child = None
    deadline = time.monotonic() + 10
    while child is None and time.monotonic() < deadline:
        kids = psutil.Process(stubborn.pid).children()
        child = kids[0] if kids and "idle.py" in " ".join(kids[0].cmdline()) else None
    assert child is not None
    assert isinstance(r.node.gpus, FakeGpus)
    r.node.gpus.put(0, stubborn.pid)
    bobs = gpu_process(r, processes, bob, gpu=1)
    r.cycle()
    r.apply(**{alice.name: UserPolicy(block=True, kill=True, reasons=(KILL,))})
    # The tree, not only the GPU process: the child is dead (a zombie its parent never reaps).
    wait_for(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE,
             timeout=2)
    assert stubborn.poll() is None  # ignored SIGTERM
    time.sleep(1.1)  # the grace
    r.cycle()
    assert stubborn.wait(timeout=2) == -signal.SIGKILL
    assert r.results("kill_after_grace") == ["ok"]
    assert bobs.poll() is None


def test_dry_run_acts_on_nothing(actuator_rig: Callable[..., Rig], processes: Processes,
                                 test_users: Users, terminal: Callable[[UnixUser], int]) -> None:
    alice = test_users["alice"]
    r = actuator_rig(dry_run=True, cpu_limiter="cgroup1",
            limiter=CgroupLimiter(Path("/sys/fs/cgroup"), 1))
    tty = terminal(alice)
    running = gpu_process(r, processes, alice, gpu=0)
    r.cycle()
    r.apply(**{alice.name: UserPolicy(block=True, kill=True, cpu_quota_percent=10,
                                      reasons=(KILL,))})
    later = gpu_process(r, processes, alice, gpu=1)
    r.cycle()
    time.sleep(1.2)
    r.cycle()
    assert running.poll() is None and later.poll() is None
    assert read_terminal(tty, timeout=0.5) == ""
    assert not Path(f"/sys/fs/cgroup/cpu/gpuacct/user-{alice.uid}").exists()
    assert {x.result for x in r.actuator.reports.queued} == {"dry_run"}
    assert {x.action for x in r.actuator.reports.queued} >= {"notify", "block", "kill", "terminate",
                                                      "throttle"}


def test_protected_users_are_never_touched(actuator_rig: Callable[..., Rig], processes: Processes,
                                           test_users: Users) -> None:
    carol = test_users["carol"]
    r = actuator_rig(protected_users=[carol.name])
    proc = gpu_process(r, processes, carol, gpu=0)
    r.cycle()
    r.apply(**{carol.name: UserPolicy(block=True, kill=True, reasons=(KILL,))})
    r.cycle()
    time.sleep(0.3)
    assert proc.poll() is None
    assert r.results("policy") == ["refused"]


def quota_ratios(r: Rig) -> dict[str, float]:
    families = ActuatorCollector(r.actuator).collect()
    return {s.labels["user"]: s.value for family in families for s in family.samples
            if s.name == "gpuacct_node_user_cpu_quota_ratio"}


def test_a_quota_no_limiter_could_apply_is_not_reported_as_in_force(
        actuator_rig: Callable[..., Rig], test_users: Users) -> None:
    bob = test_users["bob"]
    r = actuator_rig()  # a node with no CPU limiter (cpu_limiter: off, or none found)
    r.cycle()
    r.apply(**{bob.name: UserPolicy(cpu_quota_percent=50)})
    assert r.results("throttle") == ["unsupported"]
    assert quota_ratios(r) == {}


def cpu_share(pids: list[int], seconds: float = 3.0) -> float:
    """CPUs the processes used together over `seconds`."""
    procs = [psutil.Process(p) for p in pids]
    before = sum(sum(p.cpu_times()[:2]) for p in procs)
    time.sleep(seconds)
    return (sum(sum(p.cpu_times()[:2]) for p in procs) - before) / seconds


@pytest.mark.alone  # measures the CPU the kernel gives: a core to itself
def test_throttle_on_the_real_cgroup_v1_cpu_controller(
        actuator_rig: Callable[..., Rig], processes: Processes, test_users: Users) -> None:
    bob = test_users["bob"]
    r = actuator_rig(limiter=CgroupLimiter(Path("/sys/fs/cgroup"), 1))
    busy = processes.python(bob, "train.py", "120")
    wait_until_exec(busy, "train.py")
    r.cycle()
    assert cpu_share([busy.pid], 1.0) > 0.8
    r.apply(**{bob.name: UserPolicy(cpu_quota_percent=50)})
    assert quota_ratios(r) == {bob.name: 0.5}
    group = Path(f"/sys/fs/cgroup/cpu/gpuacct/user-{bob.uid}")
    assert str(busy.pid) in (group / "cgroup.procs").read_text().split()
    share = cpu_share([busy.pid])
    print(f"throttled to 50%: measured {share:.3f} CPUs")
    assert 0.4 <= share <= 0.6

    # A process started later joins the quota at the next cycle: together still 50%.
    second = processes.python(bob, "train.py", "120")
    wait_until_exec(second, "train.py")
    r.cycle()
    together = cpu_share([busy.pid, second.pid])
    print(f"two processes under 50%: measured {together:.3f} CPUs")
    assert 0.4 <= together <= 0.6

    r.apply()  # lifted
    assert not group.exists()
    lifted = cpu_share([busy.pid], 2.0)
    print(f"lifted: measured {lifted:.3f} CPUs")
    assert lifted > 0.8
