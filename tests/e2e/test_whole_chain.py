"""The whole chain on one machine, with time compressed through configuration only: alice's GPU
job on an expensive model drains her balance; she is warned, blocked and throttled, and her GPU
processes are killed; an administrator recharges her in the browser; everything lifts. Bob, on
a cheap model, is untouched. Then the queue: carol reserves the spare GPU with `gpuacct`, dave
queues for it, carol releases and dave is granted it within one push, and told. At the end the
ledger, InfluxDB and the exporter agree exactly, reserved time included.

Every gpuacct listener serves TLS from a throwaway CA, which Prometheus, Alertmanager, the
services and the browser verify; plain HTTP is refused. While alice's balance drains, the
operator rotates the node keys, the webhook token and the session secret (each step a config
change and a SIGHUP): no enforcement step is lost.

Real: Prometheus with gpuacct's rule files and Alertmanager with its config (both with every
duration divided by FACTOR, stack.alerting.compress_time), InfluxDB, gpuacct-exporter
enforcing on this machine (fake NVML listing real processes of the test users), gpuacct-billing,
gpuacct-enforcer, gpuacct-web, and Chromium."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from subprocess import Popen
from typing import Any

import psutil
import pytest
import yaml
from playwright.sync_api import expect, sync_playwright

from gpuacct.signing import node_key
from stack.alerting import RULES_DIR, compress_time, render_alertmanager, rule_files
from stack.process import ManagedProcess, free_port
from stack.servers import influx_query
from tests.billing_engine.conftest import Rig
from tests.fixtures import dashboards
from tests.fixtures.enforcement import (
    MASTER,
    TOKEN,
    Cluster,
    Enforcer,
    EnforcingNode,
    key_of,
    reconfigure,
    wait_until,
)
from tests.fixtures.gating import HAS_DEVICES_V1, make_devices, remove_group
from tests.fixtures.gpus import A100, RTX3090, device
from tests.fixtures.notices import ChatReceiver, SmtpServer
from tests.fixtures.scenarios import gpu_job as start_gpu_job
from tests.fixtures.servers import RUNNING, Server, gpuacct_scrape_configs
from tests.fixtures.tls import Tls, plain_http_fails
from tests.fixtures.users import Processes, UnixUser
from web.auth import hash_password

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.root]

FACTOR = 60  # rules and Alertmanager: 10m -> 10s, 5m -> 5s, group_wait 5s -> 83ms
EVALUATION = 1  # seconds between Prometheus' rule evaluations (and scrapes)
OPENING = Decimal(30)
THRESHOLDS = {"warning": Decimal(20), "limited": Decimal(10), "exhausted": Decimal(0)}
# Per GPU-minute: alice pays 1 a second; bob's 30 last him days, so not even the forecast
# alert (balance gone within the hour) may touch him.
PRICE = {A100: Decimal(60), RTX3090: Decimal("0.06")}
CPU_PRICE = Decimal("0.01")
RESERVED_FACTOR = Decimal("0.5")  # reserved GPU time at half the GPU's price
PASSWORD = "e2e-admin-password"
SESSION_SECRET = "e2e-session-secret"
# What the rotation replaces them with.
NEW_TOKEN, NEW_MASTER = "webhook-token-after-rotation", "node-master-key-after-rotation"
NEW_SESSION_SECRET = "e2e-session-secret-after-rotation"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


@dataclass
class Chain:
    node: EnforcingNode
    prometheus: Server
    rig: Rig
    enforcer: Enforcer
    web: ManagedProcess
    web_url: str
    started: float
    say: Callable[[str], None]  # to the terminal, also when pytest captures output
    venv: Path  # gpuacct installed from a wheel, where the test users can run it
    user_socket: Path
    smtp: SmtpServer  # where the notices by e-mail go
    chat: ChatReceiver  # and those by chat
    tls: Tls
    token_file: Path  # Alertmanager's bearer token to the enforcer
    token: str = TOKEN  # the one the test presents, until the rotation
    gating: tuple[Path, str] | None = None  # the node's GPU device nodes and its device group

    def open_in_shell(self, shell: Path) -> str:
        """What a new program started in a user's shell (`SHELL`, reading `shell`) gets when
        it opens the node's first GPU: an errno's name, or ok."""
        assert self.gating is not None
        (shell / "cmd.new").write_text(str(self.gating[0] / "nvidia0"))
        (shell / "cmd.new").replace(shell / "cmd")
        wait_until(lambda: (shell / "out").exists() and not (shell / "cmd").exists(), 10)
        result = (shell / "out").read_text()
        (shell / "out").unlink()
        return result

    def enforcer_audit(self, user: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = self.enforcer.get(f"/v1/audit?user={user}", self.token)
        return found

    def gpuacct(self, user: UnixUser, *args: str) -> str:
        """`gpuacct ARGS` run by `user` on the node."""
        done = subprocess.run([str(self.venv / "bin" / "gpuacct"), "--socket",
                               str(self.user_socket), *args], user=user.uid, group=user.gid,
                              extra_groups=[], cwd="/tmp", env={"PATH": "/usr/bin:/bin"},
                              capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def crossed(self, user: str, tier: str) -> float:
        """When Prometheus first saw the user's balance below the tier's threshold."""
        query = f'gpuacct_account_balance{{user="{user}"}}[10m]'
        url = f"{self.prometheus.url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            [series] = json.load(response)["data"]["result"]
        return next(float(t) for t, v in series["values"] if Decimal(v) < THRESHOLDS[tier])

    def node_metric(self, name: str, user: str) -> float | None:
        prefix = f'{name}{{user="{user}"}} '
        return next((float(line.removeprefix(prefix)) for line in
                     self.node.exporter.scrape().splitlines() if line.startswith(prefix)), None)


def wait(check: Callable[[], Any], what: str, timeout: float = 60.0) -> float:
    """Poll every 50 ms; the time it first held."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.05)
    return time.time()


