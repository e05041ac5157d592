"""gpuacct-stack brings every part up on loopback, and Ctrl-C leaves nothing behind."""

from __future__ import annotations

import base64
import json
import os
import pwd
import re
import shutil
import signal
import socket
import sqlite3
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import psutil
import pytest
import requests

from exporter import cli as exporter_cli
from stack import demo
from stack.process import free_port
from tests.fixtures.servers import promql, wait_for
from tests.fixtures.tls import plain_http_fails
from tests.fixtures.users import Processes, UnixUser, wait_until_exec

pytestmark = pytest.mark.integration


def stack_config(tmp_path: Path) -> Path:
    """Free ports, quick scrapes."""
    config = tmp_path / "gpuacct.yaml"
    config.write_text(
        "stack:\n"
        f"  prometheus_port: {free_port()}\n  alertmanager_port: {free_port()}\n"
        f"  influxdb_port: {free_port()}\n  exporter_port: {free_port()}\n"
        f"  billing_port: {free_port()}\n  enforcer_port: {free_port()}\n"
        f"  web_port: {free_port()}\n"
        "  scrape_interval_seconds: 1\n"
        "exporter:\n  interval_seconds: 1\n")
    return config


# What a local user tries against the stack's servers, through their public interfaces only:
# a forged kill for another user, a silence, stopping Prometheus, points into InfluxDB, and
# reading the stores. Prints each outcome: an HTTP status, or the error.
ATTACKS = r"""
import json, os, sys, urllib.request
am, prom, influx, state = sys.argv[1:5]
def status(url, body, kind="application/json"):
    try:
        with urllib.request.urlopen(urllib.request.Request(
                url, data=body.encode(), headers={"Content-Type": kind}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
def opened(path):
    try:
        open(path).close()
        return "read"
    except OSError as e:
        return type(e).__name__
def listed(path):
    try:
        os.listdir(path)
        return "listed"
    except OSError as e:
        return type(e).__name__
kill = [{"labels": {"alertname": "Forged", "user": "root", "action": "kill"}}]
silence = {"matchers": [{"name": "user", "value": ".+", "isRegex": True}],
           "startsAt": "2026-01-01T00:00:00Z", "endsAt": "2099-01-01T00:00:00Z",
           "createdBy": "me", "comment": "quiet"}
print(json.dumps({
    "alert": status(am + "api/v2/alerts", json.dumps(kill)),
    "silence": status(am + "api/v2/silences", json.dumps(silence)),
    "quit": status(prom + "-/quit", ""),
    "write": status(influx + "write?db=gpuacct", "cost,user=x value=1", "text/plain"),
    "ledger": opened(state + "/billing/ledger.sqlite3"),
    "enforcer": opened(state + "/enforcer/enforcer.sqlite3"),
    "token": opened(state + "/webhook-token"),
    "state": listed(state),
    "logs": listed(state + "/billing"),
}))
"""


