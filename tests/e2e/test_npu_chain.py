"""An Ascend NPU node, through the whole chain: a test user's process on an NPU (read through the
DCMI backend over its fake library) is metered, priced by the NPU's model in the ledger by a real
billing engine reading a real Prometheus, and blocked and killed by the node's actuator when the
enforcer says so, as a GPU process is."""

from __future__ import annotations

import signal
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ledger import ReadOnlyLedger
from stack.process import free_port
from tests.fixtures.enforcement import Cluster, alert, notification, wait_until
from tests.fixtures.gpus import ASCEND910B, device
from tests.fixtures.ledger import sql
from tests.fixtures.servers import Server, wait_for
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.root]
NPU_PRICE = Decimal("6.00")  # a minute of an Ascend 910


def test_an_npu_process_is_priced_by_its_model_and_blocked_with_its_user(
        cluster: Cluster, start_prometheus: Any, start_billing: Any, processes: Processes,
        test_users: dict[str, UnixUser], tmp_path: Path) -> None:
    alice, bob = test_users["alice"], test_users["bob"]
    port = free_port()  # the node pulls every second: what it did reaches the audit soon
    node = cluster.node("npu01", vendor="huawei", enforcer_port=port, pull_seconds=1.0,
                        devices=[device(0, vendor="huawei"), device(1, vendor="huawei")])
    enforcer = cluster.enforcer([node], port=port)
    prometheus: Server = start_prometheus([{"job_name": "gpuacct-exporter", "static_configs": [
        {"targets": [node.exporter.base_url.removeprefix("http://")]}]}], interval="500ms")
    ledger = tmp_path / "ledger.sqlite3"
    start_billing({"billing": {
        "prometheus_url": prometheus.url, "ledger": str(ledger), "window_seconds": 1,
        "settle_seconds": 1.0,
        "prices": [{"gpu": [{"pattern": "Ascend 910", "per_minute": str(NPU_PRICE)}],
                    "other_gpu_per_minute": "0.01", "cpu_per_core_minute": "0"}]}},
        free_port())

    training = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "pangu"})
    wait_until_exec(training, "idle.py")
    node.gpus.put(0, training.pid, used_memory=30 << 30)

    def lines() -> list[tuple[str, Decimal, Decimal]]:
        if not ledger.exists():
            return []
        return [(model, Decimal(gpu), Decimal(cost)) for model, gpu, cost in sql(ledger).execute(
                'SELECT gpu_model, gpu_seconds, cost FROM usage_lines WHERE "user" = $1 AND '
                "job = 'pangu' AND CAST(gpu_seconds AS DOUBLE PRECISION) > 0", (alice.name,))]
    found = wait_for(lambda: len(lines()) >= 3 and lines(), timeout=30,
                     what="three billed windows of the NPU job")
    for model, seconds, cost in found:
        assert model == ASCEND910B
        assert cost == (seconds * NPU_PRICE / 60).quantize(Decimal("0.000001"))
    usage = ReadOnlyLedger(ledger).usage_by_job(alice.name, 0)
    assert [(u.job, u.gpu_model) for u in usage] == [("pangu", ASCEND910B)]

    # Blocked: alice's running NPU job is spared, a new one is stopped; bob is not touched.
    status, _ = enforcer.post_alerts(notification(
        alert(alice.name, "block", "GpuacctBalanceLimitedBlockGpu")))
    assert status == 200
    wait_until(lambda: (node.hook(alice.name) or {}).get("block"))
    late = processes.python(alice, "idle.py", env={"GPUACCT_JOB": "pangu-2"})
    bobs = processes.python(bob, "idle.py", env={"GPUACCT_JOB": "bob-npu"})
    for proc, npu in ((late, 1), (bobs, 1)):
        wait_until_exec(proc, "idle.py")
        node.gpus.put(npu, proc.pid)
    assert late.wait(timeout=10) == -signal.SIGTERM
    time.sleep(0.5)
    assert training.poll() is None and bobs.poll() is None

    # Killed: her running NPU work is stopped too.
    status, _ = enforcer.post_alerts(notification(
        alert(alice.name, "kill", "GpuacctBalanceExhaustedKillGpu")))
    assert status == 200
    assert training.wait(timeout=15) == -signal.SIGTERM
    assert bobs.poll() is None

    def done() -> set[tuple[str, str]]:  # what the node reported back, as the audit has it
        return {(e["action"], e["result"]) for e in enforcer.audit(alice.name)
                if e["node"] == "npu01"}
    wait_for(lambda: {("block", "ok"), ("kill", "ok")} <= done(), timeout=30,
             what="the node's block and kill in the audit")