def step(chain: Chain, text: str, at: float, since: float | None = None,
         crossing: str = "") -> None:
    elapsed = f"{at - since:6.2f} s after {crossing}" if since is not None else ""
    chain.say(f"[{at - chain.started:6.1f} s] {text:<58} {elapsed}")


@pytest.fixture
def chain(cluster: Cluster, start_prometheus: Callable[..., Server],
          start_alertmanager: Callable[[dict[str, Any]], Server], influxdb: Server,
          test_users: dict[str, UnixUser], tmp_path: Path, installed_gpuacct: Path,
          smtp_server: SmtpServer, chat_receiver: ChatReceiver, tls: Tls,
          capsys: pytest.CaptureFixture[str]) -> Iterator[Chain]:
    cluster.tls = tls
    ca = tls.certs.ca_file
    sockets = Path(tempfile.mkdtemp(prefix="gpuacct-e2e-"))
    sockets.chmod(0o755)  # the test users reach the node's socket
    enforcer_port = free_port()
    # Where the kernel allows it, the node also gates the GPUs' device nodes (made here).
    devices, group = sockets / "dev", f"gpuacct-e2e-{os.getpid()}-{time.monotonic_ns()}"
    gating: dict[str, Any] = {}
    if HAS_DEVICES_V1:
        make_devices(devices)
        gating = {"device_gating": "cgroup1", "device_root": str(devices),
                  "cgroup_group": group}
    node = cluster.node("gpu01", enforcer_port=enforcer_port,
                        devices=[device(0, name=A100), device(1, name=RTX3090),
                                 device(2, name=RTX3090)],
                        cpu_limiter="auto", kill_grace_seconds=2,
                        user_socket=str(sockets / "user.sock"), **gating)
    web_port = free_port()
    enforcer = cluster.enforcer([node], port=enforcer_port, sections={
        "web": {"public_url": f"https://127.0.0.1:{web_port}"},
        "notifications": {"channels": {
            "email": {"url": smtp_server.url(), "address": "{user}@example.org"},
            "chat": {"url": chat_receiver.url()}}, "check_interval_seconds": 0.2}})

    token = tmp_path / "webhook-token"
    token.write_text(TOKEN)
    alertmanager = start_alertmanager(compress_time(render_alertmanager(
        RULES_DIR / "alertmanager.yml", f"{enforcer.url}/v1/alerts", token, {}, ca), FACTOR))
    rules = []
    for path in rule_files():
        fast = tmp_path / path.name
        fast.write_text(yaml.safe_dump(compress_time(yaml.safe_load(path.read_text()), FACTOR)))
        rules.append(str(fast))
    billing_port = free_port()
    prometheus = start_prometheus(
        gpuacct_scrape_configs(node.exporter.port, billing_port, enforcer.port, ca),
        interval=f"{EVALUATION}s", extra={
            "rule_files": rules,
            "alerting": {"alertmanagers": [{"static_configs": [
                {"targets": [alertmanager.url.removeprefix("http://")]}]}]}})

    influx_query(influxdb.url, 'CREATE DATABASE "gpuacct"', method="POST")
    ledger = tmp_path / "ledger.sqlite3"
    config = {
        "billing": {"ledger": str(ledger), "prometheus_url": prometheus.url,
                    "window_seconds": 2, "settle_seconds": 1.2, "lease_seconds": 2,
                    "opening_balance": str(OPENING),
                    "thresholds": {k: str(v) for k, v in THRESHOLDS.items()},
                    "prices": [{"gpu": [{"pattern": "A100", "per_minute": str(PRICE[A100])},
                                        {"pattern": "RTX 3090",
                                         "per_minute": str(PRICE[RTX3090])}],
                                "cpu_per_core_minute": str(CPU_PRICE)}],
                    "reserved_price_factor": str(RESERVED_FACTOR)},
        "influxdb": {"version": 1, "url": influxdb.url, "database": "gpuacct"},
        "web": {"prometheus_url": prometheus.url, "enforcer_url": enforcer.url,
                "session_secret": SESSION_SECRET},
        "auth": {"webhook_token": TOKEN, "admin_password_hash": hash_password(PASSWORD)},
        **tls.client_config(),
    }
    config_path = tmp_path / "gpuacct.yaml"
    config_path.write_text(yaml.safe_dump(config))
    serving = ["--web.config.file", str(tls.web_config)]
    services = [
        ManagedProcess("billing", [sys.executable, "-m", "billing_engine", "--config",
                                   str(config_path), "run", "--web.listen-address",
                                   f"127.0.0.1:{billing_port}", *serving],
                       tmp_path / "billing.log", f"https://127.0.0.1:{billing_port}/metrics",
                       ready_tls=tls.context),
        ManagedProcess("web", [sys.executable, "-m", "web", "--config", str(config_path), "run",
                               "--web.listen-address", f"127.0.0.1:{web_port}", *serving],
                       tmp_path / "web.log", f"https://127.0.0.1:{web_port}/-/healthy",
                       ready_tls=tls.context),
    ]
    for service in services:
        RUNNING.append(service)
        service.start().wait_ready()
    rig = Rig(node.gpus, node.exporter, prometheus, influxdb, config, config_path,
              {u.name for u in test_users.values()})
    try:
        def say(text: str) -> None:
            with capsys.disabled():
                print(text, flush=True)

        for port, route in ((node.exporter.port, "/metrics"), (billing_port, "/metrics"),
                            (enforcer.port, "/-/healthy"), (web_port, "/-/healthy")):
            assert plain_http_fails(port, route), f"port {port} answered plain HTTP"
        yield Chain(node, prometheus, rig, enforcer, services[1],
                    f"https://127.0.0.1:{web_port}", time.time(), say, installed_gpuacct,
                    sockets / "user.sock", smtp_server, chat_receiver, tls, token,
                    gating=(devices, group) if HAS_DEVICES_V1 else None)
    finally:
        for service in services:
            service.stop()
            RUNNING.remove(service)
        node.exporter.process.stop()  # then its device groups can go
        remove_group(group)
        shutil.rmtree(sockets, ignore_errors=True)