def attacks_as(user: UnixUser, urls: dict[str, str], state: Path) -> dict[str, object]:
    done = subprocess.run(["/usr/bin/python3", "-c", ATTACKS, urls["alertmanager"],
                           urls["prometheus"], urls["influxdb"].removesuffix("ping"),
                           str(state)],
                          user=user.uid, group=user.gid, extra_groups=[], cwd="/",
                          env={"PATH": "/usr/bin:/bin"}, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def basic_auth(user: str, password_file: Path) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password_file.read_text().strip()}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def test_stack_starts_everything_and_ctrl_c_stops_it(
        tmp_path: Path, test_users: dict[str, UnixUser], installed_gpuacct: Path,
        processes: Processes) -> None:
    """Run from a wheel installed into a fresh virtualenv, away from this checkout: the
    rules and templates it needs are inside the installed packages. Its state folder is in
    a folder every user may enter, as /var/lib is."""
    alice = test_users["alice"].name
    config = stack_config(tmp_path)
    log = tmp_path / "stack.out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    lib = Path(tempfile.mkdtemp(prefix="gpuacct-stack-"))
    lib.chmod(0o755)
    state = lib / "state"
    with log.open("w") as out:
        stack = subprocess.Popen(
            [str(installed_gpuacct / "bin" / "gpuacct-stack"), "--config", str(config),
             "--state-dir", str(state)], stdout=out, stderr=subprocess.STDOUT,
            cwd=tmp_path, env=env)
    try:
        wait_for(lambda: "running" in log.read_text() or stack.poll() is not None,
                 timeout=90, what="the stack")
        text = log.read_text()
        assert stack.poll() is None, text
        urls = dict(re.findall(r"^\s+(\w+)\s+(https?://\S+)", text, re.M))
        influx = urls["influxdb"].removesuffix("ping")  # the stack prints a URL that answers
        assert set(urls) == {"influxdb", "alertmanager", "enforcer", "exporter", "prometheus",
                             "billing", "web"}, text
        # gpuacct's own parts serve TLS from the stack's throwaway CA, and nothing in clear.
        ca = state / "tls" / "ca.crt"
        context = ssl.create_default_context(cafile=str(ca))
        # Alertmanager lets in only the stack's user, whose password only root reads.
        am_auth = basic_auth("gpuacct", state / "alertmanager-password")
        for name, url in urls.items():
            probe = url
            ours = name in ("enforcer", "exporter", "billing", "web")
            assert url.startswith("https://" if ours else "http://"), (name, url)
            with urllib.request.urlopen(urllib.request.Request(
                    probe, headers=am_auth if name == "alertmanager" else {}),
                    timeout=5, context=context) as response:
                assert response.status < 300, name
            if ours:
                assert plain_http_fails(urllib.parse.urlsplit(url).port or 0, "/"), name
        for name in ("influxdb", "alertmanager", "enforcer", "exporter", "prometheus",
                     "billing", "web"):
            assert (state / name).is_dir()
        # Prometheus scrapes the exporter it was started with.
        prom = urls["prometheus"].rstrip("/")
        up = wait_for(lambda: promql(prom, 'up{job="gpuacct-exporter"} == 1'), timeout=30,
                      what="the exporter scraped")
        assert up
        wait_for(lambda: promql(prom, 'up{job="gpuacct-billing"} == 1'), timeout=30,
                 what="the billing engine scraped")
        assert (state / "billing" / "ledger.sqlite3").exists()
        # The rules are loaded, and Alertmanager routes enforcement to the enforcer's port.
        with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=5) as response:
            loaded = json.load(response)["data"]["groups"]
        groups = {g["name"] for g in loaded}
        assert groups == {"gpuacct-enforcement", "gpuacct-operations", "gpuacct-recording"}
        site = next((installed_gpuacct / "lib").glob("python3*/site-packages"))
        assert {Path(g["file"]).parent for g in loaded} == {site / "rules"}, loaded
        with urllib.request.urlopen(urllib.request.Request(
                f"{urls['alertmanager']}api/v2/status", headers=am_auth), timeout=5) as r:
            am_config = json.load(r)["config"]["original"]
        assert "receiver: enforcer" in am_config and "/v1/alerts" in am_config
        assert f"ca_file: {ca}" in am_config  # it verifies the enforcer's certificate
        assert (state / "webhook-token").stat().st_mode & 0o077 == 0
        assert (state / "node-key").stat().st_mode & 0o077 == 0
        wait_for(lambda: promql(prom, 'up{job="gpuacct-enforcer"} == 1'), timeout=30,
                 what="the enforcer scraped")

        # An enforcement alert goes Alertmanager -> enforcer -> the node's actuator.
        alert = [{"labels": {"alertname": "GpuacctBalanceLow", "user": alice, "action": "notify",
                             "severity": "warning"}, "annotations": {"summary": "low"}}]
        urllib.request.urlopen(urllib.request.Request(
            f"{urls['alertmanager']}api/v2/alerts", data=json.dumps(alert).encode(),
            headers={"Content-Type": "application/json", **am_auth}), timeout=5).close()
        hook = state / "run" / "users" / f"{alice}.json"
        wait_for(hook.exists, timeout=30, what="the notice on the node")
        assert json.loads(hook.read_text())["reasons"][0]["alert"] == "GpuacctBalanceLow"
        # A throttle puts carol's running work under a CPU quota, in a cgroup of gpuacct's.
        carol = test_users["carol"]
        busy = processes.python(carol, "train.py", "300")
        wait_until_exec(busy, "train.py")
        throttle = [{"labels": {"alertname": "GpuacctCpuLimit", "user": carol.name,
                                "action": "throttle", "cpu_quota_percent": "50",
                                "severity": "warning"}, "annotations": {"summary": "slow"}}]
        urllib.request.urlopen(urllib.request.Request(
            f"{urls['alertmanager']}api/v2/alerts", data=json.dumps(throttle).encode(),
            headers={"Content-Type": "application/json", **am_auth}), timeout=5).close()
        quota = Path(f"/sys/fs/cgroup/cpu/gpuacct/user-{carol.uid}")
        wait_for(lambda: str(busy.pid) in (quota / "cgroup.procs").read_text().split()
                 if quota.is_dir() else False, timeout=30, what="carol's work under the quota")
        # carol's own `gpuacct balance` finds the stack's moved ports and her notice through
        # the config the stack wrote for local users.
        assert f"local users: GPUACCT_CONFIG={state}/run/gpuacct.yaml gpuacct balance" in \
            log.read_text()
        balance = subprocess.run(
            [str(installed_gpuacct / "bin" / "gpuacct"), "balance"], user=carol.uid,
            group=carol.gid, extra_groups=[], cwd="/", capture_output=True, text=True,
            env={"PATH": "/usr/bin:/bin", "GPUACCT_CONFIG": f"{state}/run/gpuacct.yaml"},
            timeout=60)
        assert balance.returncode == 0, balance.stderr
        assert "no account yet" in balance.stdout, balance.stdout  # Prometheus answered
        assert "CPU limited to 50% of one core" in balance.stdout, balance.stdout

        # A local user gets nowhere: no alert, no silence, no stop, no point, no store.
        assert attacks_as(test_users["bob"], urls, state) == {
            "alert": 401, "silence": 401, "quit": 403, "write": 401,
            "ledger": "PermissionError", "enforcer": "PermissionError",
            "token": "PermissionError", "state": "PermissionError", "logs": "PermissionError"}
        assert state.stat().st_mode & 0o777 == 0o711  # passed through to run/, never listed
        with urllib.request.urlopen(urllib.request.Request(
                f"{urls['alertmanager']}api/v2/alerts?filter=alertname%3D%22Forged%22",
                headers=am_auth), timeout=5) as r:
            assert json.load(r) == []  # nothing forged arrived
        # InfluxDB's one user is the stack's; billing is configured with it.
        influx_auth = basic_auth("gpuacct", state / "influxdb-password")
        databases = requests.get(f"{influx}query", params={"q": "SHOW DATABASES"},
                                 headers=influx_auth, timeout=5)
        assert databases.status_code == 200 and '"gpuacct"' in databases.text
        billing_config = (state / "billing" / "gpuacct.yaml").read_text()
        assert "username: gpuacct" in billing_config and "influxdb-password" in billing_config

        # An administrator logged in before a restart is still logged in after it, over the
        # same CA.
        admin = requests.Session()
        admin.trust_env = False  # REQUESTS_CA_BUNDLE would win over the stack's CA
        admin.verify = str(ca)
        web = urls["web"].rstrip("/")
        csrf = re.search(r'name="csrf" value="([^"]+)"',  # type: ignore[union-attr]
                         admin.get(f"{web}/login", timeout=10).text).group(1)
        password = (state / "admin-password").read_text().strip()
        assert admin.post(f"{web}/login", data={"password": password, "csrf": csrf},
                          timeout=10).url.endswith("/admin")
        ca_before = ca.read_bytes()

        children = psutil.Process(stack.pid).children(recursive=True)
        assert len(children) >= 7
        assert (state / "admin-password").stat().st_mode & 0o077 == 0
        stack.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert stack.wait(timeout=60) == 0
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], f"left behind: {alive}"
        # Nothing it enforced outlives it: no quota, no cgroup, no notice; carol's work runs on.
        assert not quota.exists()
        assert list((state / "run" / "users").iterdir()) == []
        assert busy.poll() is None
        assert "released" in log.read_text()

        with log.open("w") as out:
            stack = subprocess.Popen(
                [str(installed_gpuacct / "bin" / "gpuacct-stack"), "--config", str(config),
                 "--state-dir", str(state)], stdout=out, stderr=subprocess.STDOUT,
                cwd=tmp_path, env=env)
        wait_for(lambda: "running" in log.read_text() or stack.poll() is not None,
                 timeout=90, what="the stack, again")
        assert stack.poll() is None, log.read_text()
        assert ca.read_bytes() == ca_before
        page = admin.get(f"{web}/admin", timeout=10)
        assert page.status_code == 200 and page.url.endswith("/admin"), page.url
        stack.send_signal(signal.SIGINT)
        assert stack.wait(timeout=60) == 0
    finally:
        if stack.poll() is None:
            os.kill(stack.pid, signal.SIGKILL)
        shutil.rmtree(lib, ignore_errors=True)


