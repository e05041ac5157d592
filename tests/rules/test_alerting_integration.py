"""The real rule files in the real Prometheus, fed by the billing engine's real /metrics, and the
real Alertmanager delivering to a local webhook standing in for the enforcer.

Durations are compressed 60-fold (minutes become seconds) by stack.alerting.compress_time,
applied to the real files; nothing else about them changes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledger import Ledger
from stack.alerting import RULES_DIR, compress_time, render_alertmanager, rule_files
from stack.process import ManagedProcess, free_port
from tests.fixtures.servers import RUNNING, Server, Webhooks, wait_for

pytestmark = pytest.mark.integration
FACTOR = 60
TOKEN = "token-for-the-enforcer"


def firing(hooks: Webhooks, status: str = "firing") -> set[tuple[str, str]]:
    return {(a["labels"]["user"], a["labels"]["alertname"])
            for hook in hooks.received for a in hook["body"]["alerts"] if a["status"] == status}


def alerting_rig(tmp_path: Path, balances: dict[str, int], start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server], webhook_receiver: Webhooks,
        factor: int = FACTOR) -> tuple[ManagedProcess, Path, Server]:
    """A billing engine serving these balances, the real rules (compressed `factor`-fold) in
    a real Prometheus scraping it, and Alertmanager delivering to the webhook receiver: the
    engine, its config and Prometheus."""
    ledger_path = tmp_path / "ledger.sqlite3"
    ledger = Ledger(ledger_path)
    with ledger.batch():
        for user, balance in balances.items():
            ledger.open_account(user, Decimal(balance), time.time())
    ledger.close()
    config = tmp_path / "gpuacct.yaml"
    port = free_port()
    config.write_text(yaml.safe_dump({"billing": {
        "ledger": str(ledger_path), "prometheus_url": f"http://127.0.0.1:{free_port()}"}}))
    engine = ManagedProcess("billing", [sys.executable, "-m", "billing_engine", "--config",
                                        str(config), "run", "--web.listen-address",
                                        f"127.0.0.1:{port}"],
                            tmp_path / "billing.log", f"http://127.0.0.1:{port}/metrics")
    RUNNING.append(engine)
    engine.start().wait_ready()
    token = tmp_path / "webhook-token"
    token.write_text(TOKEN + "\n")
    am = start_alertmanager(compress_time(render_alertmanager(
        RULES_DIR / "alertmanager.yml", webhook_receiver.url, token, {}), factor))
    compressed = []
    for path in rule_files():
        out = tmp_path / path.name
        out.write_text(yaml.safe_dump(compress_time(yaml.safe_load(path.read_text()), factor)))
        compressed.append(str(out))
    prometheus = start_prometheus(
        [{"job_name": "gpuacct-billing", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
        interval="1s", extra={"rule_files": compressed, "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [am.url.removeprefix("http://")]}]}]}})
    return engine, config, prometheus


def test_balances_become_enforcement_webhooks_and_a_recharge_resolves_them(
        tmp_path: Path, start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server],
        webhook_receiver: Webhooks) -> None:
    engine, config, _ = alerting_rig(tmp_path, {"alice": 20, "bob": 5, "carol": -1, "dan": 500},
                            start_prometheus, start_alertmanager, webhook_receiver)
    try:
        tiers = {
            ("alice", "GpuacctBalanceLow"),
            ("bob", "GpuacctBalanceLow"), ("bob", "GpuacctBalanceLimitedBlockGpu"),
            ("bob", "GpuacctBalanceLimitedThrottleCpu"),
            ("carol", "GpuacctBalanceLow"), ("carol", "GpuacctBalanceLimitedBlockGpu"),
            ("carol", "GpuacctBalanceLimitedThrottleCpu"),
            ("carol", "GpuacctBalanceExhaustedBlockGpu"),
            ("carol", "GpuacctBalanceExhaustedThrottleCpu"),
            ("carol", "GpuacctBalanceExhaustedKillNotice"),
            ("carol", "GpuacctBalanceExhaustedKillGpu"),  # after 10 (compressed) seconds
        }
        wait_for(lambda: firing(webhook_receiver) >= tiers, timeout=60,
                 what=f"every tier's webhook; got {firing(webhook_receiver)}")
        assert firing(webhook_receiver) == tiers  # dan, well above every threshold: nothing

        for hook in webhook_receiver.received:
            assert hook["auth"] == f"Bearer {TOKEN}"
            body = hook["body"]
            assert body["version"] == "4"
            assert body["receiver"] == "enforcer"
            assert set(body["groupLabels"]) == {"alertname", "user"}
            for alert in body["alerts"]:
                labels = alert["labels"]
                assert labels["action"] in ("notify", "block", "throttle", "kill")
                assert set(alert["annotations"]) == {"summary", "description", "runbook_url"}
                assert alert["fingerprint"] and alert["startsAt"]
                if labels["action"] == "throttle":
                    assert labels["cpu_quota_percent"] == (
                        "50" if labels["tier"] == "limited" else "10")
        kill = next(a for h in webhook_receiver.received for a in h["body"]["alerts"]
                    if a["labels"]["alertname"] == "GpuacctBalanceExhaustedKillGpu")
        assert kill["labels"] == {"alertname": "GpuacctBalanceExhaustedKillGpu", "user": "carol",
                                  "account": "carol", "action": "kill", "tier": "exhausted",
                                  "severity": "critical"}
        assert kill["annotations"]["description"].startswith(
            "carol's balance has been exhausted for 10 minutes (-1 left)")

        # A recharge through the operator's CLI: carol's alerts resolve, and say so.
        recharge = subprocess.run(
            [sys.executable, "-m", "billing_engine", "--config", str(config), "recharge",
             "carol", "1000", "--reason", "grant"], capture_output=True, text=True)
        assert recharge.returncode == 0, recharge.stderr
        carol = {t for t in tiers if t[0] == "carol"}
        wait_for(lambda: firing(webhook_receiver, "resolved") >= carol, timeout=60,
                 what=f"carol's alerts resolved; got {firing(webhook_receiver, 'resolved')}")
        assert {u for u, _ in firing(webhook_receiver, "resolved")} == {"carol"}
    finally:
        engine.stop()
        RUNNING.remove(engine)


def test_enforcement_holds_through_a_billing_outage(
        tmp_path: Path, start_prometheus: Callable[..., Server],
        start_alertmanager: Callable[[dict[str, Any]], Server],
        webhook_receiver: Webhooks) -> None:
    """gpuacct-billing stopped for 20 (compressed) minutes: bob stays blocked, and the operator
    is alerted (GpuacctBillingDown); an hour after the last scrape, the tiers lift. Compressed
    120-fold: a minute is half a second, the hour 30 s."""
    engine, _, prometheus = alerting_rig(tmp_path, {"bob": 5}, start_prometheus, start_alertmanager,
                                webhook_receiver, factor=120)
    try:
        block = ("bob", "GpuacctBalanceLimitedBlockGpu")
        wait_for(lambda: block in firing(webhook_receiver), timeout=60, what="bob's block")

        engine.stop()
        stopped = time.monotonic()
        wait_for(lambda: "GpuacctBillingDown" in alerts(prometheus, "firing"), timeout=30,
                 what="the operator's alert that billing is down")
        while time.monotonic() - stopped < 10:  # 20 minutes, compressed
            assert block in alerts_by_user(prometheus), "bob's block lifted while billing was away"
            time.sleep(0.5)
        assert block not in firing(webhook_receiver, "resolved")
        # An hour (compressed: 30 s) after the last scrape, what was held lifts.
        wait_for(lambda: block in firing(webhook_receiver, "resolved"), timeout=60,
                 what="bob's block to lift an hour after billing went away")
        assert time.monotonic() - stopped >= 27
    finally:
        engine.stop()
        RUNNING.remove(engine)


def prometheus_alerts(prometheus: Server) -> list[dict[str, Any]]:
    with urllib.request.urlopen(f"{prometheus.url}/api/v1/alerts", timeout=10) as answer:
        found: list[dict[str, Any]] = json.load(answer)["data"]["alerts"]
    return found


def alerts(prometheus: Server, state: str) -> set[str]:
    return {a["labels"]["alertname"] for a in prometheus_alerts(prometheus)
            if a["state"] == state}


def alerts_by_user(prometheus: Server) -> set[tuple[str, str]]:
    return {(a["labels"]["user"], a["labels"]["alertname"]) for a in prometheus_alerts(prometheus)
            if a["state"] == "firing" and "user" in a["labels"]}
