"""Benchmark: the web page under load, measured by `wrk`.

A ledger with 1,000 accounts and 100,000 usage lines (100 billed minutes of every account, each
with its charge), served by one `gpuacct-web` process. `wrk` loads, in turn, the server's static
health answer (`/-/healthy`: the same server and framework doing no work, the baseline), the
administrators' overview of all 1,000 accounts and one user's page, each as a logged-in
administrator, then the pages of random users (mostly not yet rendered, so the ledger
queries and the rendering are measured too). Targets (issue 7): overview p99 < 100 ms at
>= 300 requests/s, user page p99 < 50 ms.
Run: .venv/bin/python bench/web_bench.py   (needs `wrk`: apt-get install wrk)
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import requests
import yaml

from ledger import Ledger, UsageLine, WindowBill
from stack.process import ManagedProcess, free_port
from web.auth import hash_password

ACCOUNTS, WINDOWS = 1000, 100
PASSWORD = "benchmark password"
DURATION, CONNECTIONS = "10s", 8
MODELS = ("NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 3090", "NVIDIA H100 80GB HBM3")


def fill(path: Path) -> None:
    ledger = Ledger(path)
    now = int(time.time()) // 60 * 60
    users = [f"user{i:04d}" for i in range(ACCOUNTS)]
    assert ledger.acquire_lease("bench", 3600)
    with ledger.batch():
        for user in users:
            ledger.open_account(user, Decimal(100), now - 30 * 86400)
        for w in range(WINDOWS):
            end = now - 60 * (WINDOWS - w)
            lines = [UsageLine(user, f"job-{i % 13}", f"gpu{i % 40:02d}:9835", MODELS[i % 3],
                               Decimal(60), Decimal(30), Decimal(i % 97 + 1) * Decimal("0.001234"))
                     for i, user in enumerate(users)]
            assert ledger.commit_window(WindowBill(
                end=end, previous=end - 60, expected_last=ledger.last_window(), lines=lines,
                cursors={}, price_effective=0.0, holder="bench", opening_balance=Decimal(100),
                trial_mode=False, reason=f"usage in the window ending {end}"))
    ledger.close()


# Each request a random one of the 1,000 users: most miss the page cache (it keeps 512 parts).
EVERY_USER = """
math.randomseed(1)
request = function()
  return wrk.format(nil, string.format("/users/user%04d", math.random(0, 999)))
end
"""


def wrk(url: str, cookie: str, script: Path | None = None) -> tuple[float, float, float]:
    """(requests/s, p50 ms, p99 ms)."""
    out = subprocess.run(["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{DURATION}", "--latency",
                          "-H", f"Cookie: {cookie}", *(["-s", str(script)] if script else []),
                          url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise SystemExit(f"{url}: some answers were errors:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"^\s+{label}\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    return rps, ms("50%"), ms("99%")


def main() -> int:
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        fill(work / "ledger.sqlite3")
        print(f"ledger: {ACCOUNTS} accounts, {ACCOUNTS * WINDOWS} usage lines and charges, "
              f"filled in {time.perf_counter() - started:.1f} s")
        port = free_port()
        config = work / "gpuacct.yaml"
        config.write_text(yaml.safe_dump({
            "billing": {"ledger": str(work / "ledger.sqlite3")},
            "web": {"session_secret": "bench", "prometheus_url": "http://127.0.0.1:9"},
            "auth": {"admin_password_hash": hash_password(PASSWORD)}}))
        url = f"http://127.0.0.1:{port}"
        web = ManagedProcess("web", [sys.executable, "-m", "web", "--config", str(config), "run",
                                     "--web.listen-address", f"127.0.0.1:{port}"],
                             work / "web.log", f"{url}/-/healthy").start().wait_ready()
        try:
            session = requests.Session()
            csrf = re.search(r'name="csrf" value="([^"]+)"',  # type: ignore[union-attr]
                             session.get(f"{url}/login").text).group(1)
            session.post(f"{url}/login", data={"password": PASSWORD, "csrf": csrf})
            cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
            overview = session.get(f"{url}/admin")
            assert overview.ok and overview.text.count('href="/users/') == ACCOUNTS
            results = {name: wrk(f"{url}{path}", cookie) for name, path in (
                ("static /-/healthy (baseline)", "/-/healthy"),
                ("overview /admin (1,000 accounts)", "/admin"),
                ("user page /users/user0500", "/users/user0500"))}
            (work / "every-user.lua").write_text(EVERY_USER)
            results["user pages, any of 1,000 users"] = wrk(url, cookie, work / "every-user.lua")
        finally:
            web.stop()
    base = results["static /-/healthy (baseline)"]
    print(f"\nwrk -t1 -c{CONNECTIONS} -d{DURATION}, one gpuacct-web process, as an administrator")
    print(f"{'':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'p99 / static':>13}")
    for name, (rps, p50, p99) in results.items():
        print(f"{name:36} {rps:8.0f} {p50:8.2f} {p99:8.2f} {p99 / base[2]:12.1f}x")
    o, u = results["overview /admin (1,000 accounts)"], results["user page /users/user0500"]
    a = results["user pages, any of 1,000 users"]
    print(f"\ntargets: overview p99 < 100 ms: {o[2]:.1f} ms; >= 300 req/s: {o[0]:.0f}; "
          f"user page p99 < 50 ms: {u[2]:.1f} ms (any user: {a[2]:.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
