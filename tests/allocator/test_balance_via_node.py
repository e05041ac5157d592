"""A user's balance reaches them through their node's daemon, which already talks to the
control plane: `gpuacct balance` on a node that cannot reach Prometheus, as a real test user
with the installed command, gets what the control plane's Prometheus says; who asks is what
the kernel says about the socket's other end."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from stack.process import free_port
from tests.fixtures.enforcement import Cluster, wait_until
from tests.fixtures.servers import Server, promql
from tests.fixtures.users import UnixUser

pytestmark = [pytest.mark.integration, pytest.mark.root]




def test_gpuacct_balance_is_answered_by_the_control_plane_through_the_node(
        cluster: Cluster, shared_dir: Path, test_users: dict[str, UnixUser],
        installed_gpuacct: Path, static_metrics: Callable[[str], str],
        start_prometheus: Callable[..., Server]) -> None:
    carol, bob = test_users["carol"], test_users["bob"]
    public = shared_dir
    billing = static_metrics(
        f'gpuacct_account_balance{{user="{carol.name}",account="gat-lab"}} 12.5\n'
        f'gpuacct_account_threshold{{user="{carol.name}",account="gat-lab",tier="warning"}} 25\n'
        f'gpuacct_account_threshold{{user="{carol.name}",account="gat-lab",tier="limited"}} 10\n')
    prometheus = start_prometheus([{"job_name": "gpuacct-billing",
                                    "static_configs": [{"targets": [billing]}]}],
                                  interval="500ms")
    wait_until(lambda: promql(prometheus.url, "gpuacct_account_balance"), timeout=30)
    port = free_port()
    node = cluster.node("gpu01", enforcer_port=port, user_socket=str(public / "user.sock"))
    cluster.enforcer([node], port, prometheus_url=prometheus.url)
    # The node's own config names a Prometheus it cannot reach.
    config = public / "gpuacct.yaml"
    config.write_text("client:\n  prometheus_url: http://127.0.0.1:9\n"
                      f"exporter:\n  actuator:\n    user_socket: {public / 'user.sock'}\n"
                      f"    hook_dir: {public / 'hooks'}\n")
    config.chmod(0o644)

    def balance(user: UnixUser, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(installed_gpuacct / "bin" / "gpuacct"), "balance"], user=user.uid,
            group=user.gid, extra_groups=[], cwd="/", capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "GPUACCT_CONFIG": str(config), **env}, timeout=60)

    wait_until((public / "user.sock").exists, timeout=20)
    mine = balance(carol)
    assert mine.returncode == 0, mine.stderr
    assert "account      gat-lab (its balance and tier are yours)" in mine.stdout, mine.stdout
    assert "balance      12.50  (tier: warning" in mine.stdout, mine.stdout
    # bob asks the same socket: he gets his own (none), never carol's.
    his = balance(bob)
    assert his.returncode == 0 and "no account yet" in his.stdout, his.stdout
    assert "12.50" not in his.stdout
    # No daemon on this host: the command asks Prometheus itself, and says it cannot.
    alone = balance(carol, GPUACCT_SOCKET=str(public / "nowhere.sock"))
    assert alone.returncode == 0
    assert "balance unknown" in alone.stdout and "127.0.0.1:9" in alone.stdout, alone.stdout


def test_a_balance_ask_at_the_allocation_path_is_refused(cluster: Cluster) -> Any:
    """Each ask has its one path: a balance forwarded to /v1/allocation is a 400."""
    enforcer = cluster.enforcer([], allocator={})
    status, body = enforcer.forward("carol", {"op": "balance"})
    assert status == 400 and "a balance is asked at /v1/balance" in body["detail"], body