# A user's login shell, as far as the test needs one: runs what `cmd` names (a device node) as
# a new program of its own that opens it, and writes what the open got to `out`.
SHELL = """\
import os, subprocess, sys, time
here = sys.argv[1]
program = ("import errno, os, sys\\ntry:\\n    os.open(sys.argv[1], os.O_RDWR)\\n"
           "except OSError as exc:\\n    print(errno.errorcode[exc.errno], end='')\\n"
           "    sys.exit(1)\\nprint('ok', end='')")
while True:
    cmd = os.path.join(here, "cmd")
    if os.path.exists(cmd):
        device = open(cmd).read()
        done = subprocess.run([sys.executable, "-c", program, device], capture_output=True,
                              text=True)
        with open(os.path.join(here, "out.new"), "w") as f:
            f.write(done.stdout)
        os.replace(os.path.join(here, "out.new"), os.path.join(here, "out"))
        os.unlink(cmd)
    time.sleep(0.05)
"""


def login_shell(chain: Chain, processes: Processes, user: UnixUser) -> tuple[Path, Popen[bytes]]:
    """A shell of the user's, once the node has moved it into the user's device group, and the
    folder it reads its commands from (`Chain.open_in_shell`)."""
    assert chain.gating is not None
    devices, group = chain.gating
    here = devices.parent / f"shell-{user.name}"
    here.mkdir()
    os.chown(here, user.uid, user.gid)
    shell = processes.run(user, ["/usr/bin/python3", "-c", SHELL, str(here)])
    wait_until(lambda: f":devices:/{group}/user-{user.uid}\n" in Path(
        f"/proc/{shell.pid}/cgroup").read_text(), 10)
    return here, shell