def test_stack_reports_a_bad_config_in_one_line(tmp_path: Path) -> None:
    config = tmp_path / "gpuacct.yaml"
    config.write_text("stack:\n  prometheus_port: lots\n")
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "stack", "--config", str(config)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "stack.prometheus_port: 'lots' is not valid" in result.stderr
    assert time.monotonic() - started < 30


@pytest.mark.root
@pytest.mark.alone  # two minutes on a 2-core machine, with nothing else running
def test_the_demo_plays_the_story_and_the_web_page_shows_it_within_two_minutes(
        tmp_path: Path, test_users: dict[str, UnixUser], processes: Processes) -> None:
    """The whole story, while a local user outside the demo (bob) runs a process that says it
    is on simulated GPU 0: the demo never bills, tells or touches him."""
    config = stack_config(tmp_path)
    bob = test_users["bob"]
    outsider = processes.python(bob, "train.py", "600", env={"GPUACCT_DEMO_GPU": "0"})
    wait_until_exec(outsider, "train.py")
    lib = Path(tempfile.mkdtemp(prefix="gpuacct-demo-"))  # the demo users reach run/ in it
    lib.chmod(0o755)
    state = lib / "state"
    started = time.monotonic()
    log = tmp_path / "stack.out"
    with log.open("w") as out:
        stack = subprocess.Popen(
            [sys.executable, "-m", "stack", "--demo", "--config", str(config),
             "--state-dir", str(state)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: "running" in log.read_text() or stack.poll() is not None,
                 timeout=90, what="the stack")
        assert stack.poll() is None, log.read_text()
        web = re.search(r"^\s+web\s+(https://\S+)/", log.read_text(), re.M).group(1)  # type: ignore[union-attr]
        session = requests.Session()
        session.trust_env = False  # REQUESTS_CA_BUNDLE would win over the stack's CA
        session.verify = str(state / "tls" / "ca.crt")
        login = session.get(f"{web}/login", timeout=10).text
        csrf = re.search(r'name="csrf" value="([^"]+)"', login).group(1)  # type: ignore[union-attr]
        password = (state / "admin-password").read_text().strip()
        assert session.post(f"{web}/login", data={"password": password, "csrf": csrf},
                            timeout=10).url.endswith("/admin")

        def page() -> str:
            return session.get(f"{web}/users/{demo.ALICE}", timeout=10).text

        wait_for(lambda: "new GPU work is blocked" in page(),
                 timeout=max(1.0, 120 - (time.monotonic() - started)),
                 what="the web page to show alice blocked")
        print(f"the web page shows {demo.ALICE} blocked {time.monotonic() - started:.0f} s "
              "after the stack started")
        assert "Simulated NVIDIA A100" in session.get(f"{web}/admin/nodes", timeout=10).text
        wait_for(lambda: "is granted it at once" in log.read_text(), timeout=120,
                 what="the rest of the story")
        story = [line for line in log.read_text().splitlines() if line.startswith("demo: ")]
        print("\n".join(story))
        assert [s.split()[1:3] for s in story] == [
            [demo.ALICE, "trains"], [demo.ALICE, "is"], [demo.ALICE, "is"],
            [demo.ALICE, "started"], [demo.ALICE, "stayed"], ["the", "demo"], ["the", "alerts"],
            [demo.BOB, "reserves"], [demo.ALICE, "asks"], [f"{demo.BOB}'s", "run"],
            [demo.ALICE, "is"]]
        assert f"{demo.BOB} is still training" in story[-5]
        assert "granted: reservation 1, GPU 1 on" in story[-4]
        assert "queued: request 2, position 1, estimated start" in story[-3]
        assert "released: reservation 1" in story[-2]
        assert "new GPU work is blocked" not in page()
        assert outsider.poll() is None  # never signalled
        assert not (state / "run" / "users" / f"{bob.name}.json").exists()  # never told
        ledger = sqlite3.connect(f"file:{state / 'billing' / 'ledger.sqlite3'}?mode=ro",
                                 uri=True)
        try:
            users = {u for (u,) in ledger.execute('SELECT DISTINCT "user" FROM usage_lines')}
        finally:
            ledger.close()
        assert users == {demo.ALICE, demo.BOB}  # never billed

        stack.send_signal(signal.SIGTERM)
        assert stack.wait(timeout=60) == 0
        for name in (demo.ALICE, demo.BOB):  # the demo's users are gone with it
            with pytest.raises(KeyError):
                pwd.getpwnam(name)
    finally:
        if stack.poll() is None:
            os.kill(stack.pid, signal.SIGKILL)
            for name in (demo.ALICE, demo.BOB):
                subprocess.run(["pkill", "-KILL", "-u", name], check=False)
                subprocess.run(["userdel", name], check=False, capture_output=True)
        shutil.rmtree(lib, ignore_errors=True)


def test_a_port_in_use_is_named_in_one_line_before_anything_starts(tmp_path: Path) -> None:
    config = stack_config(tmp_path)
    web_port = int(re.search(r"web_port: (\d+)", config.read_text()).group(1))  # type: ignore[union-attr]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", web_port))
        taken.listen()
        result = subprocess.run([sys.executable, "-m", "stack", "--config", str(config),
                                 "--state-dir", str(tmp_path / "state")],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip() == (f"gpuacct-stack: 127.0.0.1:{web_port} (web) cannot be "
                                     "used: Address already in use; free it or set "
                                     "stack.web_port"), result.stderr
    assert not (tmp_path / "state" / "influxdb").exists()  # nothing was started


def test_the_exporter_started_without_root_says_so_and_exits_2(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Not run as a test user: the checkout may be where only root can enter."""
    monkeypatch.setattr("exporter.cli.os.geteuid", lambda: 1000)
    assert exporter_cli.main(["run"]) == 2
    assert capsys.readouterr().err.strip() == (
        "gpuacct-exporter: run it as root: it reads every user's processes in /proc and acts "
        "on them as the enforcer says")
