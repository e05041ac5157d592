"""`gpuacct-balance` and the login hook, run as a real test user, numbers from a real Prometheus,
enforcement from the hook file the actuator writes."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from exporter.enforce.hookfile import write_hook
from gpuacct.policy import Reason, UserPolicy
from tests.fixtures.servers import Server, promql, wait_for
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]





def run_as(user: UnixUser, argv: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=[], cwd="/tmp",
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env},
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_balance_and_hook_show_the_state_and_its_reason(
        shared_dir: Path, test_users: dict[str, UnixUser],
        start_prometheus: Callable[..., Server],
        static_metrics: Callable[[str], str], installed_gpuacct: Path) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    balance = str(installed_gpuacct / "bin" / "gpuacct-balance")
    target = static_metrics(
        f'gpuacct_account_balance{{user="{alice.name}"}} 7.5\n'
        f'gpuacct_account_balance{{user="{bob.name}",account="vision-lab"}} 250\n'
        + "".join(f'gpuacct_account_threshold{{user="{u}",tier="{t}"}} {v}\n'
                  for u in (alice.name, bob.name)
                  for t, v in (("warning", 100), ("limited", 10), ("exhausted", 0)))
        + f'user:gpuacct_cost_per_hour:rate1h{{user="{alice.name}"}} 3\n'
        + f'user:gpuacct_seconds_until_exhausted:rate1h{{user="{alice.name}"}} 9000\n'
        + "".join(f'gpuacct_account_week_{name}{{user="{alice.name}"}} {v}\n'
                  for name, v in (("gpu_seconds", 36000), ("gpu_idle_seconds", 9000),
                                  ("cost", 310.5), ("idle_cost", 75.25))))
    prometheus = start_prometheus([{"job_name": "billing", "static_configs": [
        {"targets": [target]}]}])
    wait_for(lambda: promql(prometheus.url, "user:gpuacct_cost_per_hour:rate1h"))
    hooks = shared_dir / "hooks"
    write_hook(hooks, alice.name, alice.uid, UserPolicy(
        block=True, cpu_quota_percent=50, reasons=(
            Reason(alert="GpuacctBalanceLimitedBlockGpu", action="block",
                   summary=f"{alice.name} may start no new GPU work"),)), False, time.time())
    config = shared_dir / "gpuacct.yaml"
    config.write_text(yaml.safe_dump({"client": {"prometheus_url": prometheus.url},
                                      "exporter": {"actuator": {"hook_dir": str(hooks)}}}))
    config.chmod(0o644)
    env = {"GPUACCT_CONFIG": str(config), "PATH": f"{installed_gpuacct / 'bin'}:/usr/bin:/bin"}

    full = run_as(alice, [balance], env)
    assert f"gpuacct balance for {alice.name}" in full
    assert "7.50  (tier: limited; warning below 100.00, limited below 10.00" in full
    assert "3.00 an hour over the last hour; at that rate it runs out in 2h 30m" in full
    assert "new GPU work is blocked" in full and "CPU limited to 50% of one core" in full
    assert f"why          {alice.name} may start no new GPU work" in full
    assert ("this week    10.00 GPU-hours, 2.50 of them idle-held (25%); idle cost 75.25 of "
            "310.50") in full

    hook = shared_dir / "gpuacct.sh"
    hook.write_text(run_as(alice, [balance, "--print-hook"], env))
    hook.chmod(0o644)
    greeting = run_as(alice, ["bash", "--norc", "-i", "-c", f". {hook}"], env)
    assert "gpuacct: balance 7.50 (limited), runs out in about 2h 30m: new GPU work is " \
           "blocked" in greeting
    assert f"{alice.name} may start no new GPU work" in greeting

    # Bob: well above every threshold and nothing enforced, so the hook stays silent.
    assert run_as(bob, ["bash", "--norc", "-i", "-c", f". {hook}"], env).strip() == ""
    assert "tier: ok" in run_as(bob, [balance], env)
    assert "account      vision-lab (its balance and tier are yours)" in run_as(bob, [balance], env)
    assert "account " not in full  # alice's own account: no line
    # Bob cannot read alice's hook file, nor ask for her balance.
    assert (hooks / f"{alice.name}.json").stat().st_mode & 0o077 == 0
    denied = subprocess.run([balance, "--user", alice.name],
                            user=bob.uid, group=bob.gid, extra_groups=[], env=env,
                            capture_output=True, text=True, timeout=30)
    assert denied.returncode == 2 and "only root" in denied.stderr


def test_balance_says_so_when_prometheus_is_away(shared_dir: Path,
                                                 test_users: dict[str, UnixUser],
                                                 installed_gpuacct: Path) -> None:
    balance = str(installed_gpuacct / "bin" / "gpuacct-balance")
    config = shared_dir / "gpuacct.yaml"
    config.write_text(yaml.safe_dump({"client": {"prometheus_url": "http://127.0.0.1:9",
                                                 "timeout_seconds": 1},
                                      "exporter": {"actuator": {"hook_dir": str(shared_dir)}}}))
    config.chmod(0o644)
    out = run_as(test_users["carol"], [balance],
                 {"GPUACCT_CONFIG": str(config)})
    assert "balance unknown" in out and "enforced     nothing" in out
