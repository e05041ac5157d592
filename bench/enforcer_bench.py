"""Benchmark: from the webhook's receipt to the signal on the node, with 10 nodes on loopback.

Ten `gpuacct-exporter` processes (fake NVML, each listing one real process of a benchmark user
on its GPU) and one `gpuacct-enforcer` pushing to all ten. Each round starts a fresh process per
node, posts a new `kill` alert to the webhook and times, per node, how long until that node's
process is dead (SIGTERM, observed through a pidfd); the alert is then resolved and the nodes
acknowledge before the next round. Baseline in the same run: the same policy PUT, signed, by
the benchmark straight to all ten nodes at once (no enforcer), so the ratio is what the
enforcer's webhook, SQLite commit and push add.
Run (as root): .venv/bin/python bench/enforcer_bench.py
"""

from __future__ import annotations

import json
import os
import pwd
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from common import percentile
from fleet import signed_put, start_enforcer, start_nodes

from gpuacct.policy import NodePolicy, Reason, UserPolicy
from stack.process import ManagedProcess

NODES, ROUNDS = 10, 30
USER = "gpuacct-bench"
KEY, TOKEN = "bench-node-key", "bench-token"
IDLE = "import time\nwhile True: time.sleep(60)\n"


def spawn_victims(script: Path, uid: int, gpu_files: list[Path]) -> list[subprocess.Popen[bytes]]:
    victims = []
    for gpus in gpu_files:
        proc = subprocess.Popen(["/usr/bin/python3", str(script)], user=uid, group=uid,
                                extra_groups=[], start_new_session=True)
        data = json.loads(gpus.read_text())
        data["devices"][0]["processes"] = [{"pid": proc.pid, "used_memory": 1 << 30}]
        tmp = gpus.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, gpus)
        victims.append(proc)
    time.sleep(0.5)  # several sampling cycles: every node has seen its GPU process
    return victims


def deaths(victims: list[subprocess.Popen[bytes]], started: float) -> list[float]:
    """Seconds from `started` until each victim died."""
    fds = {os.pidfd_open(v.pid): i for i, v in enumerate(victims)}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    died: dict[int, float] = {}
    deadline = time.perf_counter() + 10
    while len(died) < len(victims) and time.perf_counter() < deadline:
        for fd, _ in poller.poll(100):
            died[fds[fd]] = time.perf_counter() - started
            poller.unregister(fd)
    for fd in fds:
        os.close(fd)
    for v in victims:
        v.kill()
        v.wait()
    if len(died) < len(victims):
        raise RuntimeError(f"only {len(died)} of {len(victims)} processes were stopped")
    return [died[i] for i in range(len(victims))]


def post(url: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
        "Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    urllib.request.urlopen(request, timeout=10).close()


def notification(n: int, status: str) -> dict[str, Any]:
    starts = f"2026-11-22T10:{n // 60:02d}:{n % 60:02d}Z"
    return {"version": "4", "status": status, "alerts": [{
        "status": status, "fingerprint": f"bench{n:04d}", "startsAt": starts,
        "labels": {"alertname": "GpuacctBalanceExhaustedKillGpu", "user": USER,
                   "action": "kill"},
        "annotations": {"summary": "benchmark"}}]}


def via_enforcer(url: str, n: int, victims: list[subprocess.Popen[bytes]]) -> list[float]:
    started = time.perf_counter()
    post(f"{url}/v1/alerts", notification(n, "firing"))
    took = deaths(victims, started)
    post(f"{url}/v1/alerts", notification(n, "resolved"))
    return took


def direct(ports: list[int], n: int, victims: list[subprocess.Popen[bytes]]) -> list[float]:
    def put(port: int, policy: NodePolicy) -> None:
        body = policy.model_dump_json().encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/policy", data=body,
                                         method="PUT",
                                         headers=signed_put(KEY, ports.index(port), body))
        urllib.request.urlopen(request, timeout=10).close()

    def put_all(policy: NodePolicy) -> None:
        threads = [threading.Thread(target=put, args=(p, policy)) for p in ports]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    kill = NodePolicy(version=int(time.time() * 1000) + 2 * n, users={USER: UserPolicy(
        block=True, kill=True, reasons=(Reason(alert="K", action="kill"),))})
    started = time.perf_counter()
    pushing = threading.Thread(target=put_all, args=(kill,))
    pushing.start()  # deaths are watched while the pushes are under way
    took = deaths(victims, started)
    pushing.join()
    put_all(NodePolicy(version=kill.version + 1))
    return took


def main() -> int:
    if os.geteuid() != 0:
        print("run as root: the benchmark creates a user and signals its processes",
              file=sys.stderr)
        return 2
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", USER],
                   capture_output=True, check=False)
    uid = pwd.getpwnam(USER).pw_uid
    work = Path(tempfile.mkdtemp(prefix="gpuacct-enforcer-bench-"))
    work.chmod(0o755)
    script = work / "idle.py"
    script.write_text(IDLE)
    script.chmod(0o644)
    parts: list[ManagedProcess] = []
    try:
        nodes = start_nodes(work, NODES, KEY)
        parts += [n[0] for n in nodes]
        ports, gpu_files = [n[1] for n in nodes], [n[2] for n in nodes]
        enforcer, port = start_enforcer(work, ports, KEY, TOKEN)
        parts.append(enforcer)
        url = f"http://127.0.0.1:{port}"
        results: dict[str, list[float]] = {"enforcer": [], "direct": []}
        for n in range(ROUNDS + 2):  # two warm-up rounds of each
            for name in ("enforcer", "direct"):
                victims = spawn_victims(script, uid, gpu_files)
                took = (via_enforcer(url, n, victims) if name == "enforcer"
                        else direct(ports, n, victims))
                time.sleep(0.3)  # the lift reaches every node
                if n >= 2:
                    results[name] += took
        print(f"{NODES} nodes, {ROUNDS} rounds, {ROUNDS * NODES} signals per path")
        for name, values in results.items():
            print(f"  {name:<9} p50 {percentile(values, 50) * 1000:7.1f} ms   "
                  f"p99 {percentile(values, 99) * 1000:7.1f} ms   "
                  f"max {max(values) * 1000:7.1f} ms")
        ratio_50 = percentile(results["enforcer"], 50) / percentile(results["direct"], 50)
        ratio_99 = percentile(results["enforcer"], 99) / percentile(results["direct"], 99)
        print(f"ratio enforcer / direct: p50 {ratio_50:.2f}, p99 {ratio_99:.2f}; "
              f"target p99 under 1000 ms")
        return 0
    finally:
        for proc in parts:
            proc.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