def gpu_job(chain: Chain, processes: Processes, user: UnixUser, job: str, gpu: int) -> Popen[bytes]:
    return start_gpu_job(processes, chain.node.gpus, user, job, gpu, script="train.py",
                         args=("600",))


def recharge_in_the_browser(web_url: str, user: str, amount: str, tls: Tls) -> None:
    with sync_playwright() as p:
        # Over TLS, accepting the page's certificate alone (Chromium has no CA option).
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            f"--ignore-certificate-errors-spki-list={tls.spki()}"])
        page = browser.new_page()
        page.goto(f"{web_url}/login")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Log in").click()
        expect(page).to_have_url(f"{web_url}/admin")
        page.goto(f"{web_url}/users/{user}")
        page.get_by_label("Recharge").fill(amount)
        page.locator("form[action$='/recharge'] input[name=reason]").fill("e2e top-up")
        page.get_by_role("button", name="Recharge").click()
        expect(page.get_by_role("status")).to_contain_text(f"recharge of {amount} done")
        browser.close()


def test_a_job_is_metered_billed_warned_blocked_throttled_killed_and_restored(
        chain: Chain, processes: Processes, test_users: dict[str, UnixUser],
        tmp_path: Path) -> None:
    alice, bob = test_users["alice"].name, test_users["bob"].name
    chain.say("")
    old = gpu_job(chain, processes, test_users["alice"], "big-model", gpu=0)
    bobs = gpu_job(chain, processes, test_users["bob"], "small-model", gpu=1)
    step(chain, "alice runs on an A100, bob on an RTX 3090", time.time())

    def policy() -> dict[str, Any]:
        return chain.node.hook(alice) or {}

    # Warning: told, nothing restricted.
    # (GpuacctBalanceRunningOut may notify her earlier: her burn rate is high from the start.)
    at = wait(lambda: any(r["alert"] == "GpuacctBalanceLow" for r in policy().get("reasons", [])),
              "alice's notification of a low balance")
    assert not policy()["block"] and policy()["cpu_quota_percent"] is None
    step(chain, "warning: alice is notified (hook file)", at, chain.crossed(alice, "warning"),
         "crossing warning")
    rotate_secrets(chain)
    step(chain, "node keys, webhook token, session secret rotated (SIGHUP)", time.time())

    # Limited: no new GPU work, CPU quota 50%, running work goes on.
    at = wait(lambda: policy().get("block"), "alice's block")
    crossing = chain.crossed(alice, "limited")
    step(chain, "limited: new GPU work blocked", at, crossing, "crossing limited")
    assert at - crossing <= 2 * EVALUATION, "the block took longer than two evaluations"
    at = wait(lambda: chain.node_metric("gpuacct_node_user_cpu_quota_ratio", alice) == 0.5,
              "alice's CPU quota of 50%")
    step(chain, "limited: CPU quota 50% applied", at, crossing, "crossing limited")
    new = gpu_job(chain, processes, test_users["alice"], "another", gpu=0)
    at = wait(lambda: new.poll() is not None, "alice's new GPU process to be stopped", 10)
    # SIGTERM: train.py exits 0 on it, or dies of it if it came before its handler was set.
    assert new.returncode in (0, -15) and old.poll() is None
    chain.node.gpus.remove(new.pid)
    step(chain, "limited: her new GPU process is stopped (SIGTERM)", at, crossing,
         "crossing limited")
    if chain.gating is not None:  # where the kernel gates devices, a new one never gets a GPU
        here, shell = login_shell(chain, processes, test_users["alice"])
        assert chain.open_in_shell(here) == "EPERM"
        os.killpg(shell.pid, signal.SIGKILL)  # her spending stops with her GPU work, as before
        shell.wait()
        step(chain, "limited: a new GPU program in her shell fails at start (EPERM on "
             "/dev/nvidia0); nothing to stop", time.time())

    # Exhausted: CPU quota 10%, told the kill is coming; after the rule's `for`, killed.
    at = wait(lambda: chain.node_metric("gpuacct_node_user_cpu_quota_ratio", alice) == 0.1,
              "alice's CPU quota of 10%")
    crossing = chain.crossed(alice, "exhausted")
    step(chain, "exhausted: CPU quota 10%", at, crossing, "crossing exhausted")
    # The notice is an alert of its own: Alertmanager groups by alert name, so it may reach the
    # node a moment after the quota.
    at = wait(lambda: any(r["alert"] == "GpuacctBalanceExhaustedKillNotice"
                          for r in policy().get("reasons", [])),
              "alice's notice that her GPU processes will be stopped", 2 * EVALUATION + 2)
    step(chain, "exhausted: told her GPU processes will be stopped", at, crossing,
         "crossing exhausted")
    at = wait(lambda: old.poll() is not None, "alice's running GPU process to be killed", 60)
    assert old.returncode == 0  # SIGTERM (train.py exits 0 on it), long before its 600 s
    chain.node.gpus.remove(old.pid)
    step(chain, "exhausted for 10 min (10 s): running GPU process killed", at, crossing,
         "crossing exhausted")
    assert at - crossing >= 600 / FACTOR

    # An administrator recharges her in the browser; everything lifts.
    recharge_in_the_browser(chain.web_url, alice, "100.00", chain.tls)
    recharged = time.time()
    step(chain, "admin recharges alice 100.00 on the web page", recharged)
    at = wait(lambda: chain.node.hook(alice) is None, "alice's restrictions to lift", 30)
    assert chain.node_metric("gpuacct_node_user_blocked", alice) in (None, 0.0)
    assert chain.node_metric("gpuacct_node_user_cpu_quota_ratio", alice) is None
    step(chain, "alerts resolved: block and quota lifted", at, recharged, "the recharge")
    again = gpu_job(chain, processes, test_users["alice"], "resumed", gpu=0)
    time.sleep(3)  # a dozen sampling cycles: it is not stopped
    assert again.poll() is None
    step(chain, "a new GPU process of hers runs", time.time())
    told_by_mail_and_chat(chain, alice, recharged)

    # The queue: carol reserves the spare RTX 3090, dave queues for it; carol releases and dave
    # is granted it within one push, and told on his terminals.
    carol, dave = test_users["carol"], test_users["dave"]
    out = chain.gpuacct(carol, "reserve", "1", "--for", "1h", "--gpus", "2")
    assert out.startswith("granted: reservation 1, GPU 2 on gpu01"), out
    out = chain.gpuacct(dave, "reserve", "1", "--for", "30m", "--gpus", "2")
    assert out.startswith("queued: request 2, position 1, estimated start"), out
    step(chain, "carol reserves GPU 2 (gpuacct); dave queues: position 1", time.time())
    released = time.time()
    chain.gpuacct(carol, "release")
    granted = f'gpuacct_gpu_reserved{{gpu="2",user="{dave.name}"}} 1.0'
    at = wait(lambda: granted in chain.node.exporter.scrape(), "dave's grant on the node", 10)
    step(chain, "carol releases: dave is granted GPU 2 on the node", at, released,
         "the release")
    # Pushed, not pulled (the node pulls every 60 s): the time includes the release command's
    # own start-up, which a loaded 2-core machine has seen take most of a second.
    assert at - released < 3.0, "the grant took more than a push to reach the node"
    at = wait(lambda: any(e["action"] == "notify" and e["alert"] == "reservation"
                          and "is granted" in e["detail"]
                          for e in chain.enforcer_audit(dave.name)), "dave to be told", 10)
    step(chain, "dave is told on his terminals", at, released, "the release")
    at = wait(lambda: any("is granted" in m.subject for m in chain.smtp.to(
        f"{dave.name}@example.org")), "dave's e-mail of the grant", 10)
    step(chain, "... and by e-mail", at, released, "the release")
    time.sleep(5 * 2)  # five billing windows of dave's reserved time, used by nobody
    chain.gpuacct(dave, "release")
    step(chain, "dave releases: five windows of his idle reservation to be billed", time.time())

    # Bob was never touched.
    assert bobs.poll() is None
    assert chain.node.hook(bob) is None
    assert chain.enforcer_audit(bob) == []

    # The story in the enforcer's audit, in order.
    story = [(e["node"], e["action"]) for e in chain.enforcer_audit(alice)]
    chain.say(f"audit of alice: {story}")
    on_node = [action for where, action in story if where == "gpu01"]
    first = {action: on_node.index(action) for action in (
        "notify", "block", "throttle", "terminate", "kill", "unblock", "unthrottle")}
    assert first["notify"] < min(first["block"], first["throttle"]), story
    assert max(first["block"], first["throttle"]) < first["terminate"] < first["kill"], story
    assert first["kill"] < min(first["unblock"], first["unthrottle"]), story

    # Every Grafana panel has data.
    missing = dashboards.panels_without_data(chain.prometheus.url, chain.rig.influxdb.url,
                                             "gpuacct", {"user": alice, "instance": ".+"})
    assert missing == [], missing

    # The numbers agree: exporter = ledger (usage), ledger = InfluxDB (cost), bob = usage x price.
    for proc in (again, bobs):
        chain.node.gpus.remove(proc.pid)
        proc.kill()
        proc.wait()
    truth = chain.rig.wait_until_billed(timeout=60)
    assert {k[0] for k in truth} == {alice, bob, carol.name, dave.name}
    ledger = sqlite_rows(chain.rig.ledger_path, 'SELECT "user", job, gpu_model, gpu_seconds, '
                         "cpu_core_seconds, cost FROM usage_lines")
    costs: dict[str, Decimal] = {}
    for user, job, model, gpu, cpu, cost in ledger:
        price = PRICE[model] if model else Decimal(0)
        if job.startswith("reservation-"):
            price *= RESERVED_FACTOR
        expected = ((Decimal(gpu) * price + Decimal(cpu) * CPU_PRICE) / 60).quantize(
            Decimal("0.000001"), rounding=ROUND_HALF_EVEN)
        assert Decimal(cost) == expected
        costs[user] = costs.get(user, Decimal(0)) + Decimal(cost)
    influx = wait(lambda: chain.rig.influx_sums() == {
        u: int(c * 1_000_000) for u, c in costs.items()}, "InfluxDB to hold every cost", 30)
    balances: dict[str, str] = dict(sqlite_rows(chain.rig.ledger_path,
                                                "SELECT name, balance FROM accounts"))
    for user in (bob, carol.name, dave.name):  # carol's and dave's: their reserved time
        assert costs[user] > 0 and Decimal(balances[user]) == OPENING - costs[user]
    assert Decimal(balances[alice]) == OPENING + 100 - costs[alice]
    step(chain, f"totals agree: alice {costs[alice]}, bob {costs[bob]}, "
                f"carol {costs[carol.name]}, dave {costs[dave.name]}", influx)
    assert_no_secret_shows(tmp_path)
    step(chain, "no secret in any log, process title or service environment", time.time())


