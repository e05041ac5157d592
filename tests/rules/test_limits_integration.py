"""Usage limits and idle-GPU holding end to end: the real Prometheus evaluates gpuacct's own
rules (times compressed) over enforcing exporters on fake GPUs and the limit as the billing
engine exposes it; the real Alertmanager delivers to the real enforcer; the nodes act on real
processes of test users.

With a limit of 2 GPUs, alice's two GPU processes (one per node) run on; a third is stopped at
once and she is told; when one of the two ends she is back under the limit and the block lifts.
A Unix group's limit of 2 GPUs blocks each member once the members together are on 2, and
nobody else. A process holding 2 GiB at 0% is told once and, on a node that stops idle
holders, stopped; one at 50% is never flagged.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from stack.alerting import RULES_DIR, compress_time, render_alertmanager, rule_files
from stack.process import free_port
from tests.fixtures.enforcement import (
    TOKEN,
    Cluster,
    Enforcer,
    EnforcingNode,
    alert,
    notification,
    wait_until,
)
from tests.fixtures.gpus import GIB
from tests.fixtures.scenarios import gpu_job as start_gpu_job
from tests.fixtures.servers import Server
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.integration, pytest.mark.root]
SAMPLING = 0.25  # the nodes' sampling interval (Cluster.node)
EVALUATION_MS = 500  # Prometheus' scrape and rule evaluation interval
EVALUATION = EVALUATION_MS / 1000


def policy_chain(tmp_path: Path, nodes: list[EnforcingNode], billing: str, cluster: Cluster,
                 start_prometheus: Callable[..., Server],
                 start_alertmanager: Callable[[dict[str, Any]], Server],
                 alertmanager_speed: int = 60, **enforcer_config: Any
                 ) -> tuple[Enforcer, Server]:
    """The enforcer for `nodes` (with `enforcer_config`), Alertmanager, and Prometheus on the
    nodes and `billing` with every rule file, all times divided by 60 (Alertmanager's by
    `alertmanager_speed`); the enforcer and Prometheus."""
    enforcer = cluster.enforcer(nodes, **enforcer_config)
    token = tmp_path / "token"
    token.write_text(TOKEN)
    am = start_alertmanager(compress_time(render_alertmanager(
        RULES_DIR / "alertmanager.yml", f"{enforcer.url}/v1/alerts", token, {}),
        alertmanager_speed))
    rules = []
    for path in rule_files():
        fast = tmp_path / path.name
        fast.write_text(yaml.safe_dump(compress_time(yaml.safe_load(path.read_text()), 60)))
        rules.append(str(fast))
    prometheus = start_prometheus([
        {"job_name": "gpuacct-exporter", "honor_labels": True, "static_configs": [
            {"targets": [f"127.0.0.1:{n.exporter.port}" for n in nodes]}]},
        {"job_name": "gpuacct-billing", "static_configs": [{"targets": [billing]}]}],
        interval=f"{EVALUATION_MS}ms", extra={
            "rule_files": rules,
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [am.url.removeprefix("http://")]}]}]}})
    return enforcer, prometheus


def gpu_job(processes: Processes, user: UnixUser, node: EnforcingNode, gpu: int,
            **on_gpu: Any) -> Any:
    return start_gpu_job(processes, node.gpus, user, None, gpu, script="train.py", args=("600",),
                         **on_gpu)


def test_a_gpu_limit_blocks_the_next_gpu_process_and_lifts_below_it(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server]) -> None:
    alice = test_users["alice"]
    nodes = [cluster.node("gpu01"), cluster.node("gpu02")]
    billing = static_metrics(f'gpuacct_limit{{user="{alice.name}",resource="gpus"}} 2\n')
    enforcer, _ = policy_chain(tmp_path, nodes, billing, cluster, start_prometheus,
                            start_alertmanager)

    def blocked(node: EnforcingNode) -> bool:
        hook = node.hook(alice.name)
        return bool(hook and hook["block"])

    first = gpu_job(processes, alice, nodes[0], 0)
    second = gpu_job(processes, alice, nodes[1], 0)
    wait_until(lambda: all(blocked(n) for n in nodes), timeout=30)  # at the limit
    [reason] = nodes[0].hook(alice.name)["reasons"]  # type: ignore[index]
    assert reason["alert"] == "GpuacctGpuLimitReached"
    assert "on 2 GPUs; the limit is 2" in reason["description"]

    started = time.monotonic()
    third = gpu_job(processes, alice, nodes[0], 1)
    wait_until(lambda: third.poll() is not None, timeout=10)
    took = time.monotonic() - started
    assert took <= EVALUATION + SAMPLING + 1.0, f"the third GPU process ran {took:.2f}s"
    assert first.poll() is None and second.poll() is None  # the first two run on
    nodes[0].gpus.remove(third.pid)

    # One of the two ends: under the limit, the block lifts on both nodes.
    second.kill()
    second.wait()
    nodes[1].gpus.remove(second.pid)
    wait_until(lambda: not any(blocked(n) for n in nodes), timeout=30)
    # What gpu01 did reached the audit with its answer to the push that lifted the block.
    wait_until(lambda: any(e["node"] == "gpu01" and e["action"] == "terminate"
                           and e["result"] == "ok" for e in enforcer.audit(alice.name)), 10)
    again = gpu_job(processes, alice, nodes[1], 1)
    time.sleep(1.0)  # four sampling cycles: it is not stopped
    assert again.poll() is None and first.poll() is None


def test_a_new_users_gpu_limit_holds_from_the_first_process_at_the_node(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server],
        start_billing: Callable[[dict[str, Any], int], object]) -> None:
    """carol has never been billed and may use 1 GPU. Her node has her allowance from the
    enforcer and decides at the moment a GPU process appears, not after an alert's round trip
    (Alertmanager here at a tenth of its times: group_wait 3 s, group_interval 30 s): a second
    GPU is stopped within a sampling interval; when the first process ends, the next starts and
    is left alone while the limit's alert still fires; after a block lifts, of two processes
    ten seconds apart the second is stopped within a sampling interval."""
    carol = test_users["carol"]
    limits = {"user_limits": {carol.name: {"gpus": 1}}}
    billing, port = free_port(), free_port()
    node = cluster.node("gpu01", enforcer_port=port, pull_seconds=1)
    enforcer, _ = policy_chain(tmp_path, [node], f"127.0.0.1:{billing}", cluster,
                               start_prometheus, start_alertmanager, alertmanager_speed=10,
                               port=port, sections={"billing": limits})
    start_billing({"billing": {"ledger": str(tmp_path / "ledger.sqlite3"),
                               "prometheus_url": "http://127.0.0.1:9", **limits}}, billing)
    state = tmp_path / "gpu01" / "actuator.json"
    wait_until(lambda: carol.name in json.loads(state.read_text())["allowances"]["users"]
               if state.exists() else False, timeout=30)

    def reasons() -> set[str]:
        hook = node.hook(carol.name)
        return {r["alert"] for r in hook["reasons"]} if hook else set()

    def stopped_for_allowance(pid: int) -> list[dict[str, Any]]:
        return [e for e in enforcer.audit(carol.name) if e["action"] == "terminate"
                and e["alert"] == "allowance" and f"pid {pid} " in e["detail"] + " "]

    def second_gpu_is_stopped(first: Any, gpu: int) -> None:
        started = time.monotonic()
        second = gpu_job(processes, carol, node, gpu)
        wait_until(lambda: second.poll() is not None, timeout=10)
        took = time.monotonic() - started
        assert took <= SAMPLING + 1.0, f"the second GPU process ran {took:.2f}s"
        node.gpus.remove(second.pid)
        wait_until(lambda: stopped_for_allowance(second.pid), timeout=15)
        assert first.poll() is None  # the first runs on

    first = gpu_job(processes, carol, node, 0)
    second_gpu_is_stopped(first, 1)
    wait_until(lambda: "GpuacctGpuLimitReached" in reasons(), timeout=30)  # the record
    assert node.hook(carol.name)["block"] is False  # type: ignore[index]

    # The first ends; the next starts at once and is not signalled, though the alert fires on.
    first.kill()
    first.wait()
    node.gpus.remove(first.pid)
    third = gpu_job(processes, carol, node, 1)
    assert "GpuacctGpuLimitReached" in reasons()
    time.sleep(2.0)  # eight sampling cycles
    assert third.poll() is None
    assert not [e for e in enforcer.audit(carol.name) if e["action"] == "terminate"
                and f"pid {third.pid} " in e["detail"] + " "]
    third.kill()
    third.wait()
    node.gpus.remove(third.pid)

    # A block (her balance) lifts; then two processes ten seconds apart: the second stops.
    block = alert(carol.name, "block", "GpuacctBalanceLimitedBlockGpu")
    assert enforcer.post_alerts(notification(block))[0] == 200
    wait_until(lambda: (node.hook(carol.name) or {}).get("block"), timeout=15)
    assert enforcer.post_alerts(notification({**block, "status": "resolved"}))[0] == 200
    wait_until(lambda: not (node.hook(carol.name) or {}).get("block"), timeout=15)
    fourth = gpu_job(processes, carol, node, 0)
    time.sleep(10.0)
    second_gpu_is_stopped(fourth, 1)


def test_a_groups_gpu_limit_blocks_every_member_and_nobody_else(
        tmp_path: Path, cluster: Cluster, processes: Processes, lab_group: str,
        test_users: dict[str, UnixUser], start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server],
        start_billing: Callable[[dict[str, Any], int], object]) -> None:
    """gat-lab (alice and carol, a real Unix group) may use 2 GPUs at once; the real billing
    engine names its members from NSS. alice on one node and carol on the other reach it: a
    third process of either is stopped; bob, not a member, starts what he likes."""
    alice, bob, carol = (test_users[n] for n in ("alice", "bob", "carol"))
    nodes = [cluster.node("gpu01"), cluster.node("gpu02")]
    port = free_port()
    policy_chain(tmp_path, nodes, f"127.0.0.1:{port}", cluster, start_prometheus,
                 start_alertmanager)
    start_billing({"billing": {
        "ledger": str(tmp_path / "ledger.sqlite3"), "prometheus_url": "http://127.0.0.1:9",
        "group_limits": {lab_group: {"gpus": 2}}}}, port)
    mine = gpu_job(processes, alice, nodes[0], 0)
    hers = gpu_job(processes, carol, nodes[1], 0)
    wait_until(lambda: all(nodes[0].hook(u.name) for u in (alice, carol)), timeout=30)
    [reason] = nodes[0].hook(carol.name)["reasons"]  # type: ignore[index]
    assert reason["alert"] == "GpuacctGroupGpuLimitReached"
    assert f"members of {lab_group} are on 2 GPUs together" in reason["description"]
    third = gpu_job(processes, carol, nodes[0], 1)
    his = gpu_job(processes, bob, nodes[1], 1)
    wait_until(lambda: third.poll() is not None, timeout=10)
    time.sleep(1.0)  # four sampling cycles: bob's runs on, as do the first two
    assert his.poll() is None and mine.poll() is None and hers.poll() is None
    assert nodes[0].hook(bob.name) is None
    # (The node's report reaches the audit with its next answer; its own count is there.)
    assert 'gpuacct_enforcement_actions_total{action="terminate",result="ok"} 1.0' in \
        nodes[0].exporter.scrape()


def test_a_gpu_held_idle_is_told_once_then_stopped_and_a_busy_one_never(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server]) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    node = cluster.node("gpu01", idle={"after_seconds": 2, "action": "stop",
                                       "action_after_seconds": 6})
    enforcer, _ = policy_chain(tmp_path, [node], static_metrics(""), cluster, start_prometheus,
                            start_alertmanager)
    started = time.monotonic()
    idle = gpu_job(processes, alice, node, 0, used_memory=2 * GIB, sm_util=0)
    busy = gpu_job(processes, bob, node, 1, used_memory=2 * GIB, sm_util=50)

    def told(user: UnixUser) -> list[dict[str, Any]]:
        return [e for e in enforcer.audit(user.name) if e["node"] == "gpu01"
                and e["action"] == "notify" and e["alert"] == "GpuacctGpuIdleHolding"]

    wait_until(lambda: told(alice), timeout=30)
    assert "holds GPU 0 on" in told(alice)[0]["detail"]
    wait_until(lambda: idle.poll() is not None, timeout=30)
    # Idle-holding 2 s after it began (a streak starts at the sample before the one that saw
    # it: up to one sampling interval early), stopped 6 s after that.
    assert time.monotonic() - started >= 2 + 6 - SAMPLING
    # (Its report reaches the audit with the node's next answer; its own count is there now.)
    assert 'gpuacct_enforcement_actions_total{action="terminate",result="ok"} 1.0' in \
        node.exporter.scrape()
    node.gpus.remove(idle.pid)
    time.sleep(6)  # past a (compressed) repeat of the notification: told once, not again
    assert len(told(alice)) == 1
    assert busy.poll() is None and told(bob) == []
    assert 'gpuacct_job_gpu_idle_seconds_total{gpu="1"' not in node.exporter.scrape()


@pytest.mark.alone  # measures the CPU the kernel gives: a core to itself
def test_a_cpu_limit_throttles_on_the_real_cgroup_controller(
        tmp_path: Path, cluster: Cluster, processes: Processes,
        test_users: dict[str, UnixUser], static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server]) -> None:
    alice = test_users["alice"]
    node = cluster.node("gpu01", cpu_limiter="auto")
    billing = static_metrics(f'gpuacct_limit{{user="{alice.name}",resource="cpu_cores"}} 0.5\n')
    policy_chain(tmp_path, [node], billing, cluster, start_prometheus, start_alertmanager)
    busy = processes.python(alice, "train.py", "600")  # one core, flat out
    wait_until_exec(busy, "train.py")
    quota = f'gpuacct_node_user_cpu_quota_ratio{{user="{alice.name}"}} 0.5'
    wait_until(lambda: quota in node.exporter.scrape(), timeout=30)
    [reason] = node.hook(alice.name)["reasons"]  # type: ignore[index]
    assert reason["alert"] == "GpuacctCpuLimitReached" and reason["cpu_quota_percent"] == 50
    # The kernel holds her to it: about half a core over the next two seconds.
    before = Path(f"/proc/{busy.pid}/stat").read_text().rsplit(")", 1)[1].split()
    time.sleep(2)
    after = Path(f"/proc/{busy.pid}/stat").read_text().rsplit(")", 1)[1].split()
    used = (sum(map(int, after[11:13])) - sum(map(int, before[11:13]))) / os.sysconf(
        "SC_CLK_TCK") / 2
    assert 0.3 <= used <= 0.7, f"{used:.2f} cores under a 50% quota"
