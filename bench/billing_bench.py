"""Benchmark: one billing window end to end for 10,000 and 100,000 series, on a SQLite ledger
and on a PostgreSQL one, beside the raw query time; the peak RSS of each, and how the time grows
from 10,000 to 100,000 (the ratio of the two: 10 is linear).

Each configuration runs in a process of its own (`--series N --ledger sqlite|postgresql`,
which is also how to run one alone). It backfills a real Prometheus (promtool tsdb
create-blocks-from openmetrics) with N (user, job, node, gpu_model) GPU-seconds series and the
N CPU-seconds series of the same
jobs, each with its `_created` series, at the ends of two consecutive windows and the start of
the first. Then, in the same run:
  - the raw query: the engine's instant query fetched over HTTP (bytes only, no parsing);
  - the first window billed end to end: query and parse, differences, pricing, the ledger
    commit (usage lines, charges, cursors, outbox) and the InfluxDB write of every point, all
    of whose series are new to InfluxDB and the ledger;
  - the second window, likewise: the steady state, as every minute after a job's first.
Each window also shows its two writes alone, the ledger commit and the InfluxDB write, beside
the raw query: what the engine's share cannot go below without giving up the durable ledger.
A second peer, the stack's floor, uses none of the engine's code: it parses the query's JSON,
inserts 10,000 rows into the smallest durable SQLite table (integer key, no index) and writes
the window's 10,000 points to InfluxDB: what any engine on this stack must do for a window.
Run: .venv/bin/python bench/billing_bench.py   (needs Debian's prometheus, influxdb and
postgresql; PostgreSQL runs as a throwaway cluster with fsync off, so its figures are the
server's work, not a disk's)
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

import orjson

from billing_engine.engine import QUERY, Engine
from billing_engine.influx import InfluxV1, LineFormatter
from gpuacct.config import BillingSettings, InfluxV1Settings
from gpuacct.promql import Prometheus
from gpuacct.store import Target
from ledger import Ledger, UsageLine, WindowBill
from stack import servers
from stack.process import ManagedProcess, free_port

SERIES = 10_000  # set by --series
USERS, NODES = 500, 20
MODELS = ["NVIDIA A100-SXM4-80GB", "NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090",
          "Tesla V100-SXM2-32GB", "NVIDIA H100 80GB HBM3"]
WINDOW = 60
RUNS = 5


def openmetrics(path: Path, end: int) -> None:
    born = end - 3600
    with path.open("w") as f:
        for family, unit in (("gpu", "gpu"), ("cpu", "cpu")):
            f.write(f"# TYPE gpuacct_job_{family}_seconds counter\n")
            for i in range(SERIES):
                labels = (f'user="user{i % USERS:03d}",job="job{i}",'
                          f'instance="node{i % NODES:02d}:9835"')
                if unit == "gpu":
                    labels += (f',gpu="{i % 8}",gpu_uuid="GPU-{i:08d}",'
                               f'gpu_model="{MODELS[i % len(MODELS)]}"')
                for n, t in enumerate((end - 2 * WINDOW, end - WINDOW, end)):
                    value = 1000.0 + i + n * (45.5 + i % 7 / 3)
                    f.write(f"gpuacct_job_{family}_seconds_total{{{labels}}} {value} {t}\n")
                    f.write(f"gpuacct_job_{family}_seconds_created{{{labels}}} {born} {t}\n")
        f.write("# EOF\n")


def raw_query(url: str, at: int) -> tuple[bytes, float]:
    """The engine's query, fetched over HTTP: its bytes and the seconds it took."""
    params = urllib.parse.urlencode({"query": QUERY, "time": str(at)})
    t = time.perf_counter()
    with urllib.request.urlopen(f"{url}/api/v1/query?{params}", timeout=60) as response:
        body = response.read()
    return body, time.perf_counter() - t


class Floor(NamedTuple):
    first: float  # points new to InfluxDB
    steady: float  # the same points again, as every minute after a job's first