def rotate_secrets(chain: Chain) -> None:
    """The operator's rotation (docs/enforcement.md) while alerts keep coming: both keys
    accepted everywhere, the new ones sign, the old ones dropped."""
    node, enforcer = chain.node.exporter, chain.enforcer
    assert node.config is not None
    old_key, new_key = key_of("gpu01").decode(), node_key(NEW_MASTER.encode(), "gpu01").decode()
    reconfigure(node.process, node.config, {"auth": {"node_key": [old_key, new_key]}})
    reconfigure(enforcer.process, enforcer.config, {"auth": {
        "node_master_key": [NEW_MASTER, MASTER], "webhook_token": [TOKEN, NEW_TOKEN]}})
    chain.token_file.write_text(NEW_TOKEN)  # Alertmanager reads it at every delivery
    chain.token = NEW_TOKEN
    reconfigure(chain.web, chain.rig.config_path, {
        "auth": {"webhook_token": NEW_TOKEN},
        "web": {"session_secret": [NEW_SESSION_SECRET, SESSION_SECRET]}})
    reconfigure(node.process, node.config, {"auth": {"node_key": new_key}})
    reconfigure(enforcer.process, enforcer.config, {"auth": {
        "node_master_key": NEW_MASTER, "webhook_token": NEW_TOKEN}})
    status, _ = enforcer.post_alerts({}, token=TOKEN)
    assert status == 401, "the old webhook token is still accepted"


def assert_no_secret_shows(tmp_path: Path) -> None:
    """None of the chain's secrets in a log of any part, nor in the command line or the
    environment of a service still running (what `ps` and /proc show other users)."""
    shown = {"webhook token": TOKEN, "master key": MASTER, "node key": key_of("gpu01").decode(),
             "admin password": PASSWORD, "session secret": SESSION_SECRET,
             "new webhook token": NEW_TOKEN, "new master key": NEW_MASTER,
             "new node key": node_key(NEW_MASTER.encode(), "gpu01").decode(),
             "new session secret": NEW_SESSION_SECRET}
    logs = sorted(tmp_path.rglob("*.log"))
    assert len(logs) >= 6, logs  # billing, web, enforcer, exporter, Prometheus, Alertmanager...
    for log in logs:
        text = log.read_text(errors="replace")
        found = [what for what, secret in shown.items() if secret in text]
        assert found == [], f"{log}: {found}"
    services = [p for p in psutil.process_iter(["cmdline", "environ"])
                if str(tmp_path) in " ".join(p.info["cmdline"] or ())]
    assert len(services) >= 4, services  # billing, web, enforcer, the node
    for p in services:
        seen = " ".join(p.info["cmdline"]) + " " + " ".join(
            f"{k}={v}" for k, v in (p.info["environ"] or {}).items())
        assert [what for what, secret in shown.items() if secret in seen] == [], p