def stack_floor(work: Path, n: int, prom_url: str, influx_url: str, end: int) -> Floor:
    """A window's unavoidable work with none of the engine's code: parse the answer, insert
    one row per usage line durably (WAL, synchronous=FULL, as the ledger) and write one point
    per usage line to InfluxDB, twice (new series, then known ones). Everything else is built
    before the clock starts."""
    body, _ = raw_query(prom_url, end)
    windows = (end - WINDOW, end)
    rows = {w: [(w, i, "45.5", "46.5", "0.388333") for i in range(SERIES)] for w in windows}
    usage = Decimal("45.5"), Decimal("46.5"), Decimal("0.388333")
    formatter = LineFormatter()
    points = [formatter.line(UsageLine(f"user{i % USERS:03d}", f"job{i}",
                                       f"node{i % NODES:02d}:9835", MODELS[i % len(MODELS)],
                                       *usage), end) for i in range(SERIES)]
    db = sqlite3.connect(work / f"floor{n}.sqlite3", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE usage (window_end INTEGER, line INTEGER, gpu_seconds TEXT, "
               "cpu_core_seconds TEXT, cost TEXT, PRIMARY KEY (window_end, line)) WITHOUT ROWID")
    sink = InfluxV1(InfluxV1Settings(url=influx_url, database=f"floor{n}"), timeout=60)
    servers.influx_query(influx_url, f'CREATE DATABASE "floor{n}"', method="POST")
    times = []
    for window_end in windows:
        t = time.perf_counter()
        orjson.loads(body)
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO usage VALUES (?, ?, ?, ?, ?)", rows[window_end])
        db.execute("COMMIT")
        sink.write(points)  # the same series and time both times: the second overwrites
        times.append(time.perf_counter() - t)
    db.close()
    return Floor(*times)


class TimedSink(InfluxV1):
    """The engine's InfluxDB sink, timing its writes: the HTTP round trip, InfluxDB's ingest."""

    def __init__(self, settings: InfluxV1Settings) -> None:
        super().__init__(settings, timeout=60)
        self.seconds = 0.0

    def write(self, lines: list[str]) -> None:
        t = time.perf_counter()
        super().write(lines)
        self.seconds += time.perf_counter() - t


class TimedLedger(Ledger):
    """The ledger, timing its window commits: SQLite writing the window durably."""

    commit_seconds = 0.0

    def commit_window(self, bill: WindowBill) -> bool:
        t = time.perf_counter()
        try:
            return super().commit_window(bill)
        finally:
            self.commit_seconds += time.perf_counter() - t


class Run(NamedTuple):
    total: float  # end to end
    write: float  # of which the InfluxDB write
    commit: float  # and the ledger commit


def two_windows(ledger_at: Target, n: int, prom_url: str, influx_url: str,
                end: int) -> tuple[Run, Run]:
    settings = BillingSettings(ledger=ledger_at, prometheus_url=prom_url,
                               window_seconds=WINDOW, query_timeout_seconds=60)
    ledger = TimedLedger(settings.ledger)
    sink = TimedSink(InfluxV1Settings(url=influx_url, database=f"bench{n}"))
    engine = Engine(settings, ledger, Prometheus(prom_url, 600), sink, holder="bench")
    servers.influx_query(influx_url, f'CREATE DATABASE "bench{n}"', method="POST")
    assert ledger.acquire_lease("bench", 600)
    engine._begin(end - 2 * WINDOW)
    runs = []
    for window_end in (end - WINDOW, end):
        sink.seconds = ledger.commit_seconds = 0.0
        t = time.perf_counter()
        engine.bill_window(window_end, window_end - WINDOW)
        engine.drain_outbox()
        runs.append(Run(time.perf_counter() - t, sink.seconds, ledger.commit_seconds))
    lines = len(ledger.window_lines(end - WINDOW)) + len(ledger.window_lines(end))
    assert lines == 2 * SERIES and ledger.outbox_backlog() == 0, (lines, ledger.outbox_backlog())
    ledger.close()
    return runs[0], runs[1]


def one(backend: str, runs_wanted: int) -> int:
    work = Path(tempfile.mkdtemp(prefix="gpuacct-billing-bench-"))
    end = int(time.time() - 3 * 3600) // WINDOW * WINDOW  # older than Prometheus' head block
    procs: list[ManagedProcess] = []
    postgres = None
    try:
        if backend == "postgresql":
            postgres = servers.Postgres(free_port())
            os.environ["PGPASSFILE"] = str(postgres.passfile)
        openmetrics(work / "data.om", end)
        subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics",
                        str(work / "data.om"), str(work / "prometheus" / "data")],
                       check=True, capture_output=True)
        prom_port, influx_port = free_port(), free_port()
        procs.append(servers.start_prometheus(work / "prometheus", prom_port,
                                              {"global": {"scrape_interval": "15s"}}))
        procs.append(servers.start_influxdb(work / "influxdb", influx_port))
        prom_url, influx_url = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{influx_port}"
        found = len(Prometheus(prom_url, 600).instant(QUERY, end))
        print(f"{found} counter series at the window's end ({SERIES} GPU-seconds and {SERIES} "
              f"CPU-seconds, each with a _created series), {USERS} users, {NODES} nodes")
        raw_query(prom_url, end)  # warm Prometheus' caches, as every minute would
        # This machine's speed drifts from minute to minute, so each run is set beside the raw
        # query timed just before it, and the ratios are what is compared.
        raws, runs, floors = [], [], []
        for n in range(runs_wanted):
            raws.append(statistics.median(raw_query(prom_url, end)[1] for _ in range(3)))
            target: Target = (work / f"ledger{n}.sqlite3" if postgres is None
                              else postgres.create_database())
            runs.append(two_windows(target, n, prom_url, influx_url, end))
            floors.append(stack_floor(work, n, prom_url, influx_url, end))
        print(f"raw Prometheus query (HTTP, same query and data), per run: "
              f"{', '.join(f'{r * 1000:.0f}' for r in raws)} ms")
        for label, index in (("first window (all series new)", 0),
                             ("next window (steady state)", 1)):
            window = [r[index] for r in runs]
            totals = [r.total for r in window]
            share = [(t - q) / q for t, q in zip(totals, raws, strict=True)]
            rest = [(r.total - q - r.write) / q for r, q in zip(window, raws, strict=True)]
            writes = [(r.write + r.commit) / q for r, q in zip(window, raws, strict=True)]
            print(f"{label}, end to end: median {statistics.median(totals) * 1000:.0f} ms (runs: "
                  f"{', '.join(f'{t * 1000:.0f}' for t in totals)} ms; target < 2000 ms)")
            print(f"  engine share (end to end - raw query) / raw query: median "
                  f"{statistics.median(share):.2f} (runs: {', '.join(f'{x:.2f}' for x in share)};"
                  f" target <= 1)")
            print(f"  the same without the InfluxDB write (its round trip): median "
                  f"{statistics.median(rest):.2f}; that write: median "
                  f"{statistics.median(r.write for r in window) * 1000:.0f} ms")
            kind = "SQLite, synchronous=FULL" if postgres is None else "PostgreSQL, fsync off"
            print(f"  the ledger commit ({kind}): median "
                  f"{statistics.median(r.commit for r in window) * 1000:.0f} ms; with the "
                  f"InfluxDB write, the two writes alone / raw query: median "
                  f"{statistics.median(writes):.2f} "
                  f"(runs: {', '.join(f'{x:.2f}' for x in writes)})")
            stack = [f[index] / q for f, q in zip(floors, raws, strict=True)]
            print(f"  the stack's floor (no engine code: parse, {SERIES} durable SQLite rows, "
                  f"{SERIES} InfluxDB points) / raw query: median {statistics.median(stack):.2f} "
                  f"(runs: {', '.join(f'{x:.2f}' for x in stack)})")
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"peak RSS of this process: {rss:.0f} MiB")
        first, steady = (statistics.median(r[i].total for r in runs) for i in (0, 1))
        steady_share = statistics.median(
            (r[1].total - q) / q for r, q in zip(runs, raws, strict=True))
        print(f"RESULT {SERIES} {backend} {first:.3f} {steady:.3f} "
              f"{statistics.median(raws):.3f} {steady_share:.2f} {rss:.0f}")
        return 0
    finally:
        for proc in procs:
            proc.stop()
        if postgres is not None:
            postgres.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, help="one configuration: this many series")
    parser.add_argument("--ledger", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--runs", type=int, default=RUNS)
    args = parser.parse_args()
    if args.series:
        global SERIES
        SERIES = args.series
        return one(args.ledger, args.runs)
    results: dict[tuple[int, str], list[str]] = {}
    for series, runs in ((10_000, RUNS), (100_000, 2)):
        for backend in ("sqlite", "postgresql"):
            print(f"== {series} series, {backend} ledger", flush=True)
            out = subprocess.run([sys.executable, __file__, "--series", str(series),
                                  "--ledger", backend, "--runs", str(runs)],
                                 capture_output=True, text=True, check=True).stdout
            print(out, end="", flush=True)
            results[(series, backend)] = next(
                line.split()[3:] for line in out.splitlines() if line.startswith("RESULT"))
    print("== summary: one window end to end (first, steady), raw query, engine share "
          "(steady), peak RSS")
    for (series, backend), (first, steady, raw, share, rss) in results.items():
        print(f"{series:>7} series  {backend:<10}  first {float(first) * 1000:7.0f} ms  "
              f"steady {float(steady) * 1000:7.0f} ms  raw query {float(raw) * 1000:6.0f} ms  "
              f"share {share}  RSS {rss} MiB")
    for backend in ("sqlite", "postgresql"):
        small, big = results[(10_000, backend)], results[(100_000, backend)]
        print(f"{backend}: 100,000 / 10,000 series: steady window x"
              f"{float(big[1]) / float(small[1]):.1f}, raw query x"
              f"{float(big[2]) / float(small[2]):.1f}, RSS x{float(big[4]) / float(small[4]):.1f}"
              f" (10 is linear)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