# The notices a balance drained to nothing and recharged is told in, by the summaries that
# may head each (a tier's first alert names it).
NOTICES = {
    "warning": ("{u}'s balance is low",),
    "limited": ("{u} may start no new GPU work", "{u}'s CPU is limited to 50%"),
    "exhausted": ("{u}'s balance is exhausted: no new GPU work", "{u}'s CPU is limited to 10%"),
    "kill notice": ("{u}'s GPU processes will be stopped in 10 minutes",),
    "kill": ("{u}'s GPU processes are being stopped",),
    "recharge": ("{u}'s account was recharged with 100.00",),
}


def told_by_mail_and_chat(chain: Chain, user: str, recharged: float) -> None:
    """One e-mail and one chat message per tier, the kill notice, the kill and the recharge,
    each with the balance and what to do."""
    recharge = NOTICES["recharge"][0].format(u=user)
    at = wait(lambda: any(m.subject == recharge for m in chain.smtp.to(f"{user}@example.org"))
              and any(m["title"] == recharge for m in chain.chat.about(user)),
              f"{user}'s recharge notice", 15)
    step(chain, "alice got one e-mail and chat message per tier, kill, recharge", at,
         recharged, "the recharge")
    time.sleep(1)  # anything doubled would be here by now
    mails, chats = chain.smtp.to(f"{user}@example.org"), chain.chat.about(user)
    for notice, subjects in NOTICES.items():
        heads = {s.format(u=user) for s in subjects}
        assert sum(m.subject in heads for m in mails) == 1, (notice, [m.subject for m in mails])
        assert sum(m["title"] in heads for m in chats) == 1, (notice, chats)
    running_out = f"{user}'s balance runs out within the hour"  # may come first, once at most
    assert len(mails) - sum(m.subject == running_out for m in mails) == len(NOTICES)
    for mail in mails:
        if mail.subject not in (recharge, running_out):
            assert " left" in mail.body and "What to do:" in mail.body, mail
            assert f"{chain.web_url}/users/{user}" in mail.body, mail
    assert any("balance is" in m.body for m in mails if m.subject == recharge)


def sqlite_rows(path: Path | str, query: str) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return list(db.execute(query))
    finally:
        db.close()
